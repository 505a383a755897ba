"""`DriverConformance`: the pytest suite that every storage `Driver` must pass.

A driver's test module subclasses it and provides a `driver` fixture giving a fresh, empty driver:

    import pytest
    from registry.testing.driver_suite import DriverConformance

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        def driver(self, tmp_path):
            driver = MyDriver(tmp_path)
            yield driver
            driver.close()

The base class has no `Test` prefix, so pytest collects only the subclasses, each against its own
driver. The suite checks the per-method contracts written in `registry.storage.base.Driver`.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from registry.errors import InvalidInputError, NotFoundError
from registry.storage.base import Driver

MiB = 1024 * 1024

# Every way a name can break the grammar in base.py, one rule each.
INVALID_NAMES = [
    "",
    "../x",
    "a/../b",
    "/abs",
    "A/upper",
    "a/Upper",
    "a//b",
    "a/./b",
    "a/",
    ".hidden",
    "-dash",
    "a b",
    "a\\b",
    "caf\u00e9",
    "a\x00b",
    "a" * 600,
]
# "" and "a/" are valid listing prefixes (everything, and everything under a/).
INVALID_PREFIXES = [name for name in INVALID_NAMES if name not in ("", "a/")]

# Siblings chosen so that str order differs from a per-directory walk: "-" and "." sort before "/".
LISTING_NAMES = ["b/x", "ab", "a/bc", "a/b/d", "a/b/c", "a.d", "a-c"]
LISTING_CASES = [
    ("", ["a-c", "a.d", "a/b/c", "a/b/d", "a/bc", "ab", "b/x"]),
    ("a", ["a-c", "a.d", "a/b/c", "a/b/d", "a/bc", "ab"]),
    ("a/", ["a/b/c", "a/b/d", "a/bc"]),
    ("a/b", ["a/b/c", "a/b/d", "a/bc"]),
    ("a/b/", ["a/b/c", "a/b/d"]),
    ("a/b/c", ["a/b/c"]),
    ("a/bc/", []),
    ("b", ["b/x"]),
    ("c", []),
]

RANGE_DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable mod 256
RANGE_CASES = [
    (0, 10),  # start
    (100, 50),  # middle
    (1000, 24),  # exactly to the end
    (1000, 100),  # past the end: cut
    (1023, None),  # last byte
    (1024, 10),  # offset at the end
    (5000, 10),  # offset past the end
    (5000, None),
    (0, None),  # whole object
    (500, None),
    (10, 0),  # empty range
    (0, 0),
]


class ChunkError(Exception):
    """Raised by a test's chunk iterable midway through a write."""


def put(driver: Driver, name: str, data: bytes) -> bool:
    return driver.put_if_absent(name, [data])


def read(driver: Driver, name: str) -> bytes:
    return driver.get_range(name)


def names(driver: Driver, prefix: str = "") -> list[str]:
    return [info.name for info in driver.list(prefix)]


