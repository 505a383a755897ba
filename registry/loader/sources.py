"""Where a load reads from: a version's verified manifest, the data keys of its files, and a
reader of each file's sealed bytes. Either the local home (`Registry`: the stores of every
region with fail-over per range, keys unwrapped here) or a registry server (`RemoteRegistry`:
ranged ciphertext and the key broker, so the serving node holds no key-encryption key); remote
ciphertext can be kept in a local cache (registry.loader.cache). Plaintext never leaves the
loader."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from registry.client import RemoteRegistry
from registry.errors import IntegrityError, NotFoundError
from registry.loader.cache import Cache, CachedReader
from registry.manifest import Manifest, ManifestFile
from registry.records import VersionRecord
from registry.service import ReadReport, Registry

ENV_URL = "MODEL_REGISTRY_URL"
ENV_TOKEN = "MODEL_REGISTRY_TOKEN"  # noqa: S105 - a variable name, not a secret


class FileReader(Protocol):
    """Sealed bytes of one file of the version being loaded."""

    def read_into(self, offset: int, buffer: memoryview, /) -> int: ...

    def view(self, offset: int, length: int, /) -> memoryview | None: ...

    def damaged(self, offset: int, error: IntegrityError, /) -> bool: ...

    def regions_used(self) -> list[str]: ...


@dataclass(frozen=True)
class Resolved:
    version: VersionRecord
    manifest: Manifest


class ModelSource(Protocol):
    """What the loader needs of a registry."""

    where: str

    def resolve(self, ref: str) -> Resolved: ...

    def data_key(self, resolved: Resolved, entry: ManifestFile) -> bytes: ...

    def reader(self, resolved: Resolved, entry: ManifestFile) -> FileReader: ...

    def streaming(self) -> None:
        """The first tensor is out: prepare what `finished` needs while the rest streams."""

    def finished(self, resolved: Resolved, details: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class LocalSource:
    """The registry of a home, read directly (the catalog, the stores and the keys). With
    `cache`, objects of a registry whose stores are all remote (S3) are cached locally."""

    def __init__(
        self, registry: Registry, *, cache: Cache | bool | None = None, owned: bool = False
    ) -> None:
        self.registry = registry
        self.owned = owned
        self.where = "local"
        self.report = ReadReport()
        self.unwraps = 0  # data keys this source unwrapped, for the load's audit entry
        remote = all(region.store.path is None for region in registry.settings.regions)
        self.cache = _cache(cache) if remote else None

    def resolve(self, ref: str) -> Resolved:
        details = self.registry.show(ref)  # manifest authenticated, digest and signature checked
        return Resolved(details.version, details.manifest)

    def data_key(self, resolved: Resolved, entry: ManifestFile) -> bytes:
        # Counted per call, so a handle shared by concurrent loads audits each its own.
        with self.registry.counting_unwraps() as unwraps:
            key = self.registry.blob_key(resolved.version, entry.digest)
        self.unwraps += unwraps.value
        return key

    def reader(self, resolved: Resolved, entry: ManifestFile) -> FileReader:
        what = f"{resolved.version.ref}: {entry.path}"
        upstream = self.registry.blob_reader(entry.digest, self.report, what=what)
        if self.cache is None:
            return upstream
        return self.cache.reader(entry.digest, upstream)

    def streaming(self) -> None:
        self.registry.prepare_load_record()

    def finished(self, resolved: Resolved, details: dict[str, Any]) -> None:
        details = {**details, "key_unwraps": self.unwraps}
        self.registry.record_load(resolved.version, details, self.report)

    def close(self) -> None:
        if self.owned:
            self.registry.close()


class _RemoteReader:
    """Ranged ciphertext of one file through the API (the server fails over between regions
    itself, so a damaged range is not read again from here)."""

    def __init__(self, client: RemoteRegistry, ref: str, entry: ManifestFile) -> None:
        self.client, self.ref, self.path, self.digest = client, ref, entry.path, entry.digest

    def read_into(self, offset: int, buffer: memoryview, /) -> int:
        if not len(buffer):
            return 0
        data = self.client.read_ciphertext(
            self.ref, self.path, offset, len(buffer), digest=self.digest
        )
        if len(data) > len(buffer):
            raise IntegrityError(f"{self.ref}: {self.path}: the server sent more than asked")
        buffer[: len(data)] = data
        return len(data)

    def view(self, offset: int, length: int, /) -> memoryview | None:
        return None  # ciphertext arrives over HTTP: nothing to take in place

    def damaged(self, offset: int, error: IntegrityError, /) -> bool:
        return False

    def regions_used(self) -> list[str]:
        return ["server"]


class RemoteSource:
    """A registry server: the manifest the server verified (its digest checked again here), the
    data keys from the key broker (one audited call per load), ranged ciphertext."""

    def __init__(
        self, client: RemoteRegistry, *, cache: Cache | None = None, owned: bool = False
    ) -> None:
        self.client = client
        self.cache = cache
        self.owned = owned
        self.where = client.url
        self._keys: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str) -> Resolved:
        details = self.client.show(ref)
        return Resolved(details.version, details.manifest)

    def data_key(self, resolved: Resolved, entry: ManifestFile) -> bytes:
        version = resolved.version
        with self._lock:
            keys = self._keys.get(version.digest)
            if keys is None:
                keys = {
                    digest: key
                    for (purpose, digest), key in self.client.data_keys(version.ref).items()
                    if purpose == "blob"
                }
                self._keys[version.digest] = keys
        try:
            return keys[entry.digest]
        except KeyError:
            raise NotFoundError(f"the key broker sent no key for {entry.path}") from None

    def reader(self, resolved: Resolved, entry: ManifestFile) -> FileReader:
        upstream = _RemoteReader(self.client, resolved.version.ref, entry)
        if self.cache is None:
            return upstream
        return self.cache.reader(entry.digest, upstream)

    def streaming(self) -> None:
        pass  # the server audits the key broker's call

    def finished(self, resolved: Resolved, details: dict[str, Any]) -> None:
        pass  # the server audited the key broker call

    def close(self) -> None:
        if self.owned:
            self.client.close()


def _cache(cache: Cache | bool | None) -> Cache | None:
    return Cache.default() if cache is True else (cache or None)


def open_source(
    registry: Registry | RemoteRegistry | None, *, cache: Cache | bool | None = True
) -> ModelSource:
    """The source for `registry`: a given Registry or RemoteRegistry, else the server at
    MODEL_REGISTRY_URL (with MODEL_REGISTRY_TOKEN), else the local home. `cache` (used for a
    server, and for a home whose stores are all S3): True for the default cache directory,
    False or None for none, or a Cache."""
    if isinstance(registry, Registry):
        return LocalSource(registry, cache=cache)
    if isinstance(registry, RemoteRegistry):
        return RemoteSource(registry, cache=_cache(cache))
    url = os.environ.get(ENV_URL)
    if url:
        client = RemoteRegistry(url, os.environ.get(ENV_TOKEN, ""))
        return RemoteSource(client, cache=_cache(cache), owned=True)
    return LocalSource(Registry.open(), cache=cache, owned=True)


__all__ = ["CachedReader", "LocalSource", "ModelSource", "RemoteSource", "open_source"]
