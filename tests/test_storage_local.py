"""`LocalDriver`: the driver conformance suite, plus what only a filesystem can get wrong."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from registry.errors import NotFoundError, StorageError
from registry.storage import LocalDriver
from registry.testing.driver_suite import DriverConformance


class TestLocalDriver(DriverConformance):
    @pytest.fixture
    def driver(self, tmp_path: Path) -> Iterator[LocalDriver]:
        driver = LocalDriver(tmp_path / "store")
        yield driver
        driver.close()


@pytest.fixture
def driver(tmp_path: Path) -> LocalDriver:
    return LocalDriver(tmp_path / "store")


def temp_files(driver: LocalDriver) -> list[str]:
    return sorted(os.listdir(driver.tmp_dir)) if driver.tmp_dir.exists() else []


def test_layout_and_root_mode(driver: LocalDriver) -> None:
    assert not driver.root.exists(), "reads and construction must not create the root"
    assert driver.stat("a/b") is None
    assert list(driver.list()) == []
    assert not driver.root.exists()
    driver.put_if_absent("a/b", [b"data"])
    assert (driver.root / "objects" / "a" / "b").read_bytes() == b"data"
    assert stat.S_IMODE(driver.root.stat().st_mode) & 0o077 == 0


def test_stored_files_are_read_only(driver: LocalDriver) -> None:
    driver.put_if_absent("ro/object", [b"immutable"])
    mode = stat.S_IMODE((driver.objects_dir / "ro" / "object").stat().st_mode)
    # Tests run as root, which ignores permission bits, so assert on the bits themselves.
    assert mode == 0o444


def test_no_temp_file_after_success_or_failure(driver: LocalDriver) -> None:
    driver.put_if_absent("t/ok", [b"a", b"b"])
    assert temp_files(driver) == []

    def failing() -> Iterator[bytes]:
        yield b"partial"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        driver.put_if_absent("t/failed", failing())
    assert temp_files(driver) == []
    assert not (driver.objects_dir / "t" / "failed").exists()

    # Already present: returns False without leaving a temp file either.
    assert driver.put_if_absent("t/ok", [b"other"]) is False
    assert temp_files(driver) == []


def test_link_race_keeps_first_content(
    driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another writer publishes between our existence check and our link: our link sees EEXIST.
    real_link = os.link

    def link_after_rival(src: str | Path, dst: str | Path) -> None:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_bytes(b"rival wins")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_rival)
    assert driver.put_if_absent("race/x", [b"loser"]) is False
    monkeypatch.undo()
    assert driver.get_range("race/x") == b"rival wins"
    assert temp_files(driver) == []


def test_put_survives_parent_removed_by_concurrent_delete(
    driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link
    calls: list[int] = []

    def link_after_rmdir(src: str | Path, dst: str | Path) -> None:
        calls.append(1)
        if len(calls) == 1:
            Path(dst).parent.rmdir()  # what delete's empty-parent cleanup does
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_rmdir)
    assert driver.put_if_absent("p/q/r", [b"data"]) is True
    monkeypatch.undo()
    assert len(calls) == 2
    assert driver.get_range("p/q/r") == b"data"


def test_delete_removes_empty_parents_only(driver: LocalDriver) -> None:
    driver.put_if_absent("x/y/z", [b"1"])
    driver.put_if_absent("x/w", [b"2"])
    driver.delete("x/y/z")
    assert not (driver.objects_dir / "x" / "y").exists()
    assert (driver.objects_dir / "x").is_dir()
    driver.delete("x/w")
    assert not (driver.objects_dir / "x").exists()
    assert driver.objects_dir.is_dir()


def test_stale_temp_cleanup(driver: LocalDriver) -> None:
    driver.put_if_absent("warmup", [b""])  # creates the layout
    old = driver.tmp_dir / "0123abcd.tmp"
    fresh = driver.tmp_dir / "4567ef01.tmp"
    unrelated = driver.tmp_dir / "notes.txt"
    for path in (old, fresh, unrelated):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(unrelated, (two_hours_ago, two_hours_ago))

    assert driver.stale_temp_files(timedelta(hours=1)) == [old]
    assert driver.remove_stale_temp_files() == 1
    assert not old.exists()
    assert fresh.exists()
    assert unrelated.exists()
    assert driver.remove_stale_temp_files() == 0
    assert driver.remove_stale_temp_files(timedelta(0)) == 1
    assert not fresh.exists()


def test_stale_temp_cleanup_without_store(driver: LocalDriver) -> None:
    assert driver.stale_temp_files(timedelta(0)) == []
    assert driver.remove_stale_temp_files() == 0


def test_object_replaced_by_directory_is_a_storage_error(driver: LocalDriver) -> None:
    driver.put_if_absent("obj/name", [b"data"])
    path = driver.objects_dir / "obj" / "name"
    path.unlink()
    path.mkdir()
    for call in (
        lambda: driver.stat("obj/name"),
        lambda: driver.get_range("obj/name"),
        lambda: driver.delete("obj/name"),
        lambda: driver.put_if_absent("obj/name", [b"x"]),
    ):
        with pytest.raises(StorageError, match=r"'obj/name'.* is a directory"):
            call()
    assert path.is_dir()


def test_name_that_is_a_directory_of_objects(driver: LocalDriver) -> None:
    driver.put_if_absent("dir/child", [b"x"])
    with pytest.raises(StorageError, match=r"'dir'.* is a directory"):
        driver.put_if_absent("dir", [b"y"])
    driver.put_if_absent("file", [b"x"])
    with pytest.raises(StorageError):
        driver.put_if_absent("file/child", [b"y"])
    assert driver.stat("file/child") is None
    assert [info.name for info in driver.list()] == ["dir/child", "file"]
    assert os.listdir(driver.tmp_dir) == []


def test_read_io_error_is_a_storage_error(
    driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver.put_if_absent("io/read", [b"data"])

    def failing_pread(fd: int, n: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pread", failing_pread)
    with pytest.raises(StorageError, match=r"io/read.*Input/output error") as info:
        driver.get_range("io/read")
    assert str(driver.objects_dir / "io" / "read") in str(info.value)


def test_write_io_error_is_a_storage_error_and_leaves_nothing(
    driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    driver.put_if_absent("warmup", [b""])
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match=r"io/write.*No space left"):
        driver.put_if_absent("io/write", [b"data"])
    monkeypatch.undo()
    assert driver.stat("io/write") is None
    assert temp_files(driver) == []


def test_caller_oserror_propagates_unchanged(driver: LocalDriver) -> None:
    def failing() -> Iterator[bytes]:
        yield b"partial"
        raise FileNotFoundError(errno.ENOENT, "source file vanished")

    with pytest.raises(FileNotFoundError, match="source file vanished") as info:
        driver.put_if_absent("src/gone", failing())
    assert not isinstance(info.value, StorageError)
    with pytest.raises(NotFoundError):
        driver.get_range("src/gone")


def test_stray_files_are_not_listed(driver: LocalDriver) -> None:
    driver.put_if_absent("ok", [b"1"])
    (driver.objects_dir / "README.TXT").write_bytes(b"not an object")
    os.symlink(driver.objects_dir / "ok", driver.objects_dir / "link")
    assert [info.name for info in driver.list()] == ["ok"]
