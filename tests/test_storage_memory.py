"""`MemoryDriver` against the driver conformance suite."""

from __future__ import annotations

import pytest

from registry.storage import MemoryDriver
from registry.testing.driver_suite import DriverConformance


class TestMemoryDriver(DriverConformance):
    @pytest.fixture
    def driver(self) -> MemoryDriver:
        return MemoryDriver()


def test_instances_do_not_share_objects() -> None:
    first, second = MemoryDriver(), MemoryDriver()
    assert first.put_if_absent("x", [b"1"]) is True
    assert second.stat("x") is None
