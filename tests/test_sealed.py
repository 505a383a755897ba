"""The sealed blob format: round trips, random access, tampering, and bounded memory."""

from __future__ import annotations

import io
import os
import random
import re
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import registry.crypto.sealed as sealed_module
from registry.crypto.sealed import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    Opener,
    RangeOpener,
    SealedHeader,
    Sealer,
    seal_file,
    unseal,
)
from registry.digest import format_digest, hash_bytes
from registry.errors import IntegrityError, InvalidInputError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
MiB = 1024 * 1024

# Offsets and lengths of the header fields (docs/format.md, section 1).
HEADER_FIELDS = {
    "magic": (0, 4),
    "version": (4, 1),
    "cipher": (5, 1),
    "reserved": (6, 2),
    "chunk_size": (8, 4),
    "plaintext_size": (12, 8),
    "salt": (20, 32),
    "nonce_prefix": (52, 7),
    "commitment": (59, 32),
}
# What each edited field is refused by: the format check, the key commitment, or the chunk AEAD
# (the whole header is the associated data of every chunk) and the size arithmetic it drives.
FIELD_ERRORS = {
    "magic": r"bad magic",
    "version": r"unsupported sealed format",
    "cipher": r"unsupported sealed format",
    "reserved": r"unsupported sealed format",
    "chunk_size": r"out of bounds|failed authentication|truncated|unexpected bytes",
    "plaintext_size": r"too many chunks|failed authentication|truncated|unexpected bytes",
    "salt": r"key commitment mismatch",
    "nonce_prefix": r"chunk 0 failed authentication",
    "commitment": r"key commitment mismatch",
}
# Fields refused before any chunk is read.
HEADER_ONLY_FIELDS = {"magic", "version", "cipher", "reserved", "salt", "commitment"}


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def seal(
    data: bytes,
    *,
    key: bytes = KEY,
    digest: str | None = None,
    chunk_size: int = 64,
    workers: int = 2,
) -> tuple[bytes, SealedHeader]:
    pieces = seal_file(
        io.BytesIO(data),
        key,
        digest or hash_bytes(data),
        plaintext_size=len(data),
        chunk_size=chunk_size,
        workers=workers,
    )
    blob = b"".join(bytes(piece) for piece in pieces)
    return blob, SealedHeader.unpack(blob[:HEADER_SIZE])


def reader(blob: bytes, calls: list[tuple[int, int]] | None = None) -> Callable[[int, int], bytes]:
    def read_range(offset: int, length: int) -> bytes:
        if calls is not None:
            calls.append((offset, length))
        return blob[offset : offset + length]

    return read_range


def reader_into(
    blob: bytes, calls: list[tuple[int, int]] | None = None
) -> Callable[[int, memoryview], int]:
    def read_into(offset: int, buffer: memoryview) -> int:
        if calls is not None:
            calls.append((offset, len(buffer)))
        data = blob[offset : offset + len(buffer)]
        buffer[: len(data)] = data
        return len(data)

    return read_into


def unseal_blob(
    blob: bytes,
    digest: str,
    *,
    key: bytes = KEY,
    calls: list[tuple[int, int]] | None = None,
    into: bool = False,
    on_chunk: Callable[[int, memoryview], None] | None = None,
    **options: int,
) -> Iterator[memoryview]:
    """unseal() over an in-memory object, through read_range or (`into`) read_into."""
    read_into = reader_into(blob, calls) if into else None
    return unseal(
        reader(blob, calls), key, digest, read_into=read_into, on_chunk=on_chunk, **options
    )


