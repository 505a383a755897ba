"""The content-addressed blob store of one region: object names, key slots, headers and reads of
write-once sealed objects on a storage `Driver` (writing them across regions: `replication`).

The only module that builds object names. A blob's identity is the BLAKE3 digest of its plaintext;
its object name is a keyed hash of that digest (the naming key), so a store's listing reveals
nothing about what it holds. Layout (docs/format.md):

    registry/id                           plaintext JSON marker: which registry owns this store
    registry/naming-key/<kek>             the naming key, wrapped by each key-encryption key
    slots/<aa>/<object id>/<kek>          key slot: the blob's data key wrapped by one KEK
    blobs/<aa>/<object id>                sealed blob (crypto.sealed format)
    manifests/<aa>/<object id>            sealed, signed manifest of a model version
    journal/<epoch>/start                 sealed marker opening one epoch of the catalog's journal
    journal/<epoch>/<first>-<last>        sealed segment of that journal (docs/format.md)
    records/<aa>/<object id>/<push id>    sealed version record: a push, written before its commit

Write order for one blob: key slot, then data. A slot is tiny and harmless on its own, whereas data
whose slot was lost could never be decrypted and its write-once name never reused.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Iterator, Sequence

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from registry.crypto import sealed
from registry.crypto.keys import KeyProvider, WrappedKey
from registry.digest import keyed_id
from registry.errors import (
    ConfigurationError,
    IntegrityError,
    KeyAccessError,
    NotFoundError,
    StorageError,
)
from registry.storage.base import Driver
from registry.storage.lock import ObjectLock

MARKER = "registry/id"
JOURNAL_PREFIX = "journal/"
RECORDS_PREFIX = "records/"
VOID_SUFFIX = ".void"
_SEQ_DIGITS = 16
BLOB = "blob"
MANIFEST = "manifest"
_PREFIXES = {BLOB: "blobs", MANIFEST: "manifests"}


def stored_name(kind: str, object_id: str) -> str:
    """The store's name of the `kind` object whose id is `object_id`."""
    return f"{_PREFIXES[kind]}/{object_id[:2]}/{object_id}"


