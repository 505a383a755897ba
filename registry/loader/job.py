"""One loader call at work (`Job`): the source opened and the version resolved once, its
tensors indexed, the pipeline and the progress of the call, files read whole (CPU memory or a GPU
through the staging ring) or tensor by tensor, and what it did (LoadStats, the audit record)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.client import RemoteRegistry
from registry.errors import InvalidInputError, NotFoundError
from registry.loader.cache import CachedReader
from registry.loader.engine import Counters, HostTarget, Pipeline, SealedFile, StagingRing
from registry.loader.memory import HostMemory
from registry.loader.options import GPU_SLOT_BYTES, LoadOptions, default_workers
from registry.loader.progress import Progress
from registry.loader.results import LoadStats
from registry.loader.sources import FileReader, ModelSource, Resolved, open_source
from registry.loader.tensors import (
    CudaTarget,
    row_span,
    tensor_from,
    tensor_from_span,
)
from registry.manifest import ManifestFile
from registry.records import VersionRecord
from registry.safetensors_header import SafetensorsHeader, TensorEntry
from registry.service import Registry

if TYPE_CHECKING:
    import torch

Selection = Iterable[str] | Callable[[str], bool] | None


@dataclass
class Located:
    """Where a tensor is: its file in the manifest, that file's safetensors header, its entry."""

    file: ManifestFile
    header: SafetensorsHeader
    tensor: TensorEntry


