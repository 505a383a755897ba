"""Object Lock through the S3 driver, on moto (which does not enforce these rules) and on Ceph RGW
(which does): the registry itself refuses to shorten, downgrade, bypass or delete."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from registry.errors import RetentionError
from registry.storage.lock import COMPLIANCE, GOVERNANCE, Retention
from registry.storage.s3 import MIN_PART_SIZE, S3Driver, S3Location


@pytest.fixture(
    params=["moto", pytest.param("ceph", marks=[pytest.mark.ceph, pytest.mark.xdist_group("ceph")])]
)
def locked(request: pytest.FixtureRequest) -> Iterator[tuple[S3Driver, Any, list[dict[str, Any]]]]:
    """(driver, raw client, every request sent) on a fresh Object Lock bucket."""
    sent: list[dict[str, Any]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent.append({"operation": model.name, **params})

    def driver_for(client: Any) -> S3Driver:
        bucket = f"lock-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        client.meta.events.register("provide-client-params.s3.*", record)
        return S3Driver(S3Location(bucket), client=client, part_size=MIN_PART_SIZE)

    if request.param == "moto":
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            yield driver_for(client), client, sent
        return
    client = request.getfixturevalue("ceph_rgw").client()
    yield driver_for(client), client, sent


def soon(minutes: int) -> datetime:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).replace(microsecond=0)


def test_write_with_lock_then_extend_never_shorten(locked) -> None:
    driver, _client, _sent = locked
    until = soon(10)
    assert driver.put_if_absent("blobs/a", [b"data"], lock=Retention(COMPLIANCE, until))
    assert driver.retention("blobs/a") == Retention(COMPLIANCE, until)
    extended = driver.extend_retention("blobs/a", Retention(COMPLIANCE, soon(20)))
    assert extended.until >= soon(20) - timedelta(seconds=2)
    with pytest.raises(RetentionError, match="cannot be shortened"):
        driver.extend_retention("blobs/a", Retention(COMPLIANCE, soon(15)))
    with pytest.raises(RetentionError, match="cannot become GOVERNANCE"):
        driver.extend_retention("blobs/a", Retention(GOVERNANCE, soon(30)))
    assert driver.retention("blobs/a").until >= soon(20) - timedelta(seconds=2)


def test_moto_alone_would_shorten_what_the_registry_refuses() -> None:
    """Shows the refusals above are the registry's own: moto applies a shorter retention."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="plain", ObjectLockEnabledForBucket=True)
        driver = S3Driver(S3Location("plain"), client=client)
        _shorten_behind_the_registry(driver, client)


def _shorten_behind_the_registry(driver: S3Driver, client: Any) -> None:
    driver.put_if_absent("blobs/b", [b"data"], lock=Retention(COMPLIANCE, soon(10)))
    client.put_object_retention(
        Bucket=driver.location.bucket,
        Key="blobs/b",
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": soon(1)},
    )
    assert driver.retention("blobs/b").until <= soon(1)


def test_locked_objects_are_not_deleted(locked) -> None:
    driver, _client, sent = locked
    driver.put_if_absent("blobs/c", [b"c"], lock=Retention(COMPLIANCE, soon(10)))
    with pytest.raises(RetentionError, match="COMPLIANCE"):
        driver.delete("blobs/c")
    with pytest.raises(RetentionError, match="COMPLIANCE"):
        driver.delete("blobs/c", bypass_governance=True)
    assert driver.get_range("blobs/c") == b"c"
    # (The only deletes: of the driver's own write-once probe object, never locked.)
    assert not any(
        r["operation"] == "DeleteObject" and "registry/probe/" not in r["Key"] for r in sent
    )


def test_governance_yields_only_to_an_explicit_bypass(locked) -> None:
    driver, _client, sent = locked
    driver.put_if_absent("blobs/g", [b"g"], lock=Retention(GOVERNANCE, soon(10)))
    with pytest.raises(RetentionError, match="GOVERNANCE"):
        driver.delete("blobs/g")
    assert driver.stat("blobs/g") is not None
    assert not any("BypassGovernanceRetention" in r for r in sent)
    driver.delete("blobs/g", bypass_governance=True)
    assert driver.stat("blobs/g") is None
    bypasses = [r for r in sent if r.get("BypassGovernanceRetention")]
    assert [r["operation"] for r in bypasses] == ["DeleteObject"]


def test_legal_hold_blocks_delete_until_released(locked) -> None:
    driver, _client, _sent = locked
    driver.put_if_absent("blobs/h", [b"h"])
    assert driver.legal_hold("blobs/h") is False
    driver.set_legal_hold("blobs/h", True)
    assert driver.legal_hold("blobs/h") is True
    with pytest.raises(RetentionError, match="legal hold"):
        driver.delete("blobs/h")
    driver.set_legal_hold("blobs/h", False)
    driver.delete("blobs/h")
    assert driver.stat("blobs/h") is None


def test_multipart_objects_are_locked_too(locked) -> None:
    """Ceph RGW ignores lock headers on multipart uploads: the driver locks after completing."""
    driver, _client, _sent = locked
    data = bytes(MIN_PART_SIZE + 1000)
    until = soon(10)
    assert driver.put_if_absent("blobs/big", [data], lock=Retention(COMPLIANCE, until))
    assert driver.retention("blobs/big") == Retention(COMPLIANCE, until)


def test_minimum_retention_applies_to_every_write(locked) -> None:
    driver, _client, _sent = locked
    driver.minimum_retention = timedelta(minutes=30)
    driver.put_if_absent("slots/x", [b"slot"])
    retention = driver.retention("slots/x")
    assert retention is not None and retention.mode == COMPLIANCE
    assert retention.until >= soon(29)
    # A shorter requested lock is raised to the minimum, never below it.
    driver.put_if_absent("slots/y", [b"slot"], lock=Retention(GOVERNANCE, soon(5)))
    retention = driver.retention("slots/y")
    assert retention.mode == COMPLIANCE and retention.until >= soon(29)


def test_the_write_once_probe_tells_moto_from_ceph_and_leaves_nothing(
    locked, request: pytest.FixtureRequest
) -> None:
    driver, client, _sent = locked
    # moto refuses a second If-None-Match write on a versioned bucket (as AWS does): no listing
    # is needed after a write; Ceph RGW does not, so the driver keeps checking by listing.
    expected = "ceph" not in request.node.callspec.id
    assert driver._write_once_enforced() is expected
    listed = client.list_object_versions(Bucket=driver.location.bucket)
    assert listed.get("Versions", []) == [] and listed.get("DeleteMarkers", []) == []
