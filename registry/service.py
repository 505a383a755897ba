"""The use cases: init, push, pull, resolve, list, show, verify, signer trust. `Registry` is the
Python API and the one thing the CLI (and later the REST API) calls.

It is the only writer of catalog and stores together, and it keeps the write order that makes a
crash harmless: key slots and data, then the manifest, then the catalog in one transaction.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from registry import manifest as manifests
from registry.blobstore import BLOB, MANIFEST, BlobStore
from registry.catalog.db import create_catalog_engine, migrate
from registry.catalog.repository import (
    AuditRecord,
    Catalog,
    FileRecord,
    ModelRecord,
    NewBlob,
    NewVersion,
    VersionRecord,
)
from registry.config import (
    CONFIG_FILE,
    KmsSettings,
    Settings,
    default_actor,
    default_home,
    load_settings,
    raw_config,
    render_config,
)
from registry.crypto.keys import (
    KeyProvider,
    LocalKeyProvider,
    WrappedKey,
    create_key_file,
    read_key_file,
)
from registry.crypto.signing import (
    Signer,
    TrustedSigner,
    parse_public_key,
    public_key_text,
)
from registry.digest import hash_file
from registry.errors import (
    ConfigurationError,
    DestinationExistsError,
    IntegrityError,
    InvalidInputError,
    InvalidModelError,
    KeyAccessError,
    NotFoundError,
    RegistryError,
    StorageError,
)
from registry.manifest import Manifest, ManifestFile
from registry.refs import parse_reference, validate_name, validate_relative_path
from registry.storage.factory import StoreSpec, open_driver, parse_store, prepare_bucket


class Progress(Protocol):
    """Receives progress of long operations (the CLI draws a rich progress bar from it)."""

    def begin(self, description: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...

    def end(self) -> None: ...


class _NoProgress:
    def begin(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class InitResult:
    home: Path
    created: bool
    registry_id: str
    catalog_url: str
    store: str
    keys: str
    public_key: str


@dataclass(frozen=True)
class PushResult:
    version: VersionRecord
    created: bool
    uploaded_bytes: int
    reused_bytes: int
    files: int


@dataclass(frozen=True)
class PullResult:
    version: VersionRecord
    destination: Path
    files: tuple[str, ...]
    bytes: int


@dataclass(frozen=True)
class FileProblem:
    path: str
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    version: VersionRecord
    read_data: bool
    checked_files: int
    checked_bytes: int
    problems: tuple[FileProblem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class VersionDetails:
    version: VersionRecord
    manifest: Manifest
    signer: str


class Registry:
    """An open registry: catalog, store, keys and signer, as configured in a home directory."""

    def __init__(self, settings: Settings, *, actor: str | None = None) -> None:
        self.settings = settings
        self.actor = actor or default_actor()
        self.keys = _key_provider(settings)
        naming_key = read_key_file(settings.naming_key_file, label="naming key")
        self.signer = Signer.from_file(settings.signing_key_file)
        self.unwraps = 0
        engine = create_catalog_engine(settings.catalog_url)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        self.catalog = Catalog(engine)
        # A remote store is latency-bound: more requests in flight and larger ranges hide the
        # round trips (measured against boto3's own transfers, docs/benchmarks.md).
        remote = settings.store.kind != "local"
        workers = max(8, settings.effective_workers) if remote else settings.effective_workers
        self.store = BlobStore(
            open_driver(settings.store, parallelism=workers),
            self.keys,
            registry_id=settings.registry_id,
            naming_key=naming_key,
            chunk_size=settings.chunk_size,
            workers=workers,
            chunks_per_read=8 if remote else 4,
            on_unwrap=self._count_unwrap,
        )

    def _count_unwrap(self, _digest: str) -> None:
        self.unwraps += 1

    # -- lifecycle of the handle -----------------------------------------------------------

    @classmethod
    def open(cls, home: str | Path | None = None, *, actor: str | None = None) -> Registry:
        """Open the registry in `home` (MODEL_REGISTRY_HOME, default ~/.model-registry)."""
        settings = load_settings(Path(home) if home is not None else None)
        registry = cls(settings, actor=actor)
        try:
            registry.store.check_claim()
        except BaseException:
            registry.close()
            raise
        return registry

    def close(self) -> None:
        self.catalog.close()
        self.store.driver.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @classmethod
    def init(
        cls,
        home: str | Path | None = None,
        *,
        catalog_url: str | None = None,
        store: str | Path | None = None,
        key_dir: str | Path | None = None,
        kms: KmsSettings | None = None,
    ) -> InitResult:
        """Create a registry in `home`, or check and upgrade the one there (idempotent).

        `store` is a directory (default HOME/store) or an `s3://BUCKET[/PREFIX]?...` URL; an S3
        bucket is created with versioning and Object Lock, or refused when it has no Object Lock.
        Keys are created first and never replaced; config.toml is written last, so an init that
        was interrupted simply runs again.
        """
        home_path = (Path(home) if home is not None else default_home()).expanduser().absolute()
        if (home_path / CONFIG_FILE).exists():
            if catalog_url or store or key_dir or kms:
                raise ConfigurationError(
                    f"{home_path} is already initialised; options apply only to a new registry",
                    hint=f"edit {home_path / CONFIG_FILE} to change settings",
                )
            with cls.open(home_path) as registry:
                registry.store.claim()
                return registry._init_result(created=False)
        home_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = Path(key_dir).expanduser().absolute() if key_dir else home_path / "keys"
        spec = parse_store(str(store)) if store else StoreSpec(path=home_path / "store")
        if spec.path is not None and (
            keys == spec.path or keys.is_relative_to(spec.path) or spec.path.is_relative_to(keys)
        ):
            raise InvalidInputError(
                f"the key directory {keys} and the store {spec.path} must be apart",
                hint="keys must never live beside the data they protect (design invariant 5)",
            )
        prepare_bucket(spec)
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        kek_file, naming_file, signing_file = (
            keys / "kek.key",
            keys / "naming.key",
            keys / "signing.key",
        )
        if kms is None and not kek_file.exists():
            create_key_file(kek_file)
        if not naming_file.exists():
            create_key_file(naming_file, label="naming key")
        signer = (
            Signer.from_file(signing_file) if signing_file.exists() else Signer.create(signing_file)
        )
        url = catalog_url or f"sqlite:///{home_path / 'catalog.db'}"
        text = render_config(
            registry_id=f"mr-{uuid.uuid4().hex}",
            catalog_url=url,
            store=spec,
            kek_file=None if kms else str(kek_file),
            naming_key_file=str(naming_file),
            signing_key_file=str(signing_file),
            trusted_signers=[("local", public_key_text(signer.public_key))],
            kms=kms,
        )
        # The configuration becomes config.toml only once the catalog opened and the store was
        # claimed with it: a failed init (a typo in the catalog URL, a store owned by another
        # registry) leaves no half-configured home, and runs again with corrected options.
        pending = home_path / f".{CONFIG_FILE}.{uuid.uuid4().hex[:8]}.pending"
        _write_atomically(pending, text)
        try:
            with cls(load_settings(home_path, config_file=pending)) as registry:
                registry.store.claim()
                registry.catalog.audit(registry.actor, "init", "registry", {"home": str(home_path)})
                result = registry._init_result(created=True)
            os.replace(pending, home_path / CONFIG_FILE)
        finally:
            pending.unlink(missing_ok=True)
        return result

    def _init_result(self, *, created: bool) -> InitResult:
        return InitResult(
            home=self.settings.home,
            created=created,
            registry_id=self.settings.registry_id,
            catalog_url=self.settings.catalog_url,
            store=self.settings.store.describe(),
            keys=self.settings.describe_keys(),
            public_key=public_key_text(self.signer.public_key),
        )

    # -- queries ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionRecord:
        return self.catalog.resolve(parse_reference(ref))

    def versions(self, name: str) -> list[VersionRecord]:
        return self.catalog.versions(validate_name(name))

    def models(self) -> list[ModelRecord]:
        return self.catalog.models()

    def audit_events(self, *, subject: str | None = None, limit: int = 100) -> list[AuditRecord]:
        return self.catalog.audit_events(subject=subject, limit=limit)

    def show(self, ref: str) -> VersionDetails:
        version = self.resolve(ref)
        manifest, signer = self._load_manifest(version)
        return VersionDetails(version, manifest, signer.name)

    def _slot(self, kind: str, digest: str, *, what: str) -> WrappedKey:
        slot = self.catalog.key_slot(digest, kind, self.keys.kek_id)
        if slot is None:
            slot = self.store.read_slot(kind, digest, what=what)
        if slot is None:
            owners = self.catalog.key_slot_owners(digest, kind)
            if owners:
                raise KeyAccessError(
                    f"{what}: its data key is wrapped by {', '.join(owners)}, but the configured "
                    f"key is {self.keys.kek_id} (wrong key file)",
                    hint="point keys.kek_file at the key file this registry was created with",
                )
            raise IntegrityError(f"{what}: its key slot is missing from the store", path=what)
        return slot

    def _load_manifest(self, version: VersionRecord) -> tuple[Manifest, TrustedSigner]:
        """The version's manifest read back from the store: authenticated, digest checked
        against the catalog, signature checked against the trusted keys."""
        what = f"manifest of {version.ref}"
        slot = self._slot(MANIFEST, version.digest, what=what)
        data = self.store.read_bytes(MANIFEST, version.digest, slot, what=what)
        manifest, signer = manifests.parse_envelope(
            data,
            expected_digest=version.digest,
            trusted=self.settings.trusted_signers,
            what=what,
        )
        if manifest.name != version.name:
            raise IntegrityError(f"{what}: names model {manifest.name}", path=what)
        return manifest, signer

    # -- push ------------------------------------------------------------------------------

    def push(
        self,
        name: str,
        path: str | Path,
        *,
        message: str = "",
        progress: Progress | None = None,
    ) -> PushResult:
        """Push a model directory (or one .safetensors file) as a new version of `name`.

        Everything is validated before anything is stored. Content already stored is not
        uploaded again; identical content returns the existing version (created=False).
        """
        progress = progress or _NoProgress()
        validate_name(name)
        _check_text("message", message, limit=65536)
        _check_text("actor", self.actor, limit=256)
        if self.signer.key_id not in {s.key_id for s in self.settings.trusted_signers}:
            raise ConfigurationError(
                f"this home's signing key {self.signer.key_id} is not among the trusted signers, "
                "so nothing it pushed could be read back",
                hint="trust it with `model-registry keys trust NAME PUBLIC_KEY` "
                "(`model-registry keys show` prints it)",
            )
        files = manifests.collect(Path(path))
        total = sum(entry.size for entry in files)

        progress.begin("hashing", total)
        digests: list[str] = []
        for entry in files:
            try:
                digests.append(
                    hash_file(
                        entry.source, on_progress=progress.advance, starts_with=entry.validated
                    )
                )
            except ValueError:
                raise InvalidModelError(
                    f"{entry.path} changed while it was being pushed", hint="push it again"
                ) from None
            except OSError as error:
                raise InvalidModelError(f"cannot read {entry.path}: {error.strerror}") from None
        progress.end()
        manifest = manifests.build_manifest(
            name,
            [
                ManifestFile(entry.path, entry.size, digest, entry.safetensors)
                for entry, digest in zip(files, digests, strict=True)
            ],
        )
        digest = manifest.digest
        # Even when this content is already a version, every object is checked and whatever
        # is missing from the store is uploaded again (a re-run repairs).
        progress.begin("uploading", total)
        unique: dict[str, manifests.LocalFile] = {}
        for entry, file_digest in zip(files, digests, strict=True):
            if file_digest in unique:
                progress.advance(entry.size)
            else:
                unique[file_digest] = entry
        # Two files at a time: one file's final fsync overlaps with sealing the next.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="push") as pool:
            puts = [
                pool.submit(
                    self.store.put_file,
                    entry.source,
                    file_digest,
                    entry.size,
                    what=entry.path,
                    on_progress=progress.advance,
                    known=self.catalog.key_slot(file_digest, BLOB, self.keys.kek_id),
                )
                for file_digest, entry in unique.items()
            ]
            try:
                blobs = [put.result() for put in puts]
            except BaseException:
                for put in puts:
                    put.cancel()
                raise
        progress.end()
        uploaded = sum(blob.size for blob in blobs if blob.uploaded)
        stored = [
            NewBlob(b.digest, b.size, b.object_name, b.sealed_size, b.chunk_size, b.slot)
            for b in blobs
        ]

        what = f"manifest of {name}"
        manifest_object = self.store.put_bytes(
            MANIFEST,
            digest,
            manifest.signed_envelope(self.signer),
            what=what,
            known=self.catalog.key_slot(digest, MANIFEST, self.keys.kek_id),
        )
        manifest_slot = self.store.read_slot(MANIFEST, digest, what=what)
        assert manifest_slot is not None  # put_bytes stored it first
        version, created = self.catalog.commit_version(
            NewVersion(
                name=name,
                digest=digest,
                manifest_object=manifest_object,
                manifest_slot=manifest_slot,
                message=message,
                actor=self.actor,
                signed_by=self.signer.key_id,
                total_size=total,
                tensor_count=manifest.tensor_count,
                parameter_count=manifest.parameter_count,
                dtypes=manifest.dtypes,
                files=[
                    FileRecord(
                        f.path,
                        f.size,
                        f.digest,
                        0 if f.safetensors is None else len(f.safetensors.tensors),
                    )
                    for f in manifest.files
                ],
                blobs=stored,
            )
        )
        return PushResult(version, created, uploaded, total - uploaded, len(files))

    # -- pull ------------------------------------------------------------------------------

    def pull(
        self,
        ref: str,
        destination: str | Path,
        *,
        force: bool = False,
        progress: Progress | None = None,
    ) -> PullResult:
        """Write every file of a version under `destination`, byte-identical and verified.

        Files are decrypted into a staging directory inside `destination` and moved to their
        final names only after every file has been authenticated and re-hashed; on any failure
        the staging directory is removed and `destination` is left as it was.
        """
        progress = progress or _NoProgress()
        unwraps_before = self.unwraps
        version = self.resolve(ref)
        manifest, _signer = self._load_manifest(version)
        dest = Path(destination).expanduser().absolute()
        if dest.exists() and not dest.is_dir():
            raise InvalidInputError(f"destination {dest} exists and is not a directory")
        targets = _targets(dest, manifest, force=force)
        created_dest = not dest.exists()
        try:
            self._pull_into(dest, targets, manifest, force=force, progress=progress)
        except BaseException as error:
            # A destination this pull created goes again, whatever the failure.
            if created_dest:
                shutil.rmtree(dest, ignore_errors=True)
            if isinstance(error, OSError):
                raise _storage_error(error, dest) from None
            raise
        self.catalog.audit(
            self.actor,
            "pull",
            version.name,
            {
                "version": version.number,
                "digest": version.digest,
                "files": len(manifest.files),
                "bytes": manifest.total_size,
                "key_unwraps": self.unwraps - unwraps_before,
            },
        )
        return PullResult(
            version, dest, tuple(entry.path for entry in manifest.files), manifest.total_size
        )

    def _pull_into(
        self,
        dest: Path,
        targets: dict[str, Path],
        manifest: Manifest,
        *,
        force: bool,
        progress: Progress,
    ) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        staging = dest / f".model-registry-pull-{uuid.uuid4().hex[:12]}.incomplete"
        staging.mkdir(mode=0o700)
        progress.begin("downloading", manifest.total_size)
        # Flushing one file to disk overlaps with decrypting the next one.
        flushing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fsync")
        published: list[Path] = []
        try:
            synced: list[Future[None]] = []
            for entry in manifest.files:
                temporary = staging / entry.path
                temporary.parent.mkdir(parents=True, exist_ok=True)
                slot = self._slot(BLOB, entry.digest, what=entry.path)
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    # Decryption threads write each authenticated chunk at its offset while this
                    # thread hashes in order; the file is renamed only after the digest matched.
                    for chunk in self.store.open(
                        BLOB,
                        entry.digest,
                        slot,
                        size=entry.size,
                        what=entry.path,
                        on_chunk=functools.partial(_write_at, fd),
                    ):
                        progress.advance(len(chunk))
                except BaseException:
                    os.close(fd)
                    raise
                synced.append(flushing.submit(_fsync_and_close, fd))
            for future in synced:
                future.result()
            # Every file verified: now publish. Directories first, so that a failure to create
            # one happens before any file has moved.
            for final in targets.values():
                final.parent.mkdir(parents=True, exist_ok=True)
            for entry in manifest.files:
                final = targets[entry.path]
                if force:
                    os.replace(staging / entry.path, final)
                    continue
                # Without --force a file that appeared meanwhile is never overwritten.
                try:
                    os.link(staging / entry.path, final)
                except FileExistsError:
                    raise DestinationExistsError(f"{final} appeared during the pull") from None
                published.append(final)
            _fsync_directory(dest)
        except BaseException:
            for final in published:
                final.unlink(missing_ok=True)
            raise
        finally:
            flushing.shutdown(wait=True)
            progress.end()
            shutil.rmtree(staging, ignore_errors=True)

    # -- verify ----------------------------------------------------------------------------

    def verify(
        self, ref: str, *, read_data: bool = False, progress: Progress | None = None
    ) -> VerifyReport:
        """Check a version: its manifest (signature, digest), the presence and size of every
        object and, with `read_data`, decrypt and re-hash everything. Problems are reported per
        file instead of stopping at the first."""
        progress = progress or _NoProgress()
        unwraps_before = self.unwraps
        version = self.resolve(ref)
        problems: list[FileProblem] = []
        try:
            manifest, _signer = self._load_manifest(version)
            expected = {(f.path, f.size, f.digest) for f in manifest.files}
            recorded = {(f.path, f.size, f.digest) for f in version.files}
            if expected != recorded:
                problems.append(FileProblem("manifest", "catalog and manifest list other files"))
            self.store.check_slot(MANIFEST, version.digest, what=f"manifest of {version.ref}")
        except RegistryError as error:
            problems.append(FileProblem("manifest", str(error)))
        checked = 0
        progress.begin("verifying", version.total_size if read_data else version.file_count)
        for entry in version.files:
            try:
                self.store.read_header(BLOB, entry.digest, size=entry.size, what=entry.path)
                # The store's own key slot (what a catalog rebuild relies on) must exist and
                # open the object, whatever the catalog's copy says.
                self.store.check_slot(BLOB, entry.digest, what=entry.path)
                if read_data:
                    slot = self._slot(BLOB, entry.digest, what=entry.path)
                    for chunk in self.store.open(
                        BLOB, entry.digest, slot, size=entry.size, what=entry.path
                    ):
                        progress.advance(len(chunk))
                    checked += entry.size
                else:
                    progress.advance(1)
            except RegistryError as error:
                problems.append(FileProblem(entry.path, str(error)))
        progress.end()
        report = VerifyReport(version, read_data, len(version.files), checked, tuple(problems))
        self.catalog.audit(
            self.actor,
            "verify",
            version.name,
            {
                "version": version.number,
                "read_data": read_data,
                "ok": report.ok,
                "problems": [p.path for p in problems],
                "key_unwraps": self.unwraps - unwraps_before,
            },
        )
        return report

    # -- signers ---------------------------------------------------------------------------

    def trust_signer(self, name: str, public_key: str) -> TrustedSigner:
        """Add a public key (e.g. a CI signer's) to the trusted signers in config.toml."""
        signer = TrustedSigner(_signer_name(name), parse_public_key(public_key))
        with self._editing_config() as config:
            entries = config.setdefault("trusted_signers", [])
            for entry in entries:
                if entry.get("name") == signer.name:
                    raise InvalidInputError(
                        f"a signer named {signer.name} is already trusted",
                        hint="choose another name, or `model-registry keys untrust` it first",
                    )
            entries.append({"name": signer.name, "public_key": public_key_text(signer.public_key)})
        return signer

    def untrust_signer(self, name: str) -> None:
        with self._editing_config() as config:
            entries = config.get("trusted_signers", [])
            kept = [entry for entry in entries if entry.get("name") != name]
            if len(kept) == len(entries):
                raise NotFoundError(f"no trusted signer named {name}")
            config["trusted_signers"] = kept

    def new_signing_key(self) -> str:
        """Replace this home's signing key with a new one (the old key stays trusted so its
        manifests still verify); returns the new public key to trust elsewhere."""
        old = self.settings.signing_key_file
        new_path = old.with_name(f"signing-{uuid.uuid4().hex[:8]}.key")
        signer = Signer.create(new_path)
        text = public_key_text(signer.public_key)
        with self._editing_config() as config:
            config["keys"]["signing_key_file"] = str(new_path)
            config.setdefault("trusted_signers", []).append(
                {"name": f"local-{signer.key_id[:8]}", "public_key": text}
            )
        self.signer = signer
        return text

    @contextmanager
    def _editing_config(self) -> Iterator[dict[str, Any]]:
        """Edit config.toml as data; it is rewritten atomically when the block ends cleanly."""
        home = self.settings.home
        config = raw_config(home)
        yield config
        keys = config["keys"]
        text = render_config(
            registry_id=str(config["registry_id"]),
            catalog_url=str(config["catalog"]["url"]),
            store=self.settings.store,
            chunk_size=int(config["store"].get("chunk_size", self.settings.chunk_size)),
            kek_file=keys.get("kek_file"),
            naming_key_file=str(keys["naming_key_file"]),
            signing_key_file=str(keys["signing_key_file"]),
            trusted_signers=[
                (str(s["name"]), str(s["public_key"])) for s in config.get("trusted_signers", [])
            ],
            workers=int(config.get("workers", 0)),
            kms=self.settings.kms,
        )
        _write_atomically(home / CONFIG_FILE, text)
        self.settings = load_settings(home)


def _key_provider(settings: Settings) -> KeyProvider:
    if settings.kms is None:
        assert settings.kek_file is not None
        return LocalKeyProvider.from_file(settings.kek_file)
    from registry.crypto.kms import KmsKeyProvider

    return KmsKeyProvider(
        settings.kms.key,
        region=settings.kms.region,
        endpoint_url=settings.kms.endpoint_url,
        profile=settings.kms.profile,
    )


def _check_text(what: str, text: str, *, limit: int) -> None:
    if len(text) > limit or "\x00" in text:
        raise InvalidInputError(f"{what} is longer than {limit} characters or holds a NUL")


def _signer_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidInputError(f"invalid signer name {name!r}: use letters, digits, - _ .")
    return name


def _targets(dest: Path, manifest: Manifest, *, force: bool) -> dict[str, Path]:
    """Final path of every file, checked before anything is written: no symbolic link and no
    file where a directory is needed along any path inside `dest` (a link could lead outside
    it, or make two files one), and nothing overwritten unless `force`."""
    targets: dict[str, Path] = {}
    existing: list[str] = []
    for entry in manifest.files:
        validate_relative_path(entry.path)
        current = dest
        parts = entry.path.split("/")
        for part in parts[:-1]:
            current = current / part
            kind = _kind(current)
            if kind is None:
                break
            if kind == "link":
                raise InvalidInputError(
                    f"{current} is a symbolic link: a pull never writes through links "
                    "(one could lead outside the destination)",
                    hint="pull into a destination without links",
                )
            if kind != "dir":
                raise DestinationExistsError(
                    f"{current} is a file where {entry.path} needs a directory"
                )
        final = dest / entry.path
        kind = _kind(final)
        if kind == "dir":
            raise DestinationExistsError(f"{final} is a directory")
        if kind == "link":
            raise InvalidInputError(
                f"{final} is a symbolic link: a pull never writes through links"
            )
        if kind is not None:
            existing.append(entry.path)
        targets[entry.path] = final
    if existing and not force:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise DestinationExistsError(f"{len(existing)} file(s) already exist in {dest}: {shown}")
    return targets


def _kind(path: Path) -> str | None:
    """ "dir", "link", "file" (anything else) or None when nothing is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "file"


def _storage_error(error: OSError, where: Path) -> StorageError:
    hint = "free some space and pull again" if error.errno == errno.ENOSPC else None
    path = error.filename or where
    return StorageError(f"cannot write {path}: {error.strerror or error}", hint=hint)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _write_at(fd: int, offset: int, data: memoryview) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
