"""S3 transfers made to keep up with boto3's own (issue 16), each pinned by its behaviour, never
by a timing: parts cut once and sent in parallel within the driver's part slots, the multipart
upload created before the next part is cut, failures cleaned up; ranged reads into the caller's
memory that an abandoned call never writes; small writes with fewer requests where the server
enforces write-once; a push writing its files at once and choosing its manifest's key meanwhile,
without reading back what it just wrote; a pull's read-ahead across files (one request for a
small file, the next file's ranges asked before the current one is done, failures read again).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from registry.blobstore import seal_bytes
from registry.crypto import sealed
from registry.digest import hash_bytes
from registry.errors import NotFoundError, StorageError, StoreTimeoutError
from registry.replication import ReadAhead, ReadReport, Region, ReplicaSet
from registry.service import Registry
from registry.storage.deadline import Budget, call_with_deadline
from registry.storage.lock import COMPLIANCE, Retention
from registry.storage.s3 import MIN_PART_SIZE, S3Driver, S3Location
from registry.storage.s3_transfer import PartPool, cut_parts
from registry.testing.models import make_model
from tests.conftest import LOCKED_BUCKET, tree

BUCKET = LOCKED_BUCKET
WAIT = 10.0  # the longest a test waits for something that must happen (never a measurement)


class _Recording:
    """A boto3 client that records every call (operation name, key) and lets a test hook one."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[tuple[str, str]] = []
        self.hooks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)
        if not callable(method) or name not in self.real.meta.method_to_api_mapping:
            return method

        def call(**kwargs: Any) -> Any:
            with self._lock:
                self.calls.append((name, str(kwargs.get("Key", ""))))
            hook = self.hooks.get(name)
            return hook(method, **kwargs) if hook else method(**kwargs)

        return call

    def count(self, name: str) -> int:
        return sum(1 for called, _key in self.calls if called == name)


@pytest.fixture
def recording(moto_s3: Any) -> _Recording:
    return _Recording(moto_s3)


def _driver(client: Any, **options: Any) -> S3Driver:
    return S3Driver(S3Location(BUCKET), client=client, part_size=MIN_PART_SIZE, **options)


# -- parts ---------------------------------------------------------------------------------


def test_parts_are_cut_once_even_from_chunk_memory_the_producer_reuses() -> None:
    def reused(chunks: list[bytes]) -> Iterator[memoryview]:
        buffer = bytearray(64)
        for chunk in chunks:
            buffer[: len(chunk)] = chunk
            yield memoryview(buffer)[: len(chunk)]
            buffer[:] = b"\xff" * 64  # the next chunk overwrites what was handed out

    chunks = [os.urandom(n) for n in (10, 30, 7, 40, 13)]
    lent: list[bytearray] = []

    def lend() -> bytearray:
        lent.append(bytearray(16))
        return lent[-1]

    parts = list(cut_parts(reused(chunks), 16, lend))
    assert [bytes(p) for p in parts] == [b"".join(chunks)[i : i + 16] for i in range(0, 100, 16)]
    assert all(any(p is buffer for buffer in lent) for p in parts)  # no copy of a part
    assert [bytes(p) for p in cut_parts([], 16)] == [b""]  # always one part
    assert [len(p) for p in cut_parts([b"x" * 32], 16)] == [16, 16]  # no empty tail
    small: list[bytearray] = []
    assert bytes(next(cut_parts([b"slot"], 16, lambda: small.append(bytearray(16)) or small[-1])))
    assert small == []  # a small object never takes a part buffer


def _until(condition: Any) -> None:
    pause = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError("never happened")


def _slot_order(pool: PartPool, held: list[int], waiters: list[tuple[int, str]]) -> list[str]:
    """The order in which `waiters` (rank, name), asking one after another while the pool's
    slots are all held (by the uploads in `held`), get one once the first of those is let go."""
    order: list[str] = []

    def send(rank: int, name: str) -> None:
        pool.acquire(rank)
        order.append(name)
        pool.release(rank)

    for rank in held:
        pool.acquire(rank)
    threads = []
    for count, waiter in enumerate(waiters, start=1):
        threads.append(threading.Thread(target=send, args=waiter))
        threads[-1].start()
        _until(lambda count=count: pool.waiting == count)  # type: ignore[misc]
    pool.release(held[0])
    for thread in threads:
        thread.join(WAIT)
    for rank in held[1:]:
        pool.release(rank)
    return order


