"""A push through the REST API, sealed by the client: hash the files, open (or resume) an upload
session, seal each file under the data key the server issued for it (with the salt and nonce
prefix it issued, so a resumed push seals every part exactly as before), send the ciphertext part
by part in parallel, and commit. No plaintext byte leaves this process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3

from registry import errors, wire
from registry import manifest as manifests
from registry.crypto.sealed import HEADER_SIZE, TAG_SIZE, Sealer, wipe
from registry.digest import hash_file
from registry.errors import IntegrityError
from registry.fileio import read_into
from registry.materialize import Progress

PARALLEL = 4  # parts in flight
JsonCall = Callable[..., Any]


def described_files(
    path: Path, *, follow_symlinks: bool, signature: bytes | None, progress: Progress
) -> tuple[list[manifests.LocalFile], list[dict[str, Any]], bytes | None]:
    """The files to push (validated), their declared path, size and digest, and the signature
    (the one given, else a root model.sig's content)."""
    files, signature = manifests.take_signature(
        manifests.collect(path, follow_symlinks=follow_symlinks), signature
    )
    progress.begin("hashing", sum(f.size for f in files))
    described = []
    for entry in files:
        digest = hash_file(entry.source, on_progress=progress.advance, starts_with=entry.validated)
        described.append({"path": entry.path, "size": entry.size, "digest": digest})
    progress.end()
    return files, described, signature


def resume_file(identity: list[Any]) -> Path:
    """Where the id of the session of this very push (server, token, model, message, files)
    is kept, so that a push run again resumes it."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "model-registry" / "uploads" / key


def open_session(
    json_call: JsonCall, state_file: Path, name: str, described: list[dict[str, Any]], message: str
) -> wire.UploadSession:
    """The session an interrupted run of this push left (its keys issued again), else a new
    one."""
    if state_file.exists():
        try:
            return wire.load(
                wire.UploadSession,
                json_call("GET", f"/v1/uploads/{state_file.read_text().strip()}"),
            )
        except errors.NotFoundError:
            pass  # expired or committed meanwhile: start again
    session = wire.load(
        wire.UploadSession,
        json_call(
            "POST", "/v1/uploads", json={"model": name, "files": described, "message": message}
        ),
    )
    state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_file.write_text(session.id)
    return session


def seal_part(
    source: Path,
    sealer: Sealer,
    part: int,
    chunks_per_part: int,
    buffer: bytearray,
    out: bytearray | None = None,
) -> memoryview:
    """The sealed bytes of part `part` of the file at `source` (see `SealedHeader.part_range`),
    sealed into `out` (a new buffer unless one as large is given), `buffer` holding the
    plaintext meanwhile."""
    header = sealer.header
    first = part * chunks_per_part
    last = min(header.chunk_count, first + chunks_per_part)
    plain_size = sum(header.chunk_plain_size(i) for i in range(first, last))
    length = header.part_range(part, chunks_per_part)[1]
    if out is None or len(out) < length:
        out = bytearray(length)
    sealed = memoryview(out)[:length]
    at = 0
    if part == 0:
        sealed[:HEADER_SIZE] = sealer.header_bytes
        at = HEADER_SIZE
    plain = memoryview(buffer)[:plain_size]
    with open(source, "rb", buffering=0) as handle:
        handle.seek(first * header.chunk_size)
        if read_into(handle, plain) != plain_size:
            raise IntegrityError(f"{source}: changed size while it was being pushed; push again")
    offset = 0
    for index in range(first, last):
        size = header.chunk_plain_size(index)
        sealer.seal_chunk_into(
            index, plain[offset : offset + size], sealed[at : at + size + TAG_SIZE]
        )
        offset += size
        at += size + TAG_SIZE
    return sealed


def send_parts(
    call: JsonCall,
    session: wire.UploadSession,
    sources: dict[str, Path],
    *,
    progress: Progress,
) -> int:
    """Seal and send every part the session has not received; the bytes of plaintext sent."""
    sealers = {
        entry.index: Sealer(
            _key(entry.key),
            entry.digest,
            plaintext_size=entry.size,
            chunk_size=session.chunk_size,
            salt=bytes.fromhex(entry.salt),
            nonce_prefix=bytes.fromhex(entry.nonce_prefix),
        )
        for entry in session.files
    }
    todo = [
        (entry.index, part, entry.path)
        for entry in sorted(session.files, key=lambda e: -e.size)
        for part in sorted(set(range(entry.parts)) - set(entry.received))
    ]
    per_part = session.chunk_size * session.chunks_per_part
    total = sum(entry.size for entry in session.files)
    done = sum(
        min(per_part, entry.size - part * per_part)
        for entry in session.files
        for part in entry.received
    )
    progress.begin("uploading", total)
    progress.advance(done)
    lock = threading.Lock()
    # One plaintext and one sealed buffer per sending thread, reused from part to part.
    local = threading.local()
    buffers: list[bytearray] = []

    def send(item: tuple[int, int, str]) -> int:
        index, part, path = item
        sealer = sealers[index]
        if not hasattr(local, "plain"):
            local.plain = bytearray(per_part)
            local.out = bytearray(0)
            with lock:
                buffers.append(local.plain)
        try:
            data = seal_part(
                sources[path], sealer, part, session.chunks_per_part, local.plain, local.out
            )
        finally:
            wipe(local.plain)  # no plaintext left behind in memory
        local.out = data.obj
        call(
            "PUT",
            f"/v1/uploads/{session.id}/files/{index}/parts/{part}",
            content=data,
            headers={
                "X-Part-Digest": "blake3:"
                + blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
            },
        )
        plain = len(data) - TAG_SIZE * _chunks(sealer, part, session.chunks_per_part)
        plain -= HEADER_SIZE if part == 0 else 0
        with lock:
            progress.advance(plain)
        return plain

    try:
        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="upload") as pool:
            sent = sum(pool.map(send, todo))
    finally:
        progress.end()
    return sent


def _chunks(sealer: Sealer, part: int, chunks_per_part: int) -> int:
    first = part * chunks_per_part
    return min(sealer.header.chunk_count, first + chunks_per_part) - first


def _key(text: str) -> bytes:
    return base64.b64decode(text)
