"""The loader's public calls: `load`, `open` (a safe_open-like reader with `get_slice`),
`load_into` and `iter_tensors`, over one pipeline (registry.loader.engine) per call.

What is verified: a file loaded whole has every chunk authenticated (AES-GCM) and its BLAKE3
checked in the same pass; `load` returns nothing unless every file matched. A tensor read on
its own (`open(...).get_tensor`, `get_slice`, `load(tensors=...)` taking part of a file) reads
only the chunks holding it: each is authenticated, but the whole-file digest cannot be checked
without the whole file; `LoadStats` lists which files were checked which way.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.client import RemoteRegistry
from registry.errors import InvalidInputError, NotFoundError
from registry.loader.cache import Cache, CachedReader
from registry.loader.engine import (
    DEFAULT_CHUNKS_PER_READ,
    Counters,
    Pipeline,
    SealedFile,
    StagingRing,
)
from registry.loader.sources import FileReader, ModelSource, Resolved, open_source
from registry.loader.tensors import (
    CudaTarget,
    check_framework,
    empty_bytes,
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

DEFAULT_STAGING_BYTES = 512 * 1024 * 1024
GPU_SLOT_BYTES = 16 * 1024 * 1024
VERIFY_MODES = ("full", "aead")

Selection = Iterable[str] | Callable[[str], bool] | None


def default_workers() -> int:
    """Decryption threads: one per core, 2 to 8 (hashing runs beside them)."""
    return max(2, min(8, os.cpu_count() or 2))


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


@dataclass
class _Options:
    device: str = "cpu"
    dtype: Any = None
    framework: str = "pt"
    workers: int | None = None
    chunks_per_read: int = DEFAULT_CHUNKS_PER_READ
    staging_bytes: int = DEFAULT_STAGING_BYTES
    verify: str = "full"
    progress: bool = False
    on_progress: Callable[[int, int], None] | None = None
    cache: Cache | bool | None = True

    def check(self) -> None:
        check_framework(self.framework)
        if self.verify not in VERIFY_MODES:
            raise InvalidInputError(f"verify must be one of {VERIFY_MODES}, not {self.verify!r}")
        if self.framework == "numpy" and (self.device != "cpu" or self.dtype is not None):
            raise InvalidInputError("framework='numpy' loads on the CPU, without dtype=")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise InvalidInputError(f"unknown device {self.device!r}", hint="cpu, cuda or cuda:N")
        if self.framework == "pt":
            import torch

            if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
                raise InvalidInputError(
                    f"dtype must be a torch.dtype, not {self.dtype!r}", hint="e.g. torch.bfloat16"
                )
            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise InvalidInputError(
                    f"device {self.device!r} asked for, but torch sees no CUDA device",
                    hint="install a CUDA build of torch on a machine with a GPU, or load on cpu",
                )
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise InvalidInputError("workers must be 1 to 64")
        if not 1 <= self.chunks_per_read <= 64:
            raise InvalidInputError("chunks_per_read must be 1 to 64")
        if self.staging_bytes < 2 * GPU_SLOT_BYTES:
            raise InvalidInputError(f"staging_bytes must be at least {2 * GPU_SLOT_BYTES}")


@dataclass
class _Located:
    file: ManifestFile
    header: SafetensorsHeader
    tensor: TensorEntry


@dataclass
class _Job:
    """One call's state: the source, the resolved version, the pipeline and the statistics."""

    source: ModelSource
    resolved: Resolved
    options: _Options
    pipeline: Pipeline
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.perf_counter)
    tensors: dict[str, _Located] = field(default_factory=dict)
    verified: list[str] = field(default_factory=list)
    authenticated: list[str] = field(default_factory=list)
    regions: set[str] = field(default_factory=set)
    cache_hits: int = 0
    plaintext: int = 0
    first_tensor: float | None = None
    cuda: CudaTarget | None = None
    _kept: tuple[str, int, int, bytearray] | None = None
    bar: Any = None
    total: int = 0
    done: int = 0

    @classmethod
    def start(cls, ref: str, registry: Registry | RemoteRegistry | None, options: _Options) -> _Job:
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
                self.tensors[tensor.name] = _Located(entry, entry.safetensors, tensor)

    @property
    def version(self) -> VersionRecord:
        return self.resolved.version

    def close(self) -> None:
        try:
            self.pipeline.close()
            if self.bar is not None:
                self.bar.stop()
        finally:
            self.source.close()

    def select(self, tensors: Selection) -> dict[str, list[_Located]]:
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
        by_file: dict[str, list[_Located]] = {}
        for located in chosen:
            by_file.setdefault(located.file.path, []).append(located)
        order = [e.path for e in self.resolved.manifest.files]
        return {path: by_file[path] for path in order if path in by_file}

    # -- progress ---------------------------------------------------------------------------

    def begin(self, total: int) -> None:
        self.total = total
        if self.options.progress:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self.bar.start()
            self._task = self.bar.add_task(f"loading {self.version.ref}", total=total)

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.bar is not None:
            self.bar.update(self._task, advance=amount)
        if self.options.on_progress is not None:
            self.options.on_progress(self.done, self.total)

    def first(self) -> None:
        if self.first_tensor is None:
            self.first_tensor = time.perf_counter() - self.started

    # -- reading -----------------------------------------------------------------------------

    def open_file(self, entry: ManifestFile) -> tuple[SealedFile, FileReader]:
        what = f"{self.version.ref}: {entry.path}"
        key = self.source.data_key(self.resolved, entry)
        reader = self.source.reader(self.resolved, entry)
        try:
            sealed = SealedFile(
                reader, key, entry.digest, entry.size, what=what, counters=self.counters
            )
        except BaseException:
            self._finish_reader(reader, None)
            raise
        return sealed, reader

    def _finish_reader(self, reader: FileReader, sealed: SealedFile | None) -> None:
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

    def whole_file(
        self, entry: ManifestFile, wanted: list[_Located], *, early: bool = False
    ) -> Iterator[tuple[str, Any]]:
        """Every tensor of a file read whole, once the whole file is verified; with `early`,
        each as soon as its chunks are authenticated (the file's digest is then checked after
        its last tensor was yielded)."""
        if early:
            yield from self._whole_file(entry, wanted)
            return
        held = list(self._whole_file(entry, wanted))  # raises before anything is handed out
        yield from held

    def _whole_file(self, entry: ManifestFile, wanted: list[_Located]) -> Iterator[tuple[str, Any]]:
        header = entry.safetensors
        assert header is not None
        sealed, reader = self.open_file(entry)
        verify = self.options.verify == "full"
        try:
            if self.options.device.startswith("cuda") and self.options.framework == "pt":
                buffer = self._to_cuda(sealed, verify=verify)
                for located in wanted:
                    self.first()
                    yield (
                        located.tensor.name,
                        self.adapt(tensor_from(buffer, header, located.tensor, framework="pt")),
                    )
            else:
                buffer, view = self._host_buffer(entry.size)
                order = sorted(wanted, key=lambda located: located.tensor.end)
                position = 0
                for done in self.pipeline.decrypt_into(
                    sealed, view, verify=verify, on_progress=self.advance
                ):
                    while (
                        position < len(order)
                        and header.data_offset + order[position].tensor.end <= done
                    ):
                        self.first()
                        tensor = order[position].tensor
                        yield (
                            tensor.name,
                            self.adapt(
                                tensor_from(
                                    buffer, header, tensor, framework=self.options.framework
                                )
                            ),
                        )
                        position += 1
                del view
            self.plaintext += entry.size
            (self.verified if verify else self.authenticated).append(entry.path)
            self._finish_reader(reader, sealed if verify else None)
        except BaseException:
            self._finish_reader(reader, None)
            raise

    def _host_buffer(self, size: int) -> tuple[Any, memoryview]:
        if self.options.framework == "numpy":
            import numpy

            array = numpy.empty(size, dtype=numpy.uint8)
            return array, array.data
        tensor = empty_bytes(size)
        return tensor, tensor.numpy().data

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
        self, located: _Located, sealed: SealedFile, rows: tuple[int, int] | None = None
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