def test_a_free_part_slot_goes_to_the_upload_that_started_first() -> None:
    pool = PartPool(16, 1)
    with pool.uploading() as first, pool.uploading() as second, pool.uploading() as third:
        assert first < second < third
        # An upload that does not wait holds no one back: the latest one takes the free slot.
        pool.acquire(third)
        pool.release(third)
        # The upload that started first gets the slot although the other asked for it first:
        # the uploads finish one after another, each one's completion overlapping the next
        # one's parts.
        order = _slot_order(pool, [third], [(second, "second"), (first, "first")])
        assert order == ["first", "second"]
    pool = PartPool(16, 2)
    with pool.uploading() as first, pool.uploading() as second:
        # Unless the later one has no part in flight and the earlier one has: every upload
        # keeps a part moving, none is starved (a multi-region push would take a starved
        # writer for a stalled region and drop it).
        order = _slot_order(pool, [first, first], [(first, "first"), (second, "second")])
        assert order == ["second", "first"]


def test_a_drivers_uploads_share_its_part_slots_and_use_them_at_once(
    recording: _Recording,
) -> None:
    driver = _driver(recording, parallelism=2, server_write_once=True)
    in_flight = 0
    most = 0
    ready = threading.Condition()

    def upload_part(method: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, most
        with ready:
            in_flight += 1
            most = max(most, in_flight)
            ready.notify_all()
            # The first part is held until a second one is in flight: serial parts would
            # wait in vain.
            ready.wait_for(lambda: most >= 2, timeout=WAIT)
        try:
            return method(**kwargs)
        finally:
            with ready:
                in_flight -= 1

    recording.hooks["upload_part"] = upload_part
    data = os.urandom(MIN_PART_SIZE * 3 + 5)
    errors: list[BaseException] = []

    def put(name: str) -> None:
        try:
            assert driver.put_if_absent(name, [data])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    writers = [threading.Thread(target=put, args=(f"big/{n}",)) for n in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors
    assert most == 2  # parts in parallel, never more than the driver's slots across uploads
    assert recording.count("upload_part") == 8
    assert driver.get_range("big/0") == data and driver.get_range("big/1") == data


def test_the_multipart_upload_is_created_before_the_second_part_is_cut(
    recording: _Recording,
) -> None:
    created = threading.Event()

    def create(method: Any, **kwargs: Any) -> Any:
        created.set()
        return method(**kwargs)

    recording.hooks["create_multipart_upload"] = create
    driver = _driver(recording, server_write_once=True)
    seen_before_second: list[bool] = []

    def chunks() -> Iterator[bytes]:
        yield bytes(MIN_PART_SIZE)
        # The first part is full: the upload is being created while this one is sealed.
        seen_before_second.append(created.wait(WAIT))
        yield b"tail"

    assert driver.put_if_absent("big/early", chunks())
    assert seen_before_second == [True]
    assert driver.stat("big/early") is not None


def test_a_failed_create_sends_no_part_and_leaves_nothing(recording: _Recording) -> None:
    def refuse(method: Any, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "no"}}, "Create")

    recording.hooks["create_multipart_upload"] = refuse
    driver = _driver(recording, server_write_once=True)
    with pytest.raises(StorageError):
        driver.put_if_absent("big/refused", [bytes(MIN_PART_SIZE), b"more"])
    assert recording.count("upload_part") == 0
    assert recording.count("complete_multipart_upload") == 0
    assert recording.real.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert driver.stat("big/refused") is None


def test_a_failed_part_aborts_the_upload_and_frees_the_slots(recording: _Recording) -> None:
    calls = {"parts": 0}

    def flaky(method: Any, **kwargs: Any) -> Any:
        calls["parts"] += 1
        if calls["parts"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "reset"}}, "Part")
        return method(**kwargs)

    recording.hooks["upload_part"] = flaky
    driver = _driver(recording, parallelism=2, server_write_once=True)
    with pytest.raises(StorageError):
        driver.put_if_absent("big/flaky", [os.urandom(MIN_PART_SIZE * 4)])
    assert recording.count("abort_multipart_upload") == 1
    assert recording.real.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    # Every slot came back: the next upload is not starved.
    del recording.hooks["upload_part"]
    assert driver.put_if_absent("big/flaky", [os.urandom(MIN_PART_SIZE * 3)])


