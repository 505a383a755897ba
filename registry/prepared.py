"""A prepared folder: what a serving engine that needs a local model folder gets instead of a pull.

`prepare` writes a version's small files (config.json, generation_config.json, tokenizer files,
chat templates, the safetensors index; never a weight file, `.safetensors` or another format,
unless a pattern asks for it) into a folder, verified like a pull, beside `registry.json`, the
pin: the resolved version (`name@N` and its manifest digest), the weight files left for the
loader to stream and those withheld (formats it cannot stream). An engine plugin reads the pin
and loads exactly that digest, so every worker and tensor-parallel rank of a deployment loads the
same version, whatever an alias says by then; no weight is ever written to the folder in
plaintext unless `--include` asked for it.

Writing is idempotent: a file already there with the manifest's size and BLAKE3 digest is left
as it is, one that differs is replaced if an earlier prepare wrote it (the pin lists them), and
anything else that is in the way is refused. The pin is rewritten first as incomplete (listing
the files of both the old and the new version, so a prepare interrupted at any point is finished
or replaced by the next one, and an engine refuses the folder meanwhile), then the files are
published, then the final pin, then the old version's files that the new one lacks go.
Used by local prepares (`ops.prepare`) and by prepares through the REST API
(`client.remote`) alike.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.digest import hash_file, is_digest
from registry.errors import DestinationExistsError, IntegrityError, InvalidInputError
from registry.manifest import Manifest, ManifestFile
from registry.materialize import FileOpener, Progress, plan_targets, write_verified
from registry.records import VersionRecord
from registry.refs import validate_relative_path

PIN_NAME = "registry.json"
PIN_FORMAT = "model-registry/prepared/v1"
# Weights the loader streams from the registry: never written here unless asked.
STREAMED_PATTERNS = ("*.safetensors",)
# Weights in other formats (pickles, GGUF, ONNX, ...): the loader cannot stream them, and they
# are not written in plaintext either unless asked; the pin lists them as withheld.
WITHHELD_PATTERNS = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.gguf",
    "*.ggml",
    "*.onnx",
    "*.h5",
    "*.msgpack",
    "*.npz",
    "*.tensors",
)


@dataclass(frozen=True)
class StreamedFile:
    """A weight file the pin leaves to the loader: streamed, decrypted and verified in memory."""

    path: str
    size: int
    digest: str


@dataclass(frozen=True)
class Pin:
    """What `registry.json` says: the version a prepared folder is for."""

    name: str
    number: int
    digest: str
    requested: str  # the reference as asked (an alias, say), for the record
    files: tuple[str, ...]  # written into the folder
    streamed: tuple[StreamedFile, ...]  # left to the loader
    withheld: tuple[str, ...] = ()  # weights in formats the loader cannot stream, not written
    complete: bool = True

    @property
    def ref(self) -> str:
        """The reference that names exactly this version (its number)."""
        return f"{self.name}@{self.number}"

    @property
    def pinned_ref(self) -> str:
        """The reference that can only resolve to this content (its full digest)."""
        return f"{self.name}@{self.digest}"

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "format": PIN_FORMAT,
            "complete": self.complete,
            "model": self.name,
            "version": self.number,
            "ref": self.ref,
            "digest": self.digest,
            "requested": self.requested,
            "files": list(self.files),
            "streamed": [dataclasses.asdict(entry) for entry in self.streamed],
            "withheld": list(self.withheld),
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: Path) -> Pin:
        """Parse a pin; `IntegrityError` for anything that is not one this release wrote."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != PIN_FORMAT:
                raise ValueError(f"not a {PIN_FORMAT} file")
            name, number, digest = raw["model"], raw["version"], raw["digest"]
            if not isinstance(name, str) or type(number) is not int or not is_digest(digest):
                raise ValueError("model, version or digest malformed")
            files = tuple(_relative(path) for path in raw["files"])
            streamed = tuple(
                StreamedFile(_relative(e["path"]), int(e["size"]), _digest(e["digest"]))
                for e in raw["streamed"]
            )
            withheld = tuple(_relative(path) for path in raw.get("withheld", []))
            complete = raw["complete"]
            requested = raw.get("requested", f"{name}@{number}")
            if not isinstance(complete, bool) or not isinstance(requested, str):
                raise ValueError("complete or requested malformed")
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(
                f"{where} is not a pin written by `model-registry prepare`: {error}",
                hint="prepare the folder again: `model-registry prepare REF DIR`",
            ) from None
        return cls(name, number, digest, requested, files, streamed, withheld, complete)


def _relative(path: object) -> str:
    if not isinstance(path, str):
        raise ValueError("a path is not a string")
    validate_relative_path(path)
    return path


def _digest(text: object) -> str:
    if not is_digest(text):
        raise ValueError("a digest is malformed")
    return str(text)


@dataclass(frozen=True)
class PrepareResult:
    """A prepare: the pin it wrote, the files it wrote and those it found already in place."""

    version: VersionRecord
    destination: Path
    pin: Pin
    written: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    bytes: int  # of the files written


def read_pin(folder: str | Path) -> Pin:
    """The pin of a prepared folder, refused unless a prepare finished there."""
    path = Path(folder).expanduser() / PIN_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(
            f"{path.parent} is not a prepared folder: it has no {PIN_NAME}",
            hint="make it with `model-registry prepare REF DIR`",
        ) from None
    except OSError as error:
        raise InvalidInputError(f"cannot read {path}: {error.strerror}") from None
    pin = Pin.from_json(data, where=path)
    if not pin.complete:
        raise InvalidInputError(
            f"{path.parent} was being prepared when that stopped: its files may be of two versions",
            hint="run the same `model-registry prepare` again to finish it",
        )
    return pin


