"""`storage-initializer SRC_URI DEST`: KServe's storage initializer for `mr://` URIs
(deploy/kserve/). KServe runs it in an init container with two arguments, the InferenceService's
`storageUri` and the folder the serving container will read (`/mnt/models`). By default DEST gets
what `prepare` writes (the small files, `registry.json` pinning the resolved version) and a warm
cache of the weights' ciphertext, verified, so that the serving container loads the weights
through the loader without downloading them and with no plaintext weight on the node's disk;
`--plaintext` writes the weights as verified files instead, for runtimes that can only read
files (the weaker mode: plaintext on the node's disk).

Everything is written into a staging folder inside DEST first (same filesystem: a rename
publishes it), so a failure leaves DEST as it was."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import click

from cli.ui import handle_errors, human_size, open_registry, progress_bar, stdout

if TYPE_CHECKING:
    from registry.client import RegistrySurface
    from registry.prepared import PrepareResult, StreamedFile

SCHEME = "mr://"
CACHE_DIR = ".model-registry-cache"  # the serving container's MODEL_REGISTRY_CACHE_DIR
STAGING = ".model-registry-staging-"  # a run's work in progress, inside DEST
PIN = "registry.json"  # registry.prepared.PIN_NAME (not imported: --help stays light)
URI_FORM = "mr://NAME[:ALIAS|@N|@blake3:PREFIX], e.g. mr://org/llama:production"


@dataclass(frozen=True)
class Warmed:
    """The cache a run warmed: weight files, sealed bytes, how many it already held."""

    root: Path
    files: int
    sealed_bytes: int
    reused: int


def parse_uri(uri: str) -> str:
    """The registry reference an `mr://` URI names; `InvalidInputError` for anything else."""
    from registry.errors import InvalidInputError
    from registry.refs import parse_reference

    if not uri.startswith(SCHEME):
        scheme = uri.partition("://")[0] + "://" if "://" in uri else "no scheme"
        raise InvalidInputError(
            f"{uri!r} is not an mr:// URI ({scheme})",
            hint=f"give {URI_FORM}; other schemes are for KServe's own storage initializer",
        )
    ref = uri.removeprefix(SCHEME)
    try:
        parse_reference(ref)
    except InvalidInputError as error:
        raise type(error)(f"{uri!r}: {error.message}", hint=f"give {URI_FORM}") from None
    return ref


def _earlier(dest: Path) -> list[Path]:
    """What DEST holds that a new run replaces: nothing for an empty (or absent) folder, an
    earlier run's output (pinned by registry.json); anything else is refused. Work a killed
    run left behind (staging folders) is removed first."""
    from registry.errors import DestinationExistsError, InvalidInputError

    if not dest.exists():
        return []
    if not dest.is_dir():
        raise InvalidInputError(f"destination {dest} exists and is not a directory")
    entries = []
    for entry in dest.iterdir():
        if entry.name.startswith(STAGING):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entries.append(entry)
    if entries and not (dest / PIN).is_file():
        raise DestinationExistsError(
            f"{dest} is not empty and holds no earlier storage-initializer output",
            hint="give an empty folder (KServe's /mnt/models is one)",
        )
    return entries


class _ReadsInto(Protocol):
    def read_into(self, offset: int, buffer: memoryview, /) -> int: ...


def _read(blob: _ReadsInto, offset: int, length: int) -> bytes:
    buffer = bytearray(length)
    return bytes(buffer[: blob.read_into(offset, memoryview(buffer))])


def _sealed_objects(
    registry: RegistrySurface, result: PrepareResult
) -> Iterator[tuple[StreamedFile, bytes, Callable[[int, int], bytes]]]:
    """Each weight file the pin leaves to the loader: its data key and a reader of its sealed
    bytes (the key broker and ranged ciphertext of a server, or the home's keys and stores)."""
    from registry.client import RemoteRegistry
    from registry.errors import IntegrityError
    from registry.service import ReadReport, Registry

    pin = result.pin
    if isinstance(registry, RemoteRegistry):
        keys = registry.data_keys(pin.ref)
        for entry in pin.streamed:
            key = keys.get(("blob", entry.digest))
            if key is None:
                raise IntegrityError(f"{pin.ref}: the key broker sent no key for {entry.path}")
            read = functools.partial(
                registry.read_ciphertext, pin.ref, entry.path, digest=entry.digest
            )
            yield entry, key, read
    else:
        assert isinstance(registry, Registry)
        for entry in pin.streamed:
            key = registry.blob_key(result.version, entry.digest)
            what = f"{pin.ref}: {entry.path}"
            blob = registry.blob_reader(entry.digest, ReadReport(), what=what)
            yield entry, key, functools.partial(_read, blob)


def _warm(
    registry: RegistrySurface, result: PrepareResult, root: Path, earlier: Path | None
) -> Warmed | None:
    """Fill a loader cache at `root` with the sealed objects of the weights the pin leaves to
    the loader, each verified in memory (`Cache.fill`). An earlier run's cache (`earlier`) is
    linked in first, so what it holds is checked, not downloaded again. None where the loader
    would not read through a cache (a home whose stores are local directories)."""
    from registry.loader.cache import Cache
    from registry.service import Registry

    if isinstance(registry, Registry) and any(
        region.store.path is not None for region in registry.settings.regions
    ):
        return None  # the loader reads a local store in place: a cache would be a copy
    if earlier is not None and (earlier / "naming.key").is_file():
        root.mkdir(mode=0o700)
        for path in earlier.iterdir():
            if path.is_file() and not path.name.startswith("."):
                os.link(path, root / path.name)  # same filesystem: no copy
    cache = Cache(root, max_bytes=sys.maxsize)  # every weight, whatever the serving bound
    reused = 0
    for entry, key, read_range in _sealed_objects(registry, result):
        what = f"{result.pin.ref}: {entry.path}"
        if not cache.fill(entry.digest, key, read_range, size=entry.size, what=what):
            reused += 1
    wanted = {cache.path_of(entry.digest) for entry in result.pin.streamed}
    for path in cache.entries():
        if path not in wanted:
            path.unlink()  # an earlier version's weights
    return Warmed(root, len(result.pin.streamed), cache.size(), reused)


def _publish(staging: Path, dest: Path, earlier: list[Path]) -> None:
    """Move the staged output into DEST: an earlier output out first (its pin before anything
    else, so no engine takes a half-replaced folder for a prepared one), the new pin last."""
    trash = dest / f"{STAGING}old-{uuid.uuid4().hex[:12]}"
    if earlier:
        trash.mkdir()
        for entry in sorted(earlier, key=lambda path: path.name != PIN):
            os.rename(entry, trash / entry.name)
    for entry in sorted(staging.iterdir(), key=lambda path: path.name == PIN):
        os.rename(entry, dest / entry.name)
    staging.rmdir()
    shutil.rmtree(trash, ignore_errors=True)


@click.command("storage-initializer")
@click.argument("src_uri", metavar="SRC_URI")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--plaintext",
    is_flag=True,
    help="Also write the weights (*.safetensors) as verified files, for runtimes that can only "
    "read files. Weaker: the weights are then plaintext on the node's disk.",
)
@handle_errors
def storage_initializer(src_uri: str, dest: Path, plaintext: bool) -> None:
    """KServe's storage initializer for mr:// URIs: write the version SRC_URI names into DEST
    (KServe passes its storageUri and /mnt/models). DEST gets the small files, registry.json
    pinning the resolved version, and a verified cache of the weights' ciphertext in
    DEST/.model-registry-cache for the serving container's loader (MODEL_REGISTRY_CACHE_DIR):
    no plaintext weight on disk. The registry: MODEL_REGISTRY_URL and MODEL_REGISTRY_TOKEN, else
    the home (MODEL_REGISTRY_HOME). On failure DEST is left as it was."""
    ref = parse_uri(src_uri)
    started = time.perf_counter()
    dest = dest.expanduser().absolute()
    earlier = _earlier(dest)
    created = not dest.exists()
    staging = dest / f"{STAGING}{uuid.uuid4().hex[:12]}"
    bar = progress_bar(as_json=False, quiet=False)
    try:
        with open_registry() as registry:
            try:
                include = ("*.safetensors",) if plaintext else ()
                result = registry.prepare(ref, staging, include=include, progress=bar)
            finally:
                bar.close()
            cached = dest / CACHE_DIR if dest / CACHE_DIR in earlier else None
            warmed = None if plaintext else _warm(registry, result, staging / CACHE_DIR, cached)
        _publish(staging, dest, earlier)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    _report(src_uri, dest, result, warmed, plaintext, time.perf_counter() - started)


def _report(
    uri: str,
    dest: Path,
    result: PrepareResult,
    warmed: Warmed | None,
    plaintext: bool,
    seconds: float,
) -> None:
    pin = result.pin

    def say(text: str) -> None:
        stdout.print(text, highlight=False)

    say(f"initialized {dest} from {uri} in {seconds:.1f} s")
    say(f"  version  {pin.ref}  {pin.digest}  (pinned in {PIN})")
    say(f"  files    {len(pin.files)} written, verified ({human_size(result.bytes)})")
    if plaintext:
        say(
            "  weights  written as plaintext files (--plaintext): readable by anyone who can "
            "read this disk"
        )
    elif warmed is None:
        streamed = sum(entry.size for entry in pin.streamed)
        say(
            f"  weights  {len(pin.streamed)} files ({human_size(streamed)}) left to the loader, "
            "which reads the home's store in place: no cache needed"
        )
    else:
        say(
            f"  weights  {warmed.files} files cached as ciphertext, verified "
            f"({human_size(warmed.sealed_bytes)}, {warmed.reused} already there) in "
            f"{dest / CACHE_DIR}: no plaintext weight on disk"
        )


def register(group: click.Group) -> None:
    group.add_command(storage_initializer)