class BlobStore:
    """Seal, store once, open and check blobs and manifests of one registry on one driver."""

    def __init__(
        self,
        driver: Driver,
        keys: KeyProvider,
        *,
        registry_id: str,
        naming_key: bytes,
        chunk_size: int = sealed.DEFAULT_CHUNK_SIZE,
        workers: int = 2,
        chunks_per_read: int = 4,
        on_unwrap: Callable[[str], None] | None = None,
    ) -> None:
        self.driver = driver
        self.keys = keys
        self.registry_id = registry_id
        self._naming_key = naming_key
        self.chunk_size = chunk_size
        self.workers = workers
        self.chunks_per_read = chunks_per_read
        self._on_unwrap = on_unwrap

    # -- names -----------------------------------------------------------------------------

    def object_name(self, kind: str, digest: str) -> str:
        return stored_name(kind, self.object_id(kind, digest))

    def object_id(self, kind: str, digest: str) -> str:
        """The last part of the object's name: what object URLs (`/v1/objects/{id}`) call it.
        Keyed by the naming key, so it says nothing of the content, and the same in every
        region (one naming key per registry)."""
        return keyed_id(self._naming_key, kind, digest)

    def object_prefixes(self) -> tuple[str, ...]:
        """Where blobs and manifests live (with a trailing slash), for listings."""
        return tuple(f"{prefix}/" for prefix in _PREFIXES.values())

    def _slot_folder(self, kind: str, digest: str) -> str:
        object_id = keyed_id(self._naming_key, kind, digest)
        return f"slots/{object_id[:2]}/{object_id}/"

    def slot_name(self, kind: str, digest: str, kek_id: str) -> str:
        return f"{self._slot_folder(kind, digest)}{kind}-{_kek_tag(kek_id)}"

    def _naming_context(self) -> dict[str, str]:
        return {"registry": self.registry_id, "purpose": "naming"}

    def _naming_key_name(self) -> str:
        return self.naming_key_name(self.keys.kek_id)

    @staticmethod
    def naming_key_name(kek_id: str) -> str:
        return f"registry/naming-key/{_kek_tag(kek_id)}"

    def wrap_naming_key(self) -> None:
        """Store the naming key wrapped by the current KEK (a rotation's new key), if absent."""
        wrapped = self.keys.wrap(self._naming_key, context=self._naming_context())
        self.driver.put_if_absent(self._naming_key_name(), [wrapped.to_json()])

    def context(self, kind: str, digest: str) -> dict[str, str]:
        """Encryption context: binds a data key to this registry, the object kind and digest."""
        return {"registry": self.registry_id, "purpose": kind, "digest": digest}

    # -- keys ------------------------------------------------------------------------------

    def _own_slots(self, kind: str, digest: str, *, what: str) -> Iterator[WrappedKey]:
        # The current key's slot first, then those of the keys a rotation is replacing.
        for kek_id in self.keys.kek_ids:
            try:
                data = self.driver.get_range(self.slot_name(kind, digest, kek_id))
            except NotFoundError:
                continue
            yield WrappedKey.from_json(data, what=what)

    def read_slot(self, kind: str, digest: str, *, what: str) -> WrappedKey | None:
        """The key slot stored beside the object for this provider's KEK (during a rotation,
        the new key's, else a previous key's), or None."""
        return next(self._own_slots(kind, digest, what=what), None)

    def read_slots(self, kind: str, digest: str, *, what: str) -> list[WrappedKey]:
        """The object's key slots stored for each of this provider's KEKs (two during a key
        rotation, one otherwise, none when lost)."""
        return list(self._own_slots(kind, digest, what=what))

    def stored_slots(self, kind: str, digest: str) -> list[WrappedKey]:
        """Every key slot of the object the store holds, under any key, configured or not."""
        folder = self._slot_folder(kind, digest)
        return [
            WrappedKey.from_json(self.driver.get_range(info.name), what=info.name)
            for info in self.driver.list(folder)
            if info.name.startswith(f"{folder}{kind}-")
        ]

    def unwrap(self, kind: str, digest: str, slot: WrappedKey, *, what: str) -> bytes:
        data_key = self.keys.unwrap(slot, context=self.context(kind, digest), what=what)
        if self._on_unwrap is not None:
            self._on_unwrap(digest)
        return data_key

    def check_key(self, kind: str, digest: str, data_key: bytes, *, what: str) -> None:
        """Raise IntegrityError unless `data_key` is the key the stored object was sealed with
        (its header's key commitment; no chunk is decrypted)."""
        name = self.object_name(kind, digest)
        try:
            header = self.driver.get_range(name, 0, sealed.HEADER_SIZE)
        except NotFoundError:
            raise IntegrityError(f"{what}: stored object {name} is missing", path=what) from None
        sealed.Opener(data_key, digest, header, what=what)

    def check_slot(self, kind: str, digest: str, *, what: str) -> None:
        """The store's own key slot of an object exists, unwraps, and opens the object: what a
        catalog rebuild from the store alone will rely on."""
        slot = self.read_slot(kind, digest, what=what)
        if slot is None:
            raise IntegrityError(f"{what}: key slot missing from the store", path=what)
        self.check_key(kind, digest, self.unwrap(kind, digest, slot, what=what), what=what)

    # -- write -----------------------------------------------------------------------------

    def keep_locked(self, kind: str, digest: str) -> None:
        """A reused object and its slot stay locked at least as long as fresh ones would be."""
        if not isinstance(self.driver, ObjectLock):
            return
        floor = self.driver.minimum_lock()
        if floor is None:
            return
        for name in (
            self.object_name(kind, digest),
            self.slot_name(kind, digest, self.keys.kek_id),
        ):
            self.driver.hold_at_least(name, floor)

    def header(self, kind: str, digest: str, *, what: str) -> sealed.SealedHeader:
        """The sealed header of a stored object (authenticated only by a later read)."""
        name = self.object_name(kind, digest)
        try:
            return sealed.SealedHeader.unpack(
                self.driver.get_range(name, 0, sealed.HEADER_SIZE), what=what
            )
        except NotFoundError:
            raise IntegrityError(f"{what}: stored object {name} is missing", path=what) from None

    def read_header(
        self, kind: str, digest: str, *, size: int | None, what: str
    ) -> sealed.SealedHeader:
        """The sealed header of a stored object, checked against its expected content size
        (None: not known, as for a manifest) and against the size of what is stored."""
        name = self.object_name(kind, digest)
        info = self.driver.stat(name)
        if info is None:
            raise IntegrityError(f"{what}: stored object {name} is missing", path=what)
        header = sealed.SealedHeader.unpack(
            self.driver.get_range(name, 0, sealed.HEADER_SIZE), what=what
        )
        content = header.plaintext_size if size is None else size
        if header.plaintext_size != content or header.sealed_size != info.size:
            raise IntegrityError(
                f"{what}: stored object has {info.size} bytes, expected {header.sealed_size} "
                f"for {content} bytes of content (truncated or extended)",
                path=what,
            )
        return header

    def open(
        self,
        kind: str,
        digest: str,
        slot: WrappedKey,
        *,
        size: int,
        what: str,
        chunks_per_read: int | None = None,
        verify_digest: bool = True,
        on_chunk: Callable[[int, memoryview], None] | None = None,
    ) -> Iterator[memoryview]:
        """Authenticated plaintext chunks of a stored object; see `sealed.unseal`."""
        name = self.object_name(kind, digest)
        data_key = self.unwrap(kind, digest, slot, what=what)

        def missing() -> IntegrityError:
            return IntegrityError(f"{what}: stored object {name} is missing", path=what)

        def read_range(offset: int, length: int) -> bytes:
            try:
                return self.driver.get_range(name, offset, length)
            except NotFoundError:
                raise missing() from None

        def read_into(offset: int, buffer: memoryview) -> int:
            try:
                return self.driver.read_into(name, offset, buffer)
            except NotFoundError:
                raise missing() from None

        return sealed.unseal(
            read_range,
            data_key,
            digest,
            read_into=read_into,
            on_chunk=on_chunk,
            expected_size=size,
            workers=self.workers,
            chunks_per_read=chunks_per_read or self.chunks_per_read,
            verify_digest=verify_digest,
            what=what,
        )

    def read_bytes(self, kind: str, digest: str, slot: WrappedKey, *, what: str) -> bytes:
        """The whole plaintext of a small object (a manifest), authenticated."""
        name = self.object_name(kind, digest)
        try:
            header_bytes = self.driver.get_range(name, 0, sealed.HEADER_SIZE)
        except NotFoundError:
            raise IntegrityError(f"{what}: stored object {name} is missing", path=what) from None
        header = sealed.SealedHeader.unpack(header_bytes, what=what)
        if header.plaintext_size > 64 * 1024 * 1024:
            raise IntegrityError(f"{what}: implausibly large ({header.plaintext_size} bytes)")
        chunks = self.open(
            kind, digest, slot, size=header.plaintext_size, what=what, verify_digest=False
        )
        # The digest bound here is not the plaintext's (a manifest is named by the digest of its
        # canonical form), so the caller verifies content; AEAD still authenticates every chunk.
        return b"".join(bytes(chunk) for chunk in chunks)

    # -- journal segments and version records ------------------------------------------------

    def _small_aead(self) -> AESGCM:
        # Derived from the naming key, which the store keeps wrapped by every KEK: a rebuild
        # with the key provider alone can open them, and KEK rotation leaves them readable.
        key = blake3.blake3(self._naming_key, derive_key_context="model-registry journal v1")
        return AESGCM(key.digest())

    def _aad(self, name: str) -> bytes:
        # Bound to the registry and the object's own name: moved or renamed, it fails.
        return f"{self.registry_id}\x00{name}".encode()

    def _put_small(self, name: str, data: bytes) -> bool:
        nonce = os.urandom(12)
        sealed_data = nonce + self._small_aead().encrypt(nonce, data, self._aad(name))
        return self.driver.put_if_absent(name, [sealed_data])

    def _read_small(self, name: str, *, what: str) -> bytes:
        try:
            data = self.driver.get_range(name)
        except NotFoundError:
            raise IntegrityError(f"{what} {name} is missing", path=name) from None
        try:
            return self._small_aead().decrypt(data[:12], data[12:], self._aad(name))
        except (InvalidTag, ValueError):
            raise IntegrityError(
                f"{what} {name} does not verify (tampered, renamed, or another registry's)",
                path=name,
            ) from None

    def audit_links_mac(self, links: Sequence[tuple[int, str]]) -> str:
        return audit_links_mac(self._naming_key, links)

    @staticmethod
    def journal_segment_name(epoch: str, first: int, last: int) -> str:
        return f"{JOURNAL_PREFIX}{epoch}/{first:0{_SEQ_DIGITS}d}-{last:0{_SEQ_DIGITS}d}"

    @staticmethod
    def journal_start_name(epoch: str) -> str:
        return f"{JOURNAL_PREFIX}{epoch}/start"

    def put_journal_start(self, epoch: str, data: bytes) -> bool:
        """Seal and store the marker that opens an epoch (write-once); whether it was new."""
        return self._put_small(self.journal_start_name(epoch), data)

    def put_journal_segment(self, epoch: str, first: int, last: int, data: bytes) -> bool:
        """Seal and store entries `first`..`last` of `epoch`, write-once; False when a segment
        of that name was there already (the caller compares what it holds)."""
        return self._put_small(self.journal_segment_name(epoch, first, last), data)

    def journal_listing(self) -> dict[str, tuple[str | None, list[tuple[int, int, str]]]]:
        """Every epoch under journal/: its start marker's name (None: missing) and its segments
        (first, last, name) in order. IntegrityError names an object that is neither."""
        found: dict[str, tuple[str | None, list[tuple[int, int, str]]]] = {}
        for info in self.driver.list(JOURNAL_PREFIX):
            epoch, _, rest = info.name[len(JOURNAL_PREFIX) :].partition("/")
            first, _, last = rest.partition("-")
            valid_epoch = len(epoch) == 32 and all(c in "0123456789abcdef" for c in epoch)
            start, segments = found.get(epoch, (None, []))
            if valid_epoch and rest == "start":
                found[epoch] = (info.name, segments)
            elif valid_epoch and first.isdigit() and last.isdigit() and int(first) <= int(last):
                segments.append((int(first), int(last), info.name))
                found[epoch] = (start, segments)
            else:
                raise IntegrityError(
                    f"journal object {info.name} is not a journal segment", path=info.name
                )
        return {epoch: (start, sorted(segments)) for epoch, (start, segments) in found.items()}

    def read_journal_object(self, name: str) -> bytes:
        what = "journal epoch marker" if name.endswith("/start") else "journal segment"
        return self._read_small(name, what=what)

    def _record_name(self, digest: str, push_id: str) -> str:
        object_id = keyed_id(self._naming_key, MANIFEST, digest)
        return f"{RECORDS_PREFIX}{object_id[:2]}/{object_id}/{push_id}"

    def put_version_record(self, digest: str, data: bytes, *, push_id: str) -> str:
        """Seal and store the record of one push of manifest `digest` (`push_id`: a new hex
        id per push)."""
        name = self._record_name(digest, push_id)
        self._put_small(name, data)
        return name

    def void_version_record(self, digest: str, *, push_id: str) -> None:
        """Mark a push's record as not a version (its commit found the version there already,
        or failed): a rebuild never restores it."""
        name = self._record_name(digest, push_id) + VOID_SUFFIX
        self._put_small(name, b"void")

    def version_records(self) -> tuple[list[str], set[str]]:
        """The names of the version records, and of those voided (each void marker checked)."""
        names = sorted(info.name for info in self.driver.list(RECORDS_PREFIX))
        voided = set()
        for name in names:
            if name.endswith(VOID_SUFFIX):
                if self._read_small(name, what="version record") != b"void":
                    raise IntegrityError(f"version record {name} is not a void marker", path=name)
                voided.add(name.removesuffix(VOID_SUFFIX))
        return [n for n in names if not n.endswith(VOID_SUFFIX)], voided

    def read_version_record(self, name: str) -> bytes:
        return self._read_small(name, what="version record")

    def record_matches(self, name: str, digest: str) -> bool:
        """Whether a version record stored under `name` may describe manifest `digest`."""
        return name.startswith(self._record_name(digest, ""))

    # -- registry marker ---------------------------------------------------------------------

    def claim(self) -> None:
        """Mark the store as this registry's (or check that it is) and keep a wrapped copy of
        the naming key there, so the key provider alone can find objects after a disaster."""
        marker = json.dumps({"registry_id": self.registry_id, "format": 1}).encode()
        if not self.driver.put_if_absent(MARKER, [marker]):
            self.check_claim()
        wrapped = self.keys.wrap(self._naming_key, context=self._naming_context())
        self.driver.put_if_absent(self._naming_key_name(), [wrapped.to_json()])

    def claimed(self) -> bool:
        """Whether the store holds a registry marker (claimed by some registry)."""
        return self.driver.stat(MARKER) is not None

    def check_claim(self) -> None:
        """The store is this registry's, and the configured naming key is the one its objects
        were named with (else every object would look missing)."""
        owner = store_owner(self.driver)
        if owner is None:
            raise StorageError(
                "the store holds no registry marker (a new, emptied or rebuilt store)",
                hint="`model-registry init` claims a new registry's store; "
                "`model-registry replicate` claims and refills a rebuilt region",
            )
        if owner != self.registry_id:
            raise ConfigurationError(
                f"the store belongs to registry {owner!r}, not {self.registry_id!r}",
                hint="each registry needs its own store; check the [store] section of config.toml",
            )
        wrapped = _wrapped_naming_key(self.driver, self.keys)
        if wrapped is None:
            return  # written by claim(); a store from before it, or another KEK's, has none
        stored = self.keys.unwrap(wrapped, context=self._naming_context(), what="naming key")
        if not hmac.compare_digest(stored, self._naming_key):
            raise KeyAccessError(
                "the configured naming key is not the one this store's objects are named with",
                hint="point keys.naming_key_file at this registry's naming.key",
            )