# -- reads into the caller's memory --------------------------------------------------------


def test_read_into_fills_the_callers_buffer(recording: _Recording) -> None:
    driver = _driver(recording)
    data = os.urandom(600_000)
    driver.put_if_absent("obj", [data])
    buffer = bytearray(700_000)
    assert driver.read_into("obj", 0, memoryview(buffer)[:600_000]) == 600_000
    assert bytes(buffer[:600_000]) == data
    assert driver.read_into("obj", 599_990, memoryview(buffer)) == 10  # cut at the end
    assert bytes(buffer[:10]) == data[-10:]
    assert driver.read_into("obj", 700_000, memoryview(buffer)) == 0  # past the end
    assert driver.read_into("obj", 5, memoryview(buffer)[:0]) == 0
    with pytest.raises(NotFoundError):
        driver.read_into("nothing", 0, memoryview(buffer))
    assert recording.count("get_object") == 4  # one request each, no assembling first


def test_an_abandoned_read_never_writes_into_the_callers_buffer() -> None:
    buffer = bytearray(8)
    release = threading.Event()
    finished = threading.Event()
    outcome: list[str] = []

    def slow(budget: Budget) -> int:
        release.wait(WAIT)  # blocked in the network when the caller gives up
        try:
            budget.deliver(lambda: buffer.__setitem__(slice(0, 8), b"LATE!!!!"), "read of x")
            outcome.append("wrote")
        except StoreTimeoutError:
            outcome.append("refused")
        finally:
            finished.set()
        return 8

    with pytest.raises(StoreTimeoutError):
        call_with_deadline(slow, seconds=0.05, what="read of x")
    release.set()
    assert finished.wait(WAIT)
    assert outcome == ["refused"] and buffer == bytearray(8)


# -- small writes --------------------------------------------------------------------------


def test_where_the_server_refuses_a_second_write_a_small_object_goes_up_with_its_lock(
    recording: _Recording,
) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    driver = _driver(recording, server_write_once=True)
    assert driver.put_if_absent("small/x", [b"slot"], lock=Retention(COMPLIANCE, until))
    assert [name for name, _ in recording.calls] == ["put_object", "head_object"]
    retention = driver.retention("small/x")
    assert retention is not None and retention.mode == COMPLIANCE
    # A second write is refused by the server and changes nothing.
    assert not driver.put_if_absent("small/x", [b"other"], lock=Retention(COMPLIANCE, until))
    assert driver.get_range("small/x") == b"slot"


def test_where_the_server_ignores_it_a_small_write_looks_first_and_locks_after_winning(
    recording: _Recording,
) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    driver = _driver(recording, server_write_once=False)
    assert driver.put_if_absent("small/y", [b"slot"], lock=Retention(COMPLIANCE, until))
    assert [name for name, _ in recording.calls] == [
        "head_object",  # does it exist (a second version must never show)
        "put_object",  # no lock yet: a losing version could never be removed
        "list_object_versions",  # won the name?
        "put_object_retention",  # a new version: no lock of its own to read first
        "head_object",  # the lock read back
    ]
    retention = driver.retention("small/y")
    assert retention is not None and retention.until >= until.replace(microsecond=0)