def select(
    manifest: Manifest, include: Sequence[str]
) -> tuple[list[ManifestFile], list[ManifestFile], list[ManifestFile]]:
    """The files a prepare writes (everything but weights, and what `include` matches), the
    safetensors weights it leaves to the loader, and the other weights it withholds."""
    for pattern in include:
        if not pattern or pattern.startswith("/"):
            raise InvalidInputError(
                f"--include {pattern!r}: a pattern matches paths inside the version "
                "(for example '*.safetensors' or 'tokenizer/*')"
            )
    written: list[ManifestFile] = []
    streamed: list[ManifestFile] = []
    withheld: list[ManifestFile] = []
    for entry in manifest.files:
        if any(fnmatch.fnmatchcase(entry.path, p) for p in include):
            written.append(entry)
        elif any(fnmatch.fnmatchcase(entry.path, p) for p in STREAMED_PATTERNS):
            streamed.append(entry)
        elif any(fnmatch.fnmatchcase(entry.path.lower(), p) for p in WITHHELD_PATTERNS):
            withheld.append(entry)
        else:
            written.append(entry)
    return written, streamed, withheld


def prepare_folder(
    destination: str | Path,
    version: VersionRecord,
    manifest: Manifest,
    open_file: FileOpener,
    *,
    requested: str,
    include: Sequence[str] = (),
    progress: Progress,
) -> PrepareResult:
    """Write the version's selected files into `destination` and pin it (see the module)."""
    dest = Path(destination).expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {dest} exists and is not a directory")
    wanted, streamed, withheld = select(manifest, include)
    if any(entry.path == PIN_NAME for entry in wanted):
        raise InvalidInputError(
            f"{version.ref} has a file named {PIN_NAME}, which a prepared folder keeps for its pin",
            hint="pull it instead: `model-registry pull`",
        )
    pin_path = dest / PIN_NAME
    earlier = _earlier_pin(pin_path)
    managed = set(earlier.files) if earlier is not None else set()
    # Checked before anything is written: no link or file in the way of a path.
    targets, _ = plan_targets(dest, dataclasses.replace(manifest, files=tuple(wanted)), force=True)
    to_write: list[ManifestFile] = []
    unchanged: list[str] = []
    in_the_way: list[str] = []
    for entry in wanted:
        final = targets[entry.path]
        if not final.exists():
            to_write.append(entry)
        elif _same(final, entry):
            unchanged.append(entry.path)
        elif entry.path in managed:
            to_write.append(entry)
        else:
            in_the_way.append(entry.path)
    if in_the_way:
        shown = ", ".join(in_the_way[:5]) + (" ..." if len(in_the_way) > 5 else "")
        raise DestinationExistsError(
            f"{len(in_the_way)} file(s) in {dest} differ from {version.ref} and were not "
            f"written by a prepare: {shown}",
            hint="prepare into an empty folder, or remove those files",
        )
    pin = Pin(
        version.name,
        version.number,
        version.digest,
        requested,
        tuple(entry.path for entry in wanted),
        tuple(StreamedFile(e.path, e.size, e.digest) for e in streamed),
        tuple(e.path for e in withheld),
    )
    stale = sorted(managed - set(pin.files))
    created = not dest.exists()
    try:
        _publish(
            dest, pin, earlier, managed, stale, to_write, targets, manifest, open_file, progress
        )
    except BaseException:
        # A folder this prepare created goes again; one that was there keeps an incomplete pin,
        # which engines refuse and the next prepare finishes.
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return PrepareResult(
        version,
        dest,
        pin,
        tuple(entry.path for entry in to_write),
        tuple(unchanged),
        tuple(stale),
        sum(entry.size for entry in to_write),
    )


def _publish(
    dest: Path,
    pin: Pin,
    earlier: Pin | None,
    managed: set[str],
    stale: list[str],
    to_write: list[ManifestFile],
    targets: dict[str, Path],
    manifest: Manifest,
    open_file: FileOpener,
    progress: Progress,
) -> None:
    pin_path = dest / PIN_NAME
    dest.mkdir(parents=True, exist_ok=True)
    if not to_write and not stale and earlier == pin:
        return  # prepared already: nothing is touched
    # Incomplete while files of two versions may be here: engines refuse it meanwhile.
    _write_pin(
        pin_path,
        dataclasses.replace(pin, files=tuple(sorted(managed | set(pin.files))), complete=False),
    )
    if to_write:
        subset = dataclasses.replace(manifest, files=tuple(to_write))
        write_verified(
            dest,
            {entry.path: targets[entry.path] for entry in to_write},
            subset,
            open_file,
            force=True,
            progress=progress,
        )
    _write_pin(pin_path, pin)
    for path in stale:
        (dest / path).unlink(missing_ok=True)


def _earlier_pin(path: Path) -> Pin | None:
    """The pin an earlier prepare left (complete or not); None when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Pin.from_json(data, where=path)
    except IntegrityError:
        raise DestinationExistsError(
            f"{path} is in the way: it is not a pin written by `model-registry prepare`",
            hint="prepare into an empty folder, or remove that file",
        ) from None


def _same(path: Path, entry: ManifestFile) -> bool:
    """Whether a file already holds exactly the manifest's bytes (size first, then BLAKE3)."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size != entry.size:
        return False
    return hash_file(path) == entry.digest


def _write_pin(path: Path, pin: Pin) -> None:
    """Replace the pin atomically (written beside it, flushed, renamed over it)."""
    temporary = path.with_name(f".{PIN_NAME}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pin.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
