"""How a load reads: `LoadOptions`, the one frozen value every loader call builds its reading
from, its defaults and its checks, and the keyword arguments each call accepts for it.

Every call (`load`, `iter_tensors`, `load_into`, `open`) takes `options=` (a LoadOptions, or None
for the call's defaults) and also each option as a keyword argument, as before LoadOptions
existed; keywords given beside `options` replace those fields of it:

    serving = LoadOptions(device="cuda:0", workers=8, cache=False)
    loader.load(ref, options=serving)
    loader.load(ref, options=serving, device="cuda:1")  # serving, on another GPU
    loader.load(ref, device="cuda:0", workers=8)        # LoadOptions(device=..., workers=...)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from registry.errors import InvalidInputError
from registry.loader.cache import Cache
from registry.loader.engine import DEFAULT_CHUNKS_PER_READ
from registry.loader.tensors import check_framework

DEFAULT_STAGING_BYTES = 512 * 1024 * 1024
GPU_SLOT_BYTES = 16 * 1024 * 1024
VERIFY_MODES = ("full", "aead")


def default_workers() -> int:
    """Decryption threads: one per core this process may run on (its affinity, as `taskset`
    or a container's CPU set leaves it), 1 to 16. Each worker also hashes what it decrypted."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, min(16, cores))


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How a load reads (docs/loader.md, "Options"). A plain value: build one per serving
    configuration and pass it as `options=`; `dataclasses.replace` (or keyword arguments beside
    `options=`) derives another. It is checked when a call uses it, before the registry is
    contacted (`InvalidInputError`)."""

    device: str = "cpu"  # cpu, cuda or cuda:N
    dtype: Any = None  # a torch dtype that floating-point tensors are converted to
    framework: str = "pt"  # pt (torch) or numpy (CPU, the dtypes numpy has)
    workers: int | None = None  # decryption threads; None: one per core, 1 to 16
    chunks_per_read: int = DEFAULT_CHUNKS_PER_READ  # 1 MiB chunks per range read
    staging_bytes: int = DEFAULT_STAGING_BYTES  # pinned host memory of a GPU load
    verify: str = "full"  # full: AEAD and every file's BLAKE3; aead: chunks only
    cache: Cache | bool | None = True  # True: the default cache; False or None: none
    progress: bool = False  # a progress bar on stderr
    on_progress: Callable[[int, int], None] | None = None  # callback(bytes_done, bytes_total)

    def check(self) -> None:
        """Refuse options no load can use (imports torch for framework 'pt')."""
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


class LoadKeywords(TypedDict, total=False):
    """The options `load` and `iter_tensors` take as keyword arguments: every field."""

    device: str
    dtype: Any
    framework: str
    workers: int | None
    chunks_per_read: int
    staging_bytes: int
    verify: str
    cache: Cache | bool | None
    progress: bool
    on_progress: Callable[[int, int], None] | None


class OpenKeywords(TypedDict, total=False):
    """The options `open` takes as keyword arguments (it reads parts, on demand)."""

    device: str
    dtype: Any
    framework: str
    workers: int | None
    chunks_per_read: int
    cache: Cache | bool | None


class LoadIntoKeywords(TypedDict, total=False):
    """The options `load_into` takes as keyword arguments (the module decides the rest)."""

    progress: bool
    workers: int | None
    verify: str
    cache: Cache | bool | None


LOAD_KEYWORDS = LoadKeywords.__optional_keys__
OPEN_KEYWORDS = OpenKeywords.__optional_keys__
LOAD_INTO_KEYWORDS = LoadIntoKeywords.__optional_keys__


def merged(
    call: str,
    options: LoadOptions | None,
    keywords: Mapping[str, Any],
    accepted: frozenset[str],
    *,
    base: LoadOptions | None = None,
) -> LoadOptions:
    """The options of one call: `options` (else `base`, else the defaults) with the keyword
    arguments given beside it in place of its fields. A keyword the call does not take is a
    TypeError, as for any Python function."""
    if options is not None and not isinstance(options, LoadOptions):
        raise TypeError(f"{call}() options= takes a LoadOptions, not {type(options).__name__}")
    for name in keywords:
        if name not in accepted:
            raise TypeError(f"{call}() got an unexpected keyword argument {name!r}")
    chosen = options if options is not None else (base or LoadOptions())
    return dataclasses.replace(chosen, **keywords) if keywords else chosen


__all__ = [
    "DEFAULT_STAGING_BYTES",
    "GPU_SLOT_BYTES",
    "LOAD_INTO_KEYWORDS",
    "LOAD_KEYWORDS",
    "OPEN_KEYWORDS",
    "VERIFY_MODES",
    "LoadIntoKeywords",
    "LoadKeywords",
    "LoadOptions",
    "OpenKeywords",
    "default_workers",
    "merged",
]
