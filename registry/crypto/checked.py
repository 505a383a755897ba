"""Sealed objects that a client sealed itself, checked as they pass through the server: the header
must be the one the upload session issued, every chunk must authenticate under the session's data
key, and the plaintext must hash to the declared digest (and start with the bytes validated
before) — all in memory, the plaintext never written anywhere.

`CheckedObject` yields the ciphertext part by part, as a store write consumes it, and withholds
the last part until the whole plaintext matched: a store publishes an object only once its write
has taken every byte, so an object that fails a check is never published. Where the object's
key is not the one the client sealed under (another push chose it first), it yields the same
plaintext sealed again under that key instead, checked the same way. `plaintext_prefix`
decrypts the first bytes of such an object (a safetensors header, an index file) before anything
is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from registry.crypto.sealed import HEADER_SIZE, TAG_SIZE, Opener, SealedHeader, Sealer
from registry.digest import FileDigests, FileHasher
from registry.errors import DigestMismatchError, IntegrityError

# Ciphertext of one upload part, by number.
ReadPart = Callable[[int], bytes]
_HINT = "seal the file again with the key, salt and nonce prefix the session issued, and push"


@contextmanager
def _refused() -> Iterator[None]:
    """A check of bytes the client sealed that fails is the client's bad input (a 4xx), not
    stored bytes gone bad."""
    try:
        yield
    except DigestMismatchError:
        raise
    except IntegrityError as error:
        raise DigestMismatchError(str(error), hint=_HINT) from None


def _opened(
    data_key: bytes, digest: str, expected_header: bytes, first_part: bytes, *, what: str
) -> Opener:
    """The opener of an object whose first part is `first_part`, once its header is exactly
    the one issued (chunk size, size, salt, nonce prefix and key commitment)."""
    if bytes(first_part[:HEADER_SIZE]) != expected_header:
        raise IntegrityError(
            f"{what}: the sealed header is not the one this upload session issued "
            "(another key, salt, size or chunk size)",
            path=what,
        )
    return Opener(data_key, digest, expected_header, what=what)


def _open_part(
    opener: Opener,
    part: int,
    data: bytes | memoryview,
    chunks_per_part: int,
    out: bytearray,
    pool: ThreadPoolExecutor | None = None,
) -> memoryview:
    """Decrypt the chunks of part `part` (its sealed bytes `data`) into `out`; the plaintext."""
    header = opener.header
    _offset, length = header.part_range(part, chunks_per_part)
    if len(data) != length:
        raise IntegrityError(
            f"{opener.what}: part {part} has {len(data)} bytes, not {length}", path=opener.what
        )
    view = memoryview(data)[HEADER_SIZE:] if part == 0 else memoryview(data)
    first = part * chunks_per_part
    last = min(header.chunk_count, first + chunks_per_part)
    jobs = []
    sealed_at = plain_at = 0
    for index in range(first, last):
        size = header.chunk_plain_size(index)
        args = (index, view[sealed_at : sealed_at + size + TAG_SIZE])
        target = memoryview(out)[plain_at : plain_at + size]
        if pool is None:
            opener.open_chunk(*args, target)
        else:
            jobs.append(pool.submit(opener.open_chunk, *args, target))
        sealed_at += size + TAG_SIZE
        plain_at += size
    for job in jobs:
        job.result()
    return memoryview(out)[:plain_at]


def plaintext_prefix(
    read_part: ReadPart,
    data_key: bytes,
    digest: str,
    expected_header: bytes,
    length: int,
    *,
    chunks_per_part: int,
    what: str,
) -> bytes:
    """The first `length` plaintext bytes of the object (fewer at its end), authenticated: only
    the chunks that hold them are decrypted."""
    with _refused():
        data = read_part(0)
        opener = _opened(data_key, digest, expected_header, data, what=what)
        return _prefix(read_part, opener, data, length, chunks_per_part, what)


def _prefix(
    read_part: ReadPart, opener: Opener, data: bytes, length: int, chunks_per_part: int, what: str
) -> bytes:
    header = opener.header
    prefix = bytearray()
    index = 0
    try:
        while len(prefix) < length and index < header.chunk_count:
            part, within = divmod(index, chunks_per_part)
            if within == 0 and part > 0:
                data = read_part(part)
            # Where chunk `index` lies in its part's bytes (the first part starts with the header).
            start = (HEADER_SIZE if part == 0 else 0) + within * (header.chunk_size + TAG_SIZE)
            size = header.chunk_plain_size(index)
            if len(data) < start + size + TAG_SIZE:
                raise IntegrityError(f"{what}: part {part} is truncated", path=what)
            out = bytearray(size)
            opener.open_chunk(index, memoryview(data)[start : start + size + TAG_SIZE], out)
            prefix += out
            out[:] = bytes(size)
            index += 1
        return bytes(prefix[:length])
    finally:
        prefix[:] = bytes(len(prefix))


class CheckedObject:
    """The ciphertext of a client-sealed object, part by part, checked on the way (see the
    module's docstring); `digests` once every part went through."""

    def __init__(
        self,
        read_part: ReadPart,
        data_key: bytes,
        digest: str,
        expected_header: bytes,
        *,
        chunks_per_part: int,
        starts_with: bytes = b"",
        workers: int = 2,
        what: str,
        reseal: Sealer | None = None,
    ) -> None:
        """With `reseal`, what is yielded is the plaintext sealed again by it (its header
        first), not the client's ciphertext."""
        self._read_part = read_part
        self._data_key = data_key
        self._digest = digest
        self._expected = expected_header
        self._chunks_per_part = chunks_per_part
        self._starts_with = starts_with
        self._workers = workers
        self._what = what
        self._reseal = reseal
        self.header = SealedHeader.unpack(expected_header, what=what)
        self._result: FileDigests | None = None

    @property
    def complete(self) -> bool:
        return self._result is not None

    @property
    def digests(self) -> FileDigests:
        if self._result is None:
            raise IntegrityError(f"{self._what}: not checked to its end", path=self._what)
        return self._result

    def drain(self) -> FileDigests:
        """Check every part without handing the ciphertext on (a store that already holds a
        good copy of the object takes nothing)."""
        for _ in self:
            pass
        return self.digests

    def __iter__(self) -> Iterator[bytes | bytearray | memoryview]:
        with _refused():
            yield from self._checked()

    def _checked(self) -> Iterator[bytes | bytearray | memoryview]:
        header, what = self.header, self._what
        parts = header.part_count(self._chunks_per_part)
        out = bytearray(min(self._chunks_per_part * header.chunk_size, header.plaintext_size))
        try:
            position = 0
            with (
                FileHasher(chunk_size=header.chunk_size) as hasher,
                ThreadPoolExecutor(self._workers, thread_name_prefix="check") as pool,
            ):
                opener: Opener | None = None
                if self._reseal is not None:
                    yield self._reseal.header_bytes
                for part in range(parts):
                    data = self._read_part(part)
                    if opener is None:
                        opener = _opened(
                            self._data_key, self._digest, self._expected, data, what=what
                        )
                    plain = _open_part(opener, part, data, self._chunks_per_part, out, pool)
                    expected = self._starts_with[position : position + len(plain)]
                    if plain[: len(expected)] != expected:
                        raise IntegrityError(
                            f"{what}: its first bytes are not those validated at the commit's "
                            "start",
                            path=what,
                        )
                    hasher.update(plain)
                    position += len(plain)
                    if part == parts - 1:
                        found = hasher.result()
                        if found.digest != self._digest:
                            raise DigestMismatchError(
                                f"{what}: the plaintext hashes to {found.digest}, "
                                f"not the {self._digest} declared for it",
                                hint="hash the file again and push it",
                            )
                        self._result = found
                    yield data if self._reseal is None else self._sealed(part, plain)
        finally:
            # The plaintext of a pushed file must not linger in freed memory of a server, whether
            # the check ran to its end or stopped early.
            out[:] = bytes(len(out))

    def _sealed(self, part: int, plain: memoryview) -> bytearray:
        """The chunks of part `part` (their plaintext `plain`) sealed by `reseal`."""
        assert self._reseal is not None
        header, first = self.header, part * self._chunks_per_part
        chunks = range(first, min(header.chunk_count, first + self._chunks_per_part))
        sealed = bytearray(len(plain) + TAG_SIZE * len(chunks))
        plain_at = sealed_at = 0
        for index in chunks:
            size = header.chunk_plain_size(index)
            self._reseal.seal_chunk_into(
                index,
                plain[plain_at : plain_at + size],
                memoryview(sealed)[sealed_at : sealed_at + size + TAG_SIZE],
            )
            plain_at += size
            sealed_at += size + TAG_SIZE
        return sealed
