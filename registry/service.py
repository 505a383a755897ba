"""The use cases: init, push, pull, resolve, list, show, verify, signer trust. `Registry` is the
Python API and the one thing the CLI (and later the REST API) calls.

It is the only writer of catalog and stores together, and it keeps the write order that makes a
crash harmless: key slots and data, then the manifest, then the catalog in one transaction.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from registry import events, journal, rebuild
from registry import manifest as manifests
from registry.blobstore import BLOB, MANIFEST, BlobStore, seal_bytes, store_owner
from registry.catalog.db import check_new_catalog, drop_catalog, open_catalog_engine
from registry.catalog.repository import Catalog
from registry.config import (
    CONFIG_FILE,
    ENV_CATALOG_URL,
    PRIMARY,
    KmsSettings,
    RegionSettings,
    Settings,
    Webhook,
    check_regions,
    default_actor,
    default_home,
    load_settings,
    parse_region,
    raw_config,
    render_config,
)
from registry.crypto import sealed
from registry.crypto.keys import (
    KeyProvider,
    KeyRing,
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
    CatalogBehindError,
    CatalogMissingError,
    ConfigurationError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidModelError,
    KeyAccessError,
    KmsUnreachableError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    RetentionError,
    StorageError,
    StoreTimeoutError,
    UnauthenticatedError,
)
from registry.manifest import Manifest, ManifestFile
from registry.materialize import Progress, plan_targets, storage_error, write_verified
from registry.records import (
    DEFAULT_POLICY,
    PROMOTE,
    ROLLBACK,
    ROLLBACK_TO,
    AliasMoveRecord,
    AliasRecord,
    AuditRecord,
    AuditVerification,
    FileRecord,
    HoldRecord,
    ModelRecord,
    NewBlob,
    NewVersion,
    PlacementRecord,
    StoredObject,
    TokenRecord,
    VersionRecord,
)
from registry.refs import (
    parse_reference,
    validate_alias,
    validate_name,
)
from registry.replication import (
    BAD,
    PENDING,
    VERIFIED,
    BlobReader,
    ReadReport,
    Region,
    ReplicaSet,
    Replicated,
    fresh_failure,
)
from registry.retention import (
    Decision,
    Policy,
    format_duration,
    parse_duration,
)
from registry.safetensors_header import parse_header
from registry.storage import deadline
from registry.storage.deadline import DeadlineSettings
from registry.storage.factory import StoreSpec, open_driver, prepare_bucket
from registry.storage.lock import ObjectLock, Retention

log = logging.getLogger("model_registry")
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
# A bare KMS key id (a UUID), as `keys rotate --to` may be given one.
_KMS_KEY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# How often a process compares the stores' journals with its marks (besides its first drain).
JOURNAL_CHECK_SECONDS = 600.0
# Left in a home by an init that stopped after it began claiming the stores: its registry id.
UNFINISHED_INIT = ".init-unfinished"
# A writer's lease on the objects it is about to write or reuse outlives any sane push; a
# crashed writer's lease lapses after it.
LEASE_TTL = timedelta(hours=24)
LEASE_RENEWAL = 3600.0  # seconds: a long replication renews its lease this often
DEFAULT_GRACE = "24h"
# A gc claim this old was left by a gc that crashed or hung: the next gc finishes it. A live gc
# renews its claim before every deletion, and one S3 call with its retries ends well within it.
STALE_CLAIM = timedelta(minutes=15)
# Lock requests (legal holds, lock checks) in flight per region: each is a few S3 round trips,
# so a version's objects are changed together rather than one after another; S3 clients keep
# at least 10 connections per region.
LOCK_REQUESTS = 8

TOKEN_PREFIX = "mrt_"  # noqa: S105 - a marker that names the kind of secret, not one
_TOKEN = re.compile(r"mrt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_MODEL_PATTERN = re.compile(r"[a-z0-9*?][a-z0-9._/*?-]{0,127}")

READER = "reader"
PUSHER = "pusher"
PROMOTER = "promoter"
ADMIN = "admin"
ROLES = (READER, PUSHER, PROMOTER, ADMIN)


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
    pending_regions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullResult:
    version: VersionRecord
    destination: Path
    files: tuple[str, ...]
    bytes: int
    bad_copies: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileProblem:
    path: str
    problem: str


@dataclass(frozen=True)
class ScrubProblem:
    """A stored copy that is missing, damaged or unreadable, and the versions it breaks."""

    region: str
    kind: str
    digest: str
    name: str
    problem: str
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Orphan:
    """An object in a store that no catalog row knows (a push that crashed before its commit,
    or something that is not the registry's)."""

    region: str
    name: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class ScrubReport:
    read_data: bool
    objects: int  # distinct objects checked
    copies: int  # copies checked (objects x regions)
    sampled: float | None  # percent, when a sample was checked
    problems: tuple[ScrubProblem, ...] = field(default=())
    orphans: tuple[Orphan, ...] = field(default=())
    unchecked: tuple[str, ...] = field(default=())  # regions that could not be reached

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unchecked

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "read_data": self.read_data,
            "objects": self.objects,
            "copies": self.copies,
            "sampled_percent": self.sampled,
            "problems": [
                {
                    "region": p.region,
                    "kind": p.kind,
                    "digest": p.digest,
                    "object": p.name,
                    "problem": p.problem,
                    "versions": list(p.versions),
                }
                for p in self.problems
            ],
            "orphans": [
                {
                    "region": o.region,
                    "object": o.name,
                    "size": o.size,
                    "modified": o.modified.isoformat(),
                }
                for o in self.orphans
            ],
            "unchecked": list(self.unchecked),
        }


@dataclass(frozen=True)
class DrillModel:
    """One model's part of a restore drill."""

    name: str
    ref: str  # the version restored ("" when it could not be resolved)
    via: str  # the alias it was resolved through, or "newest"
    files: int
    bytes: int  # plaintext bytes decrypted and verified
    seconds: float
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class DrillReport:
    region: str
    mode: str  # "all" (every byte) or "sample:N" (N random chunks a file)
    models: tuple[DrillModel, ...]
    seconds: float
    at: datetime

    @property
    def ok(self) -> bool:
        return all(model.ok for model in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "region": self.region,
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "at": self.at.isoformat(),
            "models": [
                {
                    "name": m.name,
                    "ref": m.ref,
                    "via": m.via,
                    "ok": m.ok,
                    "files": m.files,
                    "bytes": m.bytes,
                    "seconds": round(m.seconds, 3),
                    "problems": list(m.problems),
                }
                for m in self.models
            ],
        }


@dataclass(frozen=True)
class VerifyReport:
    version: VersionRecord
    read_data: bool
    checked_files: int
    checked_bytes: int
    problems: tuple[FileProblem, ...] = field(default=())
    unchecked: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class RegionStatus:
    """One region's health and what the catalog knows of its copies."""

    name: str
    priority: int
    store: str
    keys: str
    reachable: bool
    detail: str
    seconds: float
    verified: int
    pending: int
    bad: int
    missing: int
    # ok | unreachable (refused, failed) | hung (no answer within the deadline) |
    # foreign (another registry's store, or another naming key)
    state: str = "ok"
    counted: bool = True  # False: no catalog to count copies from (a stand-in)

    @property
    def complete(self) -> bool:
        if not self.counted:
            return self.reachable
        return self.reachable and not (self.pending or self.bad or self.missing)


@dataclass(frozen=True)
class ReplicateReport:
    objects: int
    copied: int
    repaired: int
    verified: int
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class HoldResult:
    hold: HoldRecord
    changed: bool
    objects: int
    failed_regions: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasChange:
    """An alias move: the move made (None when it already pointed there) and the alias now."""

    move: AliasMoveRecord | None
    alias: AliasRecord
    undelivered: tuple[str, ...] = ()
    unlocked: tuple[str, ...] = ()  # regions where the version's Object Lock was not extended


@dataclass(frozen=True)
class SweptObject:
    """An object gc deleted (or, in a dry run, would delete) and the bytes it held per region."""

    purpose: str
    digest: str
    sizes: tuple[tuple[str, int], ...]

    @property
    def bytes(self) -> int:
        return sum(size for _region, size in self.sizes)