class DriverConformance:
    """Contract tests for one `Driver`; subclasses supply the `driver` fixture."""

    @pytest.fixture
    def driver(self) -> Driver:
        raise NotImplementedError(
            f"{type(self).__name__} must define a `driver` fixture returning a fresh, empty driver"
        )

    # -- round trips --------------------------------------------------------------------------

    def test_round_trip_empty_object(self, driver: Driver) -> None:
        assert driver.put_if_absent("e/none", []) is True
        assert driver.put_if_absent("e/blank", [b"", bytearray(), memoryview(b"")]) is True
        for name in ("e/none", "e/blank"):
            assert read(driver, name) == b""
            info = driver.stat(name)
            assert info is not None
            assert info.size == 0
        assert names(driver) == ["e/blank", "e/none"]

    def test_round_trip_one_byte(self, driver: Driver) -> None:
        assert put(driver, "one", b"\x00") is True
        assert read(driver, "one") == b"\x00"
        info = driver.stat("one")
        assert info is not None
        assert info.size == 1

    def test_round_trip_mixed_chunk_types(self, driver: Driver) -> None:
        chunks: list[bytes | bytearray | memoryview] = [
            b"head-",
            bytearray(b"bytearray-"),
            memoryview(b"xxmemoryview-xx")[2:-2],
            b"",
            memoryview(bytearray(b"mutable-view-")),
            bytes(range(256)),
        ]
        chunks += [bytes([i]) * (i + 1) for i in range(50)]
        expected = b"".join(bytes(chunk) for chunk in chunks)
        assert driver.put_if_absent("mixed/chunks", chunks) is True
        assert read(driver, "mixed/chunks") == expected
        info = driver.stat("mixed/chunks")
        assert info is not None
        assert info.size == len(expected)

    def test_accepts_one_shot_generator(self, driver: Driver) -> None:
        def chunks() -> Iterator[bytes]:
            for i in range(100):
                yield f"{i:03d},".encode()

        assert driver.put_if_absent("gen", chunks()) is True
        assert read(driver, "gen") == b"".join(f"{i:03d},".encode() for i in range(100))

    def test_stored_object_is_a_copy_of_the_caller_buffer(self, driver: Driver) -> None:
        buffer = bytearray(b"original")
        assert driver.put_if_absent("copy", [buffer, memoryview(buffer)]) is True
        buffer[:] = b"MUTATED!"
        assert read(driver, "copy") == b"originaloriginal"

    def test_large_object_in_many_chunks(self, driver: Driver) -> None:
        rng = random.Random(20)
        chunks = [rng.randbytes(MiB) for _ in range(20)]
        assert driver.put_if_absent("large/object", iter(chunks)) is True
        info = driver.stat("large/object")
        assert info is not None
        assert info.size == 20 * MiB
        data = read(driver, "large/object")
        assert data == b"".join(chunks)
        # A range straddling a chunk boundary, to catch reordered or dropped chunks.
        assert driver.get_range("large/object", 7 * MiB - 3, 6) == chunks[6][-3:] + chunks[7][:3]
        assert driver.get_range("large/object", 20 * MiB - 1) == chunks[19][-1:]

    # -- write once ---------------------------------------------------------------------------

    def test_put_if_absent_is_write_once(self, driver: Driver) -> None:
        assert put(driver, "once/name", b"first") is True
        assert put(driver, "once/name", b"second, longer content") is False
        assert read(driver, "once/name") == b"first"
        info = driver.stat("once/name")
        assert info is not None
        assert info.size == len(b"first")
        assert names(driver) == ["once/name"]

    def test_concurrent_puts_have_exactly_one_winner(self, driver: Driver) -> None:
        writers = 16
        barrier = threading.Barrier(writers)

        def content(i: int) -> list[bytes]:
            return [bytes([i]) * 4096 for _ in range(16)]

        def write(i: int) -> bool:
            barrier.wait(timeout=30)
            return driver.put_if_absent("race/name", iter(content(i)))

        with ThreadPoolExecutor(max_workers=writers) as pool:
            results = list(pool.map(write, range(writers)))
        winners = [i for i, won in enumerate(results) if won]
        assert len(winners) == 1, f"winners: {winners}"
        assert read(driver, "race/name") == b"".join(content(winners[0]))

    def test_failed_write_leaves_nothing(self, driver: Driver) -> None:
        def failing() -> Iterator[bytes]:
            yield b"x" * 100_000
            yield b"y" * 100_000
            raise ChunkError("source went away")

        with pytest.raises(ChunkError, match="source went away"):
            driver.put_if_absent("fail/name", failing())
        assert driver.stat("fail/name") is None
        assert names(driver) == []
        assert names(driver, "fail/") == []
        with pytest.raises(NotFoundError):
            driver.get_range("fail/name")
        with pytest.raises(NotFoundError):
            driver.delete("fail/name")
        # The name is still free: a later complete write succeeds with its own content.
        assert put(driver, "fail/name", b"complete") is True
        assert read(driver, "fail/name") == b"complete"

    def test_failure_before_first_chunk_leaves_nothing(self, driver: Driver) -> None:
        def failing() -> Iterator[bytes]:
            raise ChunkError("nothing to send")
            yield b""  # pragma: no cover - makes this a generator

        with pytest.raises(ChunkError):
            driver.put_if_absent("fail/early", failing())
        assert driver.stat("fail/early") is None
        assert names(driver) == []

    # -- replace (repair) ----------------------------------------------------------------------

    def test_replace_changes_the_object(self, driver: Driver) -> None:
        put(driver, "fix/name", b"damaged content")
        driver.replace("fix/name", iter([b"good ", b"content, longer"]))
        assert read(driver, "fix/name") == b"good content, longer"
        info = driver.stat("fix/name")
        assert info is not None
        assert info.size == len(b"good content, longer")
        assert names(driver) == ["fix/name"]
        # Replaced, the name is still write-once for put_if_absent.
        assert put(driver, "fix/name", b"other") is False
        assert read(driver, "fix/name") == b"good content, longer"

    def test_replace_creates_a_missing_object(self, driver: Driver) -> None:
        driver.replace("fix/new", iter([b"restored"]))
        assert read(driver, "fix/new") == b"restored"

    def test_failed_replace_keeps_the_old_object(self, driver: Driver) -> None:
        put(driver, "fix/keep", b"old content")

        def failing() -> Iterator[bytes]:
            yield b"x" * 100_000
            raise ChunkError("source went away")

        with pytest.raises(ChunkError):
            driver.replace("fix/keep", failing())
        assert read(driver, "fix/keep") == b"old content"
        assert names(driver) == ["fix/keep"]

    def test_replace_refuses_invalid_names_before_reading(self, driver: Driver) -> None:
        consumed: list[bool] = []

        def chunks() -> Iterable[bytes]:
            consumed.append(True)
            yield b"data"

        with pytest.raises(InvalidInputError):
            driver.replace("../escape", chunks())
        assert consumed == []

    # -- ranged reads -------------------------------------------------------------------------

    @pytest.mark.parametrize(("offset", "length"), RANGE_CASES)
    def test_get_range(self, driver: Driver, offset: int, length: int | None) -> None:
        put(driver, "range/data", RANGE_DATA)
        end = None if length is None else offset + length
        assert driver.get_range("range/data", offset, length) == RANGE_DATA[offset:end]

    @pytest.mark.parametrize(("offset", "length"), [c for c in RANGE_CASES if c[1] is not None])
    def test_read_into_matches_get_range(self, driver: Driver, offset: int, length: int) -> None:
        put(driver, "range/data", RANGE_DATA)
        buffer = bytearray(b"\xaa" * (length + 3))
        view = memoryview(buffer)[:length]
        got = driver.read_into("range/data", offset, view)
        expected = RANGE_DATA[offset : offset + length]
        assert got == len(expected)
        assert bytes(buffer[:got]) == expected
        # Nothing past what was read, and nothing past the view, was touched.
        assert buffer[got:] == b"\xaa" * (len(buffer) - got)

    def test_read_into_missing_object(self, driver: Driver) -> None:
        with pytest.raises(NotFoundError):
            driver.read_into("missing/object", 0, memoryview(bytearray(4)))

    def test_get_range_defaults_to_whole_object(self, driver: Driver) -> None:
        put(driver, "range/data", RANGE_DATA)
        assert driver.get_range("range/data") == RANGE_DATA
        assert driver.get_range("range/data", 1000) == RANGE_DATA[1000:]

    @pytest.mark.parametrize(("offset", "length"), [(-1, None), (-1, 10), (0, -1), (5, -5)])
    def test_get_range_rejects_negative(
        self, driver: Driver, offset: int, length: int | None
    ) -> None:
        put(driver, "range/data", RANGE_DATA)
        with pytest.raises(InvalidInputError):
            driver.get_range("range/data", offset, length)

    def test_get_range_of_missing_object(self, driver: Driver) -> None:
        with pytest.raises(NotFoundError):
            driver.get_range("missing/object")
        put(driver, "present", b"data")
        with pytest.raises(NotFoundError):
            driver.get_range("present/child")
        with pytest.raises(NotFoundError):
            driver.get_range("presen")

    # -- stat ---------------------------------------------------------------------------------

    def test_stat(self, driver: Driver) -> None:
        assert driver.stat("stat/missing") is None
        before = datetime.now(UTC)
        put(driver, "stat/present", b"12345")
        info = driver.stat("stat/present")
        assert info is not None
        assert info.name == "stat/present"
        assert info.size == 5
        assert info.modified.utcoffset() == timedelta(0), "modified must be tz-aware UTC"
        # Generous bounds: remote stores have their own clocks and coarse timestamps.
        assert (
            before - timedelta(hours=1) <= info.modified <= datetime.now(UTC) + timedelta(hours=1)
        )
        assert driver.stat("stat/presen") is None
        assert driver.stat("stat/present/child") is None
        # Not asserted: stat("stat"), a name that is a "directory" of others. A filesystem
        # driver cannot hold both "a" and "a/b" and may report such names as a StorageError.

    # -- listing ------------------------------------------------------------------------------

    @pytest.mark.parametrize(("prefix", "expected"), LISTING_CASES)
    def test_list_prefix(self, driver: Driver, prefix: str, expected: list[str]) -> None:
        for i, name in enumerate(LISTING_NAMES):
            put(driver, name, b"x" * i)
        infos = list(driver.list(prefix))
        assert [info.name for info in infos] == expected
        sizes = {name: i for i, name in enumerate(LISTING_NAMES)}
        assert all(info.size == sizes[info.name] for info in infos)

    def test_list_of_empty_driver(self, driver: Driver) -> None:
        assert names(driver) == []
        assert names(driver, "a/") == []

    def test_list_info_matches_stat(self, driver: Driver) -> None:
        put(driver, "l/one", b"1")
        put(driver, "l/three", b"333")
        for info in driver.list("l/"):
            assert driver.stat(info.name) == info

    def test_list_tolerates_deletes_while_iterating(self, driver: Driver) -> None:
        for name in ("d/a/1", "d/a/2", "d/b/1", "d/c"):
            put(driver, name, b"x")
        seen = []
        for info in driver.list("d/"):
            seen.append(info.name)
            driver.delete(info.name)
        assert seen == ["d/a/1", "d/a/2", "d/b/1", "d/c"]
        assert names(driver) == []

    # -- delete -------------------------------------------------------------------------------

    def test_delete(self, driver: Driver) -> None:
        put(driver, "del/a/target", b"target")
        put(driver, "del/a/sibling", b"sibling")
        put(driver, "del/b", b"other")
        driver.delete("del/a/target")
        assert driver.stat("del/a/target") is None
        with pytest.raises(NotFoundError):
            driver.get_range("del/a/target")
        assert names(driver) == ["del/a/sibling", "del/b"]
        assert read(driver, "del/a/sibling") == b"sibling"
        driver.delete("del/a/sibling")
        assert names(driver) == ["del/b"]
        assert names(driver, "del/a") == []

    def test_delete_missing_raises(self, driver: Driver) -> None:
        with pytest.raises(NotFoundError):
            driver.delete("never/stored")
        put(driver, "twice", b"x")
        driver.delete("twice")
        with pytest.raises(NotFoundError):
            driver.delete("twice")

    def test_name_is_reusable_after_delete(self, driver: Driver) -> None:
        put(driver, "reuse/name", b"old")
        driver.delete("reuse/name")
        assert put(driver, "reuse/name", b"new content") is True
        assert read(driver, "reuse/name") == b"new content"

    # -- name validation ----------------------------------------------------------------------

    @pytest.mark.parametrize("name", INVALID_NAMES)
    def test_invalid_names_are_refused_before_any_io(self, driver: Driver, name: str) -> None:
        consumed: list[bool] = []

        def chunks() -> Iterable[bytes]:
            consumed.append(True)
            yield b"data"

        with pytest.raises(InvalidInputError):
            driver.put_if_absent(name, chunks())
        assert consumed == [], "chunks were read before the name was validated"
        with pytest.raises(InvalidInputError):
            driver.get_range(name)
        with pytest.raises(InvalidInputError):
            driver.stat(name)
        with pytest.raises(InvalidInputError):
            driver.delete(name)
        assert names(driver) == []

    @pytest.mark.parametrize("prefix", INVALID_PREFIXES)
    def test_invalid_prefixes_are_refused_when_list_is_called(
        self, driver: Driver, prefix: str
    ) -> None:
        with pytest.raises(InvalidInputError):
            driver.list(prefix)  # not iterated: the check must not wait for the first next()

    # -- against a model ----------------------------------------------------------------------

    def test_matches_a_dict_model(self, driver: Driver) -> None:
        class BoundMachine(_ModelMachine):
            target = driver

        run_state_machine_as_test(
            BoundMachine,
            settings=settings(max_examples=15, stateful_step_count=15, deadline=None),
        )


