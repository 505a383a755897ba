"""The sealed blob format (docs/format.md): a fixed header, then AES-256-GCM chunks of fixed size.

This module frames and unframes bytes; it knows nothing of storage, names or key providers.

    header  = magic "MRSB" | version u8 = 1 | cipher u8 = 1 | reserved u16 = 0 | chunk_size u32
              | plaintext_size u64 | salt 32 B | nonce_prefix 7 B | commitment 32 B      (91 bytes)
    okm     = HKDF-SHA256(ikm=data_key, salt=salt,
                          info="model-registry/sealed/v1" | cipher u8 | digest 32 B, 64 bytes)
    key     = okm[0:32]; commitment = okm[32:64]
    chunk i = AES-256-GCM(key, nonce = nonce_prefix | u32 i | last u8, aad = header) (+16 B tag)

All integers are big-endian. There is always at least one chunk (an empty blob is one empty chunk
with last = 1), so dropping, reordering, duplicating or truncating chunks, splicing a chunk from
another blob, a wrong data key and any edit of the header each fail authentication.
"""

from __future__ import annotations

import ctypes
import hmac
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from registry.digest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Hasher, digest_bytes
from registry.errors import IntegrityError, InvalidInputError
from registry.fileio import read_into

T = TypeVar("T")
MAGIC = b"MRSB"
FORMAT_VERSION = 1
CIPHER_AES256_GCM_HKDF_SHA256 = 1
TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
COMMITMENT_SIZE = 32
HKDF_INFO = b"model-registry/sealed/v1"
_HEADER = struct.Struct(">4sBBHIQ32s7s32s")
HEADER_SIZE = _HEADER.size
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_PLAINTEXT_SIZE = (2**32 - 1) * MIN_CHUNK_SIZE


