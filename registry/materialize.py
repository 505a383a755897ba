"""Writing a version's files into a destination directory, all or nothing: every file is
decrypted into a staging directory inside the destination, authenticated and re-hashed, and only
then are the files moved to their final names; on any failure the staging directory goes and the
destination is left as it was. Used by local pulls and by pulls through the REST API alike."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from registry.errors import DestinationExistsError, InvalidInputError, StorageError
from registry.manifest import Manifest, ManifestFile
from registry.refs import validate_relative_path

# Authenticated plaintext chunks of one file; each chunk is also handed to `on_chunk` with its
# offset (decryption threads write it in place) before it is yielded in order.
FileOpener = Callable[[ManifestFile, Callable[[int, memoryview], None]], Iterator[memoryview]]


class Progress(Protocol):
    def begin(self, description: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...

    def end(self) -> None: ...


class NoProgress:
    """The progress of a caller that asked for none."""

    def begin(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass


def write_verified(
    dest: Path,
    targets: dict[str, Path],
    manifest: Manifest,
    open_file: FileOpener,
    *,
    force: bool,
    progress: Progress,
) -> None:
    """Write every file of `manifest` to `targets` (from `plan_targets`) through `open_file`."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".model-registry-pull-{uuid.uuid4().hex[:12]}.incomplete"
    staging.mkdir(mode=0o700)
    progress.begin("downloading", manifest.total_size)
    # Flushing one file to disk overlaps with decrypting the next one.
    flushing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fsync")
    published: list[Path] = []
    try:
        synced: list[Future[None]] = []
        for entry in manifest.files:
            temporary = staging / entry.path
            temporary.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                # Decryption threads write each authenticated chunk at its offset while this
                # thread hashes in order; the file is renamed only after the digest matched.
                for chunk in open_file(entry, functools.partial(_write_at, fd)):
                    progress.advance(len(chunk))
            except BaseException:
                os.close(fd)
                raise
            synced.append(flushing.submit(_fsync_and_close, fd))
        for future in synced:
            future.result()
        # Every file verified: now publish. Directories first, so that a failure to create
        # one happens before any file has moved.
        for final in targets.values():
            final.parent.mkdir(parents=True, exist_ok=True)
        for entry in manifest.files:
            final = targets[entry.path]
            if force:
                os.replace(staging / entry.path, final)
                continue
            # Without --force a file that appeared meanwhile is never overwritten.
            try:
                os.link(staging / entry.path, final)
            except FileExistsError:
                raise DestinationExistsError(f"{final} appeared during the pull") from None
            published.append(final)
        _fsync_directory(dest)
    except BaseException:
        for final in published:
            final.unlink(missing_ok=True)
        raise
    finally:
        flushing.shutdown(wait=True)
        progress.end()
        shutil.rmtree(staging, ignore_errors=True)


def plan_targets(dest: Path, manifest: Manifest, *, force: bool) -> dict[str, Path]:
    """Final path of every file, checked before anything is written: no symbolic link and no
    file where a directory is needed along any path inside `dest` (a link could lead outside
    it, or make two files one), and nothing overwritten unless `force`."""
    targets: dict[str, Path] = {}
    existing: list[str] = []
    for entry in manifest.files:
        validate_relative_path(entry.path)
        current = dest
        parts = entry.path.split("/")
        for part in parts[:-1]:
            current = current / part
            kind = _kind(current)
            if kind is None:
                break
            if kind == "link":
                raise InvalidInputError(
                    f"{current} is a symbolic link: a pull never writes through links "
                    "(one could lead outside the destination)",
                    hint="pull into a destination without links",
                )
            if kind != "dir":
                raise DestinationExistsError(
                    f"{current} is a file where {entry.path} needs a directory"
                )
        final = dest / entry.path
        kind = _kind(final)
        if kind == "dir":
            raise DestinationExistsError(f"{final} is a directory")
        if kind == "link":
            raise InvalidInputError(
                f"{final} is a symbolic link: a pull never writes through links"
            )
        if kind is not None:
            existing.append(entry.path)
        targets[entry.path] = final
    if existing and not force:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise DestinationExistsError(f"{len(existing)} file(s) already exist in {dest}: {shown}")
    return targets


def _kind(path: Path) -> str | None:
    """ "dir", "link", "file" (anything else) or None when nothing is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "file"


def storage_error(error: OSError, where: Path) -> StorageError:
    hint = "free some space and pull again" if error.errno == errno.ENOSPC else None
    path = error.filename or where
    return StorageError(f"cannot write {path}: {error.strerror or error}", hint=hint)


def _write_at(fd: int, offset: int, data: memoryview) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
