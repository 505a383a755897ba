"""Regression tests from a review of the S3 driver, Object Lock and store factory (moto,
in-process): each docstring says what used to go wrong — a lock landing on a racing writer's
version, a retried write left unlocked, a weaker GOVERNANCE lock kept, delete markers, bucket
default retention, raw botocore errors, store URL holes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from registry.errors import ConfigurationError, InvalidInputError, RegistryError
from registry.storage.factory import open_driver, parse_store, prepare_bucket
from registry.storage.lock import COMPLIANCE, GOVERNANCE, Retention
from registry.storage.s3 import S3Driver, S3Location
from tests.conftest import LOCKED_BUCKET

BUCKET = LOCKED_BUCKET


@pytest.fixture
def client(moto_s3: Any) -> Any:
    return moto_s3


class _RacingClient:
    """Lets a racing writer's version land right after ours, as Ceph RGW allows on a versioned
    bucket (it ignores If-None-Match there)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.late: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def put_object(self, **kwargs: Any) -> Any:
        mine = self.real.put_object(**kwargs)
        other = {k: v for k, v in kwargs.items() if k != "IfNoneMatch"}
        other["Body"] = b"the other writer's bytes"
        self.late = self.real.put_object(**other)
        return mine


def test_lock_after_a_race_lands_on_the_losing_version(client: Any) -> None:
    """s3.py:196/241-250: put_if_absent decides it won by version id (`_won`), but then locks
    with put_object_retention/HEAD *without* VersionId, i.e. the latest version - the racing
    loser's. The loser's version is COMPLIANCE-locked (its own cleanup in `_won` then gets
    AccessDenied), our winning version stays unlocked, and the loser's bytes stay the object."""
    racing = _RacingClient(client)
    # The racing writer ignores If-None-Match, as Ceph RGW does on versioned buckets.
    driver = S3Driver(S3Location(BUCKET), client=racing, server_write_once=False)
    until = datetime.now(UTC) + timedelta(minutes=10)
    assert driver.put_if_absent("race/x", [b"ours"], lock=Retention(COMPLIANCE, until))
    assert racing.late is not None
    late_head = client.head_object(Bucket=BUCKET, Key="race/x", VersionId=racing.late["VersionId"])
    assert late_head.get("ObjectLockMode") is None, "the losing version got our lock"
    # The loser cleans up after itself, as its own put_if_absent would.
    assert driver._won("race/x", racing.late["VersionId"]) is False
    assert driver.get_range("race/x") == b"ours"


def test_retried_put_after_a_lost_response_is_neither_ours_nor_locked(client: Any) -> None:
    """s3.py:182-184: botocore's standard retry re-sends a PutObject whose first attempt was
    stored but whose response was lost; the retry gets 412 and put_if_absent returns False
    ("someone else wrote it"), so the minimum retention is never applied - and blobstore.put_file
    does not call _keep_locked on False either. The object stays unlocked for good."""
    attempts: list[int] = []

    def lose_first_response(**_: Any) -> int | None:
        attempts.append(1)
        return 0 if len(attempts) == 1 else None

    client.meta.events.register_first("needs-retry.s3.PutObject", lose_first_response)
    driver = S3Driver(S3Location(BUCKET), client=client, minimum_retention=timedelta(days=1))
    driver.put_if_absent("blob", [b"ours"])
    assert driver.get_range("blob") == b"ours"
    assert driver.retention("blob") is not None, "our own object was left without its lock"


def test_hold_at_least_keeps_a_weaker_governance_lock(client: Any) -> None:
    """lock.py:98-100: when the current lock is GOVERNANCE and reaches past the requested
    COMPLIANCE date, hold_at_least returns it unchanged: a reused object stays bypassable though
    the store now demands COMPLIANCE (docs: "COMPLIANCE never becomes GOVERNANCE"; the object a
    COMPLIANCE version depends on can be deleted with a governance bypass)."""
    old = S3Driver(
        S3Location(BUCKET),
        client=client,
        lock_mode=GOVERNANCE,
        minimum_retention=timedelta(days=60),
    )
    old.put_if_absent("reused", [b"x"])
    new = S3Driver(
        S3Location(BUCKET),
        client=client,
        lock_mode=COMPLIANCE,
        minimum_retention=timedelta(days=30),
    )
    floor = new.minimum_lock()
    assert floor is not None
    kept = new.hold_at_least("reused", floor)
    assert kept is not None and kept.mode == COMPLIANCE