@dataclass
class Job:
    """One call's state: the source, the resolved version, the pipeline, the progress and the
    statistics; it reads files whole and tensors on their own."""

    source: ModelSource
    resolved: Resolved
    options: LoadOptions
    pipeline: Pipeline
    progress: Progress
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.perf_counter)
    tensors: dict[str, Located] = field(default_factory=dict)
    verified: list[str] = field(default_factory=list)
    authenticated: list[str] = field(default_factory=list)
    regions: set[str] = field(default_factory=set)
    cache_hits: int = 0
    plaintext: int = 0
    first_tensor: float | None = None
    cuda: CudaTarget | None = None
    _kept: tuple[str, int, int, bytearray] | None = None

    @classmethod
    def start(
        cls, ref: str, registry: Registry | RemoteRegistry | None, options: LoadOptions
    ) -> Job:
        options.check()  # imports torch, before the clock starts: a second, once
        source = open_source(registry, cache=options.cache)
        try:
            resolved = source.resolve(ref)
            job = cls(
                source,
                resolved,
                options,
                Pipeline(
                    workers=options.workers or default_workers(),
                    chunks_per_read=options.chunks_per_read,
                ),
                Progress(
                    f"loading {resolved.version.ref}",
                    bar=options.progress,
                    on_progress=options.on_progress,
                ),
            )
        except BaseException:
            source.close()
            raise
        try:
            job.index()
        except BaseException:
            job.close()
            raise
        return job

    def index(self) -> None:
        resolved = self.resolved
        for entry in resolved.manifest.files:
            if entry.safetensors is None:
                continue
            for tensor in entry.safetensors.tensors:
                if tensor.name in self.tensors:
                    raise InvalidInputError(
                        f"{resolved.version.ref}: tensor {tensor.name!r} is in "
                        f"{self.tensors[tensor.name].file.path} and {entry.path}"
                    )
                self.tensors[tensor.name] = Located(entry, entry.safetensors, tensor)

    @property
    def version(self) -> VersionRecord:
        return self.resolved.version

    def close(self) -> None:
        try:
            self.pipeline.close()
            self.progress.stop()
        finally:
            self.source.close()

    def select(self, tensors: Selection) -> dict[str, list[Located]]:
        """The tensors asked for, by file path (in manifest order)."""
        if tensors is None:
            chosen = list(self.tensors.values())
        elif callable(tensors):
            chosen = [located for name, located in self.tensors.items() if tensors(name)]
        else:
            names = [tensors] if isinstance(tensors, str) else list(tensors)
            missing = [name for name in names if name not in self.tensors]
            if missing:
                raise NotFoundError(
                    f"{self.version.ref} has no tensor {missing[0]!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                )
            chosen = [self.tensors[name] for name in dict.fromkeys(names)]
        by_file: dict[str, list[Located]] = {}
        for located in chosen:
            by_file.setdefault(located.file.path, []).append(located)
        order = [e.path for e in self.resolved.manifest.files]
        return {path: by_file[path] for path in order if path in by_file}

    def metadata(self) -> dict[str, str]:
        """The safetensors `__metadata__` of the version's files, merged (first file first)."""
        merged: dict[str, str] = {}
        for entry in self.resolved.manifest.files:
            if entry.safetensors is not None and entry.safetensors.metadata:
                for key, value in entry.safetensors.metadata.items():
                    merged.setdefault(key, value)
        return merged

    def stream(self, tensors: Selection, *, early: bool) -> Generator[tuple[str, Any]]:
        """Tensors of the selection: files wanted whole are read whole (and verified), the
        others tensor by tensor. `early`: see `iter_tensors`."""
        selected = self.select(tensors)
        files = {entry.path: entry for entry in self.resolved.manifest.files}
        whole = {
            path: len(wanted) == len(files[path].safetensors.tensors)  # type: ignore[union-attr]
            for path, wanted in selected.items()
        }
        self.begin(
            sum(
                files[path].size if whole[path] else sum(w.tensor.nbytes for w in wanted)
                for path, wanted in selected.items()
            )
        )
        batch: list[tuple[ManifestFile, list[Located]]] = []
        for path, wanted in selected.items():
            entry = files[path]
            if whole[path]:
                batch.append((entry, wanted))
                continue
            if batch:
                yield from self.whole_files(batch, early=early)
                batch = []
            sealed, reader = self.open_file(entry)
            try:
                for located in wanted:
                    yield located.tensor.name, self.one_tensor(located, sealed)
            finally:
                self.finish_reader(reader, None)
            self.authenticated.append(path)
        if batch:
            yield from self.whole_files(batch, early=early)

    # -- progress ---------------------------------------------------------------------------

    def begin(self, total: int) -> None:
        self.progress.begin(total)

    def advance(self, amount: int) -> None:
        self.progress.advance(amount)

    def first(self) -> None:
        if self.first_tensor is None:
            self.first_tensor = time.perf_counter() - self.started
            self.source.streaming()

    # -- reading -----------------------------------------------------------------------------

    def open_file(
        self, entry: ManifestFile, *, verified: bool = False
    ) -> tuple[SealedFile, FileReader]:
        """A file's sealed reader. `verified`: read whole and hashed against the manifest, so
        its ranges may be taken in place from a mapping (see RangeOpener)."""
        what = f"{self.version.ref}: {entry.path}"
        key = self.source.data_key(self.resolved, entry)
        reader = self.source.reader(self.resolved, entry)
        try:
            sealed = SealedFile(
                reader,
                key,
                entry.digest,
                entry.size,
                what=what,
                counters=self.counters,
                chunks=entry.chunks,
                in_place=verified,
            )
        except BaseException:
            self.finish_reader(reader, None)
            raise
        return sealed, reader

    def finish_reader(self, reader: FileReader, sealed: SealedFile | None) -> None:
        self.regions.update(reader.regions_used())
        if isinstance(reader, CachedReader):
            if reader.was_hit:
                self.cache_hits += 1
            if sealed is not None:
                reader.verified(sealed.header.sealed_size)
            reader.close()

    def adapt(self, tensor: Any) -> Any:
        """dtype= on floating tensors, then the device (partial reads decrypt on the CPU)."""
        if self.options.framework != "pt":
            return tensor
        dtype = self.options.dtype
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        if str(tensor.device) != self.options.device and self.options.device != "cpu":
            tensor = tensor.to(self.options.device)
        return tensor

    def whole_files(
        self, batch: list[tuple[ManifestFile, list[Located]]], *, early: bool
    ) -> Iterator[tuple[str, Any]]:
        """The tensors of files read whole, in order: on a GPU file by file through the staging
        ring, in host memory through one pipeline whose workers go on to the next file while
        the last runs of one complete. Each file's tensors once it is verified whole; with
        `early`, each tensor as soon as its chunks are authenticated (the file's digest is then
        checked after its last tensor was yielded)."""
        if self.options.device.startswith("cuda") and self.options.framework == "pt":
            for entry, wanted in batch:
                if early:
                    yield from self._to_device(entry, wanted)
                else:
                    yield from list(self._to_device(entry, wanted))  # raises before handing out
            return
        yield from self._to_host(batch, early=early)

    def _to_device(self, entry: ManifestFile, wanted: list[Located]) -> Iterator[tuple[str, Any]]:
        header = entry.safetensors
        assert header is not None
        verify = self.options.verify == "full"
        sealed, reader = self.open_file(entry, verified=verify)
        try:
            buffer = self._to_cuda(sealed, verify=verify)
            self.plaintext += entry.size
            (self.verified if verify else self.authenticated).append(entry.path)
            self.finish_reader(reader, sealed if verify else None)
        except BaseException:
            self.finish_reader(reader, None)
            raise
        for located in wanted:
            self.first()
            yield (
                located.tensor.name,
                self.adapt(tensor_from(buffer, header, located.tensor, framework="pt")),
            )

    def _to_host(
        self, batch: list[tuple[ManifestFile, list[Located]]], *, early: bool
    ) -> Iterator[tuple[str, Any]]:
        verify = self.options.verify == "full"
        framework = self.options.framework
        reading: dict[str, tuple[ManifestFile, deque[Located], SealedFile, FileReader, Any]] = {}

        def targets() -> Iterator[HostTarget]:
            for entry, wanted in batch:
                sealed, reader = self.open_file(entry, verified=verify)
                try:
                    memory = HostMemory(entry.size, framework=framework)
                except BaseException:
                    self.finish_reader(reader, None)
                    raise
                order = deque(sorted(wanted, key=lambda located: located.tensor.end))
                reading[entry.path] = (entry, order, sealed, reader, memory.buffer)
                yield HostTarget(sealed, memory.view, memory.prepare, key=entry.path)

        def tensor(entry: ManifestFile, buffer: Any, located: Located) -> tuple[str, Any]:
            assert entry.safetensors is not None
            self.first()
            made = tensor_from(buffer, entry.safetensors, located.tensor, framework=framework)
            return located.tensor.name, self.adapt(made)

        try:
            events = self.pipeline.decrypt_files(targets(), verify=verify, on_progress=self.advance)
            with closing(events):
                for target, done in events:
                    entry, order, sealed, reader, buffer = reading[target.key]
                    complete = done == entry.size
                    if early or complete:
                        data = entry.safetensors.data_offset  # type: ignore[union-attr]
                        while order and (complete or data + order[0].tensor.end <= done):
                            yield tensor(entry, buffer, order.popleft())
                    if complete:
                        del reading[target.key]
                        self.plaintext += entry.size
                        (self.verified if verify else self.authenticated).append(entry.path)
                        self.finish_reader(reader, sealed if verify else None)
        finally:
            for _entry, _order, _sealed, reader, _buffer in reading.values():
                self.finish_reader(reader, None)

    def _to_cuda(self, sealed: SealedFile, *, verify: bool) -> torch.Tensor:
        if self.cuda is None:
            self.cuda = CudaTarget(
                self.options.device,
                staging_bytes=self.options.staging_bytes,
                slot_size=GPU_SLOT_BYTES,
            )
        target = self.cuda
        ring = StagingRing(target.views, target.slot_size, reclaim=target.reclaim)
        target.release = ring.release
        destination = target.allocate(sealed.size)
        try:
            self.pipeline.decrypt_through(
                sealed,
                ring,
                lambda offset, plaintext, slot: target.deliver(
                    destination, offset, len(plaintext), slot
                ),
                verify=verify,
                on_progress=self.advance,
            )
        finally:
            target.finish()
        return destination

    def one_tensor(
        self, located: Located, sealed: SealedFile, rows: tuple[int, int] | None = None
    ) -> Any:
        """One tensor (or rows first..stop-1 of its first dimension) read on its own: only the
        chunks holding it, each authenticated."""
        tensor = located.tensor
        if rows is None:
            start, end = tensor.begin, tensor.end
            shape = tensor.shape
        else:
            start, end = row_span(tensor, *rows)
            shape = (rows[1] - rows[0], *tensor.shape[1:])
        offset = located.header.data_offset
        covered, at = self._span(located.file.path, sealed, offset + start, offset + end)
        self.plaintext += end - start
        self.advance(end - start)
        self.first()
        made = tensor_from_span(covered, at, tensor, shape, framework=self.options.framework)
        if 2 * (end - start) < len(covered):
            made = made.copy() if self.options.framework == "numpy" else made.clone()
        return self.adapt(made)

    def _span(self, path: str, sealed: SealedFile, start: int, end: int) -> tuple[bytearray, int]:
        """Plaintext [start, end) of a file in a buffer of whole chunks; the chunks decrypted
        last are kept, so neighbouring small tensors do not read them again."""
        first, last = sealed.chunks_of(start, end) if end > start else (0, -1)
        kept = self._kept
        if kept is not None and kept[0] == path and kept[1] <= first and last <= kept[2]:
            return kept[3], start - kept[1] * sealed.chunk_size
        covered, at = self.pipeline.decrypt_span(sealed, start, end)
        if end > start and last - first < self.pipeline.chunks_per_read:
            self._kept = (path, first, last, covered)  # small: a few chunks at most
        return covered, at

    def stats(self) -> LoadStats:
        return LoadStats(
            ref=self.version.ref,
            digest=self.version.digest,
            device=self.options.device,
            framework=self.options.framework,
            files=len(set(self.verified) | set(self.authenticated)),
            tensors=0,
            bytes=self.plaintext,
            sealed_bytes=self.counters.sealed_bytes,
            reads=self.counters.reads,
            retries=self.counters.retries,
            seconds=time.perf_counter() - self.started,
            time_to_first_tensor=self.first_tensor,
            regions=tuple(sorted(self.regions)),
            verified_files=tuple(self.verified),
            authenticated_files=tuple(dict.fromkeys(self.authenticated)),
            cache_hits=self.cache_hits,
            staging_bytes=self.cuda.staging_bytes if self.cuda is not None else 0,
        )

    def record(self, stats: LoadStats, *, complete: bool = True) -> None:
        self.source.finished(
            self.resolved,
            {
                "complete": complete,
                "digest": self.version.digest,
                "files": stats.files,
                "tensors": stats.tensors,
                "bytes": stats.bytes,
                "verified_files": len(stats.verified_files),
                "device": stats.device,
            },
        )


__all__ = ["Job", "Located", "Selection"]