# No name here is a directory of another ("o" and "o/x" cannot coexist on a filesystem driver).
_MODEL_NAMES = st.sampled_from(["m/a", "m/b", "m/ab", "n/x/y", "n-x", "o"])
_MODEL_PREFIXES = st.sampled_from(["", "m", "m/", "m/a", "n", "n/", "n/x/y", "o", "z"])


class _ModelMachine(RuleBasedStateMachine):
    """Random sequences of driver calls, checked against a plain dict."""

    target: ClassVar[
        Driver
    ]  # set by a subclass: hypothesis instantiates machines without arguments

    def __init__(self) -> None:
        super().__init__()
        self.driver = self.target
        self.model: dict[str, bytes] = {}

    @initialize()
    def start_empty(self) -> None:
        # The fixture's driver is shared by every example: empty it so each starts like the model.
        for info in list(self.driver.list()):
            self.driver.delete(info.name)

    @rule(name=_MODEL_NAMES, data=st.binary(max_size=64), cuts=st.lists(st.integers(0, 64)))
    def put(self, name: str, data: bytes, cuts: list[int]) -> None:
        bounds = [0, *sorted(cut for cut in cuts if cut <= len(data)), len(data)]
        chunks = [data[start:end] for start, end in itertools.pairwise(bounds)]
        assert self.driver.put_if_absent(name, chunks) is (name not in self.model)
        self.model.setdefault(name, data)

    @rule(
        name=_MODEL_NAMES,
        offset=st.integers(0, 80),
        length=st.none() | st.integers(0, 80),
    )
    def get_range(self, name: str, offset: int, length: int | None) -> None:
        if name not in self.model:
            with pytest.raises(NotFoundError):
                self.driver.get_range(name, offset, length)
            return
        end = None if length is None else offset + length
        assert self.driver.get_range(name, offset, length) == self.model[name][offset:end]

    @rule(name=_MODEL_NAMES)
    def delete(self, name: str) -> None:
        if name not in self.model:
            with pytest.raises(NotFoundError):
                self.driver.delete(name)
            return
        self.driver.delete(name)
        del self.model[name]

    @rule(prefix=_MODEL_PREFIXES)
    def list_prefix(self, prefix: str) -> None:
        expected = sorted((n, len(d)) for n, d in self.model.items() if n.startswith(prefix))
        assert [(i.name, i.size) for i in self.driver.list(prefix)] == expected

    @invariant()
    def stat_matches(self) -> None:
        for name in ("m/a", "n/x/y", "o"):
            info = self.driver.stat(name)
            if name in self.model:
                assert info is not None
                assert info.size == len(self.model[name])
            else:
                assert info is None
