"""Fresh host memory for the tensors of a load, and how its pages come to exist.

Fresh memory costs a page fault per 4 KiB page on first touch (the kernel allocates and zeroes
each page): for a fully verified load that is more CPU than decrypting the same bytes
(docs/benchmarks.md). Two ways around it, chosen per file:

- transparent huge pages (`madvise(MADV_HUGEPAGE)`): 512 times fewer faults. Only while the
  kernel holds enough free 2 MiB blocks to back the file (/proc/buddyinfo) with room to spare:
  past that, a huge page fault compacts memory synchronously, which made loads slower, not
  faster, on a machine whose page cache filled its memory;
- otherwise each worker populates the pages of the range it is about to decrypt into
  (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14): the same pages, allocated in one call per range
  instead of one trap per page, in parallel on the workers.

Neither changes what the memory holds or who owns it: it is a plain uint8 tensor (or numpy
array) from the framework's allocator. On a system without these calls (not Linux, an older
kernel) the memory is touched the ordinary way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import sys
from pathlib import Path
from typing import Any

HUGE_PAGE = 2 * 1024 * 1024
SMALL_PAGE = 4096
MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23
# A file is put on huge pages only when free 2 MiB blocks cover it this many times over: the
# load's other files, and everyone else on the machine, want some too.
HEADROOM = 2
_BUDDYINFO = Path("/proc/buddyinfo")


class _Madvise:
    """libc's madvise, once; `ok` is False where there is none or a call was refused as
    unknown (the caller then touches memory the ordinary way)."""

    def __init__(self) -> None:
        self.call: Any = None
        self.populate = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
                self.call = libc.madvise
                self.call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self.call.restype = ctypes.c_int
            except (OSError, AttributeError):
                self.call = None

    def __call__(self, start: int, end: int, advice: int, *, page: int) -> bool:
        low, high = -(-start // page) * page, end // page * page
        if self.call is None or high <= low:
            return False
        return bool(self.call(low, high - low, advice) == 0)


_madvise = _Madvise()


def free_huge_bytes() -> int:
    """Bytes of free memory in blocks of 2 MiB or more, the zones' free lists summed (zero
    where /proc/buddyinfo is not there to say)."""
    try:
        lines = _BUDDYINFO.read_text().splitlines()
    except OSError:
        return 0
    order = (HUGE_PAGE // SMALL_PAGE).bit_length() - 1  # 9: a 2 MiB block
    total = 0
    for line in lines:
        counts = line.split()[4:]
        for size_order, count in enumerate(counts):
            if size_order >= order and count.isdigit():
                total += int(count) * (SMALL_PAGE << size_order)
    return total


class HostMemory:
    """One file's destination: `buffer` (the uint8 tensor or array the tensors are views of),
    `view` (its bytes) and `prepare(start, end)`, which a worker calls on the range it is
    about to fill."""

    def __init__(self, size: int, *, framework: str) -> None:
        if framework == "numpy":
            import numpy

            array = numpy.empty(size, dtype=numpy.uint8)
            self.buffer: Any = array
            self.view = memoryview(array.data).cast("B")
            address = array.ctypes.data
        else:
            import torch

            tensor = torch.empty(size, dtype=torch.uint8)
            self.buffer = tensor
            self.view = memoryview(tensor.numpy().data).cast("B")
            address = tensor.data_ptr()
        self.address = address
        self.huge = (
            size >= HUGE_PAGE
            and free_huge_bytes() >= HEADROOM * size
            and _madvise(address, address + size, MADV_HUGEPAGE, page=HUGE_PAGE)
        )

    def prepare(self, start: int, end: int) -> None:
        """Allocate the pages of [start, end) now, in one call (not on huge pages: their faults
        are few already)."""
        if self.huge or not _madvise.populate:
            return
        done = _madvise(
            self.address + start, self.address + end, MADV_POPULATE_WRITE, page=SMALL_PAGE
        )
        # EINVAL: a kernel before 5.14. Stop asking; faults do the same work, slower.
        if not done and ctypes.get_errno() == errno.EINVAL:
            _madvise.populate = False


__all__ = ["HostMemory", "free_huge_bytes"]
