"""The decrypt-and-verify pipeline of the loader: sealed chunks read in parallel ranges (taken in
place from a mapping of a local object when the load hashes what it decrypts), authenticated and
decrypted by worker threads straight into their final place (the memory of the tensors on the
CPU, a bounded ring of pinned host buffers on the way to a GPU), and verified in the same pass:
each chunk hashed (BLAKE3) by the worker that decrypted it, while it is in that core's cache, and
the file's chunk root (manifest v2) compared once its last chunk is in; a file of a version 1
manifest is hashed whole, in order, as the ranges complete.

Sealed ranges are read and opened by the one opener of the sealed format
(registry.crypto.sealed.RangeOpener, which `unseal` uses too); this module schedules them. The
first chunk a file's read needs is authenticated on its own, in the calling thread, before
anything is sized from the file's header: a forged chunk or plaintext size cannot make the
workers allocate, nor fill the bookkeeping. It knows nothing of tensors, catalogs or where the
bytes come from. Both AES-GCM `decrypt_into` and BLAKE3 release the GIL, so the threads run in
parallel.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Protocol

import blake3

from registry.crypto.sealed import RangeOpener
from registry.digest import DIGEST_SIZE, chunk_root, format_digest, hash_chunk
from registry.errors import IntegrityError
from registry.manifest import ChunkRoot

DEFAULT_CHUNKS_PER_READ = 4


class SealedReader(Protocol):
    """Sealed bytes of one stored object."""

    def read_into(self, offset: int, buffer: memoryview, /) -> int:
        """Fill `buffer` from `offset` (fewer bytes only at the end of the object)."""
        ...

    def view(self, offset: int, length: int, /) -> memoryview | None:
        """The range in place (cut at the end of the object), or None: read it instead."""
        ...

    def damaged(self, offset: int, error: IntegrityError, /) -> bool:
        """The range at `offset` failed authentication; True when it can be read again from
        another copy."""
        ...


@dataclass
class Counters:
    """What one load did, summed over its threads."""

    sealed_bytes: int = 0
    reads: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, *, sealed_bytes: int = 0, reads: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.sealed_bytes += sealed_bytes
            self.reads += reads
            self.retries += retries


class SealedFile:
    """One stored file, read through the sealed format's RangeOpener: its header checked with
    its data key (key commitment) and its plaintext size against the manifest's. Its chunk
    layout is trusted, and buffers sized from it, only once a chunk read on its own has
    authenticated it (`authenticated`; the Pipeline sees to it). `chunks` is the file's chunk
    root from the manifest (None for a version 1 manifest). With `in_place`, ranges are taken
    from the reader's mapping where it has one (only for loads that hash what they decrypt:
    see RangeOpener)."""

    def __init__(
        self,
        reader: SealedReader,
        data_key: bytes,
        digest: str,
        size: int,
        *,
        what: str,
        counters: Counters,
        chunks: ChunkRoot | None = None,
        in_place: bool = False,
    ) -> None:
        self.reader, self.digest, self.size, self.what = reader, digest, size, what
        self.counters = counters
        self.chunks = chunks
        self.ranges = RangeOpener(
            data_key,
            digest,
            read_into=self._read_into,
            view_range=self._view if in_place else None,
            expected_size=size,
            expected_by="the manifest",
            what=what,
            on_damage=self._damaged,
        )
        self.header = self.ranges.header
        self.chunk_size = self.header.chunk_size
        self.chunk_count = self.header.chunk_count

    def _read_into(self, offset: int, buffer: memoryview) -> int:
        got = self.reader.read_into(offset, buffer)
        self.counters.add(sealed_bytes=got, reads=1)
        return got

    def _view(self, offset: int, length: int) -> memoryview | None:
        found = self.reader.view(offset, length)
        if found is not None:
            self.counters.add(sealed_bytes=len(found), reads=1)
        return found

    def hashing(self) -> Hashing:
        """How a whole read of this file verifies its content: chunk by chunk in the workers
        when the manifest has a chunk root at the chunk size the file was sealed with, else
        the whole file in order."""
        if self.chunks is not None and self.chunks.size == self.chunk_size:
            return ChunkHashing(self, self.chunks.root)
        return WholeHashing(self)

    def _damaged(self, offset: int, error: IntegrityError) -> bool:
        if not self.reader.damaged(offset, error):
            return False
        self.counters.add(retries=1)
        return True

    @property
    def authenticated(self) -> bool:
        """Whether a chunk has authenticated the header (and with it the chunk layout)."""
        return self.ranges.authenticated

    def chunks_of(self, start: int, end: int) -> tuple[int, int]:
        """First and last chunk holding plaintext bytes [start, end) (end > start)."""
        return start // self.chunk_size, (end - 1) // self.chunk_size

    def open_chunks(
        self,
        first: int,
        last: int,
        scratch: bytearray,
        place: Callable[[int], memoryview],
        on_chunk: Callable[[int, memoryview], None] | None = None,
    ) -> None:
        """Read chunks first..last in one range and decrypt each into `place(index)` (exactly
        the chunk's plaintext size), then `on_chunk(index, plaintext)` in the same thread.
        `scratch` holds the sealed bytes (`scratch_size`) unless the range is taken in place."""
        self.ranges.open_run(first, last, place, scratch=scratch, on_chunk=on_chunk)

    def scratch_size(self, chunks: int) -> int:
        """A scratch buffer for runs of `chunks` chunks (one chunk until authenticated)."""
        return self.ranges.scratch_size(chunks)


class Hashing(Protocol):
    """The content check of one whole read of a file: `on_chunk` runs in the worker that
    decrypted each chunk, `ranges_done(start, end)` in the calling thread for each range as it
    completes in file order, and `check()` once the last is in (IntegrityError on mismatch)."""

    on_chunk: Callable[[int, memoryview], None] | None

    def ranges_done(self, plaintext: memoryview) -> None: ...

    def check(self) -> None: ...


class ChunkHashing:
    """Manifest v2: each chunk hashed in the worker that decrypted it; the digests' root
    compared with the manifest's once every chunk is in. Sized only once the header is
    authenticated (the first chunk is read on its own before anything else is)."""

    def __init__(self, file: SealedFile, root: str) -> None:
        self.file, self.root = file, root
        self._digests = bytearray(DIGEST_SIZE * file.chunk_count)
        self.on_chunk: Callable[[int, memoryview], None] | None = self._take

    def _take(self, index: int, plaintext: memoryview) -> None:
        self._digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE] = hash_chunk(plaintext)

    def ranges_done(self, plaintext: memoryview) -> None:
        pass

    def check(self) -> None:
        file = self.file
        if chunk_root(self._digests, chunk_size=file.chunk_size, size=file.size) != self.root:
            raise IntegrityError(f"{file.what}: content digest mismatch", path=file.what)


class WholeHashing:
    """Manifest v1 (or a file sealed at another chunk size than its chunk root's): the whole
    file hashed in order, in the calling thread (BLAKE3's own threads help it)."""

    on_chunk: Callable[[int, memoryview], None] | None = None

    def __init__(self, file: SealedFile) -> None:
        self.file = file
        self._hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)

    def ranges_done(self, plaintext: memoryview) -> None:
        self._hasher.update(plaintext)

    def check(self) -> None:
        file = self.file
        if format_digest(self._hasher.digest()) != file.digest:
            raise IntegrityError(f"{file.what}: content digest mismatch", path=file.what)


class Pipeline:
    """Worker threads and their sealed-read buffers, shared by the files of one load."""

    def __init__(self, *, workers: int, chunks_per_read: int = DEFAULT_CHUNKS_PER_READ) -> None:
        if workers < 1 or chunks_per_read < 1:
            raise ValueError("workers and chunks_per_read must be at least 1")
        self.workers = workers
        self.chunks_per_read = chunks_per_read
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="load")
        self._local = threading.local()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _scratch(self, size: int) -> bytearray:
        buffer: bytearray | None = getattr(self._local, "scratch", None)
        if buffer is None or len(buffer) < size:
            buffer = bytearray(size)
            self._local.scratch = buffer
        return buffer

    def _groups(self, first: int, last: int, step: int | None = None) -> list[tuple[int, int]]:
        """Chunks first..last cut into runs of `step` (default: chunks_per_read)."""
        step = step or self.chunks_per_read
        return [(g, min(g + step - 1, last)) for g in range(first, last + 1, step)]

    def _in_order(
        self, count: int, make: Callable[[int], Callable[[], None]], *, window: int
    ) -> Generator[int]:
        """Run tasks 0..count-1 (`make(i)` builds task i, in this thread, when it is about to be
        submitted) on the workers, at most `window` in flight, and yield the index of each as it
        completes, in order. A failure cancels the rest and is raised; closing the generator
        waits for the tasks in flight (use it in `closing`)."""
        pending: deque[Future[None]] = deque()
        submitted = 0
        try:
            for position in range(count):
                while submitted < count and submitted - position < window:
                    pending.append(self._pool.submit(make(submitted)))
                    submitted += 1
                pending.popleft().result()
                yield position
        finally:
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled():
                    future.exception()  # wait: a buffer must not be written after we return

    def _authenticate(
        self,
        file: SealedFile,
        index: int,
        place: Callable[[int], memoryview],
        on_chunk: Callable[[int, memoryview], None] | None = None,
    ) -> None:
        """Chunk `index` read and opened on its own, in this thread, before anything is sized
        from the file's header: its one-chunk buffer is all a forged header can make us allocate
        (at most MAX_CHUNK_SIZE), and it authenticates the header (every chunk's associated
        data) before the workers, their buffers and the chunk bookkeeping are."""
        file.open_chunks(index, index, self._scratch(file.scratch_size(1)), place, on_chunk)

    def _whole(
        self,
        file: SealedFile,
        place_for: Callable[[int], Callable[[int], memoryview]],
        *,
        hashing: Callable[[], Hashing] | None = None,
        prepare: Callable[[int, int], None] | None = None,
        step: int | None = None,
        window: int | None = None,
    ) -> Generator[tuple[int, int]]:
        """Every chunk of the file decrypted, in runs of `step` chunks (default chunks_per_read):
        run i into `place_for(i)(index)`, where `place_for(i)` is called in this thread when the
        run is about to be submitted, at most `window` runs in flight (default 2 x workers).
        Chunk 0 is read first on its own, in this thread, into its run's place (unless a chunk
        already authenticated the header); only then are runs sized and handed to the workers.
        `hashing()`, when given, is made once the header is authenticated (it may size itself
        from it) and its `on_chunk` runs after each chunk, in the thread that decrypted it;
        `prepare(first, last)`, when given, runs in the worker before it fills chunks
        first..last (it allocates their memory).
        Yields (first, last) of each run as it completes, in file order. Close it (`closing`):
        that waits for the runs in flight."""
        step = step or self.chunks_per_read
        probed = not file.authenticated
        on_chunk: list[Callable[[int, memoryview], None] | None] = [None]
        if probed:
            held: list[memoryview] = []

            def keep(_index: int, plaintext: memoryview) -> None:
                held.append(plaintext)

            self._authenticate(file, 0, place_for(0), keep if hashing else None)
        check = hashing() if hashing is not None else None
        if check is not None:
            on_chunk[0] = check.on_chunk
            if probed and check.on_chunk is not None:
                check.on_chunk(0, held[0])  # chunk 0, opened before the check could be sized
        groups = self._groups(0, file.chunk_count - 1, step)

        def make(position: int) -> Callable[[], None]:
            first, last = groups[position]
            if position == 0 and probed:
                first += 1  # chunk 0 is in place already
            return self._task(file, first, last, place_for(position), on_chunk[0], prepare)

        completed = self._in_order(len(groups), make, window=window or 2 * self.workers)
        with closing(completed):
            for position in completed:
                yield groups[position]

    def decrypt_files(
        self,
        targets: Iterable[HostTarget],
        *,
        verify: bool,
        on_progress: Callable[[int], None] | None = None,
    ) -> Generator[tuple[HostTarget, int]]:
        """Decrypt whole files, each into its destination, yielding (target, bytes done) in
        file order as ranges complete: that many leading bytes of it are authenticated. With
        `verify`, each file is hashed in the same pass and IntegrityError is raised after its
        last range if it does not match (the yield with done == size comes only after the check
        passed). The files share one window of runs on the workers: the next target is taken
        from `targets` (which opens it, in this thread) and its chunk 0 authenticated while the
        workers finish the runs of the one before, so the pipeline does not drain at each file
        boundary. Close the generator (`closing`): that waits for the runs in flight."""

        def runs() -> Generator[tuple[_Reading, int, Callable[[], None]]]:
            for target in targets:
                reading = _Reading(self, target, verify=verify)
                for first, last in reading.groups:
                    yield reading, last, reading.task(first, last)

        pending: deque[tuple[_Reading, int, Future[None]]] = deque()
        source = runs()
        window = 2 * self.workers
        # A file that fails to open (or whose chunk 0 fails) is reported after the runs of the
        # files before it, as if they had been read one after the other.
        failure: Exception | None = None
        try:
            while True:
                while failure is None and len(pending) < window:
                    try:
                        item = next(source, None)
                    except Exception as error:  # noqa: BLE001 - raised once the others are out
                        failure = error
                        break
                    if item is None:
                        break
                    reading, last, task = item
                    pending.append((reading, last, self._pool.submit(task)))
                if not pending:
                    if failure is not None:
                        raise failure
                    return
                reading, last, future = pending.popleft()
                future.result()
                yield reading.target, reading.advance(last, on_progress)
        finally:
            for _reading, _last, future in pending:
                future.cancel()
            for _reading, _last, future in pending:
                if not future.cancelled():
                    future.exception()  # wait: a buffer must not be written after we return
            source.close()

    def _task(
        self,
        file: SealedFile,
        first: int,
        last: int,
        place: Callable[[int], memoryview],
        on_chunk: Callable[[int, memoryview], None] | None = None,
        prepare: Callable[[int, int], None] | None = None,
    ) -> Callable[[], None]:
        """Chunks first..last read and decrypted into place(index), in runs of chunks_per_read
        (one range read each), with this worker's scratch buffer; `prepare(low, high)` before
        each run, `on_chunk` after each chunk."""
        size = file.scratch_size(self.chunks_per_read)

        def run() -> None:
            for low, high in self._groups(first, last):
                if prepare is not None:
                    prepare(low, high)
                file.open_chunks(low, high, self._scratch(size), place, on_chunk)

        return run

    def decrypt_span(self, file: SealedFile, start: int, end: int) -> tuple[bytearray, int]:
        """Plaintext bytes [start, end) of the file, reading only the chunks that hold them
        (authenticated chunk by chunk; no whole-file digest: that needs the whole file). They
        are returned in a buffer of whole chunks, with the offset where they start in it. The
        first span of a file opens its first chunk on its own before sizing the buffer."""
        if not 0 <= start <= end <= file.size:
            raise ValueError(f"span {start}..{end} outside a file of {file.size} bytes")
        if start == end:
            return bytearray(), 0
        first, last = file.chunks_of(start, end)
        chunk = file.chunk_size
        base = first * chunk
        low = first
        head: bytearray | None = None
        if not file.authenticated:
            head = bytearray(file.header.chunk_plain_size(first))  # one chunk at most
            self._authenticate(file, first, lambda _index: memoryview(head))
            if first == last:
                return head, start - base
            low = first + 1
        covered = bytearray(min(file.size, (last + 1) * chunk) - base)
        view = memoryview(covered)
        if head is not None:
            view[: len(head)] = head

        def place(index: int) -> memoryview:
            offset = index * chunk - base
            return view[offset : offset + file.header.chunk_plain_size(index)]

        groups = self._groups(low, last)
        completed = self._in_order(
            len(groups), lambda i: self._task(file, *groups[i], place), window=2 * self.workers
        )
        with closing(completed):
            for _ in completed:
                pass
        return covered, start - base

    def decrypt_through(
        self,
        file: SealedFile,
        slots: StagingRing,
        deliver: Callable[[int, memoryview, int], None],
        *,
        verify: bool,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Decrypt the whole file through a bounded ring of staging buffers (pinned host memory
        on the way to a GPU): workers fill slots, and in file order each slot is hashed and
        handed to `deliver(offset, plaintext, slot)`, which must call `slots.release(slot)` once
        the slot's bytes are no longer needed (after an asynchronous copy completes)."""
        size, chunk = file.size, file.chunk_size
        step = max(1, slots.slot_size // chunk)
        taken: dict[int, int] = {}  # run -> its slot

        def place_for(run: int) -> Callable[[int], memoryview]:
            if run not in taken:
                taken[run] = slots.acquire()
            view = slots.view(taken[run])

            def place(index: int) -> memoryview:
                offset = (index - run * step) * chunk
                return view[offset : offset + file.header.chunk_plain_size(index)]

            return place

        checks: list[Hashing] = []

        def hashing() -> Hashing:
            checks.append(file.hashing())
            return checks[0]

        try:
            # Two slots stay out of the workers' reach: the copies just issued read them, and a
            # slot is reclaimed (its copy waited for) only when no other is free.
            runs = self._whole(
                file,
                place_for,
                hashing=hashing if verify else None,
                step=step,
                window=max(1, slots.count - 2),
            )
            with closing(runs):
                for first, last in runs:
                    start, end = first * chunk, min(size, (last + 1) * chunk)
                    slot = taken.pop(first // step)
                    plaintext = slots.view(slot)[: end - start]
                    if checks:
                        checks[0].ranges_done(plaintext)
                        if end == size:
                            try:
                                checks[0].check()
                            except IntegrityError:
                                slots.release(slot)
                                raise
                    deliver(start, plaintext, slot)
                    if on_progress is not None:
                        on_progress(end - start)
        finally:
            # After closing: the runs in flight are done with their slots.
            for slot in taken.values():
                slots.release(slot)


@dataclass
class HostTarget:
    """A file to read whole into host memory: `destination` (its plaintext size) and
    `prepare(start, end)`, run in a worker before it fills destination[start:end]."""

    file: SealedFile
    destination: memoryview
    prepare: Callable[[int, int], None] | None = None
    key: str = ""


class _Reading:
    """One HostTarget being read by `Pipeline.decrypt_files`: its chunk 0 authenticated on its
    own (in the calling thread) before its runs are sized, its content check, its runs."""

    def __init__(self, pipeline: Pipeline, target: HostTarget, *, verify: bool) -> None:
        file, destination = target.file, target.destination
        if len(destination) != file.size:
            raise ValueError("the destination must have the file's size")
        self.pipeline, self.target, self.file = pipeline, target, file
        chunk = file.chunk_size

        def place(index: int) -> memoryview:
            return destination[index * chunk : index * chunk + file.header.chunk_plain_size(index)]

        self.place = place
        probed = not file.authenticated
        first_chunk: list[memoryview] = []
        if probed:
            pipeline._authenticate(
                file,
                0,
                place,
                (lambda _index, plain: first_chunk.append(plain)) if verify else None,
            )
        self.check = file.hashing() if verify else None
        self.on_chunk = self.check.on_chunk if self.check is not None else None
        if self.on_chunk is not None and first_chunk:
            self.on_chunk(0, first_chunk[0])  # opened before the check could be sized
        self.groups = pipeline._groups(0, file.chunk_count - 1)
        if probed:
            self.groups[0] = (1, self.groups[0][1])  # chunk 0 is in place already
        self.done = 0

    def _prepare(self, first: int, last: int) -> None:
        if self.target.prepare is not None:
            chunk = self.file.chunk_size
            self.target.prepare(first * chunk, min(self.file.size, (last + 1) * chunk))

    def task(self, first: int, last: int) -> Callable[[], None]:
        return self.pipeline._task(
            self.file,
            first,
            last,
            self.place,
            self.on_chunk,
            self._prepare if self.target.prepare is not None else None,
        )

    def advance(self, last: int, on_progress: Callable[[int], None] | None) -> int:
        """Run ..last is complete (runs complete in order): hash it where the file is hashed
        whole, check the file once it is all in; bytes done."""
        file = self.file
        end = min(file.size, (last + 1) * file.chunk_size)
        if self.check is not None:
            self.check.ranges_done(self.target.destination[self.done : end])
        if on_progress is not None:
            on_progress(end - self.done)
        self.done = end
        if self.check is not None and end == file.size:
            self.check.check()
        return end


class StagingRing:
    """A fixed set of staging buffers (`count` x `slot_size` bytes), handed out and returned, so
    staging memory stays bounded whatever the model size. When none is free, `acquire` calls
    `reclaim`, which must return at least one (for a GPU: wait for the oldest copy to finish)."""

    def __init__(
        self, buffers: list[memoryview], slot_size: int, *, reclaim: Callable[[], None]
    ) -> None:
        if not buffers:
            raise ValueError("a staging ring needs at least one buffer")
        self.slot_size = slot_size
        self.count = len(buffers)
        self._buffers = buffers
        self._free: deque[int] = deque(range(len(buffers)))
        self._reclaim = reclaim

    def view(self, slot: int) -> memoryview:
        return self._buffers[slot]

    def acquire(self) -> int:
        if not self._free:
            self._reclaim()
        if not self._free:
            raise RuntimeError("staging ring exhausted: reclaim returned no buffer")
        return self._free.popleft()

    def release(self, slot: int) -> None:
        self._free.append(slot)
