"""Plain file I/O helpers shared by the storage drivers and the loader's cache: they know
nothing of objects, stores or crypto."""

from __future__ import annotations

import os


def pread_into(fd: int, offset: int, buffer: memoryview) -> int:
    """Fill `buffer` from `offset` of an open file (fewer bytes only at its end)."""
    got = 0
    while got < len(buffer):
        count = os.preadv(fd, [buffer[got:]], offset + got)
        if count == 0:
            break
        got += count
    return got


__all__ = ["pread_into"]