def test_a_delete_marker_makes_the_name_unwritable_forever(client: Any) -> None:
    """s3.py:141-150/285-291: `_versions` skips delete markers, so after anyone deletes the key
    without a VersionId (lifecycle expiry, console, aws s3 rm - allowed even on locked objects) a
    re-push's new version loses to the hidden old one and deletes itself: put_if_absent returns
    False while stat() is None, and the object can never be restored by pushing again."""
    driver = S3Driver(S3Location(BUCKET), client=client)
    assert driver.put_if_absent("hidden", [b"content"])
    client.delete_object(Bucket=BUCKET, Key="hidden")
    assert driver.stat("hidden") is None
    driver.put_if_absent("hidden", [b"content"])
    assert driver.stat("hidden") is not None


def test_delete_lets_a_raw_client_error_escape(client: Any) -> None:
    """s3.py:407: delete() calls `_versions` outside any try, so a ListObjectVersions refusal
    (no s3:ListBucketVersions, throttling after retries) escapes as a raw botocore ClientError
    instead of a StorageError."""

    class Wrapped:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def list_object_versions(self, **_: Any) -> Any:
            raise ClientError(
                {
                    "Error": {"Code": "AccessDenied", "Message": "denied"},
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                },
                "ListObjectVersions",
            )

    assert S3Driver(S3Location(BUCKET), client=client).put_if_absent("d", [b"x"])
    with pytest.raises(RegistryError):
        S3Driver(S3Location(BUCKET), client=Wrapped()).delete("d")


@pytest.mark.parametrize(
    "url",
    [
        "s3://review-bucket?profile=no-such-profile-xyz",
        "s3://review-bucket?endpoint=not%20a%20url",
        "s3://review-bucket?region=eu_west_1",
    ],
)
def test_bad_client_settings_escape_as_raw_exceptions(url: str) -> None:
    """s3.py:73-85 (make_client) wraps nothing, and open_driver / prepare_bucket call it outside
    their try: a missing profile is a raw botocore ProfileNotFound, a bad endpoint a bare
    ValueError, a bad region InvalidRegionError - at `init` and at every open."""
    spec = parse_store(url)
    with pytest.raises(RegistryError):
        open_driver(spec)
    with pytest.raises(RegistryError):
        prepare_bucket(spec)


@pytest.mark.parametrize(
    "url",
    [
        "s3://user:secret@bucket-name",  # userinfo taken as part of the bucket name
        "s3://bucket-name:9000",  # a port taken as part of the bucket name
        "s3://b",  # not a valid bucket name (3..63 chars)
        "s3://bucket-name/a/../b",  # `..` segment in the prefix
        "s3://bucket-name?retention_dayz",  # an option without `=` is silently dropped
        "s3://bucket-name?retention_days=",  # empty value silently means the default 30
        "s3://bucket-name?lock=GOVERNANCE&lock=COMPLIANCE",  # last one silently wins
        "s3://bucket-name/pre#fix",  # the prefix is silently cut at '#'
    ],
)
def test_store_url_holes_are_accepted(url: str) -> None:
    """factory.py:62-88: parse_store validates neither the bucket name nor the prefix, uses
    parse_qsl without keep_blank_values/strict_parsing and dict() over duplicates, and ignores
    the fragment; each of these URLs loads into a StoreSpec that is not what was written."""
    with pytest.raises(InvalidInputError):
        parse_store(url)


def test_prepare_bucket_accepts_a_default_retention_that_breaks_every_push(client: Any) -> None:
    """factory.py:180-192: prepare_bucket reads the Object Lock configuration but ignores a
    DefaultRetention rule, which docs/operations.md says must not be set. With a GOVERNANCE 365 d
    default and the registry's COMPLIANCE 30 d minimum, the first write is stored and then refused
    (RetentionError: "cannot be shortened"), and a rerun's put_if_absent returns False and its
    hold_at_least accepts the GOVERNANCE lock: init succeeds, pushes fail, reruns end weaker."""
    client.put_object_lock_configuration(
        Bucket=BUCKET,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 365}},
        },
    )
    with pytest.raises(ConfigurationError):
        prepare_bucket(parse_store(f"s3://{BUCKET}?region=us-east-1"))


class _MultipartIgnoresCondition:
    """A server that refuses a second If-None-Match PutObject but ignores the header on
    CompleteMultipartUpload (some S3-compatible servers and older releases)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        kwargs.pop("IfNoneMatch", None)
        return self.real.complete_multipart_upload(**kwargs)


def test_write_once_probe_covers_multipart_completion(client: Any) -> None:
    """The probe once tested PutObject only; a server ignoring the condition on multipart
    completion passed it, and large objects then skipped the write-once check."""
    assert S3Driver(S3Location(BUCKET), client=client)._write_once_enforced() is True
    lax = S3Driver(S3Location(BUCKET), client=_MultipartIgnoresCondition(client))
    assert lax._write_once_enforced() is False
    listed = client.list_object_versions(Bucket=BUCKET, Prefix="registry/probe/")
    assert listed.get("Versions", []) == []  # the probe leaves nothing behind