def open_all(blob: bytes, digest: str, **options: Any) -> bytes:
    # Yielded views are only valid until the next chunk is requested: copy each one.
    return b"".join(bytes(chunk) for chunk in unseal_blob(blob, digest, **options))


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the list of sealed chunks of a well-formed blob."""
    header = SealedHeader.unpack(blob[:HEADER_SIZE])
    chunks = []
    for index in range(header.chunk_count):
        offset, length = header.chunk_range(index, index)
        chunks.append(blob[offset : offset + length])
    assert HEADER_SIZE + sum(map(len, chunks)) == len(blob)
    return blob[:HEADER_SIZE], chunks


def collect_until_error(
    blob: bytes, digest: str, **options: Any
) -> tuple[list[bytes], IntegrityError]:
    """Every chunk unseal yields before it raises IntegrityError (it must raise)."""
    return drain_until_error(unseal_blob(blob, digest, **options))


def drain_until_error(
    pieces: Iterable[bytes | bytearray | memoryview],
    after_each: Callable[[int], None] | None = None,
) -> tuple[list[bytes], IntegrityError]:
    """What an iterator yields before it raises IntegrityError; fails the test if it does not."""
    got: list[bytes] = []
    try:
        for piece in pieces:
            got.append(bytes(piece))
            if after_each is not None:
                after_each(len(got))
    except IntegrityError as error:
        return got, error
    pytest.fail(f"no IntegrityError after {len(got)} pieces")


def assert_withheld(
    yielded: list[bytes], plaintext: bytes, chunk_size: int, damaged: int, chunks_per_read: int
) -> None:
    """What was yielded is a strict prefix of the plaintext, in whole chunks, that stops before
    the damaged chunk; with one chunk per read it is every intact chunk before it."""
    count = max(1, -(-len(plaintext) // chunk_size))
    assert len(yielded) < count, "the whole plaintext was yielded despite the damage"
    assert len(yielded) <= damaged, f"chunk {damaged} (damaged) or a later one was yielded"
    for index, chunk in enumerate(yielded):
        assert chunk == plaintext[index * chunk_size : (index + 1) * chunk_size]
    got = b"".join(yielded)
    assert plaintext.startswith(got)
    assert len(got) < len(plaintext) or not plaintext
    if chunks_per_read == 1:
        assert len(yielded) == damaged


# -- round trips -------------------------------------------------------------------------------


def _sizes(chunk: int) -> list[int]:
    return [0, 1, chunk - 1, chunk, chunk + 1, 5 * chunk, 5 * chunk + chunk // 3 + 1]


@pytest.mark.parametrize(
    ("chunk_size", "size"),
    [(chunk, size) for chunk in (64, 100, 4096) for size in _sizes(chunk)],
)
def test_round_trip(chunk_size: int, size: int) -> None:
    data = _payload(size, seed=size)
    digest = hash_bytes(data)
    blob, header = seal(data, chunk_size=chunk_size)
    assert len(blob) == header.sealed_size
    assert header.chunk_size == chunk_size
    assert header.plaintext_size == size
    assert header.chunk_count == max(1, -(-size // chunk_size))
    assert len(blob) == HEADER_SIZE + size + TAG_SIZE * header.chunk_count
    assert data not in blob or size <= 1  # the plaintext does not appear in the sealed object
    assert open_all(blob, digest) == data
    assert open_all(blob, digest, expected_size=size, chunks_per_read=1, workers=1) == data
    assert open_all(blob, digest, chunks_per_read=3, workers=3) == data
    assert open_all(blob, digest, chunks_per_read=2, workers=2, into=True) == data


def test_round_trip_default_chunk_size() -> None:
    data = _payload(3 * MiB + MiB // 2 + 7, seed=1)
    digest = hash_bytes(data)
    blob, header = seal(data, chunk_size=DEFAULT_CHUNK_SIZE)
    assert header.chunk_size == DEFAULT_CHUNK_SIZE
    assert header.chunk_count == 4
    assert len(blob) == header.sealed_size
    chunks = [bytes(c) for c in unseal(reader(blob), KEY, digest, expected_size=len(data))]
    assert [len(chunk) for chunk in chunks] == [MiB, MiB, MiB, MiB // 2 + 7]
    assert b"".join(chunks) == data


def test_empty_blob_is_one_empty_chunk() -> None:
    blob, header = seal(b"")
    assert header.chunk_count == 1
    assert len(blob) == HEADER_SIZE + TAG_SIZE == header.sealed_size
    assert [bytes(chunk) for chunk in unseal(reader(blob), KEY, hash_bytes(b""))] == [b""]


def test_sealing_twice_gives_different_objects() -> None:
    data = _payload(300)
    first, first_header = seal(data)
    second, second_header = seal(data)
    assert first_header.salt != second_header.salt
    assert first_header.nonce_prefix != second_header.nonce_prefix
    assert first[HEADER_SIZE:] != second[HEADER_SIZE:]


def test_progress_reports_every_plaintext_byte() -> None:
    data = _payload(1000)
    seen: list[int] = []
    pieces = seal_file(
        io.BytesIO(data), KEY, hash_bytes(data), plaintext_size=1000, chunk_size=64,
        on_progress=seen.append,
    )  # fmt: skip
    blob = b"".join(bytes(piece) for piece in pieces)
    assert sum(seen) == 1000
    assert len(seen) == 16
    assert open_all(blob, hash_bytes(data)) == data


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=5000),
    chunk_size=st.integers(MIN_CHUNK_SIZE, 512),
    chunks_per_read=st.integers(0, 10),
    workers=st.integers(1, 4),
    seal_workers=st.integers(1, 3),
)
def test_property_round_trip(
    data: bytes, chunk_size: int, chunks_per_read: int, workers: int, seal_workers: int
) -> None:
    digest = hash_bytes(data)
    blob, header = seal(data, chunk_size=chunk_size, workers=seal_workers)
    assert len(blob) == header.sealed_size
    chunks = [
        bytes(chunk)
        for chunk in unseal(
            reader(blob), KEY, digest, chunks_per_read=chunks_per_read, workers=workers
        )
    ]
    assert len(chunks) == header.chunk_count
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert b"".join(chunks) == data


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=5000), chunk_size=st.integers(MIN_CHUNK_SIZE, 512), choice=st.data())
def test_property_random_access(data: bytes, chunk_size: int, choice: st.DataObject) -> None:
    digest = hash_bytes(data)
    blob, header = seal(data, chunk_size=chunk_size)
    opener = Opener(KEY, digest, blob[:HEADER_SIZE], what="blob")
    count = header.chunk_count
    index = choice.draw(st.integers(0, count - 1), label="index")
    offset, length = header.chunk_range(index, index)
    assert offset == header.chunk_offset(index)
    size = header.chunk_plain_size(index)
    assert length == size + TAG_SIZE
    out = bytearray(size)
    opener.open_chunk(index, blob[offset : offset + length], out)
    assert bytes(out) == data[index * chunk_size : index * chunk_size + size]

    # A run of chunks is one contiguous range that ends where the next one starts.
    last = choice.draw(st.integers(index, count - 1), label="last")
    start, span = header.chunk_range(index, last)
    assert start == offset
    assert start + span == (
        header.sealed_size if last == count - 1 else header.chunk_offset(last + 1)
    )

    # The same sealed chunk is refused at any other index: chunks cannot be moved.
    if count > 1:
        other = choice.draw(st.integers(0, count - 1).filter(lambda i: i != index), label="other")
        with pytest.raises(IntegrityError):
            opener.open_chunk(other, blob[offset : offset + length], bytearray(size))


def test_opener_refuses_bad_chunk_arguments() -> None:
    data = _payload(200)
    blob, header = seal(data)
    opener = Opener(KEY, hash_bytes(data), blob[:HEADER_SIZE], what="blob")
    offset, length = header.chunk_range(0, 0)
    with pytest.raises(IntegrityError, match="does not exist"):
        opener.open_chunk(header.chunk_count, blob[offset : offset + length], bytearray(64))
    with pytest.raises(IntegrityError, match="does not exist"):
        opener.open_chunk(-1, blob[offset : offset + length], bytearray(64))
    with pytest.raises(IntegrityError, match="truncated"):
        opener.open_chunk(0, blob[offset : offset + length - 1], bytearray(64))
    with pytest.raises(IntegrityError, match="truncated"):
        opener.open_chunk(0, blob[offset : offset + length], bytearray(63))


class TrickleStream(io.RawIOBase):
    """A raw stream (a pipe, a network file system) whose reads return a few bytes at a time."""

    def __init__(self, data: bytes, most: int) -> None:
        self.source = io.BytesIO(data)
        self.most = most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        piece = self.source.read(min(len(buffer), self.most))
        memoryview(buffer).cast("B")[: len(piece)] = piece
        return len(piece)


@pytest.mark.parametrize("most", [1, 10, 63, 1000])
def test_seal_file_handles_short_reads(most: int) -> None:
    data = _payload(1000, seed=most)
    digest = hash_bytes(data)
    pieces = seal_file(TrickleStream(data, most), KEY, digest, plaintext_size=1000, chunk_size=64)
    blob = b"".join(bytes(piece) for piece in pieces)
    assert open_all(blob, digest) == data


@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 0])
def test_sealer_refuses_chunk_size_out_of_bounds(chunk_size: int) -> None:
    with pytest.raises(InvalidInputError):
        Sealer(KEY, hash_bytes(b""), plaintext_size=0, chunk_size=chunk_size)


def test_sealer_refuses_bad_key_and_sizes() -> None:
    with pytest.raises(InvalidInputError):
        Sealer(KEY[:31], hash_bytes(b""), plaintext_size=0, chunk_size=64)
    with pytest.raises(InvalidInputError):
        Sealer(KEY, hash_bytes(b""), plaintext_size=-1, chunk_size=64)
    sealer = Sealer(KEY, hash_bytes(b""), plaintext_size=100, chunk_size=64)
    with pytest.raises(InvalidInputError):
        sealer.seal_chunk(0, bytes(63))
    with pytest.raises(InvalidInputError):
        sealer.seal_chunk(1, bytes(64))


def test_expected_size_mismatch_raises() -> None:
    data = _payload(500)
    blob, _ = seal(data)
    for wrong in (499, 501, 0):
        yielded, error = collect_until_error(blob, hash_bytes(data), expected_size=wrong)
        assert yielded == []
        assert "catalog says" in str(error)
    assert open_all(blob, hash_bytes(data), expected_size=500) == data


def test_concurrent_and_successive_unseals_never_share_buffers() -> None:
    """Readers in several threads, one after another and at once, over blobs of different chunk
    sizes: each gets exactly its own plaintext (read buffers may be reused between readers)."""
    blobs = []
    for seed, (size, chunk_size) in enumerate([(5000, 64), (9000, 100), (20000, 512), (700, 64)]):
        data = _payload(size, seed=100 + seed)
        blobs.append((data, seal(data, chunk_size=chunk_size)[0]))
    failures: list[str] = []
    start = threading.Barrier(len(blobs))

    def read_repeatedly(data: bytes, blob: bytes) -> None:
        start.wait()
        for round_ in range(15):
            options = {"chunks_per_read": 1 + round_ % 4, "workers": 1 + round_ % 3}
            try:
                opened = open_all(blob, hash_bytes(data), into=bool(round_ % 2), **options)
            except Exception as error:  # noqa: BLE001 - reported by the assertion below
                failures.append(f"{len(data)} bytes, round {round_}, {options}: {error!r}")
            else:
                if opened != data:
                    failures.append(f"{len(data)} bytes, round {round_}, {options}: other bytes")

    threads = [threading.Thread(target=read_repeatedly, args=pair) for pair in blobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- tampering ---------------------------------------------------------------------------------

PLAIN = _payload(10 * 64 + 37, seed=42)  # 11 chunks of 64 bytes, the last one partial
PLAIN_DIGEST = hash_bytes(PLAIN)
COUNT = 11
READ_OPTIONS = [
    pytest.param({"chunks_per_read": 1, "workers": 1}, id="cpr1-w1"),
    pytest.param({"chunks_per_read": 1, "workers": 3}, id="cpr1-w3"),
    pytest.param({"chunks_per_read": 3, "workers": 2}, id="cpr3-w2"),
    pytest.param({"chunks_per_read": 8, "workers": 2}, id="cpr8-w2"),
    pytest.param({"chunks_per_read": 1, "workers": 2, "into": True}, id="cpr1-w2-into"),
    pytest.param({"chunks_per_read": 4, "workers": 2, "into": True}, id="cpr4-w2-into"),
]


@pytest.fixture(scope="module")
def sealed_plain() -> bytes:
    blob, header = seal(PLAIN)
    assert header.chunk_count == COUNT
    return blob


@pytest.fixture
def fresh_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory measurements start without read buffers cached by earlier tests."""
    cache = getattr(sealed_module, "_rings", None)
    if cache is not None:
        monkeypatch.setattr(sealed_module, "_rings", type(cache)())