@pytest.mark.parametrize("enforced", [True, False])
def test_a_name_just_found_missing_is_not_looked_up_again_before_its_write(
    recording: _Recording, monkeypatch: pytest.MonkeyPatch, enforced: bool
) -> None:
    driver = _driver(recording, server_write_once=enforced)
    # A multipart upload (and, where the server ignores If-None-Match, any write) asks
    # whether the object exists first, unless a push's survey just found it missing.
    large = [os.urandom(MIN_PART_SIZE), b"tail"]
    assert driver.stat("small/v") is None
    recording.calls.clear()
    assert driver.put_if_absent("small/v", large)
    assert recording.calls[0][0] == "create_multipart_upload", recording.calls[:3]
    # That answer served one write: the next one asks again, and writes nothing.
    recording.calls.clear()
    assert not driver.put_if_absent("small/v", [os.urandom(MIN_PART_SIZE)])
    assert [name for name, _ in recording.calls][:1] == ["head_object"]
    # A name written by another writer since it was found missing: the write's own check
    # (the server's refusal, or the version listing) still keeps the first content.
    assert driver.stat("small/u") is None
    assert S3Driver(S3Location(BUCKET), client=recording.real).put_if_absent("small/u", [b"1"])
    assert not driver.put_if_absent("small/u", [b"2"])
    assert driver.get_range("small/u") == b"1"
    assert len(driver._versions(driver._key("small/u"))) == 1
    # An answer older than ABSENT_FOR is not taken.
    monkeypatch.setattr("registry.storage.s3.ABSENT_FOR", 0.0)
    assert driver.stat("small/t") is None
    recording.calls.clear()
    assert driver.put_if_absent("small/t", large)
    assert recording.calls[0][0] == "head_object"


def test_no_write_waits_for_the_write_once_probe_and_none_outlives_it(
    recording: _Recording,
) -> None:
    ours = threading.Event()
    probe_waited: list[bool] = []

    def put_object(method: Any, **kwargs: Any) -> Any:
        if kwargs["Key"].startswith("registry/probe/"):
            if not probe_waited:
                # The probe's first write waits for the write that started it: a write that
                # waited for the probe would wait here in vain.
                probe_waited.append(ours.wait(WAIT))
        else:
            ours.set()
        return method(**kwargs)

    recording.hooks["put_object"] = put_object
    driver = _driver(recording)  # the server's write-once is not known yet
    assert driver.put_if_absent("small/z", [b"slot"])
    assert probe_waited == [True]
    assert driver._write_once_enforced() is True  # moto refuses a second write
    # Until the probe answered, the write took the path that holds anywhere: looked up first.
    assert next(name for name, key in recording.calls if key == "small/z") == "head_object"
    assert [info.name for info in driver.list()] == ["small/z"]  # no probe object left


def test_a_write_while_the_probe_is_under_way_does_not_wait_for_it(
    recording: _Recording,
) -> None:
    probing = threading.Event()
    ours = threading.Event()
    probe_waited: list[bool] = []

    def put_object(method: Any, **kwargs: Any) -> Any:
        if kwargs["Key"].startswith("registry/probe/"):
            if not probe_waited:
                probing.set()
                # The probe's first write waits for a write asked while it is under way: one
                # that waited for the probe (its lock held through its requests) would wait
                # here in vain.
                probe_waited.append(ours.wait(WAIT))
        else:
            ours.set()
        return method(**kwargs)

    recording.hooks["put_object"] = put_object
    driver = _driver(recording)  # the server's write-once is not known yet
    driver.expect_writes()  # a push about to write: the probe starts in the background
    assert probing.wait(WAIT)
    assert driver.put_if_absent("small/w", [b"slot"])
    assert probe_waited == [True]
    assert driver._write_once_known() is True  # answered: moto refuses a second write
    assert [info.name for info in driver.list()] == ["small/w"]  # no probe object left


def test_the_clients_of_a_process_share_one_model_loader_not_their_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from registry.storage.s3_client import make_client, shared_loader

    location = S3Location(BUCKET, region="us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    first = make_client(location, parallelism=2)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second-key")
    second = make_client(location, parallelism=2)
    # botocore's JSON models are parsed once per process, not once per client (or region)...
    assert first._loader is second._loader is shared_loader()
    # ...while each client resolves its own credentials, as a fresh session does.
    assert first._request_signer._credentials.access_key == "first-key"
    assert second._request_signer._credentials.access_key == "second-key"
    first.close()
    second.close()


# -- push ----------------------------------------------------------------------------------


@pytest.fixture
def s3_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        bucket = f"models-{uuid.uuid4().hex[:10]}"
        Registry.init(home, store=f"s3://{bucket}?region=us-east-1&retention_days=1")
        yield home