@dataclass(frozen=True)
class KeptObject:
    """An unreferenced object gc left in place, and why."""

    purpose: str
    digest: str
    reason: str
    # (region, why) for each region whose store keeps it (an Object Lock, a legal hold, a lock
    # state that could not be read, a deletion the store refused); empty for the catalog's
    # reasons (a lease, a claim, the grace window), which hold in every region alike.
    regions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    grace: timedelta
    expired: tuple[VersionRecord, ...]
    locks_extended: int
    swept: tuple[SweptObject, ...]
    kept: tuple[KeptObject, ...]
    problems: tuple[str, ...] = ()

    @property
    def bytes_reclaimed(self) -> int:
        return sum(item.bytes for item in self.swept)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON (the CLI's --json and the REST API answer alike)."""
        return {
            "dry_run": self.dry_run,
            "grace": format_duration(self.grace),
            "expired": [v.ref for v in self.expired],
            "locks_extended": self.locks_extended,
            "swept": [
                {
                    "purpose": s.purpose,
                    "digest": s.digest,
                    "bytes": s.bytes,
                    "regions": dict(s.sizes),
                }
                for s in self.swept
            ],
            "bytes_reclaimed": self.bytes_reclaimed,
            "kept": [
                {
                    "purpose": k.purpose,
                    "digest": k.digest,
                    "reason": k.reason,
                    "regions": [{"region": r, "reason": why} for r, why in k.regions],
                }
                for k in self.kept
            ],
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class RegionKey:
    """The key-encryption key that wraps a region's data keys, as `keys show` lists it."""

    region: str
    provider: str  # "local" (the key file) or "aws-kms"
    kek_id: str
    key: str  # the key file's path, or the KMS key as configured (id, ARN or alias)
    kms_region: str | None = None
    endpoint: str | None = None
    # The keys a rotation is moving away from (they only unwrap), as configured, each with its
    # kek id (None: a previous key file that is gone).
    previous: tuple[tuple[str, str | None], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        local = self.provider == "local"
        return {
            "name": self.region,
            "provider": self.provider,
            "kek_id": self.kek_id,
            "file": self.key if local else None,
            "key": None if local else self.key,
            "region": self.kms_region,
            "endpoint": self.endpoint,
            "previous": [
                {"file" if local else "key": key, "kek_id": kek} for key, kek in self.previous
            ],
        }


@dataclass(frozen=True)
class RotationReport:
    """What a key rotation did: every object's slot moved to `to`, the old keys retired."""

    to: str
    retired: tuple[str, ...]
    regions: tuple[str, ...]
    objects: int
    slots_written: int
    catalog_slots_retired: int
    old_slot_objects_deleted: int
    old_slot_objects_locked: int
    created_key_file: str | None
    seconds: float
    # Old keys other regions still use: their slots stay, and the key must not be destroyed.
    still_used: tuple[str, ...] = ()
    # Objects whose only slots are under a key whose file is gone: nothing opens them.
    unrecoverable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "to": self.to,
            "retired": list(self.retired),
            "still_used": list(self.still_used),
            "unrecoverable": self.unrecoverable,
            "regions": list(self.regions),
            "objects": self.objects,
            "slots_written": self.slots_written,
            "catalog_slots_retired": self.catalog_slots_retired,
            "old_slot_objects_deleted": self.old_slot_objects_deleted,
            "old_slot_objects_locked": self.old_slot_objects_locked,
            "created_key_file": self.created_key_file,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class VersionDetails:
    version: VersionRecord
    manifest: Manifest
    signer: str


def _journaled(method: Callable[P, R]) -> Callable[P, R]:
    """A method that changes the catalog: first the catalog is checked against the stores'
    journal (once per handle, then every ten minutes), so that a catalog behind them (restored
    from a backup) is refused before it changes anything; when the method ends (also when it
    fails: part of a gc may have committed), the journal is copied out to the regions."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        registry = args[0]
        assert isinstance(registry, Registry)
        registry._guard_catalog()
        try:
            result = method(*args, **kwargs)
        except BaseException:
            with contextlib.suppress(CatalogBehindError):  # the method's own error comes first
                registry.drain_journal()
            raise
        try:
            registry.drain_journal()
        except CatalogBehindError as error:
            raise CatalogBehindError(
                f"{error.message}; the change is in this catalog but was not copied to the "
                "stores' journal",
                hint=error.hint,
            ) from None
        return result

    return wrapper


class Registry:
    """An open registry: catalog, store, keys and signer, as configured in a home directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        actor: str | None = None,
        role: str = ADMIN,
        create_catalog: bool = False,
        provisional: str | None = None,
    ) -> None:
        """Open the catalog and the regions of `settings`. The catalog must exist and be this
        registry's (`create_catalog`: init makes it). `provisional` names where a stand-in
        catalog came from (`open_for_recovery`): nothing is then journaled or changed."""
        self.settings = settings
        self.actor = actor or default_actor()
        if role not in ROLES:
            raise InvalidInputError(f"unknown role {role!r}", hint=f"one of {', '.join(ROLES)}")
        # The local user is admin; the REST API gives each token its role.
        self.role = role
        naming_key = read_key_file(settings.naming_key_file, label="naming key")
        local_keys = _local_keys(settings)
        providers = [_key_provider(region.kms, local_keys) for region in settings.regions]
        self.signer = Signer.from_file(settings.signing_key_file)
        self.unwraps = 0
        # How long a writer waits for a gc that is deleting an object it needs.
        self.sweep_wait = 120.0
        # Named points where tests pause a push or a gc to interleave them with another.
        self.checkpoints: dict[str, Callable[[], None]] = {}
        self.provisional = provisional
        self._stand_in: Path | None = None  # the temporary home of a stand-in catalog
        try:
            engine = open_catalog_engine(
                settings.catalog_url,
                registry_id=settings.registry_id,
                create=create_catalog,
                kek_ids={kek for provider in providers for kek in provider.kek_ids},
            )
        except CatalogMissingError as error:
            names = ", ".join(region.name for region in settings.regions)
            raise CatalogMissingError(
                f"{error.message}; this home ({settings.home}) belongs to registry "
                f"{settings.registry_id}, whose history the stores' journal holds: nothing was "
                "changed and no empty catalog was put in its place",
                hint=f"prove a region first (`model-registry drill --region REGION`, which works "
                f"from the stores alone), then `model-registry catalog rebuild --from REGION` "
                f"(regions: {names}); or restore the database and check catalog.url in "
                "config.toml",
            ) from None
        self.catalog = Catalog(engine)
        # A remote store is latency-bound: more requests in flight and larger ranges hide the
        # round trips (measured against boto3's own transfers, docs/benchmarks.md).
        remote = any(region.store.kind != "local" for region in settings.regions)
        workers = max(8, settings.effective_workers) if remote else settings.effective_workers
        self._chunks_per_read = 8 if remote else 4
        several = len(settings.regions) > 1
        regions: list[Region] = []
        try:
            for region, keys in zip(settings.regions, providers, strict=True):
                driver = open_driver(
                    region.store,
                    parallelism=workers,
                    fail_fast=several,
                    deadlines=settings.deadlines,
                )
                store = BlobStore(
                    driver,
                    keys,
                    registry_id=settings.registry_id,
                    naming_key=naming_key,
                    chunk_size=settings.chunk_size,
                    workers=workers,
                    chunks_per_read=self._chunks_per_read,
                    on_unwrap=self._count_unwrap,
                )
                regions.append(Region(region.name, store))
        except BaseException:
            for opened in regions:
                opened.store.driver.close()
            self.catalog.close()
            raise
        self.replicas = ReplicaSet(
            regions, workers=workers, deadlines=settings.deadlines, check_claim=self._check_claim
        )
        self._closed = False
        # When the stores' journal was last compared with the catalog in every region, and the
        # regions compared since; shared by the views `acting_as` makes (one per API request),
        # so a server checks every ten minutes, not on every request. A region is never written
        # to before it was compared (a catalog behind it must not add a segment of its own).
        self._journal_round = _JournalRound()
        # The preferred region's store and keys (the only ones of a single-store registry).
        self.store = self.replicas.primary
        self.keys = self.store.keys

    def _count_unwrap(self, _digest: str) -> None:
        self.unwraps += 1

    # -- lifecycle of the handle -----------------------------------------------------------

    @classmethod
    def open(
        cls, home: str | Path | None = None, *, actor: str | None = None, role: str = ADMIN
    ) -> Registry:
        """Open the registry in `home` (MODEL_REGISTRY_HOME, default ~/.model-registry).

        Nothing is asked of the stores here: commands that need only the catalog (ls, show,
        history, audit) never wait on a region. The first use of a region checks that it is
        this registry's store (in the background for reads, which start at once)."""
        settings = load_settings(Path(home) if home is not None else None)
        return cls(settings, actor=actor, role=role)

    @classmethod
    def open_for_recovery(
        cls,
        home: str | Path | None = None,
        *,
        region: str | None = None,
        replay: bool = True,
        actor: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> Registry:
        """Open the registry for the commands that prove the stores before a rebuild (drill,
        verify --all, regions status, catalog journal): its catalog when there is one, else a
        stand-in catalog in a temporary database, replayed from the journal of `region` (by
        default the region a rebuild would choose) when `replay`. A stand-in is read only:
        `provisional` says where it came from, nothing is journaled, and changes are refused.
        A catalog of another registry, or one behind the stores, is refused as usual."""
        settings = load_settings(Path(home) if home is not None else None)
        try:
            return cls(settings, actor=actor)
        except CatalogMissingError:
            pass
        workdir = Path(tempfile.mkdtemp(prefix="model-registry-stand-in-"))
        url = f"sqlite:///{workdir / 'catalog.db'}"
        local = _local_keys(settings)

        def provider(entry: RegionSettings) -> KeyProvider:
            return _key_provider(entry.kms, local)

        try:
            source = region
            if replay and source is None:
                source = rebuild.choose_source(settings, key_provider=provider)
                if source is None:
                    raise CatalogMissingError(
                        "the catalog is missing and no reachable region holds a journal to "
                        "work from",
                        hint="check the regions (`model-registry regions status`) and their "
                        "[store] settings in config.toml",
                    )
            if replay and source is not None:
                report = rebuild.rebuild(
                    settings,
                    source=source,
                    catalog_url=url,
                    key_provider=provider,
                    actor=actor or default_actor(),
                    stand_in=True,
                    on_progress=on_progress,
                )
                lacks = "".join(f"; {loss}" for loss in report.accepted_loss)
                note = f"region {source}'s journal ({report.entries} entries{lacks})"
            else:
                open_catalog_engine(url, registry_id=settings.registry_id, create=True).dispose()
                note = "the stores alone"
            opened = cls(
                dataclasses.replace(settings, catalog_url=url), actor=actor, provisional=note
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        opened._stand_in = workdir
        return opened

    def _check_claim(self, region: Region) -> None:
        """The region is this registry's store (its marker and naming key): run once per region
        in the background by the replica set. A region that cannot be reached is marked down."""
        try:
            region.store.check_claim()
        except KmsUnreachableError:
            if len(self.replicas.regions) == 1:
                raise
            # Its storage may well answer; its slots are tried after the other regions'.
        except StorageError as error:
            self.replicas.mark_down(region, error)
            raise

    def _regions_ready(self) -> None:
        """Wait (each within a request's deadline) until every region's claim is checked:
        before commands that work on every region. Regions that cannot be reached are marked
        down and tolerated while another one answers; a store that is not this registry's is
        an error."""
        unreachable: list[StorageError] = []
        for region in self.replicas.regions:
            try:
                self.replicas.claim(region)
            except StorageError as error:
                if len(self.replicas.regions) == 1:
                    raise
                if fresh_failure(error):
                    self.replicas.mark_down(region, error)
                unreachable.append(error)
        if len(unreachable) == len(self.replicas.regions):
            raise StorageError(
                f"no region is reachable: {'; '.join(map(str, unreachable))}",
                hint="check the network and the [store] regions in config.toml",
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # What this handle wrote without a change to drain it (the audit of pulls, drills,
            # scrubs) reaches the stores now, not at the next change.
            if self.catalog.journaled:
                self.drain_journal()
        except RegistryError as error:
            # Closing must close; the entries wait in the outbox.
            journal.log.warning("the journal was not copied out at close: %s", error)
        except Exception:  # noqa: BLE001 - closing must close, whatever went wrong
            journal.log.warning("the journal was not copied out at close", exc_info=True)
        finally:
            self.catalog.close()
            self.replicas.close()
            if self._stand_in is not None:
                shutil.rmtree(self._stand_in, ignore_errors=True)

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
        store: str | Path | Sequence[str | Path] | None = None,
        key_dir: str | Path | None = None,
        kms: KmsSettings | None = None,
        write_quorum: int | None = None,
    ) -> InitResult:
        """Create a registry in `home`, or check and upgrade the one there (idempotent).

        `store` is a directory (default HOME/store) or an `s3://BUCKET[/PREFIX]?...` URL, or a
        list of them: one region each, in read preference order (see `config.parse_region`). An
        S3 bucket is created with versioning and Object Lock, or refused when it has no Object
        Lock. Keys are created first and never replaced; config.toml is written last, so an init
        that was interrupted simply runs again.
        """
        home_path = (Path(home) if home is not None else default_home()).expanduser().absolute()
        if (home_path / CONFIG_FILE).exists():
            if catalog_url or store or key_dir or kms or write_quorum is not None:
                raise ConfigurationError(
                    f"{home_path} is already initialised; options apply only to a new registry",
                    hint=f"edit {home_path / CONFIG_FILE} to change settings",
                )
            with cls.open(home_path) as registry:
                registry._regions_ready()
                for region in registry.replicas.regions:
                    if not registry.replicas.is_down(region):
                        region.store.claim()
                return registry._init_result(created=False)
        stores = [store] if isinstance(store, (str, Path)) else list(store or [])
        regions = tuple(
            parse_region(str(text), index=index, count=len(stores))
            for index, text in enumerate(stores)
        ) or (RegionSettings(PRIMARY, StoreSpec(path=home_path / "store")),)
        if kms is not None:
            if len(regions) > 1:
                raise InvalidInputError(
                    "--kms-key names one KMS key, but there are several regions",
                    hint="give each region its own key: kms=KEY in its --store URL",
                )
            regions = (dataclasses.replace(regions[0], kms=kms),)
        check_regions(regions, write_quorum=write_quorum)
        keys = Path(key_dir).expanduser().absolute() if key_dir else home_path / "keys"
        for settings in regions:
            path = settings.store.path
            if path is not None and (
                keys == path or keys.is_relative_to(path) or path.is_relative_to(keys)
            ):
                raise InvalidInputError(
                    f"the key directory {keys} and the store {path} must be apart",
                    hint="keys must never live beside the data they protect (design invariant 5)",
                )
        url = catalog_url or f"sqlite:///{home_path / 'catalog.db'}"
        # The catalog is made where the environment says, as every command will open it.
        effective_url = os.environ.get(ENV_CATALOG_URL) or url
        # An init that stopped after claiming stores left its registry id: it is taken up
        # again, so the stores it claimed are its own.
        unfinished = home_path / UNFINISHED_INIT
        registry_id = (
            unfinished.read_text().strip() if unfinished.is_file() else f"mr-{uuid.uuid4().hex}"
        )
        # Refusals come before anything is made: a catalog or a store that belongs to another
        # registry is left exactly as it was, and no home is left behind.
        check_new_catalog(effective_url)
        deadlines = DeadlineSettings()
        for settings in regions:
            driver = open_driver(settings.store, parallelism=1, deadlines=deadlines)
            try:
                owner = store_owner(driver)
            finally:
                driver.close()
            if owner is not None and owner != registry_id:
                raise ConfigurationError(
                    f"the store {settings.store.describe()} belongs to registry {owner}",
                    hint="each registry needs its own store; a new registry never writes into "
                    "another's",
                )
        made = _Made(home_path, registry_id)
        try:
            made.directory(home_path)
            for settings in regions:
                prepare_bucket(settings.store, deadlines=deadlines)
            made.directory(keys)
            kek_file, naming_file, signing_file = (
                keys / "kek.key",
                keys / "naming.key",
                keys / "signing.key",
            )
            needs_kek = any(region.kms is None for region in regions)
            if needs_kek and not kek_file.exists():
                create_key_file(kek_file)
                made.file(kek_file)
            if not naming_file.exists():
                create_key_file(naming_file, label="naming key")
                made.file(naming_file)
            if signing_file.exists():
                signer = Signer.from_file(signing_file)
            else:
                signer = Signer.create(signing_file)
                made.file(signing_file)
            text = render_config(
                registry_id=registry_id,
                catalog_url=url,
                regions=regions,
                kek_file=str(kek_file) if needs_kek else None,
                naming_key_file=str(naming_file),
                signing_key_file=str(signing_file),
                trusted_signers=[("local", public_key_text(signer.public_key))],
                write_quorum=write_quorum,
            )
            # The configuration becomes config.toml only once the catalog was made and the
            # stores claimed with it: a failed init leaves no half-configured home, and runs
            # again with corrected options.
            pending = home_path / f".{CONFIG_FILE}.{uuid.uuid4().hex[:8]}.pending"
            _write_atomically(pending, text)
            made.file(pending)
            registry = cls(load_settings(home_path, config_file=pending), create_catalog=True)
            made.catalog(effective_url)
            with registry:
                made.claiming()
                for region in registry.replicas.regions:
                    region.store.claim()
                registry.catalog.audit(registry.actor, "init", "registry", {"home": str(home_path)})
                registry.drain_journal()
                result = registry._init_result(created=True)
            os.replace(pending, home_path / CONFIG_FILE)
            unfinished.unlink(missing_ok=True)
        except BaseException:
            made.undo()
            raise
        return result

    def _init_result(self, *, created: bool) -> InitResult:
        return InitResult(
            home=self.settings.home,
            created=created,
            registry_id=self.settings.registry_id,
            catalog_url=self.settings.catalog_url,
            store="; ".join(
                region.store.describe()
                if len(self.settings.regions) == 1
                else f"{region.name}: {region.store.describe()}"
                for region in self.settings.regions
            ),
            keys=self.settings.describe_keys(),
            public_key=public_key_text(self.signer.public_key),
        )

    # -- queries ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionRecord:
        return self.catalog.resolve(parse_reference(ref))

    def versions(self, name: str, *, expired: bool = False) -> list[VersionRecord]:
        """The live versions of `name`, oldest first (with `expired`, tombstones too)."""
        return self.catalog.versions(validate_name(name), expired=expired)

    def models(self) -> list[ModelRecord]:
        return self.catalog.models()

    def audit_events(
        self, *, subject: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        if since is not None and since.tzinfo is None:
            raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
        if not 1 <= limit <= 100_000:
            raise InvalidInputError("limit must be 1..100000")
        return self.catalog.audit_events(subject=subject, since=since, limit=limit)

    def verify_audit(self) -> AuditVerification:
        """Walk the tamper-evident audit chain (see `Catalog.verify_audit`)."""
        return self.catalog.verify_audit(links_mac=self.store.audit_links_mac)

    def show(self, ref: str) -> VersionDetails:
        version = self.resolve(ref)
        manifest, signer = self._load_manifest(version, cached=True)
        return VersionDetails(version, manifest, signer.name)

    def _load_manifest(
        self, version: VersionRecord, report: ReadReport | None = None, *, cached: bool = False
    ) -> tuple[Manifest, TrustedSigner]:
        """The version's manifest read back from the stores (authenticated, then cached in the
        catalog), or with `cached` the catalog's copy when it has one (`show`, which must not
        wait on a store); either way its digest is checked against the version and its
        signature against the trusted keys."""
        what = f"manifest of {version.ref}"
        # The catalog's cached copy is checked exactly like the stored one (digest, signature by
        # a trusted key), so a catalog writer cannot slip in another manifest.
        data = self.catalog.cached_manifest(version.digest) if cached else None
        fetched = data is None
        if data is None:
            data = self.replicas.read_bytes(
                MANIFEST,
                version.digest,
                known=self.catalog.key_slots(version.digest, MANIFEST),
                what=what,
                report=report or ReadReport(),
            )
        manifest, signer = manifests.parse_envelope(
            data,
            expected_digest=version.digest,
            trusted=self.settings.trusted_signers,
            what=what,
        )
        if manifest.name != version.name:
            raise IntegrityError(f"{what}: names model {manifest.name}", path=what)
        if fetched and self.provisional is None:
            with contextlib.suppress(RegistryError):
                self.catalog.cache_manifest(version.digest, data)
        return manifest, signer

    def _placed(self, kind: str, digest: str) -> tuple[frozenset[str], str | None, frozenset[str]]:
        """Regions whose copy of an object was verified, its ciphertext checksum, and the
        regions whose copy is recorded pending or bad."""
        rows = [p for p in self.catalog.placements(digest=digest) if p.purpose == kind]
        verified = [p for p in rows if p.state == VERIFIED]
        checksum = next((p.checksum for p in verified if p.checksum), None)
        suspect = frozenset(p.region for p in rows if p.state != VERIFIED)
        return frozenset(p.region for p in verified), checksum, suspect

    def _replicate(
        self,
        kind: str,
        digest: str,
        *,
        what: str,
        seal: Callable[[bytes], Iterable[bytes | bytearray | memoryview]] | None = None,
        size: int = 0,
        on_progress: Callable[[int], None] | None = None,
        repair: bool = False,
        only: frozenset[str] | None = None,
        distrust: frozenset[str] = frozenset(),
        read_back: bool = True,
        retired: frozenset[str] = frozenset(),
    ) -> Replicated:
        verified, checksum, suspect = self._placed(kind, digest)
        # A repair reads every copy back, verified ones too: they may have rotted since.
        trusted = frozenset() if repair else verified - distrust
        return self.replicas.replicate(
            kind,
            digest,
            what=what,
            known=self.catalog.key_slots(digest, kind),
            seal=seal,
            checksum=checksum,
            trusted=trusted,
            repair=repair,
            only=only,
            size=size,
            on_progress=on_progress,
            read_back=read_back,
            suspect=suspect,
            retired=retired,
        )

    # -- push ------------------------------------------------------------------------------

    @_journaled
    def push(
        self,
        name: str,
        path: str | Path,
        *,
        message: str = "",
        write_quorum: int | None = None,
        progress: Progress | None = None,
        digests: Mapping[str, str] | None = None,
    ) -> PushResult:
        """Push a model directory (or one .safetensors file) as a new version of `name`.

        `digests` (path -> BLAKE3 digest) are digests the caller computed of these exact bytes
        (the REST API's checked upload): the hashing pass is skipped, and sealing, which
        re-hashes what it encrypts, still refuses a file that does not match.

        Everything is validated before anything is stored. Content already stored is not
        uploaded again; identical content returns the existing version (created=False). Every
        object goes to every region; the push succeeds once `write_quorum` regions (default: the
        configured quorum, else all) hold a verified copy of each, and the copies that did not
        complete are recorded as pending, for `replicate`.
        """
        progress = progress or _NoProgress()
        validate_name(name)
        count = len(self.replicas.regions)
        quorum = write_quorum if write_quorum is not None else self.settings.write_quorum or count
        if not 1 <= quorum <= count:
            raise InvalidInputError(
                f"write quorum {quorum} is not between 1 and {count} (the regions)"
            )
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

        known = dict(digests or {})
        if known and set(known) != {entry.path for entry in files}:
            raise InvalidInputError("the digests given do not name exactly the files pushed")
        progress.begin("hashing", total)
        hashed: list[str] = []
        for entry in files:
            if entry.path in known:
                hashed.append(known[entry.path])
                progress.advance(entry.size)
                continue
            try:
                hashed.append(
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
                for entry, digest in zip(files, hashed, strict=True)
            ],
        )
        digest = manifest.digest
        unique: dict[str, manifests.LocalFile] = {}
        for entry, file_digest in zip(files, hashed, strict=True):
            unique.setdefault(file_digest, entry)
        # From here until the commit, gc leaves every object of this push alone.
        lease = self._lease([(d, BLOB) for d in unique] + [(digest, MANIFEST)], what=f"push {name}")
        try:
            return self._push_leased(
                name,
                files,
                unique,
                manifest,
                lease=lease,
                message=message,
                quorum=quorum,
                progress=progress,
            )
        finally:
            # Dropped by the commit itself; after a failure, here.
            self.catalog.drop_lease(lease)

    def _lease(self, objects: Sequence[tuple[str, str]], *, what: str) -> str:
        """Lease objects against gc, waiting while a gc is deleting one of them (the writer then
        stores it anew)."""
        lease = str(uuid.uuid4())
        deadline = time.monotonic() + self.sweep_wait
        while True:
            swept = self.catalog.take_lease(lease, objects, ttl=LEASE_TTL)
            if not swept:
                return lease
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"{what}: {len(swept)} of its objects are being deleted by a garbage "
                    "collection that has not finished",
                    hint="a gc is deleting them, or one stopped midway: `model-registry gc --yes` "
                    "finishes a stopped one's work 15 minutes after it stopped; then run the "
                    "same command again",
                )
            time.sleep(0.1)

    def _checkpoint(self, name: str) -> None:
        hook = self.checkpoints.get(name)
        if hook is not None:
            hook()

    def _push_leased(
        self,
        name: str,
        files: Sequence[manifests.LocalFile],
        unique: dict[str, manifests.LocalFile],
        manifest: Manifest,
        *,
        lease: str,
        message: str,
        quorum: int,
        progress: Progress,
    ) -> PushResult:
        self._regions_ready()
        available = [r for r in self.replicas.regions if not self.replicas.is_down(r)]
        if len(available) < quorum:
            down = [
                f"{r.name} ({condition.describe()})"
                for r in self.replicas.regions
                if (condition := self.replicas.health.unavailable(r.name)) is not None
            ]
            raise StorageError(
                f"{len(available)} of the {quorum} regions this push needs can be reached "
                f"({'; '.join(down)}); nothing was stored, nothing was committed",
                hint="check `model-registry regions status`, then push again, or lower the "
                "quorum with --write-quorum",
            )
        # Also what the push may seal anew: objects only retired keys' slots open (leftovers of
        # a process refused after a key rotation, or content only a lost key opened).
        retired = self._refuse_retired_keys()
        count = len(self.replicas.regions)
        total = sum(entry.size for entry in files)
        digest = manifest.digest
        # Even when this content is already a version, every object is checked and whatever
        # is missing from the store is uploaded again (a re-run repairs).
        progress.begin("uploading", total)
        progress.advance(total - sum(entry.size for entry in unique.values()))
        # Two files at a time: one file's final fsync overlaps with sealing the next.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="push") as pool:
            puts = [
                pool.submit(
                    self._replicate,
                    BLOB,
                    file_digest,
                    what=entry.path,
                    seal=self._file_sealer(
                        entry.source,
                        file_digest,
                        entry.size,
                        what=entry.path,
                        on_progress=progress.advance,
                    ),
                    size=entry.size,
                    on_progress=progress.advance,
                    # With one region a copy is not a replica: the write's own checks (fsync,
                    # S3's checksum on receipt) stand in, and verify --read-data reads back.
                    read_back=count > 1,
                    retired=retired,
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
        _require_quorum(blobs, quorum, [e.path for e in unique.values()])
        sizes = {file_digest: entry.size for file_digest, entry in unique.items()}
        uploaded = sum(sizes[blob.digest] for blob in blobs if blob.uploaded)
        stored = []
        for blob in blobs:
            assert blob.header is not None  # a verified copy exists (the quorum is at least 1)
            stored.append(
                NewBlob(
                    blob.digest,
                    sizes[blob.digest],
                    blob.object_name,
                    blob.header.sealed_size,
                    blob.header.chunk_size,
                    blob.slots,
                )
            )

        what = f"manifest of {name}"
        envelope = manifest.signed_envelope(self.signer)
        chunk_size = self.settings.chunk_size
        stored_manifest = self._replicate(
            MANIFEST,
            digest,
            what=what,
            seal=lambda data_key: seal_bytes(data_key, digest, envelope, chunk_size=chunk_size),
            read_back=count > 1,
            retired=retired,
        )
        _require_quorum([stored_manifest], quorum, [what])
        push_id = uuid.uuid4().hex
        recorded = self._record_push(
            name, digest, stored_manifest, push_id=push_id, message=message, quorum=quorum
        )
        self._checkpoint("push-stored")
        version, created = self._commit_recorded(
            recorded,
            digest,
            push_id,
            NewVersion(
                name=name,
                digest=digest,
                manifest_object=stored_manifest.object_name,
                manifest_slots=stored_manifest.slots,
                message=message,
                actor=self.actor,
                signed_by=self.signer.key_id,
                total_size=total,
                tensor_count=manifest.tensor_count,
                parameter_count=manifest.parameter_count,
                dtypes=manifest.dtypes,
                files=[
                    FileRecord(f.path, f.size, f.digest, f.tensor_count) for f in manifest.files
                ],
                blobs=stored,
                placements=_placements([*blobs, stored_manifest]),
                lease=lease,
            ),
        )
        with contextlib.suppress(RegistryError):
            self.catalog.cache_manifest(digest, envelope)
        held = self.catalog.held_objects()
        unheld: list[PlacementRecord] = []
        for result in [*blobs, stored_manifest]:
            written = {o.region for o in result.outcomes if o.uploaded}
            if written and (result.digest, result.kind) in held:
                # A held version's object written anew (to a region that lacked it) is held too;
                # where that fails the copy stays pending, and `replicate` holds it.
                for failure in self._legal_hold_copies(
                    {(result.digest, result.kind)}, on=True, only=written
                ):
                    region_name = failure.split(":", 1)[0]
                    unheld.append(
                        PlacementRecord(
                            result.digest,
                            result.kind,
                            region_name,
                            result.object_name,
                            PENDING,
                            None,
                            f"legal hold not applied: {failure}",
                        )
                    )
        self.catalog.record_placements(unheld)
        pending = sorted(
            {o.region for r in [*blobs, stored_manifest] for o in r.outcomes if o.state != VERIFIED}
            | {p.region for p in unheld}
        )
        return PushResult(version, created, uploaded, total - uploaded, len(files), tuple(pending))

    def _refuse_retired_keys(self) -> frozenset[str]:
        """A process still on the config.toml a key rotation replaced stores nothing: what it
        would store could only be opened by a key about to be destroyed. Returns the retired
        keys."""
        retired = frozenset(self.catalog.retired_keys())
        own = sorted({region.store.keys.kek_id for region in self.replicas.regions} & retired)
        if own:
            raise ConflictError(
                f"this process wraps data keys with {', '.join(own)}, which a key rotation "
                "retired; nothing was stored",
                hint="this process still reads the old config.toml: restart it, then run the "
                "same command again",
            )
        return retired

    def _commit_recorded(
        self, recorded: Sequence[Region], digest: str, push_id: str, new: NewVersion
    ) -> tuple[VersionRecord, bool]:
        """Commit a recorded push; when it makes no new version (the content is one already)
        or fails, its version record is voided, so a rebuild never takes it for a version."""
        try:
            version, created = self.catalog.commit_version(new)
        except ConflictError:
            # Refused inside the transaction: certainly nothing committed. Any other failure
            # (a connection lost at COMMIT) may have committed: the record stays.
            self._void_records(recorded, digest, push_id)
            raise
        if not created:
            self._void_records(recorded, digest, push_id)
        return version, created

    def _void_records(self, recorded: Sequence[Region], digest: str, push_id: str) -> None:
        for region in recorded:
            try:
                region.store.void_version_record(digest, push_id=push_id)
            except RegistryError as error:
                # A record left unvoided is still not restored by a rebuild once the journal
                # has moved past it (docs/format.md, version records).
                journal.log.warning("version record not voided in %s: %s", region.name, error)

    def _record_push(
        self,
        name: str,
        digest: str,
        manifest: Replicated,
        *,
        push_id: str,
        message: str,
        quorum: int,
    ) -> list[Region]:
        """Before the commit, a version record beside the manifest in every region that holds
        it: what a catalog rebuild restores a version from when its commit never reached the
        journal (the recovery point of versions is zero)."""
        record = json.dumps(
            {
                "model": name,
                "digest": digest,
                "manifest_object": manifest.object_name,
                "message": message,
                "pushed_by": self.actor,
                "signed_by": self.signer.key_id,
                "pushed_at": datetime.now(UTC).isoformat(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        written: list[Region] = []
        failures = []
        holding = {o.region for o in manifest.outcomes if o.state == VERIFIED}
        for region in self.replicas.regions:
            if region.name not in holding:
                continue
            try:
                region.store.put_version_record(digest, record, push_id=push_id)
                written.append(region)
            except StorageError as error:
                failures.append(f"{region.name}: {error}")
        if len(written) < quorum:
            self._void_records(written, digest, push_id)
            raise StorageError(
                f"push {name}: its version record reached {len(written)} of the {quorum} "
                f"regions it must ({'; '.join(failures)}); nothing was committed",
                hint="run the same push again once the regions answer",
            )
        return written

    def _file_sealer(
        self,
        path: Path,
        digest: str,
        size: int,
        *,
        what: str,
        on_progress: Callable[[int], None],
    ) -> Callable[[bytes], Iterator[memoryview | bytes]]:
        """Seals the file under a data key, re-hashing it on the way (see `sealed.seal_file`)."""

        def seal(data_key: bytes) -> Iterator[memoryview | bytes]:
            try:
                source = path.open("rb", buffering=0)
            except OSError as error:
                raise InvalidModelError(f"cannot read {what}: {error.strerror}") from None
            with source:
                yield from sealed.seal_file(
                    source,
                    data_key,
                    digest,
                    plaintext_size=size,
                    chunk_size=self.settings.chunk_size,
                    workers=self.store.workers,
                    on_progress=on_progress,
                    what=what,
                )

        return seal

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
        self._guard_reads()
        report = ReadReport()
        try:
            return self._pull(
                version,
                report,
                destination,
                force=force,
                progress=progress,
                unwraps_before=unwraps_before,
            )
        finally:
            report.settle()
            self._record_bad_copies(report)

    def _pull(
        self,
        version: VersionRecord,
        report: ReadReport,
        destination: str | Path,
        *,
        force: bool,
        progress: Progress,
        unwraps_before: int,
    ) -> PullResult:
        manifest, _signer = self._load_manifest(version, report)
        dest = Path(destination).expanduser().absolute()
        if dest.exists() and not dest.is_dir():
            raise InvalidInputError(f"destination {dest} exists and is not a directory")
        targets = plan_targets(dest, manifest, force=force)
        created_dest = not dest.exists()
        try:
            self._pull_into(dest, targets, manifest, report, force=force, progress=progress)
        except BaseException as error:
            # A destination this pull created goes again, whatever the failure.
            if created_dest:
                shutil.rmtree(dest, ignore_errors=True)
            if isinstance(error, OSError):
                raise storage_error(error, dest) from None
            raise
        report.settle()
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
                "bad_copies": _bad_copies(report),
            },
        )
        return PullResult(
            version,
            dest,
            tuple(entry.path for entry in manifest.files),
            manifest.total_size,
            tuple(_bad_copies(report)),
        )

    def _record_bad_copies(self, report: ReadReport) -> None:
        """Copies a read could not use become `bad` placements, for `replicate --repair`."""
        if not report.bad:
            return
        with contextlib.suppress(RegistryError):
            self.catalog.record_placements(
                [
                    PlacementRecord(
                        digest,
                        kind,
                        region,
                        self.store.object_name(kind, digest),
                        # A network failure says nothing of the copy: check it again later.
                        PENDING if detail.startswith(("unreachable", "hung")) else BAD,
                        None,
                        detail,
                    )
                    for (kind, digest, region), detail in report.bad.items()
                ]
            )

    def _pull_into(
        self,
        dest: Path,
        targets: dict[str, Path],
        manifest: Manifest,
        report: ReadReport,
        *,
        force: bool,
        progress: Progress,
    ) -> None:
        def open_file(
            entry: ManifestFile, on_chunk: Callable[[int, memoryview], None]
        ) -> Iterator[memoryview]:
            return self.replicas.open(
                BLOB,
                entry.digest,
                known=self.catalog.key_slots(entry.digest, BLOB),
                size=entry.size,
                what=entry.path,
                report=report,
                chunks_per_read=self._chunks_per_read,
                on_chunk=on_chunk,
            )

        write_verified(dest, targets, manifest, open_file, force=force, progress=progress)

    # -- verify ----------------------------------------------------------------------------

    def verify(
        self, ref: str, *, read_data: bool = False, progress: Progress | None = None
    ) -> VerifyReport:
        """Check a version: its manifest (signature, digest), and in every region the presence
        and size of every object and its key slot; with `read_data`, decrypt and re-hash
        everything (and, with several regions, read every copy back against its recorded
        checksum). Problems are reported per file (and region) instead of stopping at the first;
        damaged copies are recorded as bad placements for `replicate --repair`."""
        progress = progress or _NoProgress()
        unwraps_before = self.unwraps
        version = self.resolve(ref)
        self._regions_ready()
        self._guard_reads()
        regions = self.replicas.regions
        several = len(regions) > 1
        problems: list[FileProblem] = []
        # Regions that could not be checked (down, hung): a warning, not damage.
        unchecked: dict[str, str] = {}
        if several:
            for region in regions:
                condition = self.replicas.health.unavailable(region.name)
                if condition is not None:
                    unchecked[region.name] = condition.describe()
        placements: list[PlacementRecord] = []
        report = ReadReport()
        try:
            manifest, _signer = self._load_manifest(version, report)
            expected = {(f.path, f.size, f.digest) for f in manifest.files}
            recorded = {(f.path, f.size, f.digest) for f in version.files}
            if expected != recorded:
                problems.append(FileProblem("manifest", "catalog and manifest list other files"))
        except RegistryError as error:
            problems.append(FileProblem("manifest", str(error)))
        objects: list[tuple[str, str, int | None, str, str]] = [
            (MANIFEST, version.digest, None, f"manifest of {version.ref}", "manifest")
        ]
        objects += [(BLOB, f.digest, f.size, f.path, f.path) for f in version.files]
        checked = 0
        progress.begin("verifying", version.total_size if read_data else version.file_count)
        for kind, digest, size, what, path in objects:
            checksum = self._placed(kind, digest)[1] if several else None
            for region in regions:
                if several and region.name in unchecked:
                    continue
                try:
                    if size is not None:
                        region.store.read_header(kind, digest, size=size, what=what)
                    # The store's own key slot (what a catalog rebuild relies on) must exist
                    # and open the object, whatever the catalog's copy says.
                    region.store.check_slot(kind, digest, what=what)
                    if read_data and several:
                        outcome = self.replicas.check(
                            region,
                            kind,
                            digest,
                            known=self.catalog.key_slots(digest, kind),
                            checksum=checksum,
                            what=what,
                        )
                        placements.append(
                            PlacementRecord(
                                digest,
                                kind,
                                region.name,
                                region.store.object_name(kind, digest),
                                outcome.state,
                                outcome.checksum,
                                outcome.detail,
                            )
                        )
                        if outcome.state == PENDING:
                            unchecked.setdefault(region.name, outcome.detail)
                        elif outcome.state != VERIFIED:
                            problems.append(FileProblem(path, f"{region.name}: {outcome.detail}"))
                except (StorageError, KmsUnreachableError) as error:
                    if not several:
                        problems.append(FileProblem(path, str(error)))
                    else:
                        # Another region serves the version; this one is checked when back.
                        unchecked.setdefault(region.name, str(error))
                        if fresh_failure(error):
                            self.replicas.mark_down(region, error)
                except RegistryError as error:
                    problems.append(
                        FileProblem(path, f"{region.name}: {error}" if several else str(error))
                    )
                    if isinstance(error, IntegrityError):
                        placements.append(
                            PlacementRecord(
                                digest,
                                kind,
                                region.name,
                                region.store.object_name(kind, digest),
                                BAD,
                                None,
                                str(error),
                            )
                        )
            if kind != BLOB or size is None:
                continue
            try:
                if read_data:
                    for chunk in self.replicas.open(
                        BLOB,
                        digest,
                        known=self.catalog.key_slots(digest, BLOB),
                        size=size,
                        what=what,
                        report=report,
                        chunks_per_read=self._chunks_per_read,
                    ):
                        progress.advance(len(chunk))
                    checked += size
                else:
                    progress.advance(1)
            except RegistryError as error:
                problems.append(FileProblem(path, str(error)))
        progress.end()
        if several:
            # Read from another region instead: the file is fine, its copy there is not.
            paths = {digest: path for _kind, digest, _size, _what, path in objects}
            for (_kind, digest, region_name), detail in sorted(report.bad.items()):
                if detail.startswith(("unreachable", "hung")):
                    unchecked.setdefault(region_name, detail)
                else:
                    problems.append(
                        FileProblem(paths.get(digest, digest), f"{region_name}: {detail}")
                    )
        self._record_bad_copies(report)
        if placements:
            self.catalog.record_placements(placements)
        result = VerifyReport(
            version,
            read_data,
            len(version.files),
            checked,
            tuple(problems),
            tuple(f"{name}: {detail}" for name, detail in sorted(unchecked.items())),
        )
        self.catalog.audit(
            self.actor,
            "verify",
            version.name,
            {
                "version": version.number,
                "read_data": read_data,
                "ok": result.ok,
                "problems": [p.path for p in problems],
                "unchecked_regions": sorted(unchecked),
                "key_unwraps": self.unwraps - unwraps_before,
            },
        )
        return result

    # -- aliases ---------------------------------------------------------------------------

    @_journaled
    def promote(self, ref: str, alias: str, *, reason: str = "") -> AliasChange:
        """Point ALIAS of REF's model at REF (atomic; recorded in the alias history). A
        protected alias moves only for the promoter or admin role."""
        self._require(PUSHER, "promote")
        validate_alias(alias)
        _check_text("reason", reason, limit=4096)
        version = self.resolve(ref)
        move, now = self.catalog.move_alias(
            version.name,
            alias,
            kind=PROMOTE,
            target=version.number,
            reason=reason,
            actor=self.actor,
            may_move_protected=self.role in (PROMOTER, ADMIN),
            notify=[hook.url for hook in self.settings.webhooks],
            event={"registry": self.settings.registry_id},
        )
        failed = self.deliver_events() if move and move.event_id else []
        return AliasChange(move, now, tuple(failed), self._lock_aliased(now))

    def _lock_aliased(self, alias: AliasRecord) -> tuple[str, ...]:
        """An aliased version is kept open-endedly: its objects' Object Lock is extended now,
        not only at the next gc (a rollback to an old version whose lock lapsed). The move
        stands whatever happens here; problems are returned as warnings."""
        problems: list[str] = []
        keep = Decision(alias.number, True, (f"alias {alias.alias}",), None, True)
        try:
            self._extend_locks(
                [(alias.name, Policy(), [keep])],
                now=datetime.now(UTC),
                dry_run=False,
                problems=problems,
            )
        except RegistryError as error:
            problems.append(f"Object Lock not extended: {error}")
        return tuple(problems)

    @_journaled
    def rollback(
        self, name: str, alias: str, *, to: str | None = None, reason: str = ""
    ) -> AliasChange:
        """Move ALIAS back to the version it pointed at before the current one (repeated
        rollbacks keep going back), or to `to`, a version of the same model."""
        self._require(PUSHER, "roll back")
        validate_name(name)
        validate_alias(alias)
        _check_text("reason", reason, limit=4096)
        target = None
        if to is not None:
            version = self.resolve(to)
            if version.name != name:
                raise InvalidInputError(f"{to} is not a version of {name}")
            target = version.number
        move, now = self.catalog.move_alias(
            name,
            alias,
            kind=ROLLBACK if target is None else ROLLBACK_TO,
            target=target,
            reason=reason,
            actor=self.actor,
            may_move_protected=self.role in (PROMOTER, ADMIN),
            notify=[hook.url for hook in self.settings.webhooks],
            event={"registry": self.settings.registry_id},
        )
        failed = self.deliver_events() if move and move.event_id else []
        return AliasChange(move, now, tuple(failed), self._lock_aliased(now))

    @_journaled
    def protect_alias(self, name: str, alias: str, *, protected: bool = True) -> AliasRecord:
        self._require(PROMOTER, "protect or unprotect an alias")
        return self.catalog.protect_alias(
            validate_name(name), validate_alias(alias), protected=protected, actor=self.actor
        )

    def aliases(self, name: str) -> list[AliasRecord]:
        return self.catalog.aliases(validate_name(name))

    def history(
        self, name: str, alias: str | None = None, *, at: datetime | None = None
    ) -> list[AliasMoveRecord]:
        """The moves of the model's aliases (or one), oldest first; with `at`, for each alias
        the move that was in force at that instant (what `production` was at time T)."""
        validate_name(name)
        if alias is not None:
            validate_alias(alias)
        moves = self.catalog.alias_history(name, alias)
        if at is None:
            return moves
        if at.tzinfo is None:
            raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
        current: dict[str, AliasMoveRecord] = {}
        for move in moves:
            if move.moved_at <= at:
                current[move.alias] = move
        return [current[key] for key in sorted(current)]

    def _require(self, role: str, action: str) -> None:
        if ROLES.index(self.role) < ROLES.index(role):
            raise PermissionDeniedError(
                f"the {self.role} role may not {action}", hint=f"it needs the {role} role"
            )

    # -- events ----------------------------------------------------------------------------

    def add_webhook(self, url: str) -> Webhook:
        """Send alias-move events to `url`, signed with a new secret kept in the key directory
        (give the receiver that file's key)."""
        self._require(ADMIN, "add a webhook")
        if any(hook.url == url for hook in self.settings.webhooks):
            raise InvalidInputError(f"webhook {url} is already configured")
        secret_file = self.settings.naming_key_file.parent / f"webhook-{uuid.uuid4().hex[:8]}.key"
        hook = Webhook(url, secret_file)  # validates the URL before anything is written
        create_key_file(secret_file, label="webhook secret")
        with self._editing_config() as config:
            config.setdefault("webhooks", []).append(
                {"url": hook.url, "secret_file": str(secret_file)}
            )
        return hook

    def deliver_events(self, *, attempts: int = 3, backoff: float = 0.5) -> list[str]:
        """Deliver every pending event, oldest first, each up to `attempts` times with
        exponential backoff; every attempt is recorded. A URL whose event fails gets none of its
        later events this time (a receiver never sees a newer move before an older one).
        Returns "url: error" for each delivery still pending."""
        hooks = {hook.url: hook for hook in self.settings.webhooks}
        failed: list[str] = []
        blocked: set[str] = set()
        pending = self.catalog.deliveries(pending_only=True, limit=1_000_000, oldest_first=True)
        for delivery in pending:
            hook = hooks.get(delivery.url)
            if delivery.url in blocked:
                failed.append(f"{delivery.url}: waiting for an earlier event")
                continue
            error: str | None = None
            for attempt in range(attempts):
                try:
                    if hook is None:
                        raise ConfigurationError(f"webhook {delivery.url} is no longer configured")
                    events.post(
                        delivery.url,
                        delivery.payload,
                        secret=events.read_secret(hook.secret_file),
                        event_id=delivery.event_id,
                        delivery=delivery.id,
                    )
                    error = None
                except RegistryError as problem:
                    error = str(problem)
                self.catalog.record_delivery(delivery.id, error=error)
                if error is None or hook is None:
                    break
                if attempt < attempts - 1:
                    time.sleep(backoff * 2**attempt)
            if error is not None:
                blocked.add(delivery.url)
                failed.append(f"{delivery.url}: {error}")
        return failed

    # -- retention -------------------------------------------------------------------------

    @_journaled
    def set_retention(
        self,
        name: str | None,
        *,
        keep_last: int | None = None,
        keep_within: str | None = None,
        keep_demoted_for: str | None = None,
        clear: bool = False,
    ) -> Policy:
        """Set the retention policy of model `name` (None: the registry-wide default). A
        `keep_within` shorter than the store's Object Lock minimum is refused: the registry
        could not delete those versions anyway, and saying otherwise would mislead."""
        self._require(ADMIN, "change retention")
        if keep_last is None and keep_within is None and keep_demoted_for is None and not clear:
            raise InvalidInputError(
                "no retention rule given",
                hint="give --keep-last, --keep-within or --keep-demoted-for, or --clear to "
                "remove the policy (keep everything)",
            )
        policy = Policy(
            keep_last,
            None if keep_within is None else parse_duration(keep_within),
            None if keep_demoted_for is None else parse_duration(keep_demoted_for),
        )
        floor = self._lock_floor()
        if floor is not None and policy.keep_within is not None and policy.keep_within < floor:
            raise RetentionError(
                f"keep-within {keep_within} is below the store's Object Lock minimum "
                f"{format_duration(floor)}",
                hint=f"use --keep-within {format_duration(floor)} or more",
            )
        self.catalog.set_retention(
            DEFAULT_POLICY if name is None else validate_name(name), policy, actor=self.actor
        )
        return policy

    def retention(self, name: str) -> tuple[Policy, str]:
        """The policy in force for model `name` and its source (the model, "*", or "none")."""
        self.catalog.versions(validate_name(name))  # NotFoundError for an unknown model
        return self.catalog.retention(name)

    def plan_retention(
        self, name: str | None = None, *, now: datetime | None = None
    ) -> list[tuple[str, Policy, list[Decision]]]:
        """Dry run: for each model (or `name`), which versions its policy keeps and why."""
        moment = now or datetime.now(UTC)
        names = [validate_name(name)] if name is not None else [m.name for m in self.models()]
        found = []
        for model in names:
            policy, decisions = self.catalog.retention_plan(
                model, now=moment, locked_for=self._lock_floor()
            )
            found.append((model, policy, decisions))
        return found

    def _lock_floor(self) -> timedelta | None:
        """The longest Object Lock minimum among the regions that lock (None: none do)."""
        days = [r.store.retention_days for r in self.settings.regions if r.store.kind == "s3"]
        return timedelta(days=max(days)) if days else None

    # -- expiry, deletion and garbage collection --------------------------------------------

    @_journaled
    def delete(self, ref: str, *, reason: str) -> VersionRecord:
        """Delete one version outside the policy (admin): it becomes a tombstone, still in the
        audit trail, and gc sweeps its objects once nothing else needs them. Refused while an
        alias, a legal hold, an Object Lock or a retention rule keeps it."""
        self._require(ADMIN, "delete a version")
        if not reason.strip():
            raise InvalidInputError("deleting a version needs a reason", hint="pass --reason TEXT")
        _check_text("reason", reason, limit=4096)
        version = self.resolve(ref)
        self._regions_ready()
        for region, lock in self._lockers():
            name = region.store.object_name(MANIFEST, version.digest)
            try:
                retention = lock.retention(name)
            except NotFoundError:
                continue
            if retention is not None and retention.active():
                raise RetentionError(
                    f"{version.ref} is under Object Lock ({retention.mode}) until "
                    f"{retention.until:%Y-%m-%d %H:%M} UTC in region {region.name}",
                    hint="it can be deleted once the lock has expired",
                )
        return self.catalog.delete_version(
            parse_reference(version.ref),
            reason=reason,
            actor=self.actor,
            locked_for=self._lock_floor(),
        )

    @_journaled
    def gc(
        self,
        *,
        dry_run: bool = False,
        grace: str | timedelta = DEFAULT_GRACE,
        now: datetime | None = None,
    ) -> GcReport:
        """Expire what the retention policies no longer keep, extend the Object Lock of what
        they keep, then sweep the objects no live version references.

        An object is swept only when no lease of a push in flight holds it, its lock has
        expired and it has been unneeded for longer than `grace`; each is claimed in the
        catalog (checked again there) before it is deleted from every region, so a push that
        reuses it either leased it first (and gc leaves it) or waits for the sweep and stores
        it anew. `dry_run` changes nothing and reports what would happen.
        """
        self._require(ADMIN, "collect garbage")
        self._regions_ready()
        window = parse_duration(grace) if isinstance(grace, str) else grace
        if window < timedelta(0):
            raise InvalidInputError("the grace window cannot be negative")
        moment = now or datetime.now(UTC)
        run = str(uuid.uuid4())
        problems: list[str] = []
        swept: list[SweptObject] = []
        kept: list[KeptObject] = []
        if not dry_run:
            for digest, purpose in self.catalog.take_over_sweeps(
                run=run, claimed_before=datetime.now(UTC) - STALE_CLAIM
            ):
                done = self._sweep(digest, purpose, run=run, problems=problems, kept=kept)
                if done is not None:
                    swept.append(done)
            stale: set[tuple[str, str]] = set()
        else:
            # What a real run would finish first: claims of a gc that stopped.
            stale = set(self.catalog.stale_sweeps(claimed_before=datetime.now(UTC) - STALE_CLAIM))
            finishing = [(purpose, digest) for digest, purpose in sorted(stale)]
            swept += [
                SweptObject(purpose, digest, sizes)
                for (purpose, digest), sizes in zip(
                    finishing, self._stored_sizes(finishing), strict=True
                )
            ]

        plans = self.plan_retention(now=moment)
        doomed = {(model, d.number) for model, _policy, ds in plans for d in ds if not d.keep}
        locks_extended = self._extend_locks(plans, now=moment, dry_run=dry_run, problems=problems)
        expired: list[VersionRecord] = []
        if dry_run:
            for model, number in sorted(doomed):
                expired.append(self.catalog.resolve(parse_reference(f"{model}@{number}")))
        else:
            for model in sorted({model for model, _number in doomed}):
                expired += self.catalog.expire_versions(
                    model,
                    now=moment,
                    locked_for=self._lock_floor(),
                    actor=self.actor,
                    only={number for name, number in doomed if name == model},
                )
            self.catalog.drop_expired_leases(datetime.now(UTC))

        idle_before = moment - window
        candidates = [
            candidate
            for candidate in self.catalog.unreferenced(
                now=moment, assume_expired=frozenset(doomed) if dry_run else frozenset()
            )
            if (candidate.digest, candidate.purpose) not in stale
        ]
        # The stores' locks of everything the catalog lets go are read in one parallel round
        # (one by one, each object costs a few round trips per region). A lock placed after
        # this read still holds: the store refuses the deletion and the sweep keeps the copy.
        locked = self._lock_keeps(
            [
                (candidate.purpose, candidate.digest)
                for candidate in candidates
                if not (candidate.sweeping or candidate.leased)
                and candidate.idle_since <= idle_before
            ]
        )
        would_sweep: list[tuple[str, str]] = []
        for candidate in candidates:
            reason = None
            if candidate.sweeping:
                reason = "claimed by another gc"
            elif candidate.leased:
                reason = "in use by a push in flight"
            elif candidate.idle_since > idle_before:
                reason = f"unneeded for less than the grace window ({format_duration(window)})"
            elif keepers := locked.get((candidate.purpose, candidate.digest)):
                kept.append(_kept_by_stores(candidate.purpose, candidate.digest, keepers))
                continue
            if reason is None and not dry_run:
                reason = self.catalog.claim_sweep(
                    candidate.digest, candidate.purpose, run=run, stored_before=idle_before
                )
            if reason is not None:
                kept.append(KeptObject(candidate.purpose, candidate.digest, reason))
                continue
            if dry_run:
                would_sweep.append((candidate.purpose, candidate.digest))
                continue
            self._checkpoint("gc-claimed")
            done = self._sweep(
                candidate.digest, candidate.purpose, run=run, problems=problems, kept=kept
            )
            if done is not None:
                swept.append(done)
        swept += [
            SweptObject(purpose, digest, sizes)
            for (purpose, digest), sizes in zip(
                would_sweep, self._stored_sizes(would_sweep), strict=True
            )
        ]
        report = GcReport(
            dry_run,
            window,
            tuple(expired),
            locks_extended,
            tuple(swept),
            tuple(kept),
            tuple(problems),
        )
        if not dry_run:
            self.catalog.audit(
                self.actor,
                "gc",
                "registry",
                {
                    "expired": [v.ref for v in expired],
                    "swept": len(swept),
                    "bytes": report.bytes_reclaimed,
                    "locks_extended": locks_extended,
                    "kept": len(kept),
                    "problems": len(problems),
                    "grace": format_duration(window),
                },
            )
        return report

    def _lockers(self) -> list[tuple[Region, ObjectLock]]:
        """The regions whose store locks objects, with their lock interface."""
        return [
            (region, region.store.driver)
            for region in self.replicas.regions
            if isinstance(region.store.driver, ObjectLock)
        ]

    def _lock_keeps(
        self, objects: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
        """For each (purpose, digest) that a store keeps, every region whose Object Lock or
        legal hold keeps the object or its key slot, with that region's reason (a lock state
        that cannot be read keeps it too). Regions are asked in parallel, and within each
        region up to LOCK_REQUESTS objects at a time."""
        if not objects:
            return {}

        def state(lock: ObjectLock, name: str) -> str | None:
            try:
                retention = lock.retention(name)
                held = lock.legal_hold(name)
            except NotFoundError:
                return None
            except RegistryError as error:
                return f"lock state unknown ({error})"
            if held:
                return "under an S3 legal hold"
            if retention is not None and retention.active():
                return f"Object Lock ({retention.mode}) until {retention.until:%Y-%m-%d %H:%M} UTC"
            return None

        def in_region(locker: tuple[Region, ObjectLock]) -> list[str | None]:
            region, lock = locker
            store = region.store
            condition = self.replicas.health.unavailable(region.name)
            if condition is not None:
                # Not asked again: its locks cannot be read, so they keep everything.
                return [f"lock state unknown ({condition.describe()})" for _ in objects]

            def keeps(item: tuple[str, str]) -> str | None:
                purpose, digest = item
                names = (
                    store.object_name(purpose, digest),
                    store.slot_name(purpose, digest, store.keys.kek_id),
                )
                return next((why for why in (state(lock, name) for name in names) if why), None)

            return _bounded_map(keeps, objects, limit=LOCK_REQUESTS, name="lock-check")

        lockers = self._lockers()
        answers = _bounded_map(in_region, lockers, limit=len(lockers) or 1, name="lock-region")
        found: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        for index, item in enumerate(objects):
            keepers = tuple(
                (region.name, why)
                for (region, _lock), reasons in zip(lockers, answers, strict=True)
                if (why := reasons[index]) is not None
            )
            if keepers:
                found[item] = keepers
        return found

    def _stored_sizes(
        self, objects: Sequence[tuple[str, str]]
    ) -> list[tuple[tuple[str, int], ...]]:
        """For each (purpose, digest), its size in each region that holds it (regions that
        cannot be asked are left out), regions and objects asked in parallel."""
        if not objects:
            return []

        def in_region(region: Region) -> list[int | None]:
            if self.replicas.health.unavailable(region.name) is not None:
                return [None for _ in objects]  # down or hung: not asked object by object

            def size(item: tuple[str, str]) -> int | None:
                try:
                    info = region.store.driver.stat(region.store.object_name(*item))
                except RegistryError:
                    return None
                return None if info is None else info.size

            return _bounded_map(size, objects, limit=LOCK_REQUESTS, name="gc-stat")

        regions = self.replicas.regions
        answers = _bounded_map(in_region, regions, limit=len(regions), name="gc-region")
        return [
            tuple(
                (region.name, size)
                for region, sizes in zip(regions, answers, strict=True)
                if (size := sizes[index]) is not None
            )
            for index in range(len(objects))
        ]

    def _sweep(
        self, digest: str, purpose: str, *, run: str, problems: list[str], kept: list[KeptObject]
    ) -> SweptObject | None:
        """Delete a claimed object from every region, data first, then its key slots, and
        record it. Before each deletion the claim is renewed: a gc whose claim was taken over
        (it stalled past STALE_CLAIM) stops before deleting anything more. A region whose store
        refuses (a lock, an outage) keeps its copy and its placement; the claim is dropped and a
        later gc tries again."""
        owners = set(self.catalog.key_slot_owners(digest, purpose))
        cleared: list[str] = []
        sizes: list[tuple[str, int]] = []
        for region in self.replicas.regions:
            store = region.store
            data = store.object_name(purpose, digest)
            slots = [
                store.slot_name(purpose, digest, kek)
                for kek in sorted(owners | {store.keys.kek_id})
            ]
            if not self.catalog.renew_claim(digest, purpose, run=run):
                problems.append(f"{purpose} {digest}: another gc took the claim over; left to it")
                return None
            try:
                info = store.driver.stat(data)
                store.driver.delete(data)
            except NotFoundError:
                info = None
            except RetentionError as error:
                kept.append(
                    KeptObject(
                        purpose, digest, f"{region.name}: {error}", ((region.name, str(error)),)
                    )
                )
                continue
            except RegistryError as error:
                problems.append(f"{region.name}: {purpose} {digest}: not deleted: {error}")
                continue
            if info is not None:
                sizes.append((region.name, info.size))
            # The data is gone from this region: a slot left behind opens nothing; it is
            # reported, and the scrub of orphans finds it.
            cleared.append(region.name)
            for slot in slots:
                try:
                    store.driver.delete(slot)
                except NotFoundError:
                    continue
                except RegistryError as error:
                    problems.append(f"{region.name}: key slot of {purpose} {digest}: {error}")
        complete = len(cleared) == len(self.replicas.regions)
        if not self.catalog.finish_sweep(
            digest, purpose, run=run, cleared=cleared, complete=complete
        ):
            return None
        return SweptObject(purpose, digest, tuple(sizes)) if complete else None

    def _extend_locks(
        self,
        plans: Sequence[tuple[str, Policy, list[Decision]]],
        *,
        now: datetime,
        dry_run: bool,
        problems: list[str],
    ) -> int:
        """Extend the Object Lock of every object of every kept version to as long as a rule
        keeps it: a dated rule (keep-within, keep-demoted-for) to its date; an open-ended one
        (keep-last, an alias, a hold) to the store's minimum from now, renewed once half of that
        has passed. A model without any rule gets nothing beyond its write-time lock. Never
        shortened or weakened. Returns how many were extended."""
        lockers = []
        for region, lock in self._lockers():
            floor = lock.minimum_lock()
            if floor is None:
                continue
            trouble = self.replicas.health.suspect(region.name)
            if trouble is not None:
                # Not waited for: the next gc extends what it misses now.
                problems.append(f"{region.name}: Object Lock not extended now ({trouble})")
                continue
            lockers.append((region, lock, floor))
        if not lockers:
            return 0
        wanted: dict[tuple[str, str], tuple[datetime | None, bool]] = {}
        for model, _policy, decisions in plans:
            versions = {v.number: v for v in self.catalog.versions(model)}
            for decision in decisions:
                if not decision.keep or decision.number not in versions:
                    continue
                version = versions[decision.number]
                objects = {(version.digest, MANIFEST)} | {(f.digest, BLOB) for f in version.files}
                for key in objects:
                    until, open_ended = wanted.get(key, (None, False))
                    if decision.until is not None:
                        until = decision.until if until is None else max(until, decision.until)
                    wanted[key] = (until, open_ended or decision.open_ended)
        targets = sorted(wanted.items())

        def in_region(locker: tuple[Region, ObjectLock, Retention]) -> list[tuple[int, str | None]]:
            region, lock, floor = locker
            minimum = floor.until - datetime.now(UTC)

            def extend(
                item: tuple[tuple[str, str], tuple[datetime | None, bool]],
            ) -> tuple[int, str | None]:
                (digest, purpose), (until, open_ended) = item
                target, renew_below = until, until
                if open_ended:
                    rolling = now + minimum
                    target = rolling if target is None else max(target, rolling)
                    half = now + minimum / 2
                    renew_below = half if renew_below is None else max(renew_below, half)
                if target is None or renew_below is None or target <= now:
                    return 0, None
                count = 0
                try:
                    for name in (
                        region.store.object_name(purpose, digest),
                        region.store.slot_name(purpose, digest, region.store.keys.kek_id),
                    ):
                        try:
                            current = lock.retention(name)
                        except NotFoundError:
                            continue
                        if (
                            current is not None
                            and current.active(now)
                            and current.until >= renew_below
                        ):
                            continue
                        count += 1
                        if not dry_run:
                            lock.hold_at_least(name, Retention(floor.mode, target))
                except RegistryError as error:
                    # Reported; the other objects still get their locks.
                    return count, (
                        f"{region.name}: {purpose} {digest}: Object Lock not extended: {error}"
                    )
                return count, None

            return _bounded_map(extend, targets, limit=LOCK_REQUESTS, name="lock-extend")

        # Regions in parallel, and objects in each: one at a time, a daily gc of a large
        # registry would spend its time waiting on round trips.
        outcomes = _bounded_map(in_region, lockers, limit=len(lockers), name="lock-region")
        problems.extend(problem for done in outcomes for _count, problem in done if problem)
        return sum(count for done in outcomes for count, _problem in done)

    # -- API tokens --------------------------------------------------------------------------

    @_journaled
    def create_token(
        self,
        name: str,
        *,
        role: str,
        models: Sequence[str],
        expires: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new API token (admin): returns its record and its text, which is shown once and
        never stored (the catalog keeps a SHA-256 of its secret). `models` are name patterns
        (`org/*`, `team/llama`, `*`) the token may act on."""
        self._require(ADMIN, "create API tokens")
        _check_text("token name", name, limit=128)
        if not name.strip():
            raise InvalidInputError("a token needs a name", hint="e.g. ci-llama-push")
        if role not in ROLES:
            raise InvalidInputError(f"unknown role {role!r}", hint=f"one of {', '.join(ROLES)}")
        patterns = tuple(dict.fromkeys(models))
        if not patterns:
            raise InvalidInputError(
                "a token needs at least one model pattern", hint="--models 'org/*' (or '*')"
            )
        for pattern in patterns:
            if not _MODEL_PATTERN.fullmatch(pattern):
                raise InvalidInputError(
                    f"invalid model pattern {pattern!r}",
                    hint="model names with * and ? wildcards, e.g. org/* or team/llama-?",
                )
        now = datetime.now(UTC)
        expires_at = None if expires is None else now + parse_duration(expires)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = TokenRecord(
            token_id,
            name,
            role,
            patterns,
            now,
            self.actor,
            expires_at,
            None,
            None,
            _secret_hash(secret),
        )
        self.catalog.add_token(record, actor=self.actor)
        return record, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def tokens(self) -> list[TokenRecord]:
        self._require(ADMIN, "list API tokens")
        return self.catalog.tokens()

    @_journaled
    def revoke_token(self, token_id: str) -> TokenRecord:
        self._require(ADMIN, "revoke API tokens")
        return self.catalog.revoke_token(token_id, actor=self.actor)

    def authenticate(self, text: str) -> TokenRecord:
        """The live token `text` is, or UnauthenticatedError: one message for a malformed,
        unknown, wrong, expired or revoked token, so a guess learns nothing."""
        refused = UnauthenticatedError(
            "invalid, expired or revoked API token",
            hint="create one with `model-registry token create` (admin)",
        )
        match = _TOKEN.fullmatch(text.strip())
        if match is None:
            raise refused
        record = self.catalog.token(match.group(1))
        if record is None or not hmac.compare_digest(
            record.secret_hash, _secret_hash(match.group(2))
        ):
            raise refused
        now = datetime.now(UTC)
        if record.revoked_at is not None or (
            record.expires_at is not None and record.expires_at <= now
        ):
            raise refused
        return record

    def sealed_size(self, kind: str, digest: str) -> int:
        """The size of an object's sealed form (what ranged ciphertext reads address)."""
        if kind == BLOB:
            blob = self.catalog.blob(digest)
            if blob is None or blob.swept_at is not None:
                raise NotFoundError(f"blob {digest} is not stored")
            return blob.sealed_size
        head = self.replicas.read_ciphertext(
            kind, digest, 0, sealed.HEADER_SIZE, report=ReadReport()
        )
        return sealed.SealedHeader.unpack(head, what=f"{kind} {digest}").sealed_size

    def blob_key(self, version: VersionRecord, digest: str) -> bytes:
        """The data key of one of a version's files, unwrapped (counted)."""
        if all(f.digest != digest for f in version.files):
            raise NotFoundError(f"{version.ref} has no file with digest {digest}")
        self._guard_reads()
        return self._data_key(BLOB, digest, what=f"{version.ref}: {digest}")

    def _data_key(self, kind: str, digest: str, *, what: str) -> bytes:
        """An object's data key from the first region whose slot opens it (counted)."""
        known = self.catalog.key_slots(digest, kind)
        key, _slots = self.replicas.unwrap_any(kind, digest, known=known, what=what)
        return key

    def blob_reader(self, digest: str, report: ReadReport, *, what: str) -> BlobReader:
        """Sealed bytes of a stored file: each range from the first region that serves it, a
        damaged range read again from the next (what the loader reads through)."""
        return self.replicas.source(BLOB, digest, report, what=what)

    def record_load(
        self, version: VersionRecord, details: dict[str, Any], report: ReadReport
    ) -> None:
        """Audit a load by the loader (like a pull: who read which version), and record the
        copies it found damaged or missing (for `regions status` and `replicate --repair`),
        with a warning per region it had to read around."""
        report.settle()
        self._record_bad_copies(report)
        for line in _bad_copies(report):
            log.warning("load of %s read around %s", version.ref, line)
        self.catalog.audit(
            self.actor,
            "load",
            version.name,
            {"version": version.number, **details, "bad_copies": _bad_copies(report)},
        )

    def data_keys(self, version: VersionRecord) -> dict[tuple[str, str], bytes]:
        """The data keys of a version's manifest and files, unwrapped (the key broker's
        answer); each unwrap is counted."""
        self._guard_reads()
        keys: dict[tuple[str, str], bytes] = {}
        objects = [(MANIFEST, version.digest)] + [(BLOB, f.digest) for f in version.files]
        for kind, digest in objects:
            if (kind, digest) not in keys:
                keys[(kind, digest)] = self._data_key(
                    kind, digest, what=f"{version.ref}: {kind} {digest}"
                )
        return keys

    def acting_as(self, token: TokenRecord) -> Registry:
        """This registry seen by a token: same catalog and stores, the token's role, and the
        token named as the actor of everything it does (audit trail)."""
        view = copy.copy(self)
        view.actor = f"token:{token.name}:{token.id}"
        view.role = token.role
        view.unwraps = 0
        return view

    # -- the journal -----------------------------------------------------------------------

    def _journal_stores(self) -> list[tuple[str, BlobStore]]:
        return [(region.name, region.store) for region in self.replicas.regions]

    def drain_journal(self) -> list[journal.RegionJournal]:
        """Copy the catalog's new journal entries to every region (after each change and on
        the server's timer); a region that cannot take them is reported, and caught up later.
        `CatalogBehindError` when a store holds journal entries this catalog lacks."""
        return self._drain(check=self._journal_check_due())

    def _journal_check_due(self) -> bool:
        return self._journal_round.due({region.name for region in self.replicas.regions})

    def _drain(self, *, check: bool, write: bool = True) -> list[journal.RegionJournal]:
        if self.provisional is not None:
            return []
        try:
            self.catalog.journaled = 0
            # A region that is down, hung or missing its budgets is not waited for: its mark
            # stays and a later drain catches it up (a pull's closing drain must not wait out
            # a frozen region's deadline).
            skip: dict[str, str] = {}
            suspects = {
                region.name: trouble
                for region in self.replicas.regions
                if (trouble := self.replicas.health.suspect(region.name)) is not None
            }
            for name, trouble in self.replicas.settle_claims().items():
                if name in suspects or trouble is not None:
                    skip[name] = suspects.get(name) or str(trouble)
            if check:
                self._journal_round.begin_if_stale()
            # A region not compared yet in this round is compared before anything is written
            # to it: a catalog behind the stores must never add a segment of its own.
            compare = {r.name for r in self.replicas.regions} - self._journal_round.regions
            states = journal.drain(
                self.catalog, self._journal_stores(), check=compare, skip=skip, write=write
            )
            self._journal_round.regions.update(
                state.region for state in states if not state.error and state.region not in skip
            )
            return states
        except CatalogBehindError:
            raise
        except RegistryError as error:
            # The change itself is committed; its entry waits in the outbox for the next drain.
            journal.log.warning("the journal was not copied out: %s", error)
            return journal.status(self.catalog, [name for name, _ in self._journal_stores()])

    def _guard_reads(self, *, write: bool = True) -> None:
        """Before a command that reads the stores on the catalog's word (pull, load, verify,
        scrub, drill): a catalog behind the stores' journal would serve versions and aliases
        older than the stores' (a restored backup's production), so it is refused, as a
        change is (checked once per handle and every ten minutes)."""
        if self.provisional is None:
            self._compare_journal(
                write=write,
                refused="it would serve what the registry held before (nothing was read)",
            )

    def _guard_catalog(self) -> None:
        """Before a change: refuse it when the stores' journal shows this catalog is behind
        them (checked once per handle and every ten minutes; pending entries drain too)."""
        if self.provisional is not None:
            raise ConflictError(
                f"the catalog is missing; this command works from {self.provisional} and "
                "changes nothing",
                hint="rebuild the catalog first: `model-registry catalog rebuild --from REGION`",
            )
        self._compare_journal(write=True, refused="nothing was changed")

    def _compare_journal(self, *, write: bool, refused: str) -> None:
        """Compare the stores' journal with the catalog when it is due; `refused` says what the
        refusal of a catalog behind them spared."""
        if not self._journal_check_due():
            return
        try:
            self._drain(check=True, write=write)
        except CatalogBehindError as error:
            raise CatalogBehindError(f"{error.message}; {refused}", hint=error.hint) from None

    def new_journal_epoch(self) -> str:
        """Make this catalog's journal the newest in the stores (a new epoch, later than any
        they hold, written whole by the drain that follows): for a catalog restored from a
        backup (older than a rebuild, or behind the stores), once it is certain that this is
        the catalog to keep. What the stores' journal holds beyond it is no longer followed."""
        self._require(ADMIN, "start a journal epoch")
        self._regions_ready()
        # Two operators at once start one epoch, not two.
        replacing = self.catalog.journal_epoch().epoch
        newest = None
        for _name, store in self._journal_stores():
            found, _segments = journal.epochs(store)
            if found and (newest is None or found[-1].started_at > newest):
                newest = found[-1].started_at
        self._journal_round.reset()
        try:
            return self.catalog.start_journal_epoch(
                reason="started by an operator", actor=self.actor, after=newest, replacing=replacing
            )
        finally:
            self.drain_journal()

    def stored_journals(self) -> list[journal.StoredJournal]:
        """Each region's journal as its store holds it (no catalog needed: what a rebuild from
        it would restore), read in parallel, each within its requests' deadlines."""

        def read(region: Region) -> journal.StoredJournal:
            try:
                self.replicas.claim(region)
                return journal.summary(region.name, region.store)
            except RegistryError as error:
                return journal.StoredJournal(region.name, None, None, 0, None, 0, str(error))

        futures = [deadline.submit(functools.partial(read, r)) for r in self.replicas.regions]
        found = [future.result() for future in futures]
        # A region whose journal stops short of another's, or follows an older epoch, is what
        # a rebuild from it would lose: said beside it.
        newest = max(
            (s for s in found if s.started_at is not None),
            key=lambda s: (s.started_at, s.end),
            default=None,
        )
        if newest is None:
            return found
        return [
            dataclasses.replace(s, behind=_behind(s, newest)) if not s.error else s for s in found
        ]

    def journal_status(self, *, check: bool = True) -> list[journal.RegionJournal]:
        """How far each region's journal goes by the catalog's marks; with `check`,
        `CatalogBehindError` when a store shows the catalog is behind it (checked as before a
        change; without it, the catalog alone is read: metrics)."""
        if check:
            self._guard_reads(write=False)
        return self._journal_positions()

    def _journal_positions(self) -> list[journal.RegionJournal]:
        return journal.status(self.catalog, [name for name, _ in self._journal_stores()])

    # -- regions ---------------------------------------------------------------------------

    def scrub(
        self,
        *,
        read_data: bool = False,
        sample: float | None = None,
        region: str | None = None,
        progress: Progress | None = None,
    ) -> ScrubReport:
        """Check every object the catalog knows in every region (or `region`): present, the
        size its header says, its key slot opens it; with `read_data`, every chunk decrypted
        and every blob re-hashed. `sample` (percent) checks a random share of the objects. Bad
        copies are recorded as bad placements, which `replicate --repair` then replaces from a
        good copy. Objects in the stores that no catalog row knows are
        listed as orphans (never deleted here)."""
        self._regions_ready()
        self._guard_reads()
        self._require(READER, "scrub the stores")
        if sample is not None and not 0 < sample <= 100:
            raise InvalidInputError("--sample is a percentage: more than 0, at most 100")
        regions = [r for r in self.replicas.regions if region is None or r.name == region]
        if not regions:
            names = ", ".join(r.name for r in self.replicas.regions)
            raise NotFoundError(f"no region {region!r}", hint=f"the regions are {names}")
        progress = progress or _NoProgress()
        # Every object of every version (tombstones too: their objects are gc's to remove).
        users: dict[tuple[str, str], set[str]] = {}
        sizes: dict[tuple[str, str], int | None] = {}
        live: set[str] = set()
        for model in self.catalog.models():
            for version in self.catalog.versions(model.name, expired=True):
                if version.expired_at is None:
                    live.add(version.ref)
                users.setdefault((MANIFEST, version.digest), set()).add(version.ref)
                sizes[(MANIFEST, version.digest)] = None
                for entry in version.files:
                    users.setdefault((BLOB, entry.digest), set()).add(version.ref)
                    sizes[(BLOB, entry.digest)] = entry.size
        checked = sorted(
            key for key, refs in users.items() if refs & live
        )  # objects only tombstones use may already be swept
        if sample is not None and checked:
            count = max(1, round(len(checked) * sample / 100))
            checked = sorted(random.sample(checked, count))
        problems: list[ScrubProblem] = []
        placements: list[PlacementRecord] = []
        unchecked: set[str] = set()
        copies = 0
        progress.begin("scrubbing", len(checked) * len(regions))
        for kind, digest in checked:
            what = f"{kind} {digest}"
            size = sizes[(kind, digest)]
            for where in regions:
                if where.name in unchecked:
                    progress.advance(1)
                    continue
                name = where.store.object_name(kind, digest)
                problem: str | None = None
                checksum: str | None = None
                damaged = False
                try:
                    # Always: present, the size its header says, opened by the region's own
                    # key slot (what a rebuild from this region alone relies on).
                    self._scrub_quick(where, kind, digest, size, what=what)
                    if read_data:
                        outcome = self.replicas.check(
                            where,
                            kind,
                            digest,
                            known=self.catalog.key_slots(digest, kind),
                            checksum=None,  # none: every chunk authenticated, blobs re-hashed
                            what=what,
                        )
                        if outcome.state == PENDING:
                            unchecked.add(where.name)
                            continue
                        if outcome.state != VERIFIED:
                            problem, damaged = outcome.detail, True
                        checksum = outcome.checksum
                except (StorageError, KmsUnreachableError):
                    unchecked.add(where.name)
                    continue
                except IntegrityError as error:
                    problem, damaged = str(error), True
                except RegistryError as error:
                    problem = str(error)  # a key we may not use says nothing about the copy
                finally:
                    progress.advance(1)
                copies += 1
                if problem is not None:
                    versions = tuple(sorted(users[(kind, digest)] & live))
                    problems.append(ScrubProblem(where.name, kind, digest, name, problem, versions))
                    if damaged:
                        placements.append(
                            PlacementRecord(digest, kind, where.name, name, BAD, None, problem)
                        )
                elif read_data:
                    placements.append(
                        PlacementRecord(digest, kind, where.name, name, VERIFIED, checksum, "")
                    )
        progress.end()
        if placements:
            self.catalog.record_placements(placements)
        orphans = [] if sample is not None else self._orphans(regions, users, unchecked)
        report = ScrubReport(
            read_data,
            len(checked),
            copies,
            sample,
            tuple(problems),
            tuple(orphans),
            tuple(sorted(unchecked)),
        )
        self.catalog.audit(
            self.actor,
            "scrub",
            "registry",
            {
                "read_data": read_data,
                "sample": sample,
                "regions": [r.name for r in regions],
                "objects": report.objects,
                "copies": copies,
                "problems": len(problems),
                "orphans": len(orphans),
                "unchecked": sorted(unchecked),
            },
        )
        return report

    @staticmethod
    def _scrub_quick(where: Region, kind: str, digest: str, size: int | None, *, what: str) -> None:
        where.store.read_header(kind, digest, size=size, what=what)
        where.store.check_slot(kind, digest, what=what)

    def _orphans(
        self,
        regions: Sequence[Region],
        users: dict[tuple[str, str], set[str]],
        unchecked: set[str],
    ) -> list[Orphan]:
        """Objects and key slots under the registry's prefixes that no catalog row knows (nor
        a live lease: a push in flight stores its objects before its commit names them)."""
        found: list[Orphan] = []
        referenced = set(users) | self.catalog.leased()
        for where in regions:
            if where.name in unchecked:
                continue
            store = where.store
            known = {store.object_name(kind, digest) for kind, digest in referenced}
            # A key slot lives under its object's id: slots/xx/<id>/<kind>-<kek>.
            known_ids = {name.rsplit("/", 1)[1] for name in known}
            try:
                for prefix in (*store.object_prefixes(), "slots/"):
                    for info in store.driver.list(prefix):
                        if prefix == "slots/":
                            parts = info.name.split("/")
                            if len(parts) >= 3 and parts[2] in known_ids:
                                continue
                        elif info.name in known:
                            continue
                        found.append(Orphan(where.name, info.name, info.size, info.modified))
            except StorageError:
                unchecked.add(where.name)
        return found

    def drill(
        self,
        *,
        region: str | None = None,
        alias: str = "production",
        sample: int | None = None,
        progress: Progress | None = None,
    ) -> DrillReport:
        """A restore drill: as if every other region were gone, restore from `region` alone
        (default: the last in read order, the one furthest from the primary) each model's
        `alias` (its newest version when it has none): its manifest authenticated with that
        region's own key slot and its signature checked, every file decrypted and re-hashed
        (with `sample`, that many random chunks of each file, authenticated), and every
        safetensors header parsed and compared with the manifest's. Timed per model and in
        total; audited (`drill`), so when the backups were last proven is on record. Only the
        drilled region is asked anything: the others may be down or hung."""
        self._require(READER, "run a restore drill")
        self._guard_reads()
        validate_alias(alias)
        if sample is not None and sample < 1:
            raise InvalidInputError("--sample is a number of chunks per file, at least 1")
        chosen = self.replicas.regions[-1] if region is None else None
        for candidate in self.replicas.regions:
            if candidate.name == region:
                chosen = candidate
        if chosen is None:
            names = ", ".join(r.name for r in self.replicas.regions)
            raise NotFoundError(f"no region {region!r}", hint=f"the regions are {names}")
        models = [m for m in self.catalog.models() if m.version_count]
        if not models:
            raise NotFoundError("the registry has no versions to drill")
        try:
            # The region's marker and wrapped naming key: what a rebuild from it needs first.
            chosen.store.check_claim()
        except RegistryError as error:
            raise StorageError(
                f"region {chosen.name} cannot be drilled: {error}",
                hint="check it with `model-registry regions status`",
            ) from None
        alone = ReplicaSet(
            [chosen], workers=self.replicas.workers, deadlines=self.settings.deadlines
        )
        started = time.perf_counter()
        at = datetime.now(UTC)
        results = []
        progress = progress or _NoProgress()
        progress.begin("drilling", len(models))
        for model in models:
            results.append(self._drill_model(model.name, alone, alias=alias, sample=sample))
            progress.advance(1)
        progress.end()
        report = DrillReport(
            chosen.name,
            "all" if sample is None else f"sample:{sample}",
            tuple(results),
            time.perf_counter() - started,
            at,
        )
        self.catalog.audit(
            self.actor,
            "drill",
            "registry",
            {
                "region": chosen.name,
                "mode": report.mode,
                "ok": report.ok,
                "seconds": round(report.seconds, 3),
                "models": {m.name: {"ref": m.ref, "ok": m.ok} for m in results},
                "problems": [f"{m.name}: {p}" for m in results for p in m.problems],
            },
        )
        return report

    def _drill_model(
        self, name: str, alone: ReplicaSet, *, alias: str, sample: int | None
    ) -> DrillModel:
        started = time.perf_counter()
        via, checked, files = alias, 0, 0
        problems: list[str] = []
        ref = ""
        try:
            try:
                version = self.resolve(f"{name}:{alias}")
            except NotFoundError:
                version, via = self.resolve(name), "newest"
            ref = version.ref
            what = f"manifest of {version.ref}"
            data = alone.read_bytes(
                MANIFEST, version.digest, known=(), what=what, report=ReadReport()
            )
            manifest, _signer = manifests.parse_envelope(
                data,
                expected_digest=version.digest,
                trusted=self.settings.trusted_signers,
                what=what,
            )
            for entry in manifest.files:
                files += 1
                try:
                    checked += self._drill_file(alone, version, entry, sample=sample)
                except (StorageError, KmsUnreachableError):
                    raise  # the region (or its KMS) went away: the drill cannot go on
                except RegistryError as error:
                    problems.append(f"{entry.path}: {error}")
        except (StorageError, KmsUnreachableError):
            raise
        except RegistryError as error:
            problems.append(str(error))
        return DrillModel(
            name, ref, via, files, checked, time.perf_counter() - started, tuple(problems)
        )

    def _drill_file(
        self, alone: ReplicaSet, version: VersionRecord, entry: ManifestFile, *, sample: int | None
    ) -> int:
        """Restore one file from one region: returns the plaintext bytes verified."""
        what = f"{version.ref}: {entry.path}"
        region = alone.regions[0]
        head = bytearray()
        header_end = 0 if entry.safetensors is None else entry.safetensors.data_offset
        if sample is None:
            done = 0
            for chunk in alone.open(
                BLOB, entry.digest, known=(), size=entry.size, what=what, report=ReadReport()
            ):
                if len(head) < header_end:
                    head += chunk
                done += len(chunk)
            self._drill_header(entry, bytes(head[:header_end]), what=what)
            return done
        # A sample: the chunks holding the header, and `sample` others at random, authenticated.
        key, _slots = alone.unwrap_any(BLOB, entry.digest, known=(), what=what)
        name = region.store.object_name(BLOB, entry.digest)
        driver = region.store.driver
        # The stored size against the header (a truncation a sample might miss), then the key.
        stored = region.store.read_header(BLOB, entry.digest, size=entry.size, what=what)
        opener = sealed.Opener(key, entry.digest, stored.pack(), what=what)
        header = opener.header
        first_chunks = set(range(0, max(1, -(-header_end // header.chunk_size))))
        others = sorted(set(range(header.chunk_count)) - first_chunks)
        picked = sorted(first_chunks | set(random.sample(others, min(sample, len(others)))))
        done = 0
        for index in picked:
            offset, length = header.chunk_range(index, index)
            data = driver.get_range(name, offset, length)
            out = bytearray(header.chunk_plain_size(index))
            opener.open_chunk(index, data, out)
            if index in first_chunks:
                head += out
            done += len(out)
        self._drill_header(entry, bytes(head[:header_end]), what=what)
        return done

    @staticmethod
    def _drill_header(entry: ManifestFile, head: bytes, *, what: str) -> None:
        """The file's safetensors header, parsed from the restored bytes, is the manifest's."""
        if entry.safetensors is None:
            return
        parsed = parse_header(head[8:], file_size=entry.size, display_name=what)
        if parsed.to_manifest() != entry.safetensors.to_manifest():
            raise IntegrityError(f"{what}: its safetensors header differs from the manifest's")

    def regions_status(self) -> list[RegionStatus]:
        """Each region probed now, all at once and each within a request's deadline (its
        marker and naming key read): `ok`, `unreachable`, `hung` (no answer in time) or
        `foreign` (not this registry's store), with the catalog's counts of verified, pending
        and bad copies and of copies it has no record of (none counted on a stand-in)."""
        counted = self.provisional is None
        wanted = (
            {(o.digest, o.purpose) for o in self.catalog.stored_objects()} if counted else set()
        )
        states: dict[str, dict[tuple[str, str], str]] = {}
        for row in self.catalog.placements() if counted else []:
            states.setdefault(row.region, {})[(row.digest, row.purpose)] = row.state
        limit = self.settings.deadlines.request_seconds

        def probe(region: Region) -> tuple[str, str, float]:
            started = time.monotonic()
            failure: RegistryError
            try:
                deadline.call_with_deadline(
                    lambda _budget: region.store.check_claim(),
                    seconds=limit,
                    what=f"region {region.name}",
                )
                self.replicas.mark_up(region)
                return "ok", "ok", time.monotonic() - started
            except StoreTimeoutError as error:
                state, failure = "hung", error
            except (StorageError, KmsUnreachableError) as error:
                state, failure = "unreachable", error
            except RegistryError as error:
                return "foreign", str(error), time.monotonic() - started
            self.replicas.mark_down(region, failure)
            return state, str(failure), time.monotonic() - started

        probes = [deadline.submit(functools.partial(probe, r)) for r in self.replicas.regions]
        found = []
        for settings, region, future in zip(
            self.settings.regions, self.replicas.regions, probes, strict=True
        ):
            state, detail, seconds = future.result()
            known = states.get(region.name, {})
            counts = {copy_state: 0 for copy_state in (VERIFIED, PENDING, BAD)}
            missing = 0
            for key in wanted:
                copy_state = known.get(key)
                if copy_state is None:
                    missing += 1
                else:
                    counts[copy_state] = counts.get(copy_state, 0) + 1
            found.append(
                RegionStatus(
                    name=region.name,
                    priority=settings.priority,
                    store=settings.store.describe(),
                    keys=settings.kms.describe() if settings.kms else "local key file",
                    reachable=state == "ok",
                    detail=detail,
                    seconds=seconds,
                    verified=counts[VERIFIED],
                    pending=counts[PENDING],
                    bad=counts[BAD],
                    missing=missing,
                    state=state,
                    counted=counted,
                )
            )
        return found

    def replicate(
        self, *, repair: bool = False, progress: Progress | None = None
    ) -> ReplicateReport:
        """Bring every region to a full, verified copy of every object a version references.

        Copies that are missing, pending or never recorded are copied from a good region (the
        bytes authenticated on the way) and read back; with `repair`, copies recorded as bad are
        read back too and, when damaged or missing, replaced by a good copy (a new object
        version; the damaged one stays locked until it expires). A region's bucket is created
        (versioning, Object Lock) and claimed first, so a region rebuilt empty is refilled.
        """
        progress = progress or _NoProgress()
        problems: list[str] = []
        rebuilt: set[str] = set()
        for settings, region in zip(self.settings.regions, self.replicas.regions, strict=True):
            try:
                prepare_bucket(settings.store)
                if not region.store.claimed():
                    rebuilt.add(region.name)  # new or emptied: no record of it can be trusted
                region.store.claim()
                self.replicas.mark_up(region)
            except (StorageError, KeyAccessError) as error:
                self.replicas.mark_down(region, error)
                problems.append(f"{region.name}: {error}")
        listed = self.catalog.stored_objects()
        # Leased against gc while copies are written; read again under the lease, because a
        # version may have expired and its objects been swept in between.
        lease = self._lease([(o.digest, o.purpose) for o in listed], what="replicate")
        try:
            wanted = set(listed)
            objects = [o for o in self.catalog.stored_objects() if o in wanted]
            return self._replicate_leased(
                objects, rebuilt, problems, repair=repair, progress=progress, lease=lease
            )
        finally:
            self.catalog.drop_lease(lease)

    def _replicate_leased(
        self,
        objects: Sequence[StoredObject],
        rebuilt: set[str],
        problems: list[str],
        *,
        repair: bool,
        progress: Progress,
        lease: str,
    ) -> ReplicateReport:
        rows: dict[tuple[str, str], dict[str, PlacementRecord]] = {}
        for row in self.catalog.placements():
            rows.setdefault((row.digest, row.purpose), {})[row.region] = row
        held = self.catalog.held_objects()
        copied = repaired = verified = 0
        progress.begin("replicating", len(objects))
        renewed = time.monotonic()
        for stored in objects:
            if time.monotonic() - renewed > LEASE_RENEWAL:
                if not self.catalog.renew_lease(lease, ttl=LEASE_TTL):
                    raise ConflictError(
                        "replicate stalled past its lease on the objects it copies",
                        hint="run it again; what it copied is kept",
                    )
                renewed = time.monotonic()
            key = (stored.digest, stored.purpose)
            known = rows.get(key, {})
            # A repair looks at every copy (a verified one may have been lost since); without
            # it, only at copies that were never completed.
            need = frozenset(
                region.name
                for region in self.replicas.regions
                if repair
                or region.name in rebuilt
                or region.name not in known
                or known[region.name].state == PENDING
            )
            left_bad = [
                f"{name}: {stored.purpose} {stored.digest}: bad ({row.detail}); "
                "run `model-registry replicate --repair`"
                for name, row in sorted(known.items())
                if row.state == BAD and not repair
            ]
            problems += left_bad
            if not need:
                progress.advance(1)
                continue
            what = f"{stored.purpose} {stored.digest}"
            try:
                result = self._replicate(
                    stored.purpose,
                    stored.digest,
                    what=what,
                    repair=repair,
                    only=need,
                    distrust=frozenset(rebuilt),
                )
            except RegistryError as error:
                problems.append(f"{what}: {error}")
                progress.advance(1)
                continue
            self.catalog.record_placements(_placements([result]))
            self.catalog.add_key_slots([(stored.digest, stored.purpose, s) for s in result.slots])
            for outcome in result.outcomes:
                before = known.get(outcome.region)
                if outcome.state == VERIFIED:
                    verified += 1
                    if outcome.uploaded:
                        if before is not None and before.state != PENDING:
                            repaired += 1
                        else:
                            copied += 1
                    if key in held:
                        problems += self._legal_hold_copies({key}, on=True, only={outcome.region})
                else:
                    problems.append(f"{outcome.region}: {what}: {outcome.state} ({outcome.detail})")
            progress.advance(1)
        progress.end()
        report = ReplicateReport(len(objects), copied, repaired, verified, tuple(problems))
        self.catalog.audit(
            self.actor,
            "replicate",
            "registry",
            {
                "repair": repair,
                "objects": len(objects),
                "copied": copied,
                "repaired": repaired,
                "verified": verified,
                "problems": len(problems),
            },
        )
        return report

    # -- legal holds -----------------------------------------------------------------------

    @_journaled
    def hold(self, ref: str, *, reason: str) -> HoldResult:
        """Place a legal hold on a version: recorded in the catalog, and on every object of the
        version (data, manifest, key slots) in every region whose store has legal holds."""
        if not reason.strip():
            raise InvalidInputError("a legal hold needs a reason", hint="pass --reason TEXT")
        _check_text("reason", reason, limit=4096)
        record, created = self.catalog.set_hold(
            parse_reference(ref), reason=reason, actor=self.actor
        )
        objects = self._version_objects(record.name, record.number)
        failed = self._legal_hold_copies(objects, on=True)
        return HoldResult(record, created, len(objects), tuple(failed))

    @_journaled
    def release_hold(self, ref: str, *, reason: str) -> HoldResult:
        """Release a version's legal hold; objects another held version shares stay held."""
        if not reason.strip():
            raise InvalidInputError("releasing a legal hold needs a reason", hint="pass --reason")
        _check_text("reason", reason, limit=4096)
        version = self.resolve(ref)
        if not any((h.name, h.number) == (version.name, version.number) for h in self.holds()):
            raise NotFoundError(f"{version.ref} is not under legal hold")
        # Objects a sharing version's hold keeps stay held (read just before clearing).
        objects = self._version_objects(version.name, version.number) - (
            self.catalog.held_objects(exclude=version)
        )
        # The stores first: if a region cannot be reached the hold stays recorded, and the same
        # command can run again.
        failed = self._legal_hold_copies(objects, on=False)
        if failed:
            # All or nothing: every copy gets its hold back, in the failed regions too (the
            # changes running there when one failed may have cleared some).
            self._legal_hold_copies(objects, on=True)
            raise StorageError(
                f"the legal hold on {version.ref} could not be released in "
                f"{'; '.join(failed)}; it is still recorded",
                hint="run the same command again once the region is reachable",
            )
        record = self.catalog.release_hold(
            parse_reference(version.ref), reason=reason, actor=self.actor
        )
        return HoldResult(record, True, len(objects))

    def holds(self) -> list[HoldRecord]:
        return self.catalog.holds()

    def _version_objects(self, name: str, number: int) -> set[tuple[str, str]]:
        version = self.catalog.resolve(parse_reference(f"{name}@{number}"))
        return {(version.digest, MANIFEST)} | {(f.digest, BLOB) for f in version.files}

    def _legal_hold_copies(
        self, objects: set[tuple[str, str]], *, on: bool, only: set[str] | None = None
    ) -> list[str]:
        """Set or clear the S3 legal hold of objects and their key slots in every region (or
        those in `only`) that supports it; returns "region: problem" for what failed. Each
        change is several requests (list versions, HEAD, PUT, HEAD again), so regions run in
        parallel and up to LOCK_REQUESTS objects at a time in each; a region stops starting
        new changes at its first failure, as it would one by one."""
        self._regions_ready()
        lockers = [
            (region, lock)
            for region, lock in self._lockers()
            if only is None or region.name in only
        ]
        if not lockers or not objects:
            return []
        # A region that is down or hung is not asked object by object: it fails as a whole.
        failed: list[str] = []
        reachable: list[tuple[Region, ObjectLock]] = []
        for region, lock in lockers:
            condition = self.replicas.health.unavailable(region.name)
            if condition is None:
                reachable.append((region, lock))
            else:
                failed.append(f"{region.name}: {condition.describe()}")
        lockers = reachable
        if not lockers:
            return failed

        def in_region(locker: tuple[Region, ObjectLock]) -> str | None:
            region, lock = locker
            store = region.store
            # During a key rotation an object has a slot under each key: hold them all.
            names = [
                name
                for digest, kind in sorted(objects)
                for name in (
                    store.object_name(kind, digest),
                    *(store.slot_name(kind, digest, kek) for kek in store.keys.kek_ids),
                )
            ]

            def change(name: str) -> None:
                # A missing copy gets the hold when replicate restores it.
                with contextlib.suppress(NotFoundError):
                    lock.set_legal_hold(name, on)

            try:
                _bounded_map(change, names, limit=LOCK_REQUESTS, name="legal-hold")
            except RegistryError as error:
                return f"{region.name}: {error}"
            return None

        outcomes = _bounded_map(in_region, lockers, limit=len(lockers), name="hold-region")
        return failed + [failure for failure in outcomes if failure is not None]

    # -- key rotation ----------------------------------------------------------------------

    def region_keys(self) -> tuple[RegionKey, ...]:
        """Each region's key-encryption key (its KMS key, else the local key file) and, during
        a rotation, the keys it is moving away from, in read preference order."""
        configured = {region.name: region for region in self.settings.regions}
        found: list[RegionKey] = []
        for region in self.replicas.regions:
            keys = region.store.keys
            older = keys.previous if isinstance(keys, KeyRing) else ()
            kms = configured[region.name].kms
            if kms is None:
                opened = {
                    p.path: p.kek_id for p in older if isinstance(p, LocalKeyProvider) and p.path
                }
                found.append(
                    RegionKey(
                        region.name,
                        "local",
                        keys.kek_id,
                        str(self.settings.kek_file),
                        previous=tuple(
                            (str(path), opened.get(path))
                            for path in self.settings.previous_kek_files
                        ),
                    )
                )
                continue
            found.append(
                RegionKey(
                    region.name,
                    "aws-kms",
                    keys.kek_id,
                    kms.key,
                    kms.region,
                    kms.endpoint_url,
                    tuple(
                        (key, provider.kek_id)
                        for key, provider in zip(kms.previous, older, strict=True)
                    ),
                )
            )
        return tuple(found)

    @_journaled
    def rotate_keys(
        self, to: str, *, region: str | None = None, progress: Progress | None = None
    ) -> RotationReport:
        """Move every key slot of the regions under one key-encryption key to `to` (a key file
        path, created when missing, or a KMS key id/ARN/alias): config.toml switches first (new
        objects are wrapped by the new key, both keys unwrap), then every object gets a slot
        under the new key, then the old slots are retired and the old key leaves config.toml.
        No data is re-encrypted. Interrupted, it runs again from where it stopped."""
        self._regions_ready()
        self._require(ADMIN, "rotate keys")
        missing = [str(p) for p in self.settings.previous_kek_files if not p.exists()]
        if missing:
            raise KeyAccessError(
                f"the rotation cannot finish: previous key file {', '.join(missing)} is gone, "
                "and objects whose only slot is under it cannot be re-wrapped",
                hint="restore the file from its backup and run `keys rotate` again; if it is lost "
                "for good, remove it from keys.previous_kek_files in config.toml (what only it "
                "opened stays unreadable)",
            )
        bar = progress or _NoProgress()
        started = time.monotonic()
        targets, created = self._start_rotation(to, region=region)
        names = tuple(r.name for r in targets)
        new_id = targets[0].store.keys.kek_id
        old_ids = sorted({kek for r in targets for kek in r.store.keys.kek_ids if kek != new_id})
        if new_id.startswith("local:"):
            # A local key whose file is gone (dropped from previous_kek_files) is still one to
            # retire: its slots are in the catalog, and a process that still has it must not
            # write with it.
            recorded = {
                slot.kek_id for slots in self.catalog.slotted_objects().values() for slot in slots
            }
            retired_before = self.catalog.retired_keys()
            old_ids = sorted(
                set(old_ids)
                | {
                    k
                    for k in recorded
                    if k.startswith("local:") and k != new_id and k not in retired_before
                }
            )
        if not old_ids:
            return RotationReport(new_id, (), names, 0, 0, 0, 0, 0, created, 0.0)
        # A key another region still uses (one KMS key for two regions) keeps its slots there.
        still_used = sorted(
            {
                kek
                for r in self.replicas.regions
                if r.name not in names
                for kek in r.store.keys.kek_ids
                if kek in old_ids
            }
        )
        retiring = [k for k in old_ids if k not in still_used]
        rewrapped = 0
        done: set[tuple[str, str]] = set()
        unrecoverable: set[tuple[str, str]] = set()
        # Twice: once for everything, then, after the old keys are retired in the catalog (from
        # then on a commit carrying a slot under them fails, as from a process that still runs
        # on the old config.toml), once more for what such a process committed meanwhile.
        for retired_yet in (False, True):
            if retired_yet:
                self.catalog.retire_keys(retiring, actor=self.actor)
            pending = {
                key: slots
                for key, slots in self.catalog.slotted_objects().items()
                if any(slot.kek_id in old_ids for slot in slots)
            }
            bar.begin("adding key slots", len(pending))
            rewrapped += self._rewrap(
                pending, targets, new_id, progress=bar, unrecoverable=unrecoverable
            )
            bar.end()
            done.update(pending)
        lacking = [
            key
            for key, slots in self.catalog.slotted_objects().items()
            if any(s.kek_id in old_ids for s in slots)
            and all(s.kek_id != new_id for s in slots)
            and key not in unrecoverable
        ]
        if lacking:
            raise ConflictError(
                f"{len(lacking)} objects still have no slot under the new key",
                hint="run `keys rotate` again; it resumes",
            )
        for target in targets:
            target.store.wrap_naming_key()
        # What no key opens any more keeps its old slots (in the catalog and the stores): they
        # are what a key file found again would open.
        moved = sorted(done - unrecoverable)
        deleted, kept = self._retire_slot_objects(moved, targets, retiring)
        dropped = self.catalog.drop_key_slots(retiring, objects=moved)
        self._finish_rotation(targets)
        report = RotationReport(
            new_id,
            tuple(retiring),
            names,
            len(done),
            rewrapped,
            dropped,
            deleted,
            kept,
            created,
            time.monotonic() - started,
            tuple(still_used),
            len(unrecoverable),
        )
        self.catalog.audit(self.actor, "key-rotate", "registry", report.to_dict())
        return report

    def _start_rotation(self, to: str, *, region: str | None) -> tuple[list[Region], str | None]:
        """The regions whose key `to` replaces, with config.toml (and the open stores) switched
        to it, the old key kept as a previous one; and the key file created, if one was."""
        kms_target = to.startswith(("arn:aws:kms:", "alias/", "kms:", "mrk-")) or bool(
            _KMS_KEY_ID.fullmatch(to)
        )
        by_name = {r.name: r for r in self.settings.regions}
        if region is not None and region not in by_name:
            raise InvalidInputError(
                f"no region {region!r}", hint=f"regions: {', '.join(sorted(by_name))}"
            )
        if kms_target:
            kms_regions = [r for r in self.settings.regions if r.kms is not None]
            chosen = [by_name[region]] if region else kms_regions
            if not chosen or any(r.kms is None for r in chosen):
                raise InvalidInputError(
                    f"--to {to} is a KMS key, but {region or 'no region'} does not use a KMS key",
                    hint="a region on the local key file rotates to another key file",
                )
            if len(chosen) > 1:
                raise InvalidInputError(
                    "KMS keys are regional: name the region whose key this replaces",
                    hint=f"--region one of {', '.join(r.name for r in chosen)}",
                )
        else:
            if region is not None and by_name[region].kms is not None:
                raise InvalidInputError(
                    f"region {region} uses a KMS key: --to must be a KMS key id, ARN or alias",
                    hint="a key file path rotates the regions that use the local key file",
                )
            # The local key file is one for every region without a KMS key.
            chosen = [r for r in self.settings.regions if r.kms is None]
            if not chosen:
                raise InvalidInputError("no region uses the local key file", hint="--to a KMS key")
        created = None
        current = [r for r in self.replicas.regions if r.name in {c.name for c in chosen}]
        if kms_target:
            kms = chosen[0].kms
            assert kms is not None
            from registry.crypto.kms import KmsKeyProvider

            key = to.removeprefix("kms:")
            provider = KmsKeyProvider(
                key, region=kms.region, endpoint_url=kms.endpoint_url, profile=kms.profile
            )
            new_id = provider.kek_id
            if new_id != current[0].store.keys.kek_id:
                self._probe_key(provider, what=f"KMS key {key}")
                # The key as its ARN: an alias may point elsewhere by the time it is needed.
                old_arn = current[0].store.keys.kek_id.removeprefix("aws-kms:")
                previous = tuple(dict.fromkeys((old_arn, *kms.previous)))
                regions = tuple(
                    dataclasses.replace(
                        r,
                        kms=dataclasses.replace(
                            kms, key=key, previous=tuple(p for p in previous if p != key)
                        ),
                    )
                    if r.name == chosen[0].name
                    else r
                    for r in self.settings.regions
                )
                with self._editing_config():
                    self.settings = dataclasses.replace(self.settings, regions=regions)
        else:
            path = Path(to).expanduser().absolute()
            for other, label in (
                (self.settings.naming_key_file, "the naming key"),
                (self.settings.signing_key_file, "the signing key"),
            ):
                if path.exists() and other.exists() and path.samefile(other):
                    raise InvalidInputError(
                        f"{path} is {label}, not a key-encryption key",
                        hint="give a new file name; `keys rotate` creates the key",
                    )
            if not path.exists():
                try:
                    create_key_file(path)
                except OSError as error:
                    raise ConfigurationError(
                        f"cannot create the key file {path}: {error}",
                        hint="choose a directory this user can write, kept apart from the store",
                    ) from None
                created = str(path)
            new_provider = LocalKeyProvider.from_file(path)
            new_id = new_provider.kek_id
            assert self.settings.kek_file is not None
            if new_id != current[0].store.keys.kek_id:
                old = [str(self.settings.kek_file), *map(str, self.settings.previous_kek_files)]
                with self._editing_config() as config:
                    config["keys"]["kek_file"] = str(path)
                    config["keys"]["previous_kek_files"] = [
                        p for p in dict.fromkeys(old) if Path(p) != path
                    ]
        # A key rotated away from once may be rotated back to: it wraps again from now on.
        self.catalog.unretire_key(new_id)
        self._reload_keys()
        if any(r.store.keys.kek_id != new_id for r in current):
            raise ConfigurationError("config.toml did not take the new key", hint="check it")
        if any(len(r.store.keys.kek_ids) > 1 for r in current):
            self.catalog.audit(
                self.actor,
                "key-rotate-start",
                "registry",
                {"to": new_id, "regions": [r.name for r in current]},
            )
        return current, created

    def _probe_key(self, provider: KeyProvider, *, what: str) -> None:
        """Wrap and unwrap the naming key with a key before config.toml names it: a key that
        does not exist, is disabled or may not be used is refused with nothing changed."""
        context = {"registry": self.settings.registry_id, "purpose": "naming"}
        probe = os.urandom(32)
        try:
            if (
                provider.unwrap(provider.wrap(probe, context=context), context=context, what=what)
                != probe
            ):
                raise KeyAccessError(f"{what} does not give back what it wrapped")
        except KeyAccessError as error:
            raise KeyAccessError(
                f"{what} cannot be used: {error.message}",
                hint="check the key id, its state and this principal's permissions; nothing "
                "was changed",
            ) from None

    def _reload_keys(self) -> None:
        local = _local_keys(self.settings)
        for region, configured in zip(self.replicas.regions, self.settings.regions, strict=True):
            region.store.keys = _key_provider(configured.kms, local)
        self.keys = self.store.keys

    def _rewrap(
        self,
        pending: Mapping[tuple[str, str], Sequence[WrappedKey]],
        targets: Sequence[Region],
        new_id: str,
        *,
        progress: Progress,
        unrecoverable: set[tuple[str, str]],
    ) -> int:
        """A slot under the new key in the catalog and in every target region for each object
        (already there: skipped, which is what makes a rerun resume). Returns slots written;
        objects no configured key opens any more (their key file was lost) go to
        `unrecoverable`, untouched."""
        written = 0
        batch: list[tuple[str, str, WrappedKey]] = []
        held = self.catalog.held_objects()
        for (digest, kind), slots in pending.items():
            what = f"{kind} {digest[:19]}"
            slot = next((s for s in slots if s.kek_id == new_id), None)
            if slot is None:
                # A new slot a run before this one wrote (the catalog did not hear of it).
                for target in targets:
                    stored_slot = target.store.read_slot(kind, digest, what=what)
                    if stored_slot is not None and stored_slot.kek_id == new_id:
                        slot = stored_slot
                        break
            try:
                # The data key from any slot any region's key opens: the old key, a new slot,
                # or another region's KMS key.
                data_key, _seen = self.replicas.unwrap_any(
                    kind, digest, known=[*slots, *([slot] if slot else [])], what=what
                )
            except (KeyAccessError, IntegrityError):
                if slot is None:
                    unrecoverable.add((digest, kind))
                    progress.advance(1)
                    continue
                raise
            for target in targets:
                store = target.store
                name = store.slot_name(kind, digest, new_id)
                if store.driver.stat(name) is not None:
                    continue
                if slot is None:
                    slot = store.keys.wrap(data_key, context=store.context(kind, digest))
                store.driver.put_if_absent(name, [slot.to_json()])
                written += 1
                if (digest, kind) in held and isinstance(store.driver, ObjectLock):
                    # A held version's new slot is held like its old one.
                    store.driver.set_legal_hold(name, True)
            if slot is not None and all(s.kek_id != new_id for s in slots):
                batch.append((digest, kind, slot))
            if len(batch) >= 200:
                self.catalog.add_key_slots(batch)
                batch = []
            progress.advance(1)
            self._checkpoint("rotate-object")
        self.catalog.add_key_slots(batch)
        return written

    def _retire_slot_objects(
        self, objects: Iterable[tuple[str, str]], targets: Sequence[Region], old_ids: Sequence[str]
    ) -> tuple[int, int]:
        """Delete the old keys' slot objects (and wrapped naming keys) from the target stores;
        those Object Lock keeps stay, useless once the old key is destroyed. (deleted, kept)"""
        deleted = kept = 0
        for target in targets:
            store = target.store
            names = [
                store.slot_name(kind, digest, old) for digest, kind in objects for old in old_ids
            ]
            names += [store.naming_key_name(old) for old in old_ids]
            driver = store.driver
            for name in names:
                try:
                    if isinstance(driver, ObjectLock) and driver.legal_hold(name):
                        # The hold lives on in the object's new slot; an old slot under a
                        # hold nobody would ever release would only outlast its key.
                        driver.set_legal_hold(name, False)
                    driver.delete(name)
                    deleted += 1
                except NotFoundError:
                    continue
                except RetentionError:
                    kept += 1
        return deleted, kept

    def _finish_rotation(self, targets: Sequence[Region]) -> None:
        names = {r.name for r in targets}
        if any(r.kms is not None for r in self.settings.regions if r.name in names):
            regions = tuple(
                dataclasses.replace(r, kms=dataclasses.replace(r.kms, previous=()))
                if r.name in names and r.kms is not None
                else r
                for r in self.settings.regions
            )
            with self._editing_config():
                self.settings = dataclasses.replace(self.settings, regions=regions)
        else:
            with self._editing_config() as config:
                config["keys"].pop("previous_kek_files", None)
        self._reload_keys()

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
            regions=self.settings.regions,
            write_quorum=self.settings.write_quorum,
            chunk_size=int(config["store"].get("chunk_size", self.settings.chunk_size)),
            kek_file=keys.get("kek_file"),
            naming_key_file=str(keys["naming_key_file"]),
            signing_key_file=str(keys["signing_key_file"]),
            trusted_signers=[
                (str(s["name"]), str(s["public_key"])) for s in config.get("trusted_signers", [])
            ],
            workers=int(config.get("workers", 0)),
            webhooks=tuple(
                Webhook(str(entry["url"]), Path(str(entry["secret_file"])))
                for entry in config.get("webhooks", [])
            ),
            api=self.settings.api,
            deadlines=self.settings.deadlines,
            previous_kek_files=[str(value) for value in keys.get("previous_kek_files", [])],
        )
        _write_atomically(home / CONFIG_FILE, text)
        self.settings = load_settings(home)


def rebuild_catalog(
    home: str | Path | None,
    *,
    source: str,
    catalog_url: str | None = None,
    actor: str | None = None,
    accept_loss: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> rebuild.RebuildReport:
    """Build a new catalog (default: the configured one, which must be gone or empty) from
    region `source` alone; see `registry.rebuild`. Needs config.toml and the key provider."""
    settings = load_settings(Path(home) if home is not None else None)
    local = _local_keys(settings)
    return rebuild.rebuild(
        settings,
        source=source,
        catalog_url=catalog_url or settings.catalog_url,
        key_provider=lambda region: _key_provider(region.kms, local),
        actor=actor or default_actor(),
        accept_loss=accept_loss,
        on_progress=on_progress,
    )


def _local_keys(settings: Settings) -> KeyProvider | None:
    """The local key file's provider; during a rotation, a ring with the files it replaces."""
    if settings.kek_file is None:
        return None
    current = LocalKeyProvider.from_file(settings.kek_file)
    previous = []
    for path in settings.previous_kek_files:
        if not path.exists():
            # Destroyed before its rotation finished: what only it opens is lost, the rest is
            # not. `keys rotate` refuses while config.toml names it, and finishes once it is
            # dropped from there (reporting what nothing opens any more).
            journal.log.warning("previous key file %s is gone", path)
            continue
        previous.append(LocalKeyProvider.from_file(path))
    return KeyRing(current, previous) if previous else current


def _key_provider(kms: KmsSettings | None, local: KeyProvider | None) -> KeyProvider:
    """A region's key provider: its KMS key, else the registry's local key file (with the keys
    a rotation is moving away from, which unwrap only)."""
    if kms is None:
        if local is None:
            raise ConfigurationError("a region without a KMS key needs keys.kek_file")
        return local
    from registry.crypto.kms import KmsKeyProvider

    def provider(key: str) -> KeyProvider:
        return KmsKeyProvider(
            key, region=kms.region, endpoint_url=kms.endpoint_url, profile=kms.profile
        )

    current = provider(kms.key)
    return KeyRing(current, [provider(k) for k in kms.previous]) if kms.previous else current


class _NotStartedError(Exception):
    """A call `_bounded_map` did not start because an earlier one had failed."""


def _bounded_map(
    function: Callable[[T], R], items: Sequence[T], *, limit: int, name: str
) -> list[R]:
    """`function` over `items` on at most `limit` threads, results in the items' order. Once a
    call fails no further call starts; the calls already running finish, and then the failure
    of the earliest item is raised (so a failure leaves nothing running behind the caller)."""
    if len(items) <= 1 or limit <= 1:
        return [function(item) for item in items]
    failed = threading.Event()

    def guarded(item: T) -> R:
        if failed.is_set():
            raise _NotStartedError
        try:
            return function(item)
        except BaseException:
            failed.set()
            raise

    pool = ThreadPoolExecutor(max_workers=min(limit, len(items)), thread_name_prefix=name)
    try:
        futures = [pool.submit(guarded, item) for item in items]
        wait(futures)
    except BaseException:
        failed.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:
        error = future.exception()
        if error is not None and not isinstance(error, _NotStartedError):
            raise error
    return [future.result() for future in futures]


def _kept_by_stores(purpose: str, digest: str, keepers: tuple[tuple[str, str], ...]) -> KeptObject:
    """What gc reports of an object the stores of some regions keep: each with its reason."""
    reason = "; ".join(f"{why} in {region}" for region, why in keepers)
    return KeptObject(purpose, digest, reason, keepers)


def _behind(stored: journal.StoredJournal, newest: journal.StoredJournal) -> str:
    if stored.region == newest.region or (stored.epoch, stored.end) == (newest.epoch, newest.end):
        return ""
    if stored.epoch != newest.epoch:
        return f"an older journal epoch than {newest.region}'s"
    if stored.end < newest.end:
        return f"behind {newest.region} (which holds entries up to {newest.end})"
    return ""


def _bad_copies(report: ReadReport) -> list[str]:
    """ "region: kind digest: detail" for every copy a read had to route around."""
    return [
        f"{region}: {kind} {digest[:19]}: {detail}"
        for (kind, digest, region), detail in sorted(report.bad.items())
    ]


def _require_quorum(results: Sequence[Replicated], quorum: int, names: Sequence[str]) -> None:
    """Refuse the push (nothing committed) unless every object has `quorum` verified copies."""
    short = [
        (name, result)
        for name, result in zip(names, results, strict=True)
        if len(result.verified) < quorum
    ]
    if not short:
        return
    name, result = short[0]
    problems = "; ".join(
        f"{o.region}: {o.state}{f' ({o.detail})' if o.detail else ''}"
        for o in result.outcomes
        if o.state != VERIFIED
    )
    raise StorageError(
        f"{name}: {len(result.verified)} of the {quorum} regions needed hold a verified copy "
        f"({problems}); nothing was committed",
        hint="check `model-registry regions status`, then push again (stored data is reused), "
        "or lower the quorum with --write-quorum",
    )


def _placements(results: Sequence[Replicated]) -> list[PlacementRecord]:
    return [
        PlacementRecord(r.digest, r.kind, o.region, r.object_name, o.state, o.checksum, o.detail)
        for r in results
        for o in r.outcomes
    ]


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_text(what: str, text: str, *, limit: int) -> None:
    if len(text) > limit or "\x00" in text:
        raise InvalidInputError(f"{what} is longer than {limit} characters or holds a NUL")


def _signer_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidInputError(f"invalid signer name {name!r}: use letters, digits, - _ .")
    return name


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


class _JournalRound:
    """Which regions' journals were compared with the catalog in the current round (a round
    is renewed every JOURNAL_CHECK_SECONDS): a change waits for the comparison of every
    region it can reach, and no region is written to before it was compared."""

    def __init__(self) -> None:
        self.started = float("-inf")
        self.regions: set[str] = set()

    def due(self, names: set[str]) -> bool:
        stale = time.monotonic() - self.started > JOURNAL_CHECK_SECONDS
        return stale or not names <= self.regions

    def begin_if_stale(self) -> None:
        if time.monotonic() - self.started > JOURNAL_CHECK_SECONDS:
            self.started = time.monotonic()
            self.regions.clear()

    def reset(self) -> None:
        self.started = float("-inf")
        self.regions.clear()


class _Made:
    """What an init made so far, undone if it fails, touching nothing it did not make: files
    are removed one by one, directories only while empty (another init may have finished in
    them meanwhile), and nothing at all from a home that another init completed. Once stores
    were being claimed, the keys and the registry id are kept instead (UNFINISHED_INIT), so
    the same command run again finishes with the stores it already claimed."""

    def __init__(self, home: Path, registry_id: str) -> None:
        self._home = home
        self._registry_id = registry_id
        self._files: list[Path] = []
        self._directories: list[Path] = []
        self._catalog: str | None = None
        self._claiming = False

    def directory(self, path: Path) -> None:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._directories.extend(reversed(missing))

    def file(self, path: Path) -> None:
        self._files.append(path)

    def catalog(self, url: str) -> None:
        self._catalog = url

    def claiming(self) -> None:
        self._claiming = True

    def undo(self) -> None:
        if (self._home / CONFIG_FILE).exists():
            # Another init of this home finished meanwhile: what is here is its registry.
            for path in self._files:
                if path.name.endswith(".pending"):
                    path.unlink(missing_ok=True)
            return
        if self._catalog is not None:
            with contextlib.suppress(RegistryError):
                drop_catalog(self._catalog)
        if self._claiming:
            with contextlib.suppress(OSError):
                _write_atomically(self._home / UNFINISHED_INIT, self._registry_id + "\n")
            log.warning(
                "init stopped after it began claiming the stores; run the same command again "
                "to finish it (it takes up registry %s and the keys in place)",
                self._registry_id,
            )
            for path in self._files:
                if path.name.endswith(".pending"):
                    path.unlink(missing_ok=True)
            return
        for path in reversed(self._files):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        for directory in reversed(self._directories):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only while empty
