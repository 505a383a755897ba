"""Resumable upload sessions, staged on the server's disk until their commit.

A session lists the files of the version to be (path, size, BLAKE3 digest); each file arrives in
fixed-size parts, in any order and any number of times, each checked against the BLAKE3 digest
the client sends with it, written in place and recorded with that digest; a part already received
is not asked for again. The commit hashes every file once against its declared digest (when one
does not match, each part is checked against its recorded digest: a part lost to a crash is
forgotten, and asked for again) and hands the directory to `Registry.push`, which validates,
encrypts and stores it. Parts are not fsynced: staging is scratch space, and the commit's check
finds whatever a crash lost. A session is its owner's (the token that created it) and is
discarded after its commit, on request, or when it has been idle for `[api] upload_ttl_hours`.
Plaintext stays only in the staging directory (0700), never in a store.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3

from registry.digest import hash_file
from registry.errors import DigestMismatchError, InvalidInputError, NotFoundError
from registry.fileio import private_dirs
from registry.refs import validate_name, validate_relative_path

PART_SIZE = 16 * 1024 * 1024
SESSION_TTL = 24 * 3600.0  # default seconds of inactivity before a session is discarded
MAX_FILES = 10_000
MAX_FILE_SIZE = 1 << 40
_DIGEST = re.compile(r"blake3:[0-9a-f]{64}")
_EMPTY = "blake3:" + blake3.blake3(b"").hexdigest()
_STATE = "session.json"
_LOCK = "lock"
_SESSION = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class UploadFile:
    path: str
    size: int
    digest: str

    def parts(self, part_size: int) -> int:
        return max(1, -(-self.size // part_size))

    def part_length(self, part: int, part_size: int) -> int:
        return min(part_size, self.size - part * part_size) if self.size else 0


@dataclass(frozen=True)
class Session:
    id: str
    model: str
    message: str
    owner: str
    files: tuple[UploadFile, ...]
    root: Path
    part_size: int

    @property
    def data(self) -> Path:
        return self.root / "files"

    def received(self, index: int) -> list[int]:
        folder = self.root / "received" / str(index)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


class Uploads:
    """The upload sessions under one staging directory."""

    def __init__(self, root: Path, *, part_size: int = PART_SIZE, ttl: float = SESSION_TTL) -> None:
        self.root = root
        self.part_size = part_size
        self.ttl = ttl

    def create(self, model: str, files: list[UploadFile], *, message: str, owner: str) -> Session:
        validate_name(model)
        if not files:
            raise InvalidInputError("an upload needs at least one file")
        if len(files) > MAX_FILES:
            raise InvalidInputError(f"at most {MAX_FILES} files per version")
        seen: set[str] = set()
        for entry in files:
            validate_relative_path(entry.path)
            if any(part.startswith(".") for part in entry.path.split("/")):
                raise InvalidInputError(f"{entry.path}: hidden files are not pushed")
            if entry.path in seen:
                raise InvalidInputError(f"{entry.path} is listed twice")
            seen.add(entry.path)
            if not 0 <= entry.size <= MAX_FILE_SIZE:
                raise InvalidInputError(f"{entry.path}: size must be 0..{MAX_FILE_SIZE}")
            if not _DIGEST.fullmatch(entry.digest):
                raise InvalidInputError(f"{entry.path}: digest must be blake3:<64 hex>")
            if entry.size == 0 and entry.digest != _EMPTY:
                raise InvalidInputError(f"{entry.path}: an empty file's digest is {_EMPTY}")
        for path in seen:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in seen:
                    raise InvalidInputError(
                        f"{'/'.join(parts[:depth])} is listed as a file and as the folder of {path}"
                    )
        self.expire()
        session_id = uuid.uuid4().hex
        root = self.root / session_id
        private_dirs(self.root)
        private_dirs(root, exist_ok=False)
        try:
            session = Session(session_id, model, message, owner, tuple(files), root, self.part_size)
            private_dirs(session.data, exist_ok=False)
            for entry in files:
                target = session.data / entry.path
                private_dirs(target.parent)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.fchmod(fd, 0o600)
                    os.ftruncate(fd, entry.size)
                finally:
                    os.close(fd)
            _write_private(root / _LOCK, b"")
            state = {
                "model": model,
                "message": message,
                "owner": owner,
                "part_size": self.part_size,
                "files": [[f.path, f.size, f.digest] for f in files],
            }
            # Written last: a session exists for `get` only once it is complete.
            pending = root / "session.json.pending"
            _write_private(pending, json.dumps(state).encode())
            os.replace(pending, root / _STATE)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return session

    def get(self, session_id: str, *, owner: str) -> Session:
        """The session, if it exists and `owner` created it (else NotFoundError either way)."""
        root = self.root / session_id
        state_file = root / "session.json"
        if not _SESSION.fullmatch(session_id) or not state_file.is_file():
            raise NotFoundError(f"no upload session {session_id}")
        state = json.loads(state_file.read_text())
        if state["owner"] != owner:
            raise NotFoundError(f"no upload session {session_id}")
        os.utime(state_file)  # activity keeps it alive
        files = tuple(UploadFile(p, s, d) for p, s, d in state["files"])
        return Session(
            session_id, state["model"], state["message"], owner, files, root, state["part_size"]
        )

    def part_length(self, session: Session, index: int, part: int) -> int:
        """How many bytes part `part` of file `index` has (InvalidInputError if there is none)."""
        if not 0 <= index < len(session.files):
            raise InvalidInputError(f"file index {index} is not in this session")
        entry = session.files[index]
        count = entry.parts(session.part_size)
        if not 0 <= part < count:
            raise InvalidInputError(f"{entry.path} has parts 0..{count - 1}, not {part}")
        return entry.part_length(part, session.part_size)

    def put_part(
        self, session: Session, index: int, part: int, data: bytes | bytearray, digest: str
    ) -> None:
        """Write one part after checking its length and BLAKE3 digest. Parts are written under
        a shared lock of the session, which a commit or an abandon takes exclusively after
        moving the session away: no part lands in a session being committed."""
        expected = self.part_length(session, index, part)
        entry = session.files[index]
        if len(data) != expected:
            raise InvalidInputError(
                f"{entry.path} part {part} must be {expected} bytes, not {len(data)}"
            )
        actual = "blake3:" + blake3.blake3(data).hexdigest()
        if digest != actual:
            raise DigestMismatchError(
                f"{entry.path} part {part}: digest mismatch (sent {digest[:20]}..., "
                f"received bytes hash to {actual[:20]}...)",
                hint="send the part again",
            )
        # Every path is opened relative to the session's folder as opened here: a commit may
        # move the session aside while this part is being written (its lock waits for ours),
        # and the part must land in the moved session, not recreate the old path.
        with _locked(session, fcntl.LOCK_SH) as folder:
            fd = os.open(f"files/{entry.path}", os.O_WRONLY, dir_fd=folder)
            try:
                view = memoryview(data)
                offset = part * session.part_size
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            finally:
                os.close(fd)
            for name in ("received", f"received/{index}"):
                try:
                    os.mkdir(name, mode=0o700, dir_fd=folder)
                except FileExistsError:
                    continue
                os.chmod(name, 0o700, dir_fd=folder)  # mkdir's mode is masked by the umask
            _write_private(f"received/{index}/{part}", actual.encode(), dir_fd=folder)

    @contextmanager
    def claimed(self, session: Session) -> Iterator[Session]:
        """The session moved aside (so that no new part reaches it and no second commit or
        abandon finds it) and locked once the parts being written have landed. It is put back
        if the block fails (the client may send what is missing and commit again), and must be
        discarded by the block when it succeeds."""
        aside = session.root.with_name(f"{session.id}.claimed.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(session.root, aside)
        except FileNotFoundError:
            raise NotFoundError(f"no upload session {session.id}") from None
        moved = dataclasses.replace(session, root=aside)
        try:
            with _locked(moved, fcntl.LOCK_EX, check=False):
                yield moved
        except BaseException:
            if aside.exists():
                # Nothing writes under the old name once it moved (parts write through the
                # folder they opened), so it is free to take back.
                os.rename(aside, session.root)
            raise

    def assemble(self, session: Session) -> tuple[Path, dict[str, str]]:
        """The directory of complete files and their digests, each part checked against the
        digest recorded when it arrived and each file against its declared digest."""
        for index, entry in enumerate(session.files):
            missing = sorted(
                set(range(entry.parts(session.part_size))) - set(session.received(index))
            )
            if missing and entry.size:
                raise InvalidInputError(
                    f"{entry.path}: parts {missing[:10]} not received yet",
                    hint="upload them (GET the session for what it has), then commit",
                )
        for index, entry in enumerate(session.files):
            if hash_file(session.data / entry.path) == entry.digest:
                continue  # then every part is what was received, too
            # Tell a part lost to a crash (asked for again) from parts that never made the file.
            lost = []
            with open(session.data / entry.path, "rb") as handle:
                for part in range(entry.parts(session.part_size)):
                    data = handle.read(entry.part_length(part, session.part_size))
                    marker = session.root / "received" / str(index) / str(part)
                    try:
                        recorded = marker.read_text()
                    except FileNotFoundError:
                        recorded = ""
                    if recorded != "blake3:" + blake3.blake3(data).hexdigest():
                        marker.unlink(missing_ok=True)
                        lost.append(part)
            if lost:
                raise InvalidInputError(
                    f"{entry.path}: parts {lost[:10]} were lost by the server (a crash?)",
                    hint="upload them again (GET the session for what it has), then commit",
                )
            raise DigestMismatchError(
                f"{entry.path}: the parts received hash to another digest than declared",
                hint="start a new upload session",
            )
        return session.data, {entry.path: entry.digest for entry in session.files}

    def discard(self, session: Session) -> None:
        shutil.rmtree(session.root, ignore_errors=True)

    def expire(self, *, now: float | None = None) -> int:
        """Discard sessions idle for longer than the TTL (and what a crashed commit left);
        returns how many. Anything else in the directory is left alone."""
        moment = time.time() if now is None else now
        removed = 0
        if not self.root.is_dir():
            return 0
        for root in self.root.iterdir():
            if not _SESSION.fullmatch(root.name.split(".")[0]):
                continue
            try:
                if not root.is_dir() or root.is_symlink():
                    continue
                try:
                    idle = moment - (root / _STATE).stat().st_mtime
                except FileNotFoundError:
                    idle = moment - root.stat().st_mtime
                if idle <= self.ttl:
                    continue
                # Moved aside first: a part arriving now finds no session rather than half of one.
                doomed = root.with_name(f"{root.name}.expired")
                os.rename(root, doomed)
            except OSError:
                continue  # removed meanwhile by another process, or not ours to touch
            shutil.rmtree(doomed, ignore_errors=True)
            removed += 1
        return removed


@contextmanager
def _locked(session: Session, operation: int, *, check: bool = True) -> Iterator[int]:
    """The session's lock (shared: a part; exclusive: a commit or abandon), and the session's
    folder, open (wherever it is moved meanwhile). With `check`, the session must still be
    where it was once the lock is held."""
    gone = f"no upload session {session.id} (committed or abandoned)"
    try:
        folder = os.open(session.root, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(gone) from None
    try:
        try:
            fd = os.open(_LOCK, os.O_RDONLY, dir_fd=folder)
        except FileNotFoundError:
            raise NotFoundError(gone) from None
        try:
            fcntl.flock(fd, operation)
            if check:
                try:
                    os.stat(_STATE, dir_fd=folder)
                except FileNotFoundError:
                    raise NotFoundError(gone) from None
                # Moved aside by a commit or abandon before our lock was granted: too late.
                if os.stat(folder).st_ino != _inode(session.root):
                    raise NotFoundError(gone)
            yield folder
        finally:
            os.close(fd)
    finally:
        os.close(folder)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _write_private(name: str | Path, data: bytes, *, dir_fd: int | None = None) -> None:
    """A file only its owner may read, whatever the umask (parts are plaintext)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
