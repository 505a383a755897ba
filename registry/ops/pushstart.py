"""The start of a push: its hashing pass begun on a thread the moment the push is asked for, while
the rest of the push (SQLAlchemy and the catalog, the stores, the crypto) is imported and its
checks run; `ops.push` takes the digests if they are of the very files it collects.

Hashing changes nothing, so it may start before the checks that refuse a push (a catalog behind
the stores' journal, an untrusted signer): they still run first for everything that writes. The
early pass is abandoned when the push fails before it, and the push hashes again itself, in its
own order, when the early pass failed or saw other files. Measured in docs/benchmarks.md ("CLI
start-up"): importing the push takes about as long as hashing 1 GiB.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from registry import manifest as manifests
from registry.digest import FileDigests, hash_file_chunks
from registry.manifest import SIGNATURE_FILE
from registry.materialize import NoProgress, Progress
from registry.ops.access import requires
from registry.ops.context import Context

if TYPE_CHECKING:
    from registry.provenance import ProvenanceRequest
    from registry.reports import PushResult


@requires("push")
def push(
    ctx: Context,
    name: str,
    path: str | Path,
    *,
    message: str = "",
    write_quorum: int | None = None,
    progress: Progress | None = None,
    follow_symlinks: bool = False,
    provenance: ProvenanceRequest | None = None,
    signature: bytes | None = None,
) -> PushResult:
    """`ops.push.push`, its hashing begun before it is imported."""
    progress = progress or NoProgress()
    early = EarlyDigests(
        Path(path), progress, chunk_size=ctx.settings.chunk_size, follow_symlinks=follow_symlinks
    )
    try:
        from registry.ops import push as pushing

        return pushing.push(
            ctx,
            name,
            path,
            message=message,
            write_quorum=write_quorum,
            progress=progress,
            early=early,
            follow_symlinks=follow_symlinks,
            provenance=provenance,
            signature=signature,
        )
    finally:
        early.stop()


class _StoppedError(Exception):
    """The push no longer needs the early pass."""


class EarlyDigests:
    """The digests and chunk roots (at `chunk_size`) of the files under `path`, computed on a
    thread of their own (reporting to `progress` as the push's hashing pass does) from
    construction on."""

    def __init__(
        self, path: Path, progress: Progress, *, chunk_size: int, follow_symlinks: bool = False
    ) -> None:
        self._path = path
        self._follow_symlinks = follow_symlinks
        self._progress = progress
        self._chunk_size = chunk_size
        self._stopped = threading.Event()
        # Each file's path in the version -> (size, bytes validated, digests); None: failed.
        self._found: dict[str, tuple[int, bytes, FileDigests]] | None = None
        self._thread = threading.Thread(target=self._run, name="push-hashing", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            files = manifests.collect(self._path, follow_symlinks=self._follow_symlinks)
            self._progress.begin("hashing", sum(entry.size for entry in files))
            found = {
                entry.path: (
                    entry.size,
                    entry.validated,
                    hash_file_chunks(
                        entry.source,
                        chunk_size=self._chunk_size,
                        on_progress=self._advance,
                        starts_with=entry.validated,
                    ),
                )
                for entry in files
            }
            self._progress.end()
            self._found = found
        except Exception:  # noqa: BLE001 - the push hashes again and reports what fails, in order
            self._found = None

    def _advance(self, count: int) -> None:
        if self._stopped.is_set():
            raise _StoppedError
        self._progress.advance(count)

    def digests(
        self, files: list[manifests.LocalFile], *, chunk_size: int
    ) -> list[FileDigests] | None:
        """The digests of `files`, once hashed, if they are the files (paths, sizes and validated
        bytes) the early pass hashed, at this chunk size; else None (hash them again)."""
        self._thread.join()
        found = self._found
        # A root model.sig is the push's signature, not one of its files (ops.provenance):
        # the early pass hashed it too, and that is no reason to hash the rest again.
        if found is not None:
            found = {path: value for path, value in found.items() if path != SIGNATURE_FILE}
        if (
            found is None
            or chunk_size != self._chunk_size
            or set(found) != {entry.path for entry in files}
        ):
            return None
        hashed = []
        for entry in files:
            size, validated, digest = found[entry.path]
            if size != entry.size or validated != entry.validated:
                return None
            hashed.append(digest)
        return hashed

    def stop(self) -> None:
        """Abandon the pass (at its next buffer) and wait for its thread."""
        self._stopped.set()
        self._thread.join()
