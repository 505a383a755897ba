"""An object's bytes to and from S3 (for `storage.s3`): a stream of chunks cut into parts, a
multipart upload whose parts share the driver's part slots, and ranged downloads read in pieces
under a deadline, into new bytes or into the caller's memory.

Kept apart from the driver, which decides what to write and when (write-once, locks); this
module only moves bytes. Parts are sent from the buffers they were cut into (one copy per
chunk), and a part's buffer is lent again once the server took it: fresh 8 MiB buffers cost
their zeroing and page faults, a quarter of a push's own CPU time when measured.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from registry.errors import StorageError, StoreTimeoutError
from registry.storage.deadline import Budget, DeadlineSettings, call_with_deadline

T = TypeVar("T")

# CRC32 rather than SHA-256: S3 verifies either on receipt, and CRC32 costs a fraction of the
# CPU on the client (the content itself is authenticated by AES-GCM and BLAKE3 anyway).
CHECKSUM = "CRC32"
# A download is read in pieces of this size: between pieces an abandoned read stops, and each
# piece extends its deadline (small enough that a trickle shows, large enough to cost nothing).
PIECE = 256 * 1024


class PartPool:
    """The parts of one driver's uploads: `slots` parts in flight at most across all of them,
    and the buffers of parts sent, lent again while an upload runs (an idle driver keeps
    none).

    A free slot goes to the upload that started first among those waiting for one, so that
    uploads finish one after another rather than all together at the end: each object's
    completion, lock and checks then overlap with the next objects' transfers, and only the
    last object's are left after the last byte is sent. An upload that is not waiting (its next
    part still being sealed) holds no one back, and a waiting upload with no part in flight
    goes first: every upload keeps at least one part moving, so none is starved (a multi-region
    push would take a starved writer for a stalled region)."""

    def __init__(self, size: int, slots: int) -> None:
        self.size = size
        self.slots = slots
        self._free = slots
        self._waiting: list[int] = []  # a heap of the waiting uploads' ranks
        self._busy: dict[int, int] = {}  # rank -> parts in flight
        self._spare: list[bytearray] = []
        self._uploads = 0
        self._ranks = itertools.count()
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)

    @contextlib.contextmanager
    def uploading(self) -> Iterator[int]:
        """One upload under way; its rank (the order it started in) for `acquire`."""
        with self._lock:
            self._uploads += 1
            rank = next(self._ranks)
        try:
            yield rank
        finally:
            with self._lock:
                self._uploads -= 1
                if not self._uploads:
                    self._spare.clear()

    def cut(self, chunks: Iterable[bytes | bytearray | memoryview]) -> Iterator[bytearray]:
        return cut_parts(chunks, self.size, self._lend)

    def _lend(self) -> bytearray:
        with self._lock:
            if self._spare:
                return self._spare.pop()
        return bytearray(self.size)

    def sent(self, part: bytearray) -> None:
        """A part the server took: its buffer can carry the next one (only then: a call given
        up on might still be sending from it)."""
        with self._lock:
            if self._uploads and len(part) == self.size:
                self._spare.append(part)

    def acquire(self, rank: int = 0) -> None:
        """A slot for the next part of the upload of `rank` (release it with the same rank):
        the first free one, unless another waiting upload goes first (see the class)."""
        with self._turn:
            heapq.heappush(self._waiting, rank)
            try:
                self._turn.wait_for(lambda: self._free > 0 and self._next() == rank)
            finally:
                self._waiting.remove(rank)
                heapq.heapify(self._waiting)
                self._turn.notify_all()
            self._free -= 1
            self._busy[rank] = self._busy.get(rank, 0) + 1

    def _next(self) -> int:
        """The waiting upload the next free slot goes to: the earliest-started one without a
        part in flight, else the earliest-started one."""
        idle = [rank for rank in self._waiting if not self._busy.get(rank)]
        return min(idle) if idle else self._waiting[0]

    def release(self, rank: int = 0) -> None:
        with self._turn:
            self._free += 1
            left = self._busy.get(rank, 0) - 1
            if left > 0:
                self._busy[rank] = left
            else:
                self._busy.pop(rank, None)
            self._turn.notify_all()

    @property
    def waiting(self) -> int:
        """How many uploads wait for a slot now."""
        with self._lock:
            return len(self._waiting)


def cut_parts(
    chunks: Iterable[bytes | bytearray | memoryview],
    size: int,
    lend: Callable[[], bytearray] | None = None,
) -> Iterator[bytearray]:
    """Regroup chunks into parts of exactly `size` bytes (the last may be shorter; at least one
    part, possibly empty, is always produced). A producer may reuse a chunk's memory once the
    next one is asked for, so each chunk is copied, and no part is copied again on its way to
    the server. Until `size` bytes came, the chunks are kept as they are (most objects are
    small: a key slot, a record); from then on, each part is a buffer from `lend` (`size`
    bytes; a new one by default) the chunks are copied into."""
    fresh = lend or (lambda: bytearray(size))
    stream = iter(chunks)
    head: builtins.list[bytes] = []
    held = 0
    for chunk in stream:
        data = memoryview(chunk).cast("B")
        if held + len(data) < size:
            head.append(bytes(data))
            held += len(data)
            continue
        part = fresh()
        view = memoryview(part)
        filled = 0
        for kept in head:
            view[filled : filled + len(kept)] = kept
            filled += len(kept)
        head.clear()
        for piece in chain(iter([data]), (memoryview(c).cast("B") for c in stream)):
            offset, length = 0, len(piece)
            while offset < length:
                take = min(size - filled, length - offset)
                view[filled : filled + take] = piece[offset : offset + take]
                filled += take
                offset += take
                if filled == size:
                    view.release()
                    yield part
                    part = fresh()
                    view = memoryview(part)
                    filled = 0
        view.release()
        if filled:
            del part[filled:]  # in place: the tail part keeps its memory, not a copy
            yield part
        return
    yield bytearray(b"".join(head))


def chain(first: Iterator[T], rest: Iterator[T]) -> Iterator[T]:
    yield from first
    yield from rest


def upload_parts(
    client: Any,
    bucket: str,
    key: str,
    first: bytearray,
    rest: Iterator[bytearray],
    *,
    pool: PartPool,
    write_once: bool,
    rank: int = 0,
) -> dict[str, Any]:
    """A multipart upload of `first` and `rest` through `client` (calls under deadlines). The
    upload is created while the next parts are cut (and sealed), and each part is sent as soon
    as one of the pool's slots is free (`rank`: this upload's turn among those waiting, see
    `PartPool`): the driver's uploads share them, so several objects can be written at once
    (their small requests overlapping each other's transfers) while the parts in flight, and
    the memory they hold, stay bounded. A part that failed ends the upload at once; the upload
    is aborted on any failure, so none lingers (they are billed and invisible)."""
    done: list[dict[str, Any]] = []
    with ThreadPoolExecutor(pool.slots + 1, thread_name_prefix="s3-part") as threads:
        created: Future[dict[str, Any]] = threads.submit(
            functools.partial(
                client.create_multipart_upload, Bucket=bucket, Key=key, ChecksumAlgorithm=CHECKSUM
            )
        )

        def send(number: int, body: bytearray) -> dict[str, Any]:
            try:
                part = client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=created.result()["UploadId"],
                    PartNumber=number,
                    Body=body,
                    ChecksumAlgorithm=CHECKSUM,
                )
            finally:
                # Freed when the call returned or was abandoned to its deadline, so that a hung
                # region's parts hold the driver's other uploads no longer than that.
                pool.release(rank)
            pool.sent(body)
            return {
                "PartNumber": number,
                "ETag": part["ETag"],
                "ChecksumCRC32": part.get("ChecksumCRC32"),
            }

        try:
            window: deque[Future[dict[str, Any]]] = deque()
            for number, body in enumerate(chain(iter([first]), rest), start=1):
                # Waiting here also holds back the producer (the sealing): at most one part
                # per upload waits for a slot.
                pool.acquire(rank)
                try:
                    window.append(threads.submit(send, number, body))
                except BaseException:
                    pool.release(rank)
                    raise
                del body
                while window and (window[0].done() or len(window) >= pool.slots):
                    done.append(window.popleft().result())
            done.extend(future.result() for future in window)
            completed = [{k: v for k, v in part.items() if v is not None} for part in done]
            response: dict[str, Any] = client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=created.result()["UploadId"],
                MultipartUpload={"Parts": completed},
                **({"IfNoneMatch": "*"} if write_once else {}),
            )
            return response
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError, StorageError):
                upload_id = created.result()["UploadId"]
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise


def download(
    raw: Any, bucket: str, key: str, byte_range: str, *, deadlines: DeadlineSettings
) -> bytes:
    """One ranged GET through the client `raw` (not itself bounded), its body read in pieces:
    the deadline is the request's, extended by every piece at the slowest acceptable rate, and
    an abandoned read stops at the next."""

    def fetch(budget: Budget) -> bytes:
        response = raw.get_object(Bucket=bucket, Key=key, Range=byte_range)
        body = response["Body"]
        pieces: list[bytes] = []
        try:
            while piece := body.read(PIECE):
                if budget.cancelled.is_set():
                    raise StoreTimeoutError(f"read of s3://{bucket}/{key} abandoned")
                budget.moved(len(piece))
                pieces.append(piece)
        finally:
            body.close()
        return b"".join(pieces)

    return call_with_deadline(
        fetch,
        seconds=deadlines.request_seconds,
        rate=deadlines.transfer_bytes_per_second,
        what=f"read of s3://{bucket}/{key}",
    )


def download_into(
    raw: Any,
    bucket: str,
    key: str,
    byte_range: str,
    buffer: memoryview,
    *,
    deadlines: DeadlineSettings,
) -> int:
    """`download` into the caller's buffer, without assembling the range in memory first;
    how many bytes came. Each piece is received into a buffer of the call's own and copied
    over only while the call is not abandoned (`Budget.deliver`): a caller that gave up on it
    may already use its buffer for other bytes."""
    size = len(buffer)
    what = f"read of s3://{bucket}/{key}"

    def fetch(budget: Budget) -> int:
        response = raw.get_object(Bucket=bucket, Key=key, Range=byte_range)
        body = response["Body"]
        piece = memoryview(bytearray(min(PIECE, size)))
        filled = 0
        try:
            while filled < size:
                got = body.readinto(piece[: min(len(piece), size - filled)])
                if not got:
                    break  # the object ended first (the body checked its length)
                start = filled

                def copy(start: int = start, got: int = got) -> None:
                    buffer[start : start + got] = piece[:got]

                budget.deliver(copy, what)
                budget.moved(got)
                filled += got
            else:
                # To the end of the body, so that its length (and a checksum the store sent
                # for the whole object) is checked as a full read would.
                body.readinto(piece[:1])
        finally:
            body.close()
        return filled

    return call_with_deadline(
        fetch,
        seconds=deadlines.request_seconds,
        rate=deadlines.transfer_bytes_per_second,
        what=what,
    )
