"""`LocalDriver`: the storage `Driver` contract on a local POSIX filesystem, one file per object.

Layout under the root directory (created with mode 0o700 on the first write):

    objects/<name>   the stored objects, read-only files (mode 0o444)
    tmp/             writes in progress; a crash can leave files here (see
                     `remove_stale_temp_files`), never under objects/

A write goes to a fresh file in tmp/, is fsynced, then published with `os.link`, which is atomic
and fails when the name is taken: that is what makes `put_if_absent` write-once under concurrent
writers, including writers in other processes sharing the root.

A name cannot be both an object and a directory of objects here ("a" and "a/b"): the second write
raises `StorageError`. The blob store's fixed-depth names never do this.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import mmap
import os
import secrets
import stat as stat_mod
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from registry.errors import InvalidInputError, NotFoundError, StorageError
from registry.fileio import pread_into
from registry.storage.base import Driver, ObjectInfo, validate_object_name, validate_prefix

# Publishing retries when a concurrent delete removes an empty parent directory between our
# mkdir and our link; more than a handful of losses in a row means something else is wrong.
_PUBLISH_ATTEMPTS = 8
_TEMP_SUFFIX = ".tmp"


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0:
        raise InvalidInputError(f"negative offset {offset}")
    if length is not None and length < 0:
        raise InvalidInputError(f"negative length {length}")


def _fsync_dir(path: Path) -> None:
    # A rename/link/unlink is only durable once the directory holding the entry is fsynced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _not_an_object(name: str, path: Path, mode: int) -> StorageError:
    # A directory here is damage, or another object's name extending this one ("a" vs "a/b"),
    # which this driver cannot hold: either way not something to report as a missing object.
    kind = "a directory" if stat_mod.S_ISDIR(mode) else "not a regular file"
    return StorageError(f"object {name!r}: {path} is {kind}, not an object file")


def _write_all(fd: int, chunk: bytes | bytearray | memoryview) -> None:
    # cast("B") so that len() counts bytes even for a memoryview of wider items.
    view = memoryview(chunk).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LocalDriver(Driver):
    """Objects as read-only files under `root/objects/`, published atomically from `root/tmp/`."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        """`durable=False`: scratch space (the parts of upload sessions, checked whole before
        anything is made of them): objects are not fsynced, so a crash may lose or cut the
        latest ones."""
        self.root = Path(root)
        self.durable = durable
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self._layout_ready = False

    def __repr__(self) -> str:
        return f"LocalDriver({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        return self.objects_dir / validate_object_name(name)

    def _ensure_layout(self) -> None:
        if self._layout_ready:
            return
        for directory in (self.root, self.objects_dir, self.tmp_dir):
            try:
                directory.mkdir(mode=0o700, parents=directory == self.root)
                self._sync_dir(directory.parent)
            except FileExistsError:
                if not directory.is_dir():
                    raise StorageError(
                        f"storage root {self.root}: {directory} exists and is not a directory"
                    ) from None
            except OSError as exc:
                raise StorageError(f"cannot create storage directory {directory}: {exc}") from exc
        self._layout_ready = True

    def _sync_dir(self, path: Path) -> None:
        if self.durable:
            _fsync_dir(path)

    def _open_temp(self) -> tuple[int, Path]:
        while True:
            path = self.tmp_dir / f"{secrets.token_hex(16)}{_TEMP_SUFFIX}"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                return os.open(path, flags, 0o600), path
            except FileExistsError:
                continue

    def _ensure_parents(self, path: Path) -> None:
        """Create the directories between objects/ and `path`, durably."""
        relative = path.parent.relative_to(self.objects_dir)
        current = self.objects_dir
        for part in relative.parts:
            current = current / part
            try:
                current.mkdir(mode=0o700)
            except FileExistsError:
                continue
            self._sync_dir(current.parent)

    # -- Driver -----------------------------------------------------------------------------

    def put_if_absent(self, name: str, chunks: Iterable[bytes | bytearray | memoryview]) -> bool:
        path = self._path(name)
        # Not needed for correctness (the link decides), but it spares writing a large object
        # that is already stored, which is the common case for a content-addressed store.
        if self.stat(name) is not None:
            return False
        with self._written(name, chunks) as tmp:
            try:
                return self._publish(name, tmp, path)
            except StorageError:
                raise
            except OSError as exc:
                raise StorageError(f"object {name!r}: cannot publish {path}: {exc}") from exc

    def replace(self, name: str, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        path = self._path(name)
        with self._written(name, chunks) as tmp:
            try:
                self._ensure_parents(path)
                if path.is_dir() and not path.is_symlink():
                    raise StorageError(f"object {name!r}: {path} is a directory")
                os.replace(tmp, path)
                self._sync_dir(path.parent)
            except NotADirectoryError:
                raise StorageError(
                    f"object {name!r}: a parent of {path} is an object, not a directory"
                ) from None
            except StorageError:
                raise
            except OSError as exc:
                raise StorageError(f"object {name!r}: cannot replace {path}: {exc}") from exc

    @contextlib.contextmanager
    def _written(
        self, name: str, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> Iterator[Path]:
        """A complete, fsynced, read-only temp file holding `chunks`, removed afterwards unless
        the caller moved it into place."""
        self._ensure_layout()
        try:
            fd, tmp = self._open_temp()
        except OSError as exc:
            raise StorageError(
                f"object {name!r}: cannot create a temp file in {self.tmp_dir}: {exc}"
            ) from exc
        try:
            try:
                # The caller's iterable runs outside the OSError translation below: whatever it
                # raises must reach the caller unchanged.
                for chunk in chunks:
                    self._write_chunk(name, tmp, fd, chunk)
                try:
                    if self.durable:
                        os.fsync(fd)
                    os.fchmod(fd, 0o444)
                except OSError as exc:
                    raise StorageError(f"object {name!r}: cannot fsync {tmp}: {exc}") from exc
            finally:
                os.close(fd)
            yield tmp
        finally:
            # Best effort: a leftover temp file is harmless (remove_stale_temp_files collects
            # it) and must not mask the caller's outcome, success or the original error.
            with contextlib.suppress(OSError):
                tmp.unlink()

    @staticmethod
    def _write_chunk(name: str, tmp: Path, fd: int, chunk: bytes | bytearray | memoryview) -> None:
        try:
            _write_all(fd, chunk)
        except OSError as exc:
            raise StorageError(f"object {name!r}: write to {tmp} failed: {exc}") from exc

    def _publish(self, name: str, tmp: Path, path: Path) -> bool:
        for _ in range(_PUBLISH_ATTEMPTS):
            try:
                self._ensure_parents(path)
                os.link(tmp, path)
            except FileExistsError:
                if path.is_dir() and not path.is_symlink():
                    raise StorageError(
                        f"object {name!r}: {path} is a directory (another object's name starts "
                        f"with {name + '/'!r}), cannot store an object there"
                    ) from None
                return False
            except FileNotFoundError:
                if not tmp.exists():
                    raise StorageError(
                        f"object {name!r}: temp file {tmp} vanished before publishing "
                        "(removed as stale while the write was still running?)"
                    ) from None
                # A concurrent delete removed an empty parent directory: create it again.
                continue
            except NotADirectoryError:
                raise StorageError(
                    f"object {name!r}: a parent of {path} is an object, not a directory"
                ) from None
            # If this fsync fails the caller gets a StorageError although the object is visible;
            # a retry then returns False, which is the truth.
            self._sync_dir(path.parent)
            return True
        raise StorageError(
            f"object {name!r}: parent directory of {path} kept disappearing while publishing"
        )

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[tuple[int, int]]:
        """An open descriptor of the object and its size; read errors become StorageError."""
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"object {name!r} not found (no file {path})") from None
        except OSError as exc:
            raise StorageError(f"object {name!r}: cannot open {path}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise _not_an_object(name, path, st.st_mode)
            yield fd, st.st_size
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"object {name!r}: read of {path} failed: {exc}") from exc
        finally:
            os.close(fd)

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        _check_range(offset, length)
        with self._reading(name) as (fd, size):
            end = size if length is None else min(size, offset + length)
            parts: builtins.list[bytes] = []
            position = offset
            while position < end:
                data = os.pread(fd, end - position, position)
                if not data:
                    break  # truncated under us; return what exists rather than loop forever
                parts.append(data)
                position += len(data)
            return b"".join(parts)

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        _check_range(offset, len(buffer))
        with self._reading(name) as (fd, _size):
            return pread_into(fd, offset, buffer)

    def mapping(self, name: str) -> mmap.mmap | None:
        """The object mapped read-only. Objects are written once and read-only (0444), so the
        mapping holds what was written; a file truncated under a live mapping (only after a
        chmod) would fault the reading process, as any mapped file would."""
        with self._reading(name) as (fd, size):
            if size == 0:
                return None  # nothing to map (and mmap refuses a length of 0)
            try:
                return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                return None  # a filesystem that cannot map: the caller reads instead

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"object {name!r}: cannot stat {path}: {exc}") from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise _not_an_object(name, path, st.st_mode)
        return ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        return self._walk(self.objects_dir, "", prefix)

    def _walk(self, directory: Path, relative: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = builtins.list(it)
        except (FileNotFoundError, NotADirectoryError):
            return  # no store yet, or a directory emptied and removed by a concurrent delete
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc}") from exc

        # Sorting directories by "name/" yields full names in str order: "a-b" < "a/b" < "a0".
        keyed: builtins.list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            is_dir = entry.is_dir(follow_symlinks=False)
            keyed.append((relative + entry.name + ("/" if is_dir else ""), entry, is_dir))
        keyed.sort(key=lambda item: item[0])

        for key, entry, is_dir in keyed:
            if is_dir:
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
                continue
            if not key.startswith(prefix) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                validate_object_name(key)
            except InvalidInputError:
                continue  # a stray file no driver call could have written; not an object
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted since the scan
            except OSError as exc:
                raise StorageError(f"object {key!r}: cannot stat {entry.path}: {exc}") from exc
            yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))

    def delete(self, name: str) -> None:
        path = self._path(name)
        # No chmod first: POSIX unlink needs write permission on the directory only, and making
        # the file writable would open a window (or leave it writable if unlink then failed).
        try:
            st = os.stat(path, follow_symlinks=False)
            if not stat_mod.S_ISREG(st.st_mode):
                raise _not_an_object(name, path, st.st_mode)
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"object {name!r} not found (no file {path})") from None
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"object {name!r}: cannot delete {path}: {exc}") from exc
        try:
            self._sync_dir(path.parent)
            self._remove_empty_parents(path.parent)
        except OSError as exc:
            raise StorageError(f"object {name!r}: deleted {path}, then: {exc}") from exc

    def _remove_empty_parents(self, directory: Path) -> None:
        while directory != self.objects_dir:
            try:
                directory.rmdir()
            except OSError as exc:
                # Not empty (a concurrent put landed there) or already gone: both end the climb.
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return
                raise
            directory = directory.parent

    # -- temp file maintenance -----------------------------------------------------------------

    def stale_temp_files(self, older_than: timedelta) -> builtins.list[Path]:
        """Temp files last written more than `older_than` ago: leftovers of interrupted writes."""
        cutoff = (datetime.now(UTC) - older_than).timestamp()
        stale: builtins.list[Path] = []
        try:
            with os.scandir(self.tmp_dir) as it:
                for entry in it:
                    if not entry.name.endswith(_TEMP_SUFFIX):
                        continue
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            stale.append(Path(entry.path))
                    except FileNotFoundError:
                        continue  # its writer just finished
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list temp directory {self.tmp_dir}: {exc}") from exc
        return sorted(stale)

    def remove_stale_temp_files(self, older_than: timedelta = timedelta(hours=1)) -> int:
        """Delete temp files older than `older_than`; returns how many were removed.

        A writer refreshes its temp file's mtime with every chunk, so only a write stalled for
        longer than `older_than` can lose its temp file (it then fails with `StorageError`).
        """
        removed = 0
        for path in self.stale_temp_files(older_than):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot remove stale temp file {path}: {exc}") from exc
            removed += 1
        return removed