def store_owner(driver: Driver) -> str | None:
    """The registry id a store's marker names (None: no marker, the store is not claimed)."""
    try:
        owner = json.loads(driver.get_range(MARKER)).get("registry_id")
    except NotFoundError:
        return None
    except (ValueError, AttributeError):
        return "<unreadable marker>"
    return None if owner is None else str(owner)


def stored_naming_key(driver: Driver, keys: KeyProvider, *, registry_id: str) -> bytes:
    """The naming key as the store keeps it, unwrapped by `keys`: what a rebuild starts from
    when the naming key file is lost too. Checks the store's marker first."""
    try:
        owner = json.loads(driver.get_range(MARKER)).get("registry_id")
    except NotFoundError:
        raise StorageError(
            "the store holds no registry marker: it is empty, or not a registry's store",
            hint="check the region's [store] settings in config.toml",
        ) from None
    except (ValueError, AttributeError):
        raise IntegrityError(f"the store's marker {MARKER} is unreadable", path=MARKER) from None
    if owner != registry_id:
        raise ConfigurationError(
            f"the store belongs to registry {owner!r}, not {registry_id!r}",
            hint="use the config.toml of the registry whose store this is",
        )
    wrapped = _wrapped_naming_key(driver, keys)
    if wrapped is None:
        raise KeyAccessError(
            f"the store keeps no naming key wrapped by {keys.kek_id}",
            hint="restore keys.naming_key_file from its backup, or use the key this store "
            "was written with",
        )
    return keys.unwrap(
        wrapped, context={"registry": registry_id, "purpose": "naming"}, what="naming key"
    )