def _flip(blob: bytes, byte: int, bit: int) -> bytes:
    damaged = bytearray(blob)
    damaged[byte] ^= 1 << bit
    return bytes(damaged)


@pytest.mark.parametrize("into", [False, True], ids=["range", "into"])
@pytest.mark.parametrize(
    ("chunk_size", "plaintext_size", "options"),
    [
        pytest.param(64, 2**22 * 64, {}, id="millions-of-chunks"),
        pytest.param(MAX_CHUNK_SIZE, 64 * MiB, {"chunks_per_read": 1, "workers": 1}, id="16MiB"),
        pytest.param(MAX_CHUNK_SIZE // 4, 64 * MiB, {"chunks_per_read": 2}, id="4MiB-x2"),
    ],
)
@pytest.mark.usefixtures("fresh_buffers")
def test_forged_sizes_are_refused_before_any_large_allocation(
    sealed_plain: bytes, chunk_size: int, plaintext_size: int, options: dict[str, int], into: bool
) -> None:
    """A header edited to claim millions of chunks or huge chunks passes the format check; the
    AEAD then refuses chunk 0. Nothing sized from the forged header may be allocated first: no
    per-chunk bookkeeping, no chunk-sized buffers."""
    damaged = bytearray(sealed_plain)
    struct.pack_into(">IQ", damaged, 8, chunk_size, plaintext_size)
    forged = SealedHeader.unpack(bytes(damaged))
    assert (forged.chunk_size, forged.plaintext_size) == (chunk_size, plaintext_size)
    tracemalloc.start()
    try:
        yielded, error = collect_until_error(bytes(damaged), PLAIN_DIGEST, into=into, **options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert yielded == []
    assert "chunk 0" in str(error)
    assert peak < 4 * MiB, f"peaked at {peak / MiB:.1f} MiB before refusing a forged header"


@pytest.mark.usefixtures("fresh_buffers")
def test_truncated_huge_object_is_refused_without_per_chunk_bookkeeping() -> None:
    """An authentic header and chunk 0 of a 256 MiB object in 64-byte chunks (an upload cut short
    after its first chunk): refused as truncated, without lists as long as the claimed chunks."""
    size = 2**22 * 64
    sealer = Sealer(KEY, PLAIN_DIGEST, plaintext_size=size, chunk_size=64)
    blob = sealer.header_bytes + bytes(sealer.seal_chunk(0, PLAIN[:64]))
    tracemalloc.start()
    try:
        yielded, error = collect_until_error(blob, PLAIN_DIGEST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert yielded == []
    assert "truncated" in str(error)
    assert peak < 4 * MiB, f"peaked at {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("field", list(HEADER_FIELDS))
def test_flipped_header_bit_is_refused_before_any_chunk(sealed_plain: bytes, field: str) -> None:
    """Every single-bit edit of every header field fails, and no plaintext comes out."""
    start, length = HEADER_FIELDS[field]
    for byte in range(start, start + length):
        for bit in range(8):
            damaged = _flip(sealed_plain, byte, bit)
            # A flipped high bit of the size claims up to 2**32 chunks: read them as one group,
            # so that a reader regressed to per-group bookkeeping fails the test above instead
            # of exhausting memory here.
            claimed = struct.unpack_from(">Q", damaged, 12)[0] // 64
            options = {"chunks_per_read": 2**16} if claimed > 2**16 else {}
            calls: list[tuple[int, int]] = []
            yielded, error = collect_until_error(damaged, PLAIN_DIGEST, calls=calls, **options)
            assert yielded == [], f"{field} byte {byte} bit {bit}: plaintext was yielded"
            assert re.search(FIELD_ERRORS[field], str(error)), (field, byte, bit, str(error))
            if field in HEADER_ONLY_FIELDS:
                assert calls == [(0, HEADER_SIZE)], "refused only after reading chunks"


@pytest.mark.parametrize("options", READ_OPTIONS)
@pytest.mark.parametrize("index", [0, 4, COUNT - 1])
@pytest.mark.parametrize("where", ["body", "tag"])
def test_flipped_chunk_bit(
    sealed_plain: bytes, options: dict[str, Any], index: int, where: str
) -> None:
    header, chunks = split(sealed_plain)
    damaged = bytearray(chunks[index])
    damaged[3 if where == "body" else -3] ^= 0x10
    chunks[index] = bytes(damaged)
    yielded, error = collect_until_error(header + b"".join(chunks), PLAIN_DIGEST, **options)
    assert f"chunk {index} failed authentication" in str(error)
    assert_withheld(yielded, PLAIN, 64, index, options["chunks_per_read"])


def _tamper_cases() -> list[tuple[str, Callable[[list[bytes]], list[bytes]], int]]:
    def swap(i: int, j: int) -> Callable[[list[bytes]], list[bytes]]:
        def edit(chunks: list[bytes]) -> list[bytes]:
            chunks[i], chunks[j] = chunks[j], chunks[i]
            return chunks

        return edit

    def duplicate(i: int) -> Callable[[list[bytes]], list[bytes]]:
        def edit(chunks: list[bytes]) -> list[bytes]:
            chunks[i + 1] = chunks[i]
            return chunks

        return edit

    def drop(i: int) -> Callable[[list[bytes]], list[bytes]]:
        def edit(chunks: list[bytes]) -> list[bytes]:
            del chunks[i]
            return chunks

        return edit

    return [
        ("swap 2 and 6", swap(2, 6), 2),
        ("swap 0 and 1", swap(0, 1), 0),
        ("swap 5 and last", swap(5, COUNT - 1), 5),
        ("swap the last two", swap(COUNT - 2, COUNT - 1), COUNT - 2),
        ("duplicate 3 over 4", duplicate(3), 4),
        ("duplicate 9 over the last", duplicate(COUNT - 2), COUNT - 1),
        ("drop 0", drop(0), 0),
        ("drop 5", drop(5), 5),
        ("drop the last (truncate at a chunk boundary)", lambda c: c[:-1], COUNT - 1),
        ("drop the last two (truncate at a chunk boundary)", lambda c: c[:-2], COUNT - 2),
        ("drop all chunks", lambda c: [], 0),
        ("append bytes", lambda c: [*c, b"\x00"], COUNT - 1),
        ("append a whole chunk", lambda c: [*c, c[-1]], COUNT - 1),
    ]


@pytest.mark.parametrize("options", READ_OPTIONS)
@pytest.mark.parametrize(
    ("edit", "damaged"), [pytest.param(e, d, id=n) for n, e, d in _tamper_cases()]
)
def test_rearranged_chunks(
    sealed_plain: bytes,
    options: dict[str, Any],
    edit: Callable[[list[bytes]], list[bytes]],
    damaged: int,
) -> None:
    header, chunks = split(sealed_plain)
    tampered = header + b"".join(edit(chunks))
    assert tampered != sealed_plain
    yielded, _ = collect_until_error(tampered, PLAIN_DIGEST, **options)
    assert_withheld(yielded, PLAIN, 64, damaged, options["chunks_per_read"])


@pytest.mark.parametrize("into", [False, True], ids=["range", "into"])
@pytest.mark.parametrize(
    ("edit", "damaged"), [pytest.param(e, d, id=n) for n, e, d in _tamper_cases()]
)
def test_on_chunk_only_sees_authentic_chunks(
    sealed_plain: bytes, into: bool, edit: Callable[[list[bytes]], list[bytes]], damaged: int
) -> None:
    """on_chunk runs on the worker threads (chunks after the damage may reach it), but only with
    authenticated plaintext at its true offset, and never with the damaged chunk."""
    header, chunks = split(sealed_plain)
    seen: list[tuple[int, bytes]] = []
    yielded, _ = collect_until_error(
        header + b"".join(edit(chunks)),
        PLAIN_DIGEST,
        into=into,
        chunks_per_read=1,
        workers=3,
        on_chunk=lambda offset, chunk: seen.append((offset, bytes(chunk))),
    )
    assert_withheld(yielded, PLAIN, 64, damaged, 1)
    for offset, chunk in seen:
        assert chunk == PLAIN[offset : offset + 64]
        assert offset != damaged * 64
    assert {offset for offset, _ in seen} >= {i * 64 for i in range(len(yielded))}


@pytest.mark.parametrize("into", [False, True], ids=["range", "into"])
def test_on_chunk_receives_every_chunk_once(into: bool) -> None:
    data = _payload(5000, seed=9)
    blob, _ = seal(data, chunk_size=100)
    rebuilt = bytearray(len(data))
    offsets: list[int] = []

    def on_chunk(offset: int, chunk: memoryview) -> None:
        offsets.append(offset)
        rebuilt[offset : offset + len(chunk)] = chunk

    assert open_all(blob, hash_bytes(data), on_chunk=on_chunk, into=into) == data
    assert sorted(offsets) == list(range(0, 5000, 100))
    assert rebuilt == data


@pytest.mark.parametrize("cut", [1, TAG_SIZE, 37 + TAG_SIZE - 1, 100])
def test_truncated_inside_a_chunk(sealed_plain: bytes, cut: int) -> None:
    truncated = sealed_plain[:-cut]
    yielded, error = collect_until_error(truncated, PLAIN_DIGEST, chunks_per_read=1)
    damaged = COUNT - 1 if cut < 37 + TAG_SIZE else COUNT - 2
    assert "truncated" in str(error)
    assert_withheld(yielded, PLAIN, 64, damaged, 1)


def test_truncated_header(sealed_plain: bytes) -> None:
    yielded, error = collect_until_error(sealed_plain[: HEADER_SIZE - 1], PLAIN_DIGEST)
    assert yielded == []
    assert "header truncated" in str(error)


@pytest.mark.parametrize("options", READ_OPTIONS)
@pytest.mark.parametrize("index", [0, 6, COUNT - 1])
def test_chunk_spliced_from_same_key_same_content(
    sealed_plain: bytes, options: dict[str, Any], index: int
) -> None:
    """Same data key, same digest, same plaintext: only the salt and nonce prefix differ."""
    other, _ = seal(PLAIN)
    header, chunks = split(sealed_plain)
    _, donor = split(other)
    assert donor[index] != chunks[index]
    chunks[index] = donor[index]
    yielded, error = collect_until_error(header + b"".join(chunks), PLAIN_DIGEST, **options)
    assert f"chunk {index} failed authentication" in str(error)
    assert_withheld(yielded, PLAIN, 64, index, options["chunks_per_read"])


@pytest.mark.parametrize("options", READ_OPTIONS)
def test_chunk_spliced_from_blob_with_another_key(
    sealed_plain: bytes, options: dict[str, Any]
) -> None:
    other, _ = seal(PLAIN, key=OTHER_KEY)
    header, chunks = split(sealed_plain)
    chunks[7] = split(other)[1][7]
    yielded, _ = collect_until_error(header + b"".join(chunks), PLAIN_DIGEST, **options)
    assert_withheld(yielded, PLAIN, 64, 7, options["chunks_per_read"])


def test_header_spliced_from_another_blob(sealed_plain: bytes) -> None:
    other, _ = seal(PLAIN)
    tampered = other[:HEADER_SIZE] + sealed_plain[HEADER_SIZE:]
    yielded, error = collect_until_error(tampered, PLAIN_DIGEST)
    assert yielded == []
    assert "chunk 0 failed authentication" in str(error)


def test_wrong_data_key_fails_before_any_chunk(sealed_plain: bytes) -> None:
    calls: list[tuple[int, int]] = []
    yielded, error = collect_until_error(sealed_plain, PLAIN_DIGEST, key=OTHER_KEY, calls=calls)
    assert yielded == []
    assert "key commitment mismatch" in str(error)
    assert calls == [(0, HEADER_SIZE)]


def test_wrong_digest_fails_the_commitment(sealed_plain: bytes) -> None:
    calls: list[tuple[int, int]] = []
    wrong = hash_bytes(PLAIN + b"x")
    yielded, error = collect_until_error(sealed_plain, wrong, calls=calls)
    assert yielded == []
    assert "key commitment mismatch" in str(error)
    assert calls == [(0, HEADER_SIZE)]


@pytest.mark.parametrize("options", READ_OPTIONS)
def test_content_not_matching_digest_withholds_the_last_chunk(options: dict[str, Any]) -> None:
    """A writer holding the key seals other content under the digest: every chunk authenticates,
    but the last one is withheld because the plaintext does not hash to the digest."""
    claimed = hash_bytes(b"the content the catalog names")
    sealer = Sealer(KEY, claimed, plaintext_size=len(PLAIN), chunk_size=64)
    blob = sealer.header_bytes + b"".join(
        bytes(sealer.seal_chunk(i, PLAIN[i * 64 : (i + 1) * 64])) for i in range(COUNT)
    )
    yielded, error = collect_until_error(blob, claimed, **options)
    assert "content digest mismatch" in str(error)
    assert len(yielded) == COUNT - 1
    assert_withheld(yielded, PLAIN, 64, COUNT - 1, 1)
    # Without digest verification (manifests: the caller checks) every chunk is authentic.
    assert open_all(blob, claimed, verify_digest=False, **options) == PLAIN


# -- writers: content that changes while it is sealed ------------------------------------------


def _seal_collect(
    source: io.RawIOBase | io.BufferedIOBase, digest: str, size: int, workers: int
) -> tuple[list[bytes], list[int], IntegrityError]:
    progress: list[int] = []
    pieces, error = drain_until_error(
        seal_file(
            source, KEY, digest, plaintext_size=size, chunk_size=64, workers=workers,
            on_progress=progress.append,
        )
    )  # fmt: skip
    return pieces, progress, error


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("size", [10, 64, 3 * 64 + 5, 20 * 64 + 5])
def test_seal_refuses_content_not_matching_digest(size: int, workers: int) -> None:
    data = _payload(size, seed=size)
    other = hash_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    pieces, progress, error = _seal_collect(io.BytesIO(data), other, size, workers)
    count = -(-size // 64)
    assert "changed while it was being pushed" in str(error)
    assert pieces, "the header comes first"
    assert SealedHeader.unpack(pieces[0]).plaintext_size == size
    # The last sealed chunk is never produced; what was produced cannot be opened completely.
    assert len(pieces) - 1 < count
    assert len(pieces) - 1 <= max(0, count - 2 * workers + 1)  # the window holds the rest
    assert sum(progress) < size
    with pytest.raises(IntegrityError):
        open_all(b"".join(pieces), other)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "change", ["grew by one byte", "grew by a chunk", "shrank by one byte", "shrank by a chunk"]
)
def test_seal_refuses_source_of_another_size(change: str, workers: int) -> None:
    data = _payload(20 * 64 + 5)
    digest = hash_bytes(data)
    actual = {
        "grew by one byte": data + b"x",
        "grew by a chunk": data + bytes(64),
        "shrank by one byte": data[:-1],
        "shrank by a chunk": data[:-64],
    }[change]
    pieces, progress, error = _seal_collect(io.BytesIO(actual), digest, len(data), workers)
    assert "changed size" in str(error)
    assert len(pieces) - 1 < 21
    assert sum(progress) < len(data)


@pytest.mark.parametrize("edit", ["rewrite the end", "append", "truncate"])
def test_seal_refuses_file_edited_during_the_push(tmp_path: Path, edit: str) -> None:
    data = _payload(40 * 64 + 5, seed=3)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)

    def edit_behind(yielded: int) -> None:
        if yielded != 2:  # the sealer has read a few chunks ahead; edit the file behind it
            return
        with path.open("r+b") as writer:
            if edit == "rewrite the end":
                writer.seek(len(data) - 10)
                writer.write(b"0123456789")
            elif edit == "append":
                writer.seek(0, os.SEEK_END)
                writer.write(b"more")
            else:
                writer.truncate(len(data) - 100)

    with path.open("rb", buffering=0) as source:
        pieces, error = drain_until_error(
            seal_file(source, KEY, hash_bytes(data), plaintext_size=len(data), chunk_size=64),
            after_each=edit_behind,
        )
    assert "changed" in str(error)
    assert 2 <= len(pieces) < 1 + 41


# -- bounded memory ----------------------------------------------------------------------------

_ZEROS = memoryview(bytes(DEFAULT_CHUNK_SIZE))


class ZeroStream(io.RawIOBase):
    """`size` zero bytes, produced without ever holding them all."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.left:
            n = min(len(view) - done, self.left, len(_ZEROS))
            view[done : done + n] = _ZEROS[:n]
            done += n
            self.left -= n
        return done


def _zero_digest(size: int) -> str:
    hasher = blake3.blake3()
    for offset in range(0, size, len(_ZEROS)):
        hasher.update(_ZEROS[: min(len(_ZEROS), size - offset)])
    return format_digest(hasher.digest())


def _peak(consume: Callable[[], int]) -> tuple[int, int]:
    tracemalloc.start()
    try:
        result = consume()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.usefixtures("fresh_buffers")
def test_seal_file_memory_is_bounded() -> None:
    size = 64 * MiB
    digest = _zero_digest(size)

    def consume() -> int:
        total = 0
        for piece in seal_file(ZeroStream(size), KEY, digest, plaintext_size=size):
            total += len(piece)
        return total

    total, peak = _peak(consume)
    assert total == SealedHeader(DEFAULT_CHUNK_SIZE, size, b"", b"", b"").sealed_size
    assert peak < 32 * MiB, f"sealing 64 MiB peaked at {peak / MiB:.1f} MiB"


@pytest.fixture(scope="module")
def sealed_zero_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    size = 32 * MiB
    digest = _zero_digest(size)
    path = tmp_path_factory.mktemp("sealed") / "zeros.sealed"
    with path.open("wb") as out:
        for piece in seal_file(ZeroStream(size), KEY, digest, plaintext_size=size):
            out.write(piece)
    return path, digest, size


def _unseal_peak(sealed_file: tuple[Path, str, int], *, into: bool = False, **options: int) -> int:
    path, digest, size = sealed_file

    def consume() -> int:
        total = 0
        with path.open("rb", buffering=0) as source:
            fd = source.fileno()

            def read_range(offset: int, length: int) -> bytes:
                return os.pread(fd, length, offset)

            def read_into(offset: int, buffer: memoryview) -> int:
                return os.preadv(fd, [buffer], offset)

            for chunk in unseal(
                read_range,
                KEY,
                digest,
                read_into=read_into if into else None,
                expected_size=size,
                **options,
            ):
                total += len(chunk)
        return total

    total, peak = _peak(consume)
    assert total == size
    return peak


@pytest.mark.parametrize("into", [False, True], ids=["range", "into"])
@pytest.mark.parametrize(
    "options",
    [{"chunks_per_read": 1, "workers": 2}, {"chunks_per_read": 2, "workers": 2}],
    ids=["cpr1-w2", "cpr2-w2"],
)
@pytest.mark.usefixtures("fresh_buffers")
def test_unseal_memory_is_bounded(
    sealed_zero_file: tuple[Path, str, int], options: dict[str, int], into: bool
) -> None:
    peak = _unseal_peak(sealed_zero_file, into=into, **options)
    assert peak < 24 * MiB, f"unsealing 32 MiB peaked at {peak / MiB:.1f} MiB"


@pytest.fixture(scope="module")
def sealed_small_chunks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    size = 8 * MiB
    digest = _zero_digest(size)
    path = tmp_path_factory.mktemp("sealed") / "zeros-4k.sealed"
    with path.open("wb") as out:
        for piece in seal_file(ZeroStream(size), KEY, digest, plaintext_size=size, chunk_size=4096):
            out.write(piece)
    return path, digest, size


@pytest.mark.parametrize("into", [False, True], ids=["range", "into"])
@pytest.mark.usefixtures("fresh_buffers")
def test_unseal_memory_does_not_grow_with_the_object(
    sealed_small_chunks: tuple[Path, str, int], into: bool
) -> None:
    """Default read options over 2048 chunks of 4 KiB: the buffers cover a few groups of 8 chunks,
    a small fraction of the 8 MiB object (a reader that buffered it would hold it all)."""
    peak = _unseal_peak(sealed_small_chunks, into=into)
    assert peak < 2 * MiB, f"unsealing 8 MiB in 4 KiB chunks peaked at {peak / MiB:.1f} MiB"


# -- the one opener of sealed ranges -------------------------------------------------------------


def test_range_opener_sizes_nothing_from_an_unauthenticated_header(sealed_plain: bytes) -> None:
    """Until a chunk read on its own authenticated the header, RangeOpener reads one chunk at a
    time and sizes buffers for one chunk only; afterwards runs of chunks are read in place."""
    calls: list[tuple[int, int]] = []
    ranges = RangeOpener(KEY, PLAIN_DIGEST, read_into=reader_into(sealed_plain, calls))
    assert calls == [(0, HEADER_SIZE)] and not ranges.authenticated
    with pytest.raises(RuntimeError, match="unauthenticated header"):
        ranges.scratch_size(4)
    out = bytearray(len(PLAIN))

    def place(index: int) -> memoryview:
        return memoryview(out)[index * 64 : index * 64 + ranges.header.chunk_plain_size(index)]

    with pytest.raises(RuntimeError, match="before the header authenticated"):
        ranges.open_run(0, 3, place, scratch=bytearray(4 * (64 + TAG_SIZE) + 1))
    assert calls == [(0, HEADER_SIZE)]  # refused before reading
    ranges.open_run(5, 5, place, scratch=bytearray(ranges.scratch_size(1)))
    assert ranges.authenticated
    scratch = bytearray(ranges.scratch_size(4))
    for first in range(0, COUNT, 4):
        ranges.open_run(first, min(first + 3, COUNT - 1), place, scratch=scratch)
    assert bytes(out) == PLAIN
    # A header forged to other sizes is refused by the first chunk, read alone.
    forged = bytearray(sealed_plain)
    struct.pack_into(">I", forged, 8, 128)
    lone = RangeOpener(KEY, PLAIN_DIGEST, read_range=reader(bytes(forged)))
    with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
        lone.open_run(0, 0, lambda index: bytearray(lone.header.chunk_plain_size(index)))
    assert not lone.authenticated


def test_range_opener_reads_again_what_on_damage_allows(sealed_plain: bytes) -> None:
    damaged = bytearray(sealed_plain)
    damaged[HEADER_SIZE + 2 * (64 + TAG_SIZE) + 5] ^= 1  # chunk 2
    copies = [bytes(damaged), sealed_plain]
    told: list[int] = []

    def read_range(offset: int, length: int) -> bytes:
        return copies[0][offset : offset + length]

    def on_damage(offset: int, error: IntegrityError) -> bool:
        told.append(offset)
        if len(copies) == 1:
            return False
        copies.pop(0)  # the next copy serves it
        return True

    ranges = RangeOpener(KEY, PLAIN_DIGEST, read_range=read_range, on_damage=on_damage)
    out = bytearray(3 * 64)
    ranges.open_run(0, 0, lambda i: memoryview(out)[:64])
    ranges.open_run(0, 2, lambda i: memoryview(out)[i * 64 : (i + 1) * 64])
    assert bytes(out) == PLAIN[: 3 * 64] and told == [HEADER_SIZE]