@dataclass(frozen=True)
class SealedHeader:
    """The parsed header of a sealed blob, and the arithmetic of where each chunk lies."""

    chunk_size: int
    plaintext_size: int
    salt: bytes
    nonce_prefix: bytes
    commitment: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            CIPHER_AES256_GCM_HKDF_SHA256,
            0,
            self.chunk_size,
            self.plaintext_size,
            self.salt,
            self.nonce_prefix,
            self.commitment,
        )

    @classmethod
    def unpack(cls, data: bytes, *, what: str = "blob") -> SealedHeader:
        if len(data) < HEADER_SIZE:
            raise IntegrityError(f"{what}: sealed header truncated ({len(data)} bytes)")
        magic, version, cipher, reserved, chunk_size, size, salt, prefix, commitment = (
            _HEADER.unpack_from(data)
        )
        if magic != MAGIC:
            raise IntegrityError(f"{what}: not a sealed blob (bad magic)")
        if version != FORMAT_VERSION or cipher != CIPHER_AES256_GCM_HKDF_SHA256 or reserved:
            raise IntegrityError(
                f"{what}: unsupported sealed format {version}/cipher {cipher}/reserved {reserved}"
            )
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityError(f"{what}: chunk size {chunk_size} out of bounds")
        header = cls(chunk_size, size, salt, prefix, commitment)
        if header.chunk_count > 2**32:
            raise IntegrityError(f"{what}: plaintext size {size} needs too many chunks")
        return header

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.plaintext_size // self.chunk_size))

    @property
    def sealed_size(self) -> int:
        return HEADER_SIZE + self.plaintext_size + TAG_SIZE * self.chunk_count

    def chunk_offset(self, index: int) -> int:
        """Offset of sealed chunk `index` in the object: chunks are at computable places."""
        return HEADER_SIZE + index * (self.chunk_size + TAG_SIZE)

    def chunk_plain_size(self, index: int) -> int:
        if index == self.chunk_count - 1:
            return self.plaintext_size - index * self.chunk_size
        return self.chunk_size

    def chunk_range(self, first: int, last: int) -> tuple[int, int]:
        """(offset, length) of sealed chunks first..last inclusive."""
        start = self.chunk_offset(first)
        end = self.chunk_offset(last) + self.chunk_plain_size(last) + TAG_SIZE
        return start, end - start

    def part_count(self, chunks_per_part: int) -> int:
        """Parts of `chunks_per_part` chunks each (the last may have fewer) in the object."""
        return -(-self.chunk_count // chunks_per_part)

    def part_range(self, part: int, chunks_per_part: int) -> tuple[int, int]:
        """(offset, length) of upload part `part`: its whole chunks, and the header with the
        first, so that each part can be sealed, sent and checked on its own."""
        if not 0 <= part < self.part_count(chunks_per_part):
            raise InvalidInputError(f"part {part} is not in this object")
        first = part * chunks_per_part
        last = min(self.chunk_count, first + chunks_per_part) - 1
        start, length = self.chunk_range(first, last)
        return (0, start + length) if part == 0 else (start, length)


def _derive(data_key: bytes, salt: bytes, digest: str) -> tuple[bytes, bytes]:
    if len(data_key) != KEY_SIZE:
        raise InvalidInputError(f"a data key has {KEY_SIZE} bytes, got {len(data_key)}")
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * KEY_SIZE,
        salt=salt,
        info=HKDF_INFO + bytes([CIPHER_AES256_GCM_HKDF_SHA256]) + digest_bytes(digest),
    ).derive(data_key)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class Sealer:
    """Encrypts the chunks of one blob whose plaintext digest and size are known up front."""

    def __init__(
        self,
        data_key: bytes,
        digest: str,
        *,
        plaintext_size: int,
        chunk_size: int,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> None:
        """`salt` and `nonce_prefix` are random unless given: an upload session chooses them
        on the server, so that a client resuming a push seals every part exactly as before."""
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidInputError(
                f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, not {chunk_size}"
            )
        if not 0 <= plaintext_size <= MAX_PLAINTEXT_SIZE:
            raise InvalidInputError(f"plaintext size {plaintext_size} out of bounds")
        salt = os.urandom(SALT_SIZE) if salt is None else salt
        prefix = os.urandom(NONCE_PREFIX_SIZE) if nonce_prefix is None else nonce_prefix
        if len(salt) != SALT_SIZE or len(prefix) != NONCE_PREFIX_SIZE:
            raise InvalidInputError(
                f"a salt has {SALT_SIZE} bytes and a nonce prefix {NONCE_PREFIX_SIZE}"
            )
        key, commitment = _derive(data_key, salt, digest)
        self.header = SealedHeader(chunk_size, plaintext_size, salt, prefix, commitment)
        self.header_bytes = self.header.pack()
        self._aead = AESGCM(key)

    def seal_chunk(self, index: int, plaintext: bytes | bytearray | memoryview) -> bytearray:
        out = bytearray(len(plaintext) + TAG_SIZE)
        self.seal_chunk_into(index, plaintext, out)
        return out

    def seal_chunk_into(
        self,
        index: int,
        plaintext: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
    ) -> None:
        """Encrypt chunk `index` into `out` (plaintext size + 16 bytes); releases the GIL."""
        header = self.header
        if len(plaintext) != header.chunk_plain_size(index):
            raise InvalidInputError(
                f"chunk {index} has {len(plaintext)} bytes, not {header.chunk_plain_size(index)}"
            )
        last = index == header.chunk_count - 1
        self._aead.encrypt_into(
            _nonce(header.nonce_prefix, index, last), plaintext, self.header_bytes, out
        )


class Opener:
    """Authenticates and decrypts chunks of one sealed blob, in any order (random access)."""

    def __init__(self, data_key: bytes, digest: str, header_bytes: bytes, *, what: str) -> None:
        self.what = what
        self.header = SealedHeader.unpack(header_bytes, what=what)
        self.header_bytes = bytes(header_bytes[:HEADER_SIZE])
        key, commitment = _derive(data_key, self.header.salt, digest)
        # Key commitment: a wrong data key, a swapped key slot or an edited salt fails here,
        # before a single chunk is decrypted.
        if not hmac.compare_digest(commitment, self.header.commitment):
            raise IntegrityError(
                f"{what}: key commitment mismatch (wrong data key or tampered header)", path=what
            )
        self._aead = AESGCM(key)

    def open_chunk(
        self, index: int, sealed: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> None:
        """Decrypt sealed chunk `index` into `out` (exactly its plaintext size)."""
        header = self.header
        if not 0 <= index < header.chunk_count:
            raise IntegrityError(f"{self.what}: chunk {index} does not exist", path=self.what)
        size = header.chunk_plain_size(index)
        if len(sealed) != size + TAG_SIZE or len(out) != size:
            raise IntegrityError(
                f"{self.what}: chunk {index} truncated ({len(sealed)} of {size + TAG_SIZE} bytes)",
                path=self.what,
            )
        last = index == header.chunk_count - 1
        try:
            self._aead.decrypt_into(
                _nonce(header.nonce_prefix, index, last), sealed, self.header_bytes, out
            )
        except InvalidTag:
            raise IntegrityError(
                f"{self.what}: chunk {index} failed authentication (tampered or corrupt)",
                path=self.what,
            ) from None


ReadRange = Callable[[int, int], bytes]
ReadInto = Callable[[int, memoryview], int]
OnDamage = Callable[[int, IntegrityError], bool]
# Sealed bytes [offset, offset + length) in place (a mapping of the stored object), cut at its
# end, or None when this range has to be read into a buffer instead.
ViewRange = Callable[[int, int], memoryview | None]


class RangeOpener:
    """Reads and opens ranges of chunks of one sealed object: the one implementation of sealed
    reads, shared by `unseal` (pulls, verify, replication) and the loader.

    Construction reads the header and checks what a header alone can prove: the format, the key
    commitment (a wrong data key, digest or salt fails here) and, when given, the expected
    plaintext size. The chunk size and plaintext size are authenticated only by a chunk (the
    header is every chunk's associated data), so until one chunk read on its own authenticated,
    `authenticated` is False, `open_run` takes one chunk at a time and `scratch_size` answers for
    one chunk only: nothing larger than a chunk (at most MAX_CHUNK_SIZE) is sized from an
    unauthenticated header.

    A range is taken in place from `view_range(offset, length)` when it offers one (a mapped
    local object: no copy through a buffer), else read with `read_into(offset, buffer)` into the
    caller's `scratch`, or else with `read_range(offset, length)`; its chunks are decrypted,
    each into `place(index)`. Bytes in place may change under the reader (another process
    writing the file): AES-GCM may then hand out plaintext other than what it authenticated, so
    only a reader that hashes the plaintext it produced against the manifest takes ranges in
    place (the loader with full verification). A
    range that is truncated or fails authentication is reported to `on_damage(offset, error)`;
    when it returns True the range is read again (the read functions now serve it from another
    copy), else the error is raised.
    """

    def __init__(
        self,
        data_key: bytes,
        digest: str,
        *,
        read_range: ReadRange | None = None,
        read_into: ReadInto | None = None,
        view_range: ViewRange | None = None,
        expected_size: int | None = None,
        expected_by: str = "catalog says",
        what: str = "blob",
        on_damage: OnDamage | None = None,
    ) -> None:
        if read_range is None and read_into is None:
            raise ValueError("a RangeOpener reads with read_range or read_into")
        self.what = what
        self._read_range, self._read_into, self._on_damage = read_range, read_into, on_damage
        self._view_range = view_range
        self.opener = self.retrying(
            0, lambda: self._open_header(data_key, digest, expected_size, expected_by)
        )
        self.header = self.opener.header
        self.authenticated = False

    def _open_header(
        self, data_key: bytes, digest: str, expected_size: int | None, expected_by: str
    ) -> Opener:
        if self._read_range is not None:
            data = self._read_range(0, HEADER_SIZE)
        elif self._read_into is not None:
            buffer = bytearray(HEADER_SIZE)
            data = bytes(buffer[: self._read_into(0, memoryview(buffer))])
        opener = Opener(data_key, digest, data, what=self.what)
        size = opener.header.plaintext_size
        if expected_size is not None and size != expected_size:
            raise IntegrityError(
                f"{self.what}: header says {size} bytes, {expected_by} {expected_size}",
                path=self.what,
            )
        return opener

    def retrying(self, offset: int, attempt: Callable[[], T]) -> T:
        """`attempt()`, again as long as `on_damage` says the range at `offset` can be read
        again from another copy."""
        while True:
            try:
                return attempt()
            except IntegrityError as error:
                if self._on_damage is None or not self._on_damage(offset, error):
                    raise

    def scratch_size(self, chunks: int) -> int:
        """Bytes of a scratch buffer for reads of up to `chunks` chunks (one byte more than the
        sealed chunks: the tail read asks for it). More than one chunk only once a chunk
        authenticated the header."""
        if chunks != 1 and not self.authenticated:
            raise RuntimeError(f"{self.what}: a buffer sized from an unauthenticated header")
        return chunks * (self.header.chunk_size + TAG_SIZE) + 1

    def open_run(
        self,
        first: int,
        last: int,
        place: Callable[[int], bytearray | memoryview],
        *,
        scratch: bytearray | None = None,
        on_chunk: Callable[[int, memoryview], None] | None = None,
    ) -> None:
        """Read chunks first..last (one range) and decrypt each, once the whole range arrived,
        into `place(index)` (exactly the chunk's plaintext size); `on_chunk(index, plaintext)`
        runs right after each chunk authenticated. With `scratch` the range is read into it
        (`scratch_size`), else `read_range` returns it. Before any chunk authenticated only one
        chunk may be read: the first run authenticates the header."""
        if first != last and not self.authenticated:
            raise RuntimeError(f"{self.what}: a run of chunks read before the header authenticated")
        self.retrying(
            self.header.chunk_offset(first),
            lambda: self._open_run_once(first, last, place, scratch, on_chunk),
        )
        self.authenticated = True

    def _open_run_once(
        self,
        first: int,
        last: int,
        place: Callable[[int], bytearray | memoryview],
        scratch: bytearray | None,
        on_chunk: Callable[[int, memoryview], None] | None,
    ) -> None:
        header, what = self.header, self.what
        offset, length = header.chunk_range(first, last)
        # One byte more on the tail read reveals trailing garbage appended to the object.
        wanted = length + 1 if last == header.chunk_count - 1 else length
        in_place = None if self._view_range is None else self._view_range(offset, wanted)
        if in_place is not None:
            sealed, got = in_place, len(in_place)
        elif scratch is not None and self._read_into is not None:
            if len(scratch) < wanted:
                raise ValueError(f"a scratch buffer of {len(scratch)} bytes for {wanted}")
            sealed = memoryview(scratch)[:wanted]
            got = self._read_into(offset, sealed)
        elif self._read_range is not None:
            sealed = memoryview(self._read_range(offset, wanted))
            got = len(sealed)
        else:
            raise ValueError("reads with read_into need a scratch buffer")
        if got < length:
            lost = first + got // (header.chunk_size + TAG_SIZE)
            raise IntegrityError(f"{what}: truncated at chunk {lost}", path=what)
        if got > length:
            raise IntegrityError(f"{what}: unexpected bytes after the last chunk", path=what)
        position = 0
        for index in range(first, last + 1):
            size = header.chunk_plain_size(index)
            out = place(index)
            self.opener.open_chunk(index, sealed[position : position + size + TAG_SIZE], out)
            if on_chunk is not None:
                on_chunk(index, memoryview(out))
            position += size + TAG_SIZE


_Ring = list[tuple[bytearray, bytearray]]


class _RingCache:
    """Keeps the most recent read ring for the next blob: allocating and zero-filling tens of
    MiB per file cost about as much as decrypting a small shard."""

    MAX_KEPT = 96 * 1024 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: _Ring = []

    def take(self, sealed_span: int, plain_span: int, slots: int) -> _Ring:
        with self._lock:
            kept, self._kept = self._kept, []
        fits = [pair for pair in kept if len(pair[0]) >= sealed_span and len(pair[1]) >= plain_span]
        ring = fits[:slots]
        ring += [(bytearray(sealed_span), bytearray(plain_span)) for _ in range(slots - len(ring))]
        return ring

    @contextmanager
    def lend(self, ring: _Ring) -> Iterator[None]:
        """Give the ring back once its user (and every thread writing into it) is done.

        Plaintext halves are wiped first (decrypted weights must not linger in a long-running
        process), and a ring over `MAX_KEPT` bytes is dropped rather than kept."""
        try:
            yield
        finally:
            for _sealed, plain in ring:
                wipe(plain)
            size = sum(len(a) + len(b) for a, b in ring)
            if size <= self.MAX_KEPT:
                with self._lock:
                    if size > sum(len(a) + len(b) for a, b in self._kept):
                        self._kept = ring


_rings = _RingCache()


def wipe(buffer: bytearray) -> None:
    """Zero a buffer in place (a fresh zero-filled object of this size would fault in afresh)."""
    if buffer:
        ctypes.memset((ctypes.c_char * len(buffer)).from_buffer(buffer), 0, len(buffer))


class Readable(Protocol):
    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...

    def read(self, size: int = -1, /) -> bytes | None: ...


def seal_file(
    source: Readable,
    data_key: bytes,
    digest: str,
    *,
    plaintext_size: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
    what: str = "blob",
) -> Iterator[memoryview | bytes]:
    """Yield the sealed object for `source` (header first), encrypting chunks on `workers` threads.

    The plaintext is re-hashed on the way (on a thread of its own, in order) and the last chunk is
    withheld unless it matches `digest`, so a file edited during a push can never be stored under
    the wrong digest. Buffers come from a fixed ring of 2 x workers + 2 chunk pairs that is reused,
    so memory is bounded and steady whatever the size; a yielded view is valid until the next one
    is requested.
    """
    sealer = Sealer(data_key, digest, plaintext_size=plaintext_size, chunk_size=chunk_size)
    header = sealer.header
    hasher = Hasher()
    yield sealer.header_bytes
    depth = 2 * workers + 1
    # A one-chunk file (config.json, a tokenizer) needs buffers of its own size, not of a chunk:
    # zero-filling two chunk-sized buffers per small file was a push's largest fixed cost.
    span = chunk_size if header.chunk_count > 1 else plaintext_size
    ring = [
        (bytearray(span), bytearray(span + TAG_SIZE))
        for _ in range(min(depth + 1, header.chunk_count))
    ]
    window: deque[tuple[Future[None], Future[None], memoryview]] = deque()

    def finish(entry: tuple[Future[None], Future[None], memoryview]) -> memoryview:
        hashed, sealed, out = entry
        hashed.result()
        sealed.result()
        if on_progress is not None:
            on_progress(len(out) - TAG_SIZE)
        return out

    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seal") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="seal-hash") as hashing,
    ):
        for index in range(header.chunk_count):
            size = header.chunk_plain_size(index)
            plain_buffer, out_buffer = ring[index % len(ring)]
            plaintext = memoryview(plain_buffer)[:size]
            got = read_into(source, plaintext) if size else 0
            if got != size or (index == header.chunk_count - 1 and source.read(1)):
                raise IntegrityError(
                    f"{what}: changed size while it was being pushed; push it again", path=what
                )
            out = memoryview(out_buffer)[: size + TAG_SIZE]
            # One hashing thread keeps the updates in order; BLAKE3 releases the GIL meanwhile.
            window.append(
                (
                    hashing.submit(hasher.update, plaintext),
                    pool.submit(sealer.seal_chunk_into, index, plaintext, out),
                    out,
                )
            )
            if len(window) >= depth:
                yield finish(window.popleft())
        for hashed, _sealed, _out in window:
            hashed.result()
        if hasher.digest() != digest:
            raise IntegrityError(
                f"{what}: changed while it was being pushed; push it again", path=what
            )
        while window:
            yield finish(window.popleft())
    # Plaintext of the pushed file must not linger in freed memory of a long-running process.
    for plain_buffer, _out_buffer in ring:
        wipe(plain_buffer)


def unseal(
    read_range: ReadRange,
    data_key: bytes,
    digest: str,
    *,
    read_into: ReadInto | None = None,
    on_chunk: Callable[[int, memoryview], None] | None = None,
    expected_size: int | None = None,
    workers: int = 2,
    chunks_per_read: int = 4,
    verify_digest: bool = True,
    what: str = "blob",
    on_damage: OnDamage | None = None,
) -> Iterator[memoryview]:
    """Yield the authenticated plaintext chunks of a sealed object, in order.

    `read_range(offset, length)` fetches sealed bytes (cut at the end of the object);
    `read_into(offset, buffer)`, when given, fills a buffer instead and returns the count (no
    allocation per read). Ranges of `chunks_per_read` chunks are fetched and decrypted on
    `workers` threads into a fixed ring of buffers; `on_chunk(plaintext_offset, chunk)`, when
    given, runs on those threads right after a chunk is authenticated (a pull writes there, in
    parallel). Hashing runs in the calling thread. Every yielded chunk is authenticated and valid
    until the next is requested; the last chunk is withheld until the whole plaintext matched its
    digest (else `IntegrityError`), so a caller must not publish anything before the end.

    `on_damage(offset, error)`, when given, is told of a range starting at sealed `offset` that
    was truncated or failed authentication; when it returns True the range is read again (the
    read functions now serve it from another replica), else the error is raised.
    """
    ranges = RangeOpener(
        data_key,
        digest,
        read_range=read_range,
        read_into=read_into,
        expected_size=expected_size,
        what=what,
        on_damage=on_damage,
    )
    # Chunk 0 is opened on its own, in the bytes read_range returns, before any buffer is sized
    # from the header: a forged chunk or plaintext size is refused before it can make this reader
    # allocate anything large. (Its plaintext is read again with the first range.)
    ranges.open_run(0, 0, lambda index: bytearray(ranges.header.chunk_plain_size(index)))
    yield from _chunks_in_order(
        ranges,
        digest if verify_digest else None,
        into=read_into is not None,
        on_chunk=on_chunk,
        workers=workers,
        chunks_per_read=chunks_per_read,
    )


def _chunks_in_order(
    ranges: RangeOpener,
    digest: str | None,
    *,
    into: bool,
    on_chunk: Callable[[int, memoryview], None] | None,
    workers: int,
    chunks_per_read: int,
) -> Iterator[memoryview]:
    """The chunks of an object whose header a chunk authenticated, read in ranges on `workers`
    threads into a ring of buffers and yielded in order; with `digest`, hashed in this thread and
    the last chunk withheld unless the whole plaintext matches it (see `unseal`)."""
    header, what = ranges.header, ranges.what
    count, chunk_size = header.chunk_count, header.chunk_size
    step = max(1, min(chunks_per_read, count))
    groups = ((first, min(first + step, count) - 1) for first in range(0, count, step))
    in_flight = workers + 1
    ring = _rings.take(
        # Without read_into the sealed bytes arrive in the reader's own buffers.
        ranges.scratch_size(step) if into else 0,
        step * chunk_size,
        min(in_flight + 1, -(-count // step)),
    )
    tell = None if on_chunk is None else (lambda index, out: on_chunk(index * chunk_size, out))

    def fetch_and_open(first: int, last: int) -> list[memoryview]:
        sealed_buffer, plain_buffer = ring[(first // step) % len(ring)]
        plain = memoryview(plain_buffer)

        def place(index: int) -> memoryview:
            start = (index - first) * chunk_size
            return plain[start : start + header.chunk_plain_size(index)]

        ranges.open_run(first, last, place, scratch=sealed_buffer if into else None, on_chunk=tell)
        return [place(index) for index in range(first, last + 1)]

    hasher = Hasher()
    window: deque[Future[list[memoryview]]] = deque()
    index = 0
    with (
        _rings.lend(ring),
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unseal") as pool,
    ):
        pending = iter(groups)
        for first, last in pending:
            window.append(pool.submit(fetch_and_open, first, last))
            if len(window) >= in_flight:
                break
        while window:
            chunks = window.popleft().result()
            # The ring has one slot more than the groups in flight: the slot refilled now is the
            # one consumed before this group, never the one being handed out.
            following = next(pending, None)
            if following is not None:
                window.append(pool.submit(fetch_and_open, *following))
            for chunk in chunks:
                if digest is not None:
                    hasher.update(chunk)
                    # The last chunk is withheld until the whole plaintext matched its digest.
                    if index == count - 1 and hasher.digest() != digest:
                        raise IntegrityError(f"{what}: content digest mismatch", path=what)
                index += 1
                yield chunk
