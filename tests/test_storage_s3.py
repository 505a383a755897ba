"""The S3 driver against moto (in-process): the driver conformance suite plus S3-only behaviour
(multipart, aborted uploads, the write-once read-back on versioned buckets)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from registry.storage.base import Driver
from registry.storage.s3 import MIN_PART_SIZE, S3Driver, S3Location
from registry.testing.driver_suite import DriverConformance
from tests.conftest import LOCKED_BUCKET

BUCKET = LOCKED_BUCKET


@pytest.fixture
def s3_client(moto_s3: object) -> object:
    return moto_s3


@pytest.fixture
def s3_driver(s3_client: object) -> S3Driver:
    # moto refuses a second If-None-Match write, but its check is not atomic across threads:
    # sixteen racing writers can both pass it. The listing check is what the conformance race
    # must exercise here (AWS enforces the condition atomically; Ceph fails the probe).
    return S3Driver(
        S3Location(BUCKET, region="us-east-1", prefix="reg"),
        client=s3_client,
        part_size=MIN_PART_SIZE,
        server_write_once=False,
    )


class TestS3Driver(DriverConformance):
    @pytest.fixture
    def driver(self, s3_driver: S3Driver) -> Driver:
        return s3_driver


def test_large_objects_use_multipart_and_round_trip(s3_driver: S3Driver, s3_client) -> None:
    data = bytes(range(256)) * (MIN_PART_SIZE * 2 // 256 + 1000)
    pieces = [data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000)]
    assert s3_driver.put_if_absent("big/object", pieces)
    assert s3_driver.get_range("big/object") == data
    assert (
        s3_driver.get_range("big/object", MIN_PART_SIZE - 5, 10)
        == data[MIN_PART_SIZE - 5 : MIN_PART_SIZE + 5]
    )
    head = s3_client.head_object(Bucket=BUCKET, Key="reg/big/object")
    assert "-" in head["ETag"]  # a multipart ETag: the object went up in parts
    assert s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_failure_mid_multipart_leaves_no_incomplete_upload(s3_driver: S3Driver, s3_client) -> None:
    class BrokenError(Exception):
        pass

    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield bytes(MIN_PART_SIZE)
        raise BrokenError("source failed")

    with pytest.raises(BrokenError):
        s3_driver.put_if_absent("big/broken", chunks())
    assert s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert s3_driver.stat("big/broken") is None
    assert s3_driver.put_if_absent("big/broken", [b"later"])


def test_second_version_written_behind_our_back_loses(s3_driver: S3Driver, s3_client) -> None:
    """A server that ignores If-None-Match on versioned buckets (Ceph RGW) lets a racing writer
    add a version; the driver reads the versions back and the first one stays the object."""
    assert s3_driver.put_if_absent("race/name", [b"first"])
    first = s3_client.list_object_versions(Bucket=BUCKET, Prefix="reg/race/name")["Versions"]
    late = s3_client.put_object(Bucket=BUCKET, Key="reg/race/name", Body=b"second")
    assert s3_driver._won("reg/race/name", late["VersionId"]) is False
    versions = s3_client.list_object_versions(Bucket=BUCKET, Prefix="reg/race/name")["Versions"]
    assert [v["VersionId"] for v in versions] == [first[0]["VersionId"]]
    assert s3_driver.get_range("race/name") == b"first"


def test_uploads_carry_a_checksum(s3_driver: S3Driver, s3_client) -> None:
    s3_driver.put_if_absent("sum/small", [b"abc"])
    head = s3_client.head_object(Bucket=BUCKET, Key="reg/sum/small", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32")


def test_objects_live_under_the_prefix(s3_driver: S3Driver, s3_client) -> None:
    s3_driver.put_if_absent("a/b", [b"x"])
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == ["reg/a/b"]


# -- the same suite against a real S3 implementation ------------------------------------------


@pytest.fixture
def rgw_driver(ceph_rgw) -> Iterator[S3Driver]:
    client = ceph_rgw.client()
    bucket = f"conformance-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    driver = S3Driver(S3Location(bucket, prefix="reg"), client=client, part_size=MIN_PART_SIZE)
    yield driver
    driver.close()


@pytest.mark.ceph
@pytest.mark.xdist_group("ceph")
class TestS3DriverOnCephRGW(DriverConformance):
    @pytest.fixture
    def driver(self, rgw_driver: S3Driver) -> Driver:
        return rgw_driver
