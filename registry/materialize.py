"""Writing a version's files into a destination directory, verified before they appear: every
file is decrypted into a staging directory inside the destination, authenticated and re-hashed,
and only then are the files moved to their final names; on a failure the staging directory goes
and the destination is left as it was. Files already there with the manifest's bytes are kept
(a pull is idempotent), and a staging directory left by a killed pull is picked up by the next
pull of the same version (its files hashed again before they are trusted) or, left by anything
else, removed once no process holds it. Used by local pulls, pulls through the REST API and
prepares alike."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import fnmatch
import functools
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from registry.digest import hash_file
from registry.errors import ConflictError, DestinationExistsError, InvalidInputError, StorageError
from registry.manifest import Manifest, ManifestFile
from registry.refs import validate_relative_path

# Authenticated plaintext chunks of one file; each chunk is also handed to `on_chunk` with its
# offset (decryption threads write it in place) before it is yielded in order.
FileOpener = Callable[[ManifestFile, Callable[[int, memoryview], None]], Iterator[memoryview]]

STAGING_PREFIX = ".model-registry-pull-"
STAGING_SUFFIX = ".incomplete"
# Held (flock) by the process writing into a staging directory: the kernel drops it when that
# process dies, however it dies, so a later pull knows a staging directory nobody writes to.
_LOCK = ".lock"
# A staging directory without a lock file (from a release before locks, or killed between
# making it and locking it) is taken as abandoned once nothing has changed in it for this long.
UNLOCKED_STALE_SECONDS = 3600


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


@dataclasses.dataclass(frozen=True)
class Pulled:
    """What a pull wrote, what it found already right, and the bytes it wrote."""

    written: tuple[str, ...]
    unchanged: tuple[str, ...]
    bytes: int


def select_files(
    manifest: Manifest, *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Manifest:
    """The manifest cut down to the files `include` matches (all when none is given) and
    `exclude` does not: shell patterns (`*.safetensors`, `tokenizer/*`) on paths inside the
    version. A pattern that cannot match such a path, or a selection of nothing, is refused."""
    for option, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            if not pattern or pattern.startswith("/"):
                raise InvalidInputError(
                    f"{option} {pattern!r}: a pattern matches paths inside the version "
                    "(for example '*.safetensors' or 'tokenizer/*')"
                )
    chosen = tuple(
        entry
        for entry in manifest.files
        if (not include or any(fnmatch.fnmatchcase(entry.path, p) for p in include))
        and not any(fnmatch.fnmatchcase(entry.path, p) for p in exclude)
    )
    if not chosen:
        raise InvalidInputError(
            "the --include/--exclude patterns leave no file of the version to pull",
            hint="`model-registry show REF` lists its files",
        )
    return dataclasses.replace(manifest, files=chosen)


def pull_files(
    destination: str | Path,
    manifest: Manifest,
    opening: Callable[[Sequence[ManifestFile]], AbstractContextManager[FileOpener]],
    *,
    force: bool,
    progress: Progress,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Pulled:
    """A pull's writing, the same for local pulls and pulls through the API: the files of
    `manifest` that `include`/`exclude` select written under `destination`; those already
    there with the manifest's bytes are left as they are, others are refused unless `force`.
    `manifest` must be the whole, verified manifest: its digest names the staging directory
    that a killed pull of it leaves for the next one. `opening(files)` gives what decrypts and
    verifies the files to write, in that order."""
    selected = select_files(manifest, include=include, exclude=exclude)
    dest = Path(destination).expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {dest} exists and is not a directory")
    created = not dest.exists()
    try:
        targets, unchanged = plan_targets(dest, selected, force=force, skip_same=True)
        wanted = dataclasses.replace(
            selected, files=tuple(e for e in selected.files if e.path in targets)
        )
        with opening(wanted.files) as open_file:
            write_verified(
                dest,
                targets,
                wanted,
                open_file,
                force=force,
                progress=progress,
                resume_as=manifest.digest.removeprefix("blake3:")[:32],
            )
    except KeyboardInterrupt:
        # Interrupted: what was verified stays (in place or staged), for the next pull.
        raise
    except BaseException as error:
        # A destination this pull created goes again, whatever the failure.
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        if isinstance(error, OSError):
            raise storage_error(error, dest) from None
        raise
    return Pulled(tuple(entry.path for entry in wanted.files), tuple(unchanged), wanted.total_size)


def write_verified(
    dest: Path,
    targets: dict[str, Path],
    manifest: Manifest,
    open_file: FileOpener,
    *,
    force: bool,
    progress: Progress,
    resume_as: str | None = None,
) -> None:
    """Write every file of `manifest` to `targets` (from `plan_targets`) through `open_file`.

    `resume_as` names the staging directory (one per version): a pull interrupted or killed
    midway leaves the files it had verified there, and the next one with the same name hashes
    them again and keeps those that still match. Without it the staging directory is this
    call's alone and never outlives it. Either way the staging directories no live process
    holds (killed pulls and prepares, which hold decrypted bytes) are removed first."""
    dest.mkdir(parents=True, exist_ok=True)
    name = resume_as or uuid.uuid4().hex[:12]
    staging = dest / f"{STAGING_PREFIX}{name}{STAGING_SUFFIX}"
    remove_stale_staging(dest, keep=staging)
    lock = _take_staging(staging, dest)
    verified_dir, partial_dir = staging / "verified", staging / "partial"
    interrupted = False
    published: list[Path] = []
    # Flushing one file to disk overlaps with decrypting the next one.
    flushing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fsync")
    progress.begin("downloading", manifest.total_size)
    try:
        # Whatever was half written when a pull was killed is written again.
        shutil.rmtree(partial_dir, ignore_errors=True)
        resumed = _resume(verified_dir, manifest)
        progress.advance(sum(entry.size for entry in manifest.files if entry.path in resumed))
        synced: list[Future[None]] = []
        for entry in manifest.files:
            if entry.path in resumed:
                continue
            temporary = partial_dir / entry.path
            temporary.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            (verified_dir / entry.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                # Decryption threads write each authenticated chunk at its offset while this
                # thread hashes in order; the file is moved on only after the digest matched.
                for chunk in open_file(entry, functools.partial(_write_at, fd)):
                    progress.advance(len(chunk))
            except BaseException:
                os.close(fd)
                raise
            synced.append(
                flushing.submit(_fsync_close_and_move, fd, temporary, verified_dir / entry.path)
            )
        for future in synced:
            future.result()
        # Every file verified: now publish. Directories first, so that a failure to create
        # one happens before any file has moved.
        for final in targets.values():
            final.parent.mkdir(parents=True, exist_ok=True)
        for entry in manifest.files:
            final = targets[entry.path]
            if force:
                os.replace(verified_dir / entry.path, final)
                continue
            # Without --force a file that appeared meanwhile is never overwritten.
            try:
                os.link(verified_dir / entry.path, final)
            except FileExistsError:
                raise DestinationExistsError(f"{final} appeared during the pull") from None
            published.append(final)
        _fsync_directory(dest)
    except KeyboardInterrupt:
        # Interrupted, not failed: every file verified so far (in place, or staged) is kept
        # for the next pull, which checks it again.
        interrupted = resume_as is not None
        raise
    except BaseException:
        for final in published:
            final.unlink(missing_ok=True)
        raise
    finally:
        flushing.shutdown(wait=True)
        progress.end()
        if not interrupted:
            shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)


def remove_stale_staging(dest: Path, *, keep: Path | None = None) -> list[Path]:
    """Remove the staging directories in `dest` that a pull or prepare left when it was killed
    (they hold decrypted bytes), except `keep`: those whose lock no live process holds, and
    those without a lock untouched for UNLOCKED_STALE_SECONDS. Returns what it removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not (entry.name.startswith(STAGING_PREFIX) and entry.name.endswith(STAGING_SUFFIX)):
            continue
        path = Path(entry.path)
        if path == keep or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(path / _LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.time() - entry.stat(follow_symlinks=False).st_mtime > UNLOCKED_STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a pull that is running
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _take_staging(staging: Path, dest: Path) -> int:
    """Make (or take over) a staging directory, 0700, and hold its lock: the lock's fd."""
    try:
        staging.mkdir(mode=0o700)
    except FileExistsError:
        if _kind(staging) != "dir":
            raise DestinationExistsError(f"{staging} is in the way of the pull") from None
    fd = os.open(staging / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConflictError(
            f"another pull of this version into {dest} is running",
            hint="wait for it to finish, then pull again",
        ) from None
    return fd


def _resume(verified_dir: Path, manifest: Manifest) -> set[str]:
    """The files a killed pull left verified that still hold the manifest's bytes (hashed
    again: anything could have written to the staging directory since)."""
    kept: set[str] = set()
    if _kind(verified_dir) != "dir":
        return kept
    for entry in manifest.files:
        path = verified_dir / entry.path
        kind = _kind(path)
        if kind is None:
            continue
        if same_file(path, entry):
            kept.add(entry.path)
        elif kind == "dir":
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return kept


def same_file(path: Path, entry: ManifestFile) -> bool:
    """Whether `path` is a regular file (not a link) holding exactly the manifest's bytes:
    size first, then BLAKE3."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
        return False
    return hash_file(path) == entry.digest


def plan_targets(
    dest: Path, manifest: Manifest, *, force: bool, skip_same: bool = False
) -> tuple[dict[str, Path], list[str]]:
    """Final path of every file to write, checked before anything is written: no symbolic link
    and no file where a directory is needed along any path inside `dest` (a link could lead
    outside it, or make two files one), and nothing overwritten unless `force`. With
    `skip_same`, a file already there with the manifest's bytes is left out of the targets and
    listed (second) as unchanged."""
    targets: dict[str, Path] = {}
    unchanged: list[str] = []
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
            if skip_same and same_file(final, entry):
                unchanged.append(entry.path)
                continue
            existing.append(entry.path)
        targets[entry.path] = final
    if existing and not force:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        other = " with other content" if skip_same else ""
        raise DestinationExistsError(
            f"{len(existing)} file(s) already exist in {dest}{other}: {shown}"
        )
    return targets, unchanged


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


def _fsync_close_and_move(fd: int, temporary: Path, verified: Path) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, verified)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
