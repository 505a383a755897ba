"""The loader's public calls: `load`, `iter_tensors`, `load_into` and `open`, each building its
LoadOptions (registry.loader.options) and running one Job (registry.loader.job).

What is verified: a file loaded whole has every chunk authenticated (AES-GCM) and its content
checked in the same pass (each chunk's BLAKE3 against the manifest's chunk root, or the file's
BLAKE3 for a version 1 manifest); `load` returns nothing unless every file matched. A tensor read on
its own (`open(...).get_tensor`, `get_slice`, `load(tensors=...)` taking part of a file) reads
only the chunks holding it: each is authenticated, but the whole-file digest cannot be checked
without the whole file; `LoadStats` lists which files were checked which way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Unpack

from registry.client import RemoteRegistry
from registry.errors import InvalidInputError
from registry.loader.engine import DEFAULT_CHUNKS_PER_READ
from registry.loader.job import Job, Selection
from registry.loader.options import (
    DEFAULT_STAGING_BYTES,
    LOAD_INTO_KEYWORDS,
    LOAD_KEYWORDS,
    OPEN_KEYWORDS,
    LoadIntoKeywords,
    LoadKeywords,
    LoadOptions,
    OpenKeywords,
    default_workers,
    merged,
)
from registry.loader.reader import ModelReader, TensorSlice
from registry.loader.results import LoadedModel, LoadIntoResult, LoadStats
from registry.service import Registry

# What `open` reads without options=: parts of files, so no cache (it keeps whole files only).
OPEN_DEFAULTS = LoadOptions(cache=False)


def load(
    ref: str,
    *,
    tensors: Selection = None,
    registry: Registry | RemoteRegistry | None = None,
    options: LoadOptions | None = None,
    **keywords: Unpack[LoadKeywords],
) -> LoadedModel:
    """The tensors of a version (`tensors`: names, or a predicate on names; default all), on
    the options' device, decrypted and verified. Nothing is returned unless every file read
    whole matched its digest and every chunk read authenticated. `options` and the keyword
    arguments: registry.loader.options."""
    job = Job.start(ref, registry, merged("load", options, keywords, LOAD_KEYWORDS))
    try:
        # Early: nothing leaves `load` before every file verified anyway.
        result = LoadedModel(job.stream(tensors, early=True))
        stats = job.stats()
        stats.tensors = len(result)
        job.record(stats)
    finally:
        job.close()
    result.version = job.version
    result.stats = stats
    result.metadata = job.metadata()
    return result


class TensorStream:
    """An iterator of (name, tensor) as they arrive; `version` is known at once, `stats` once
    the iteration ended."""

    def __init__(self, job: Job, tensors: Selection, *, early: bool) -> None:
        self.version = job.version
        self.stats: LoadStats | None = None
        self.complete = False
        self._job = job
        self._inner = job.stream(tensors, early=early)

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
    tensors: Selection = None,
    registry: Registry | RemoteRegistry | None = None,
    early: bool = False,
    options: LoadOptions | None = None,
    **keywords: Unpack[LoadKeywords],
) -> TensorStream:
    """Tensors in file order, the tensors of each file once that file is verified whole (so a
    file whose digest does not match hands out nothing). With `early`, each tensor as soon as
    the chunks holding it are authenticated (time to first tensor); the file's BLAKE3 is then
    checked when its last range arrives, and an IntegrityError ends the iteration: what it
    yielded of that file must be discarded."""
    chosen = merged("iter_tensors", options, keywords, LOAD_KEYWORDS)
    return TensorStream(Job.start(ref, registry, chosen), tensors, early=early)


def load_into(
    module: Any,
    ref: str,
    *,
    strict: bool = True,
    registry: Registry | RemoteRegistry | None = None,
    options: LoadOptions | None = None,
    **keywords: Unpack[LoadIntoKeywords],
) -> LoadIntoResult:
    """Fill a torch.nn.Module's parameters and buffers in place from a version, on the device
    and in the dtypes the module already has (they replace the options' device, dtype and
    framework). Names and shapes are checked against the version's manifest before anything is
    read or copied, so a mismatch leaves the module as it was. With `strict`, the names must
    match exactly; without, the tensors both have are loaded and the others listed in the
    result."""
    chosen = merged("load_into", options, keywords, LOAD_INTO_KEYWORDS)
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
        registry=registry,
        tensors=lambda name: name in own,
        options=dataclasses.replace(chosen, device=device, dtype=None, framework="pt"),
    )
    module.load_state_dict(state, strict=False)
    return LoadIntoResult(state.version, state.stats, missing, unexpected)


def open(
    ref: str,
    *,
    registry: Registry | RemoteRegistry | None = None,
    options: LoadOptions | None = None,
    **keywords: Unpack[OpenKeywords],
) -> ModelReader:
    """A version opened for reading tensor by tensor (use it in a `with` block). Without
    `options`, the defaults are OPEN_DEFAULTS (no cache). Parts of files are read on demand:
    chunks are authenticated, a whole-file digest cannot be checked, so `verify` is 'aead'
    whatever the options say, and there is no progress to report."""
    chosen = merged("open", options, keywords, OPEN_KEYWORDS, base=OPEN_DEFAULTS)
    chosen = dataclasses.replace(chosen, verify="aead", progress=False, on_progress=None)
    return ModelReader(Job.start(ref, registry, chosen))


__all__ = [
    "DEFAULT_CHUNKS_PER_READ",
    "DEFAULT_STAGING_BYTES",
    "OPEN_DEFAULTS",
    "LoadIntoResult",
    "LoadOptions",
    "LoadStats",
    "LoadedModel",
    "ModelReader",
    "TensorSlice",
    "TensorStream",
    "default_workers",
    "iter_tensors",
    "load",
    "load_into",
    "open",
]
