"""What the loader's calls hand back: `LoadStats` (what a load did), `LoadedModel` (tensors by
name, with their version) and `LoadIntoResult`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.records import VersionRecord


@dataclass
class LoadStats:
    """What a load did."""

    ref: str
    digest: str
    device: str
    framework: str
    files: int = 0
    tensors: int = 0
    bytes: int = 0  # plaintext bytes decrypted
    sealed_bytes: int = 0  # sealed bytes read
    reads: int = 0  # range reads
    retries: int = 0  # ranges read again from another copy after failing authentication
    seconds: float = 0.0
    time_to_first_tensor: float | None = None
    regions: tuple[str, ...] = ()
    verified_files: tuple[str, ...] = ()  # every chunk authenticated and the BLAKE3 checked
    authenticated_files: tuple[str, ...] = ()  # partly read: the chunks read authenticated
    cache_hits: int = 0
    staging_bytes: int = 0  # pinned host memory of a GPU load

    @property
    def throughput(self) -> float:
        """Plaintext bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class LoadedModel(dict[str, Any]):
    """Tensors by name, with the version they came from (`version.ref`, `version.digest`), the
    safetensors metadata of the files and the LoadStats."""

    version: VersionRecord
    stats: LoadStats
    metadata: dict[str, str]


@dataclass(frozen=True)
class LoadIntoResult:
    version: VersionRecord
    stats: LoadStats
    missing_keys: list[str]
    unexpected_keys: list[str]


__all__ = ["LoadIntoResult", "LoadStats", "LoadedModel"]
