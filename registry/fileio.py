"""Plain file I/O helpers shared by the storage drivers, the loader's cache, the hashing pass and
sealing (filling a buffer from a stream), and what makes private folders (the home, the
catalog's, upload staging): they know nothing of objects, stores or crypto."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class ReadsInto(Protocol):
    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


def read_into(source: ReadsInto, view: memoryview) -> int:
    """Fill `view` from a stream (fewer bytes only at its end): a chunk's boundaries must fall
    where the buffer's do, whatever sizes the stream's reads return."""
    got = 0
    while got < len(view):
        count = source.readinto(view[got:])
        if not count:
            break
        got += count
    return got


def pread_into(fd: int, offset: int, buffer: memoryview) -> int:
    """Fill `buffer` from `offset` of an open file (fewer bytes only at its end)."""
    got = 0
    while got < len(buffer):
        count = os.preadv(fd, [buffer[got:]], offset + got)
        if count == 0:
            break
        got += count
    return got


def private_dirs(path: Path, *, exist_ok: bool = True) -> None:
    """Make `path` and each missing folder above it, each 0700 whatever the umask (`mkdir`'s
    mode is masked by it, and `parents=True` gives the folders above the default mode).
    Folders that exist are left as they are; FileExistsError for `path` unless `exist_ok`."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    if not exist_ok and path not in missing:
        raise FileExistsError(f"{path} exists")
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if folder == path and not exist_ok:
                raise
            continue  # made meanwhile by another process: theirs to set
        os.chmod(folder, 0o700)


__all__ = ["pread_into", "private_dirs"]