def _stream(job: _Job, tensors: Selection, *, early: bool) -> Generator[tuple[str, Any]]:
    """Tensors of the selection: files wanted whole are read whole (and verified), the others
    tensor by tensor. `early`: see `iter_tensors`."""
    selected = job.select(tensors)
    files = {entry.path: entry for entry in job.resolved.manifest.files}
    whole = {
        path: len(wanted) == len(files[path].safetensors.tensors)  # type: ignore[union-attr]
        for path, wanted in selected.items()
    }
    job.begin(
        sum(
            files[path].size if whole[path] else sum(w.tensor.nbytes for w in wanted)
            for path, wanted in selected.items()
        )
    )
    for path, wanted in selected.items():
        entry = files[path]
        if whole[path]:
            yield from job.whole_file(entry, wanted, early=early)
            continue
        sealed, reader = job.open_file(entry)
        try:
            for located in wanted:
                yield located.tensor.name, job.one_tensor(located, sealed)
        finally:
            job._finish_reader(reader, None)
        job.authenticated.append(path)


def load(
    ref: str,
    *,
    device: str = "cpu",
    dtype: Any = None,
    tensors: Selection = None,
    registry: Registry | RemoteRegistry | None = None,
    progress: bool = False,
    framework: str = "pt",
    workers: int | None = None,
    chunks_per_read: int = DEFAULT_CHUNKS_PER_READ,
    staging_bytes: int = DEFAULT_STAGING_BYTES,
    verify: str = "full",
    cache: Cache | bool | None = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> LoadedModel:
    """The tensors of a version (`tensors`: names, or a predicate on names; default all), on
    `device`, decrypted and verified. Nothing is returned unless every file read whole matched
    its digest and every chunk read authenticated."""
    options = _Options(
        device=device,
        dtype=dtype,
        framework=framework,
        workers=workers,
        chunks_per_read=chunks_per_read,
        staging_bytes=staging_bytes,
        verify=verify,
        progress=progress,
        on_progress=on_progress,
        cache=cache,
    )
    job = _Job.start(ref, registry, options)
    try:
        # Early: nothing leaves `load` before every file verified anyway.
        result = LoadedModel(_stream(job, tensors, early=True))
        stats = job.stats()
        stats.tensors = len(result)
        job.record(stats)
    finally:
        job.close()
    result.version = job.version
    result.stats = stats
    result.metadata = _metadata(job)
    return result


def _metadata(job: _Job) -> dict[str, str]:
    merged: dict[str, str] = {}
    for entry in job.resolved.manifest.files:
        if entry.safetensors is not None and entry.safetensors.metadata:
            for key, value in entry.safetensors.metadata.items():
                merged.setdefault(key, value)
    return merged


class TensorStream:
    """An iterator of (name, tensor) as they arrive; `version` is known at once, `stats` once
    the iteration ended."""

    def __init__(self, job: _Job, tensors: Selection, *, early: bool) -> None:
        self.version = job.version
        self.stats: LoadStats | None = None
        self.complete = False
        self._job = job
        self._inner = _stream(job, tensors, early=early)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        count = 0
        try:
            for item in self._inner:
                count += 1
                yield item
            self.complete = True
        finally:
            # Also when the consumer stops early: readers and cache files are released, and
            # what was read is audited all the same.
            self._inner.close()
            stats = self._job.stats()
            stats.tensors = count
            self.stats = stats
            try:
                self._job.record(stats, complete=self.complete)
            finally:
                self._job.close()


def iter_tensors(
    ref: str,
    *,
    device: str = "cpu",
    dtype: Any = None,
    tensors: Selection = None,
    registry: Registry | RemoteRegistry | None = None,
    progress: bool = False,
    framework: str = "pt",
    workers: int | None = None,
    chunks_per_read: int = DEFAULT_CHUNKS_PER_READ,
    staging_bytes: int = DEFAULT_STAGING_BYTES,
    verify: str = "full",
    cache: Cache | bool | None = True,
    on_progress: Callable[[int, int], None] | None = None,
    early: bool = False,
) -> TensorStream:
    """Tensors in file order, the tensors of each file once that file is verified whole (so a
    file whose digest does not match hands out nothing). With `early`, each tensor as soon as
    the chunks holding it are authenticated (time to first tensor); the file's BLAKE3 is then
    checked when its last range arrives, and an IntegrityError ends the iteration: what it
    yielded of that file must be discarded."""
    options = _Options(
        device=device,
        dtype=dtype,
        framework=framework,
        workers=workers,
        chunks_per_read=chunks_per_read,
        staging_bytes=staging_bytes,
        verify=verify,
        progress=progress,
        on_progress=on_progress,
        cache=cache,
    )
    return TensorStream(_Job.start(ref, registry, options), tensors, early=early)


@dataclass(frozen=True)
class LoadIntoResult:
    version: VersionRecord
    stats: LoadStats
    missing_keys: list[str]
    unexpected_keys: list[str]


def load_into(
    module: Any,
    ref: str,
    *,
    strict: bool = True,
    registry: Registry | RemoteRegistry | None = None,
    progress: bool = False,
    workers: int | None = None,
    verify: str = "full",
    cache: Cache | bool | None = True,
) -> LoadIntoResult:
    """Fill a torch.nn.Module's parameters and buffers in place from a version, on the device
    and in the dtypes the module already has. Names and shapes are checked against the
    version's manifest before anything is read or copied, so a mismatch leaves the module as it
    was. With `strict`, the names must match exactly; without, the tensors both have are
    loaded and the others listed in the result."""
    own = module.state_dict()
    with open(ref, registry=registry, cache=False) as reader:  # the manifest only
        pinned = reader.version.ref  # an alias moving meanwhile does not change what loads
        names = reader.keys()
        shapes = {name: tuple(reader.get_slice(name).get_shape()) for name in names}
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    wrong = sorted(n for n in set(own) & set(shapes) if tuple(own[n].shape) != shapes[n])
    if wrong:
        name = wrong[0]
        raise InvalidInputError(
            f"{pinned}: {len(wrong)} tensors differ in shape from the module's, e.g. {name!r}: "
            f"{list(shapes[name])} vs {list(own[name].shape)}",
            hint="is this the model's architecture?",
        )
    if strict and (missing or unexpected):
        raise InvalidInputError(
            f"{pinned} does not match the module: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}",
            hint="strict=False loads the tensors both have",
        )
    first = next(iter(own.values()), None)
    device = str(first.device) if first is not None else "cpu"
    state = load(
        pinned,
        device=device,
        registry=registry,
        progress=progress,
        workers=workers,
        verify=verify,
        cache=cache,
        tensors=lambda name: name in own,
    )
    module.load_state_dict(state, strict=False)
    return LoadIntoResult(state.version, state.stats, missing, unexpected)


class TensorSlice:
    """`get_slice(name)`: shape and dtype at once, rows read on indexing (`[a:b]`, `[i]`,
    `[a:b, ...]`: only the chunks holding the rows of the first dimension asked for)."""

    def __init__(self, reader: ModelReader, located: _Located) -> None:
        self._reader, self._located = reader, located

    def get_shape(self) -> list[int]:
        return list(self._located.tensor.shape)

    def get_dtype(self) -> str:
        return self._located.tensor.dtype

    def __getitem__(self, index: Any) -> Any:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        shape = self._located.tensor.shape
        if not shape or first is Ellipsis:
            return self._reader._rows(self._located, None)[index]
        length = shape[0]
        if isinstance(first, slice):
            rows = range(*first.indices(length))
            if len(rows) == 0:
                return self._reader._rows(self._located, (0, 0))[(slice(None), *rest)]
            low, high = min(rows), max(rows) + 1
            part = self._reader._rows(self._located, (low, high))
            if rows.step > 0:  # the rows read start at the first asked for
                return part[(slice(None, None, rows.step), *rest)]
            return part[[r - low for r in rows]][(slice(None), *rest)]
        if isinstance(first, int):
            row = first + length if first < 0 else first
            if not 0 <= row < length:
                raise IndexError(f"index {first} is out of range for {length} rows")
            part = self._reader._rows(self._located, (row, row + 1))
            return part[(0, *rest)]
        raise InvalidInputError("get_slice takes an int, a slice or a tuple starting with one")


class ModelReader:
    """A version opened for reading tensor by tensor (`open`), like safetensors.safe_open over
    all its shards: `keys()`, `metadata()`, `get_tensor(name)`, `get_slice(name)[rows]`."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        self._files: dict[str, tuple[SealedFile, FileReader]] = {}
        self._closed = False
        self.version = job.version

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for _sealed, reader in self._files.values():
                self._job._finish_reader(reader, None)
            if self._files:  # what was read is audited, like a load
                self._job.record(self._job.stats())
        finally:
            self._files.clear()
            self._job.close()

    @property
    def stats(self) -> LoadStats:
        return self._job.stats()

    def keys(self) -> list[str]:
        return list(self._job.tensors)

    def metadata(self) -> dict[str, str]:
        return _metadata(self._job)

    def _located(self, name: str) -> _Located:
        located = self._job.tensors.get(name)
        if located is None:
            raise NotFoundError(f"{self.version.ref} has no tensor {name!r}")
        return located

    def _sealed(self, located: _Located) -> SealedFile:
        path = located.file.path
        if path not in self._files:
            self._files[path] = self._job.open_file(located.file)
            self._job.authenticated.append(path)
        return self._files[path][0]

    def _rows(self, located: _Located, rows: tuple[int, int] | None) -> Any:
        return self._job.one_tensor(located, self._sealed(located), rows)

    def get_tensor(self, name: str) -> Any:
        located = self._located(name)
        return self._rows(located, None)

    def get_slice(self, name: str) -> TensorSlice:
        return TensorSlice(self, self._located(name))


def open(
    ref: str,
    *,
    device: str = "cpu",
    dtype: Any = None,
    registry: Registry | RemoteRegistry | None = None,
    framework: str = "pt",
    workers: int | None = None,
    chunks_per_read: int = DEFAULT_CHUNKS_PER_READ,
    cache: Cache | bool | None = False,
) -> ModelReader:
    """A version opened for reading tensor by tensor (use it in a `with` block)."""
    # Parts of files only: chunks are authenticated, a whole-file digest cannot be checked.
    options = _Options(
        device=device,
        dtype=dtype,
        framework=framework,
        workers=workers,
        chunks_per_read=chunks_per_read,
        verify="aead",
        cache=cache,
    )
    return ModelReader(_Job.start(ref, registry, options))


__all__ = [
    "LoadIntoResult",
    "LoadStats",
    "LoadedModel",
    "ModelReader",
    "TensorSlice",
    "TensorStream",
    "iter_tensors",
    "load",
    "load_into",
]