def _counting(driver: Any, monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """(driver method, object kind) of every read and write through the driver."""
    seen: Counter[tuple[str, str]] = Counter()

    def counting(method: str) -> Any:
        real = getattr(driver, method)

        def counted(name: str, *args: Any, **kwargs: Any) -> Any:
            seen[(method, name.split("/", 1)[0])] += 1
            return real(name, *args, **kwargs)

        return counted

    for method in ("get_range", "read_into", "put_if_absent"):
        monkeypatch.setattr(driver, method, counting(method))
    return seen


def test_a_push_writes_its_files_at_once_and_reads_nothing_it_just_wrote(
    s3_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path / "model", shards=3, shard_size=300_000, seed=21)
    with Registry.open(s3_home) as registry:
        driver = registry.store.driver
        assert isinstance(driver, S3Driver)
        seen = _counting(driver, monkeypatch)
        real = driver.put_if_absent
        writing = 0
        most = 0
        together = threading.Condition()

        def put(name: str, chunks: Any, **kwargs: Any) -> bool:
            nonlocal writing, most
            if not name.startswith("blobs/"):
                return real(name, chunks, **kwargs)
            with together:
                writing += 1
                most = max(most, writing)
                together.notify_all()
                together.wait_for(lambda: most >= 2, timeout=WAIT)
            try:
                return real(name, chunks, **kwargs)
            finally:
                with together:
                    writing -= 1

        monkeypatch.setattr(driver, "put_if_absent", put)
        version = registry.push("team/m", model).version
        pushed = Counter(seen)
        registry.pull("team/m", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    assert most >= 2  # files written at once
    # Nothing of a new object is read back during its push: not its key slot (one region
    # writes it first-come, and knows it after), not its header (taken from the stream).
    read = {kind for (method, kind) in pushed if method in ("get_range", "read_into")}
    assert not read & {"blobs", "slots", "manifests"}, pushed
    blobs = len({entry.digest for entry in version.files})
    assert pushed[("put_if_absent", "blobs")] == blobs
    assert pushed[("put_if_absent", "slots")] == blobs + 1  # and the manifest's


def test_a_push_chooses_its_manifests_key_while_its_files_are_written(
    s3_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path / "model", shards=2, shard_size=200_000, seed=22)
    with Registry.open(s3_home) as registry:
        driver = registry.store.driver
        real = driver.put_if_absent
        slot_stored = threading.Event()
        waited: list[bool] = []

        def put(name: str, chunks: Any, **kwargs: Any) -> bool:
            if name.startswith("slots/") and "/manifest-" in name:
                try:
                    return real(name, chunks, **kwargs)
                finally:
                    slot_stored.set()
            if name.startswith("blobs/"):
                # A file's data waits for the manifest's slot: a push that chose the key only
                # after its files would wait here in vain.
                waited.append(slot_stored.wait(WAIT))
            return real(name, chunks, **kwargs)

        monkeypatch.setattr(driver, "put_if_absent", put)
        registry.push("team/m", model)
        registry.pull("team/m", tmp_path / "out")
    assert waited and all(waited)
    assert tree(tmp_path / "out") == tree(model)


def test_a_push_starts_the_write_once_probe_before_its_first_write(
    s3_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path / "model", shards=1, shard_size=100_000, seed=23)
    with Registry.open(s3_home) as registry:
        driver = registry.store.driver
        assert isinstance(driver, S3Driver)
        driver._enforced = None  # as a fresh process finds it
        order: list[str] = []
        expect, put = driver.expect_writes, driver.put_if_absent

        def expecting() -> None:
            order.append("expect")
            expect()

        def putting(name: str, chunks: Any, **kwargs: Any) -> bool:
            order.append(name.split("/", 1)[0])
            return put(name, chunks, **kwargs)

        monkeypatch.setattr(driver, "expect_writes", expecting)
        monkeypatch.setattr(driver, "put_if_absent", putting)
        registry.push("team/m", model)
        registry.pull("team/m", tmp_path / "out")
    # The probe runs while the push hashes and checks, not in the way of its first writes.
    assert order[0] == "expect" and "slots" in order and "blobs" in order, order
    assert tree(tmp_path / "out") == tree(model)


@pytest.mark.parametrize("enforced", [True, False])
def test_concurrent_pushes_of_the_same_content_both_succeed(
    s3_home: Path, tmp_path: Path, enforced: bool
) -> None:
    # Shards above a part: multipart uploads sharing each driver's ordered part slots, the
    # lookup before them skipped after the survey; `enforced` False takes the path of a server
    # that ignores If-None-Match (Ceph RGW): looked up first, versions listed after.
    model = make_model(tmp_path / "model", shards=2, shard_size=MIN_PART_SIZE + 4096, seed=24)
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def push(name: str) -> None:
        try:
            with Registry.open(s3_home) as opened:
                driver = opened.store.driver
                assert isinstance(driver, S3Driver)
                driver._enforced = enforced
                barrier.wait(WAIT)
                results[name] = opened.push(name, model)
        except BaseException as error:  # noqa: BLE001 - asserted below
            results[name] = error

    threads = [threading.Thread(target=push, args=(n,)) for n in ("team/a", "team/b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not [r for r in results.values() if isinstance(r, BaseException)], results
    with Registry.open(s3_home) as registry:
        for name in ("team/a", "team/b"):
            assert registry.verify(name, read_data=True).ok
            registry.pull(name, tmp_path / name)
            assert tree(tmp_path / name) == tree(model)


# -- pull's read-ahead ---------------------------------------------------------------------


class _Driver:
    """One region's objects in memory, counting the requests for each, optionally holding one
    request back until a test lets it go."""

    latency_bound = True

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.requests: list[tuple[str, int, int]] = []
        self.fail_once: set[tuple[str, int]] = set()
        self.hold: tuple[str, int, threading.Event] | None = None
        self._lock = threading.Lock()

    def _request(self, name: str, offset: int, length: int) -> bytes:
        with self._lock:
            self.requests.append((name, offset, length))
            failing = (name, offset) in self.fail_once
            self.fail_once.discard((name, offset))
        if self.hold is not None and self.hold[:2] == (name, offset):
            self.hold[2].wait(WAIT)
        if failing:
            raise StorageError(f"{name}: connection reset")
        if name not in self.objects:
            raise NotFoundError(name)
        return self.objects[name][offset : offset + length]

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._request(
            name, offset, len(self.objects.get(name, b"")) if length is None else length
        )

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        data = self._request(name, offset, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


class _Store:
    def __init__(self, driver: _Driver) -> None:
        self.driver = driver

    def object_name(self, kind: str, digest: str) -> str:
        return f"{kind}/{digest}"


CHUNK = 1024


def _sealed(size: int, seed: int) -> tuple[str, bytes, bytes]:
    data = os.urandom(size) if size else b""
    digest = hash_bytes(data)
    key = os.urandom(32)
    return digest, key, b"".join(seal_bytes(key, digest, data, chunk_size=CHUNK))


def _read_all(
    replicas: ReplicaSet, ahead: ReadAhead, files: list[tuple[str, bytes, int]]
) -> list[bytes]:
    """Each file read as a pull reads it: `sealed.unseal` over the read-ahead's source."""
    out = []
    for digest, key, size in files:
        source = ahead.take("blob", digest)
        assert source is not None
        chunks = sealed.unseal(
            source.read_range,
            key,
            digest,
            read_into=source.read_into,
            expected_size=size,
            workers=2,
            chunks_per_read=4,
            on_damage=source.damaged,
        )
        out.append(b"".join(bytes(c) for c in chunks))
    return out


def _plan(
    sizes: list[int],
) -> tuple[_Driver, ReplicaSet, list[tuple[str, bytes, int]], dict[str, bytes]]:
    objects: dict[str, bytes] = {}
    files = []
    plain = {}
    for seed, size in enumerate(sizes):
        digest, key, blob = _sealed(size, seed)
        objects[f"blob/{digest}"] = blob
        files.append((digest, key, size))
        plain[digest] = blob
    driver = _Driver(objects)
    replicas = ReplicaSet([Region("r0", _Store(driver))])  # type: ignore[arg-type]
    return driver, replicas, files, objects


def _ahead(
    replicas: ReplicaSet,
    files: list[tuple[str, bytes, int]],
    objects: dict[str, bytes],
    *,
    budget: int,
) -> ReadAhead:
    ahead = ReadAhead(replicas, ReadReport(), budget=budget, requests=4)
    for digest, _key, _size in files:
        ahead.add(
            "blob",
            digest,
            sealed_size=len(objects[f"blob/{digest}"]),
            chunk_size=CHUNK,
            chunks_per_read=4,
            what=digest[:12],
        )
    return ahead


def test_a_small_file_costs_one_request_and_a_large_one_one_per_range() -> None:
    sizes = [300, 0, 10 * CHUNK + 17, 4 * CHUNK]
    driver, replicas, files, objects = _plan(sizes)
    ahead = _ahead(replicas, files, objects, budget=1 << 20)
    try:
        assert [hash_bytes(d) for d in _read_all(replicas, ahead, files)] == [f[0] for f in files]
    finally:
        ahead.close()
    per_object = Counter(name for name, _offset, _length in driver.requests)
    # header + first range in one span, then one span per further range of 4 chunks
    expected = [1, 1, 3, 1]
    assert [per_object[f"blob/{f[0]}"] for f in files] == expected


def test_the_next_files_ranges_are_asked_for_before_the_current_file_is_done() -> None:
    driver, replicas, files, objects = _plan([12 * CHUNK, 3 * CHUNK])
    first, second = (f"blob/{f[0]}" for f in files)
    last_range = sealed.HEADER_SIZE + 2 * 4 * (CHUNK + sealed.TAG_SIZE)
    asked_early: list[bool] = []
    seen = threading.Event()
    real = driver._request

    def watch(name: str, offset: int, length: int) -> bytes:
        if name == second:
            seen.set()
        if name == first and offset >= last_range:
            # The first file's last range is held until the second file was asked for.
            asked_early.append(seen.wait(WAIT))
        return real(name, offset, length)

    driver._request = watch  # type: ignore[method-assign]
    ahead = _ahead(replicas, files, objects, budget=1 << 20)
    try:
        assert [hash_bytes(d) for d in _read_all(replicas, ahead, files)] == [f[0] for f in files]
    finally:
        ahead.close()
    assert asked_early and all(asked_early)


def test_the_read_ahead_holds_no_more_than_its_budget() -> None:
    driver, replicas, files, objects = _plan([20 * CHUNK, 20 * CHUNK, 20 * CHUNK])
    span = 4 * (CHUNK + 16)
    budget = 3 * span
    ahead = _ahead(replicas, files, objects, budget=budget)
    peak = 0
    real = driver._request

    def watch(name: str, offset: int, length: int) -> bytes:
        nonlocal peak
        peak = max(peak, ahead._held)
        return real(name, offset, length)

    driver._request = watch  # type: ignore[method-assign]
    try:
        _read_all(replicas, ahead, files)
    finally:
        ahead.close()
    assert 0 < peak <= budget + span + sealed.HEADER_SIZE + 1


def test_a_span_a_region_fails_comes_from_the_next_region_and_is_reported() -> None:
    _driver0, _replicas, files, objects = _plan([9 * CHUNK, 300])
    failing, healthy = _Driver(dict(objects)), _Driver(dict(objects))
    for digest, _key, _size in files:
        failing.fail_once.add((f"blob/{digest}", 0))  # each file's first span fails there
    replicas = ReplicaSet(
        [Region("r0", _Store(failing)), Region("r1", _Store(healthy))]  # type: ignore[arg-type]
    )
    report = ReadReport()
    ahead = ReadAhead(replicas, report, budget=1 << 20, requests=4)
    for digest, _key, _size in files:
        ahead.add(
            "blob",
            digest,
            sealed_size=len(objects[f"blob/{digest}"]),
            chunk_size=CHUNK,
            chunks_per_read=4,
            what=digest[:12],
        )
    try:
        assert [hash_bytes(d) for d in _read_all(replicas, ahead, files)] == [f[0] for f in files]
    finally:
        ahead.close()
    assert {region for (_kind, _digest, region) in report.bad} == {"r0"}


def test_a_pull_from_s3_reads_ahead_and_gets_every_file_back(
    s3_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path / "model", shards=3, shard_size=2_500_000, seed=23)
    with Registry.open(s3_home) as registry:
        version = registry.push("team/m", model).version
        seen = _counting(registry.store.driver, monkeypatch)  # type: ignore[arg-type]
        registry.pull("team/m", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    # Each file (under 8 chunks) in one request, read into a lent buffer; the manifest in one.
    blobs = len({entry.digest for entry in version.files})
    assert seen[("read_into", "blobs")] == blobs and seen[("get_range", "blobs")] == 0
    assert seen[("get_range", "manifests")] == 1