def _wrapped_naming_key(driver: Driver, keys: KeyProvider) -> WrappedKey | None:
    """The naming key as the store keeps it wrapped by one of `keys`' KEKs (None: by none)."""
    for kek_id in keys.kek_ids:
        try:
            return WrappedKey.from_json(
                driver.get_range(BlobStore.naming_key_name(kek_id)), what="naming key"
            )
        except NotFoundError:
            continue
    return None


def seal_bytes(data_key: bytes, digest: str, data: bytes, *, chunk_size: int) -> list[bytes]:
    """Small content (a manifest) sealed in memory: the header, then every chunk."""
    sealer = sealed.Sealer(data_key, digest, plaintext_size=len(data), chunk_size=chunk_size)
    chunks = [sealer.header_bytes]
    view = memoryview(data)
    for index in range(sealer.header.chunk_count):
        start = index * sealer.header.chunk_size
        size = sealer.header.chunk_plain_size(index)
        chunks.append(bytes(sealer.seal_chunk(index, view[start : start + size])))
    return chunks


def _kek_tag(kek_id: str) -> str:
    """A short, name-safe tag of a key-encryption key id (ids hold ':' and ARNs)."""
    return str(blake3.blake3(kek_id.encode()).hexdigest())[:16]


def audit_links_mac(naming_key: bytes, links: Sequence[tuple[int, str]]) -> str:
    """A MAC, under a key derived from the naming key, of the audit entries a rebuild restored
    as chain links only: (id, hash) pairs. The naming key alone: `audit verify` needs no
    key-encryption key."""
    key = blake3.blake3(naming_key, derive_key_context="model-registry audit links v1")
    body = json.dumps([[int(i), str(h)] for i, h in links], separators=(",", ":"))
    return str(blake3.blake3(body.encode(), key=key.digest()).hexdigest())
