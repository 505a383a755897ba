"""S3 storage driver (boto3): write-once objects in one bucket, on AWS or an S3-compatible service.

Keeps the `Driver` contract without trusting the server to: a write is `If-None-Match: *`
(PutObject or CompleteMultipartUpload), and on a versioned bucket, where some S3 implementations
(Ceph RGW) ignore that header, the version list is read back after the write and a second version
of a name loses to the first and is removed; where the server does refuse a second write (AWS),
a small object goes up with its lock at once. Large objects go up as parallel multipart uploads
(`registry.storage.s3_transfer`: every upload of a driver shares its part slots) that are
aborted on any failure, so no incomplete upload lingers. Every upload carries a CRC32 checksum.
Retries (botocore "standard" mode) cover throttling, 5xx and connection errors, not other 4xx.

Every request has a deadline (`registry.storage.deadline`): a call without a body must answer
within `request_seconds`, an upload gets that plus its size at the slowest acceptable rate, and a
download must keep its bytes coming at that rate. A hung endpoint therefore costs a bounded time
(`StoreTimeoutError`), whatever botocore's retries and socket timeouts would have done.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

from registry.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from registry.storage import deadline
from registry.storage.base import (
    Capabilities,
    Driver,
    ObjectInfo,
    S3Location,
    validate_object_name,
    validate_prefix,
)
from registry.storage.deadline import DeadlineSettings
from registry.storage.lock import (
    COMPLIANCE,
    GOVERNANCE,
    ObjectLock,
    Retention,
    check_change,
    check_delete,
)
from registry.storage.s3_client import Bounded, make_client
from registry.storage.s3_transfer import (
    CHECKSUM,
    PartPool,
    download,
    download_into,
    upload_parts,
)

T = TypeVar("T")

MIN_PART_SIZE = 8 * 1024 * 1024
MAX_PART_SIZE = 64 * 1024 * 1024
# boto3's own default: more parts of a file in flight at once, and less memory per part held.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
# A name found missing this recently (a push's survey of the regions, just before it writes the
# object) is not looked up again before its write: the write's own check (If-None-Match, or the
# version listing where the server ignores it) still decides who wins a race.
ABSENT_FOR = 2.0
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}
_PRECONDITION = {"412", "PreconditionFailed", "ConditionalRequestConflict", "409"}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Driver(Driver, ObjectLock):
    """Objects under `prefix` in one bucket."""

    capabilities = Capabilities(object_lock=True, legal_hold=True, versioned=True)
    latency_bound = True

    def __init__(
        self,
        location: S3Location,
        *,
        client: Any = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallelism: int = 4,
        lock_mode: str = COMPLIANCE,
        minimum_retention: timedelta | None = None,
        fail_fast: bool = False,
        server_write_once: bool | None = None,
        deadlines: DeadlineSettings | None = None,
    ) -> None:
        """`minimum_retention` (e.g. 30 days) locks every object written for at least that long
        in `lock_mode`; None writes objects unlocked unless a `lock` is passed per write.
        `server_write_once` says whether the server enforces `If-None-Match: *` here (then a
        write is not checked by listing versions); None probes it on the first write."""
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise InvalidInputError(
                f"S3 part size must be {MIN_PART_SIZE >> 20}..{MAX_PART_SIZE >> 20} MiB"
            )
        if location.prefix and not location.prefix.endswith("/"):
            location = dataclasses.replace(location, prefix=location.prefix + "/")
        if lock_mode not in (COMPLIANCE, GOVERNANCE):
            raise InvalidInputError(
                f"lock mode must be COMPLIANCE or GOVERNANCE, not {lock_mode!r}"
            )
        self.lock_mode = lock_mode
        self.minimum_retention = minimum_retention
        self.location = location
        self.part_size = part_size
        self.parallelism = max(1, parallelism)
        self.deadlines = deadlines or DeadlineSettings()
        self._client = Bounded(
            client
            or make_client(
                location, parallelism=self.parallelism, fail_fast=fail_fast, deadlines=deadlines
            ),
            self.deadlines,
            f"s3://{location.bucket}",
        )
        self._enforced: bool | None = server_write_once
        # Parts in flight across every upload of this driver, and their buffers.
        self._parts = PartPool(part_size, self.parallelism)
        self._probe_lock = threading.Lock()
        self._probing: Future[bool] | None = None
        # Names `stat` found missing, and when (see ABSENT_FOR).
        self._absent: dict[str, float] = {}
        self._absent_lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.location.prefix + validate_object_name(name)

    def _fail(self, action: str, name: str, error: Exception) -> StorageError:
        where = f"s3://{self.location.bucket}/{self.location.prefix}{name}"
        return StorageError(
            f"{action} {where} failed: {error}",
            hint="check credentials and permissions (docs/operations.md lists them), the "
            "bucket's Object Lock, the region and the endpoint",
        )

    def _call(self, action: str, name: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(Bucket=self.location.bucket, **kwargs)
        except ClientError as error:
            if _code(error) in _MISSING or _status(error) == 404:
                raise NotFoundError(f"object {name!r} not found") from None
            raise self._fail(action, name, error) from error
        except BotoCoreError as error:
            raise self._fail(action, name, error) from error

    def _version_pages(self, key: str) -> Iterator[dict[str, Any]]:
        """The pages of ListObjectVersions for `key` as a prefix, each request under its own
        deadline (a paginator's requests would escape it)."""
        markers: dict[str, str] = {}
        while True:
            page: dict[str, Any] = self._client.list_object_versions(
                Bucket=self.location.bucket, Prefix=key, **markers
            )
            yield page
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page["NextKeyMarker"]}
            if page.get("NextVersionIdMarker"):
                markers["VersionIdMarker"] = page["NextVersionIdMarker"]

    def _versions(self, key: str) -> builtins.list[dict[str, Any]]:
        """The live versions of exactly `key`, oldest first: those written after its latest
        delete marker (a delete without a version id, by a lifecycle rule or a console, hides
        the older ones; they must not make the name unwritable)."""
        found: builtins.list[dict[str, Any]] = []
        markers: builtins.list[datetime] = []
        for page in self._version_pages(key):
            # S3 lists the versions of a key newest first; times have one-second resolution,
            # so the listing order, not LastModified, tells which came first.
            found.extend(entry for entry in page.get("Versions", []) if entry["Key"] == key)
            markers.extend(
                entry["LastModified"]
                for entry in page.get("DeleteMarkers", [])
                if entry["Key"] == key
            )
        if markers:
            hidden_until = max(markers)
            found = [entry for entry in found if entry["LastModified"] > hidden_until]
        found.reverse()
        return found

    def _all_versions(self, name: str, key: str) -> builtins.list[dict[str, Any]]:
        """Every version and delete marker of `key` (for a complete delete)."""
        found: builtins.list[dict[str, Any]] = []
        try:
            for page in self._version_pages(key):
                for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if entry["Key"] == key:
                        found.append(entry)
        except (ClientError, BotoCoreError) as error:
            raise self._fail("listing versions of", name, error) from error
        return found

    # -- the contract --------------------------------------------------------------------------

    def put_if_absent(
        self,
        name: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        *,
        lock: Retention | None = None,
    ) -> bool:
        """See `Driver.put_if_absent`. With `lock` (or a configured minimum retention) the object
        is locked once this write has won the name: locking first would leave a losing version
        that can never be removed, and some servers ignore lock headers on multipart uploads
        anyway, so the retention is set afterwards and read back. Where the server refuses a
        second write of a name itself (AWS, not Ceph RGW on a versioned bucket) a losing write
        leaves no version, so an object of one part goes up at once with its lock (then read
        back); elsewhere the name is looked up first, so that no second version ever shows."""
        try:
            return self._put_once(name, chunks, lock=lock)
        finally:
            # The probe's object must not outlive the write that started it (a listing after
            # the write would see it).
            probing = self._probing
            if probing is not None:
                wait([probing])

    def _put_once(
        self,
        name: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        *,
        lock: Retention | None,
    ) -> bool:
        key = self._key(name)
        enforced = self._write_once_known()
        wanted = self._with_minimum(lock)
        try:
            upload = self._upload(
                key,
                chunks,
                write_once=True,
                present=lambda: self._present(name),
                look_first=not enforced,
                lock=wanted if enforced else None,
            )
            if upload is None:
                return False
            response, lock_sent = upload
        except ClientError as error:
            if _code(error) in ("PreconditionFailed", "412") or _status(error) == 412:
                return self._lost(name)
            if _status(error) == 409:
                # Another write of this name is in flight: whether it will succeed is unknown.
                raise ConflictError(
                    f"{name}: a concurrent write of this object is in flight",
                    hint="run the same command again",
                ) from None
            raise self._fail("upload of", name, error) from error
        except BotoCoreError as error:
            raise self._fail("upload of", name, error) from error
        try:
            won = self._won(key, response.get("VersionId"))
        except (ClientError, BotoCoreError) as error:
            raise self._fail("write-once check of", name, error) from error
        if not won:
            return self._lost(name)
        if wanted is not None:
            # Pinned to the version this call wrote: a racing writer's later version must not
            # receive the lock meant for the object.
            self._lock_written(name, wanted, response.get("VersionId"), sent=lock_sent)
        return True

    def _present(self, name: str) -> bool:
        """Whether the object exists, as a write asks before it uploads: not asked again when
        `stat` found it missing within ABSENT_FOR seconds (each such answer serves one write)."""
        with self._absent_lock:
            seen = self._absent.pop(self._key(name), None)
        if seen is not None and time.monotonic() - seen < ABSENT_FOR:
            return False
        return self.stat(name) is not None

    def _saw_absent(self, key: str) -> None:
        now = time.monotonic()
        with self._absent_lock:
            if len(self._absent) >= 1024:
                self._absent = {k: t for k, t in self._absent.items() if now - t < ABSENT_FOR}
            self._absent[key] = now

    def _lock_written(
        self, name: str, wanted: Retention, version: str | None, *, sent: bool
    ) -> None:
        """Lock the version this call just wrote (`sent`: the lock went with the write), and
        read the lock back. A new version has no lock of its own to be checked against first,
        and a store that refuses the change (a bucket default retention added behind the
        registry's back) fails the write like any refusal."""
        if not version or version == "null":
            self.extend_retention(name, wanted)  # an unversioned bucket: the checked path
            return
        if sent and _keeps(self.retention(name, version_id=version), wanted):
            return
        self._call(
            "locking of",
            name,
            "put_object_retention",
            Key=self._key(name),
            Retention={"Mode": wanted.mode, "RetainUntilDate": wanted.until},
            VersionId=version,
        )
        stored = self.retention(name, version_id=version)
        if not _keeps(stored, wanted):
            raise StorageError(
                f"{name}: the store did not keep the retention asked for "
                f"({wanted.mode} until {wanted.until:%Y-%m-%d %H:%M} UTC; it reports {stored})"
            )

    def replace(
        self,
        name: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        *,
        lock: Retention | None = None,
    ) -> None:
        """See `Driver.replace`: a new version becomes the object; the old one keeps its lock
        (and its legal hold) until it expires. The new version gets the lock a fresh write
        would, at least as long as the old one's."""
        key = self._key(name)
        wanted = self._with_minimum(lock)
        try:
            previous, _held = self._lock_state(name, key, None)
        except NotFoundError:
            previous = None
        if previous is not None and previous.active():
            wanted = previous if wanted is None else _stronger(wanted, previous)
        try:
            upload = self._upload(key, chunks, write_once=False)
        except (ClientError, BotoCoreError) as error:
            raise self._fail("upload of", name, error) from error
        assert upload is not None  # nothing asked whether the object exists
        response = upload[0]
        if wanted is not None:
            self.extend_retention(name, wanted, version_id=response.get("VersionId"))

    def _upload(
        self,
        key: str,
        chunks: Iterable[bytes | bytearray | memoryview],
        *,
        write_once: bool,
        present: Callable[[], bool] | None = None,
        look_first: bool = True,
        lock: Retention | None = None,
    ) -> tuple[dict[str, Any], bool] | None:
        """One PutObject when the object is smaller than a part, else a multipart upload (one
        full part and nothing more, rare, is a multipart upload of one part): the response,
        and whether `lock` went with it (only a PutObject carries it). With `present`, nothing
        is written (None) when it says the object exists: asked before a multipart upload, and
        before a PutObject when `look_first`."""
        with self._parts.uploading() as rank:
            parts = self._parts.cut(chunks)
            first = next(parts)
            if len(first) == self.part_size:
                if present is not None and present():
                    return None
                uploaded = upload_parts(
                    self._client,
                    self.location.bucket,
                    key,
                    first,
                    parts,
                    pool=self._parts,
                    write_once=write_once,
                    rank=rank,
                )
                return uploaded, False
        if present is not None and look_first and present():
            return None
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if write_once else {}
        if lock is not None:
            extra |= {"ObjectLockMode": lock.mode, "ObjectLockRetainUntilDate": lock.until}
        response: dict[str, Any] = self._client.put_object(
            Bucket=self.location.bucket,
            Key=key,
            Body=first,
            ChecksumAlgorithm=CHECKSUM,
            **extra,
        )
        return response, lock is not None

    def _lost(self, name: str) -> bool:
        """The name was already written (by another writer, or by this call's own first attempt
        whose response was lost and whose retry was refused): the object still gets the lock a
        fresh write would have had."""
        floor = self.minimum_lock()
        if floor is not None:
            self.hold_at_least(name, floor)
        return False

    def minimum_lock(self) -> Retention | None:
        if self.minimum_retention is None:
            return None
        return Retention(self.lock_mode, datetime.now(UTC) + self.minimum_retention)

    def _with_minimum(self, lock: Retention | None) -> Retention | None:
        floor = self.minimum_lock()
        if floor is None:
            return lock
        return floor if lock is None else _stronger(lock, floor)

    # -- object lock ---------------------------------------------------------------------------

    def retention(self, name: str, *, version_id: str | None = None) -> Retention | None:
        return self._lock_state(name, self._key(name), version_id)[0]

    def _lock_state(
        self, name: str, key: str, version_id: str | None
    ) -> tuple[Retention | None, bool]:
        """(retention, legal hold) of the object or one version, from its HEAD: every S3
        implementation reports the lock headers there (moto's GetObjectRetention fails with a 500
        on an object that has none)."""
        extra = {"VersionId": version_id} if version_id else {}
        try:
            head = self._client.head_object(Bucket=self.location.bucket, Key=key, **extra)
        except ClientError as error:
            if _code(error) in _MISSING or _status(error) == 404:
                raise NotFoundError(f"object {name!r} not found") from None
            raise self._fail("lock state of", name, error) from error
        except BotoCoreError as error:
            raise self._fail("lock state of", name, error) from error
        retention = None
        if head.get("ObjectLockMode") and head.get("ObjectLockRetainUntilDate"):
            retention = Retention(
                head["ObjectLockMode"], head["ObjectLockRetainUntilDate"].astimezone(UTC)
            )
        return retention, head.get("ObjectLockLegalHoldStatus") == "ON"

    def extend_retention(
        self, name: str, retention: Retention, *, version_id: str | None = None
    ) -> Retention:
        """Lock the object (the given version, else the newest live version: the object)."""
        version = version_id or self._object_version(name)
        pin = {"VersionId": version} if version and version != "null" else {}
        applied = check_change(
            name, self.retention(name, version_id=pin.get("VersionId")), retention
        )
        # BypassGovernanceRetention is never sent: extending never needs it, and shortening is
        # refused above whatever the mode.
        self._call(
            "locking of",
            name,
            "put_object_retention",
            Key=self._key(name),
            Retention={"Mode": applied.mode, "RetainUntilDate": applied.until},
            **pin,
        )
        stored = self.retention(name, version_id=pin.get("VersionId"))
        if (
            stored is None
            or stored.mode != applied.mode
            or stored.until < applied.until.replace(microsecond=0)
        ):
            raise StorageError(
                f"{name}: the store did not keep the retention asked for "
                f"({applied.mode} until {applied.until:%Y-%m-%d %H:%M} UTC; it reports {stored})"
            )
        return stored

    def legal_hold(self, name: str) -> bool:
        return self._lock_state(name, self._key(name), self._object_version(name))[1]

    def set_legal_hold(self, name: str, on: bool) -> None:
        """Place the hold on the object (its newest version), or release it from every live
        version that has it (a repair leaves the damaged version, hold included, behind)."""
        if on:
            self._set_version_hold(name, self._object_version(name), on=True)
            return
        try:
            versions = self._versions(self._key(name))
        except (ClientError, BotoCoreError) as error:
            raise self._fail("listing versions of", name, error) from error
        if not versions:
            raise NotFoundError(f"object {name!r} not found")
        for entry in versions:
            version = entry.get("VersionId")
            version = None if version in (None, "null") else str(version)
            try:
                if self._lock_state(name, self._key(name), version)[1]:
                    self._set_version_hold(name, version, on=False)
            except NotFoundError:
                continue  # that version went meanwhile; the others still get released

    def _set_version_hold(self, name: str, version: str | None, *, on: bool) -> None:
        pin = {"VersionId": version} if version else {}
        self._call(
            "legal hold of",
            name,
            "put_object_legal_hold",
            Key=self._key(name),
            LegalHold={"Status": "ON" if on else "OFF"},
            **pin,
        )
        if self._lock_state(name, self._key(name), version)[1] != on:
            raise StorageError(
                f"{name}: the store did not keep the legal hold {'ON' if on else 'OFF'}"
            )

    def _object_version(self, name: str) -> str | None:
        """The version that is the object: the newest live one, which is what a read returns
        (a repair's replacement; None on unversioned buckets)."""
        try:
            versions = self._versions(self._key(name))
        except (ClientError, BotoCoreError) as error:
            raise self._fail("listing versions of", name, error) from error
        if not versions:
            raise NotFoundError(f"object {name!r} not found")
        version = versions[-1].get("VersionId")
        return None if version in (None, "null") else str(version)

    def _won(self, key: str, version_id: str | None) -> bool:
        """On a versioned bucket, make sure this write was the first version of the name.

        Servers that ignore `If-None-Match: *` on versioned buckets let a racing writer add a
        second version; the oldest one is the object, a later one is removed again.
        """
        if not version_id or version_id == "null" or self._write_once_known():
            return True
        versions = self._versions(key)
        if not versions or versions[0]["VersionId"] == version_id:
            return True
        self._client.delete_object(Bucket=self.location.bucket, Key=key, VersionId=version_id)
        return False

    def _write_once_enforced(self) -> bool:
        """Whether this server refuses a second `If-None-Match: *` write of a name on this
        bucket (AWS does, Ceph RGW does not on versioned buckets). Probed once per driver with
        a small object written twice and then deleted; only a refusal with 412 counts, so a
        server that ignores the header keeps the listing check. The lock is not held while
        the probe's requests run: a write asking meanwhile (`_write_once_known`) must not wait
        for them."""
        with self._probe_lock:
            known = self._enforced
        if known is not None:
            return known
        found = self._probe_write_once()
        with self._probe_lock:
            if self._enforced is None:
                self._enforced = found
            return self._enforced

    def _write_once_known(self) -> bool:
        """`_write_once_enforced` without waiting for the probe: until it answered (it is
        started here, in the background), writes take the path that holds on any server (the
        name looked up first, the versions listed after), so no write waits for it."""
        with self._probe_lock:
            if self._enforced is not None:
                return self._enforced
            if self._probing is None:
                self._probing = deadline.submit(self._background_probe)
        return False

    def expect_writes(self) -> None:
        """Writes follow soon (a push, once its checks passed): the probe of the server's
        write-once behaviour starts now, in the background, so that the first writes find it
        answered and take the shorter path where the server enforces write-once."""
        self._write_once_known()

    def _background_probe(self) -> bool:
        try:
            return self._write_once_enforced()
        except BaseException:
            with self._probe_lock:
                self._probing = None  # a later write asks again
            raise

    def _probe_write_once(self) -> bool:
        """Write a name, then try both kinds of second write with `If-None-Match: *`: a plain
        PutObject and a CompleteMultipartUpload. Enforced only when both are refused with 412;
        every version the probe made is deleted again."""
        key = f"{self.location.prefix}registry/probe/{uuid.uuid4().hex}"
        bucket = self.location.bucket
        versions: builtins.list[str] = []

        def refused(error: ClientError) -> bool:
            return _code(error) in ("PreconditionFailed", "412") or _status(error) == 412

        try:
            first = self._client.put_object(Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*")
            versions.append(str(first.get("VersionId", "null")))
            try:
                again = self._client.put_object(
                    Bucket=bucket, Key=key, Body=b"probe", IfNoneMatch="*"
                )
                versions.append(str(again.get("VersionId", "null")))
                return False
            except ClientError as error:
                if not refused(error):
                    return False
            upload = self._client.create_multipart_upload(Bucket=bucket, Key=key)
            upload_id = upload["UploadId"]
            try:
                part = self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"probe"
                )
                done = self._client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
                    IfNoneMatch="*",
                )
                versions.append(str(done.get("VersionId", "null")))
                return False
            except ClientError as error:
                return refused(error)
            finally:
                with contextlib.suppress(ClientError, BotoCoreError):
                    self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            return False
        finally:
            for version in versions:
                with contextlib.suppress(ClientError, BotoCoreError):
                    self._client.delete_object(Bucket=bucket, Key=key, VersionId=version)

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise InvalidInputError("offset and length must not be negative")
        key = self._key(name)
        if length == 0:
            if self.stat(name) is None:
                raise NotFoundError(f"object {name!r} not found")
            return b""
        end = "" if length is None else str(offset + length - 1)
        return self._ranged(
            name,
            lambda: download(
                self._client.raw,
                self.location.bucket,
                key,
                f"bytes={offset}-{end}",
                deadlines=self.deadlines,
            ),
            past_end=b"",
        )

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        """See `Driver.read_into`: the body goes from the socket into `buffer` through one
        small piece buffer, without assembling the range in memory first."""
        if offset < 0:
            raise InvalidInputError("offset and length must not be negative")
        key = self._key(name)
        if not len(buffer):
            if self.stat(name) is None:
                raise NotFoundError(f"object {name!r} not found")
            return 0
        byte_range = f"bytes={offset}-{offset + len(buffer) - 1}"
        return self._ranged(
            name,
            lambda: download_into(
                self._client.raw,
                self.location.bucket,
                key,
                byte_range,
                buffer,
                deadlines=self.deadlines,
            ),
            past_end=0,
        )

    def _ranged(self, name: str, read: Callable[[], T], *, past_end: T) -> T:
        """A ranged read's answer, its failures told apart: missing, past the end (the
        contract's empty answer), damaged (a stored checksum that does not match), or an
        outage."""
        try:
            return read()
        except ClientError as error:
            if _code(error) in _MISSING or _status(error) == 404:
                raise NotFoundError(f"object {name!r} not found") from None
            if _code(error) == "InvalidRange" or _status(error) == 416:
                # Past the end (or an empty object): the contract says b"".
                if self.stat(name) is None:
                    raise NotFoundError(f"object {name!r} not found") from None
                return past_end
            raise self._fail("read of", name, error) from error
        except FlexibleChecksumError as error:
            # The stored bytes do not match the checksum stored with them: damage, not an
            # outage (a reader moves to another copy and records this one as bad).
            raise IntegrityError(f"object {name!r}: stored checksum mismatch ({error})") from None
        except BotoCoreError as error:
            raise self._fail("read of", name, error) from error

    def stat(self, name: str) -> ObjectInfo | None:
        key = self._key(name)
        try:
            head = self._client.head_object(Bucket=self.location.bucket, Key=key)
        except ClientError as error:
            if _code(error) in _MISSING or _status(error) == 404:
                self._saw_absent(key)
                return None
            raise self._fail("stat of", name, error) from error
        except BotoCoreError as error:
            raise self._fail("stat of", name, error) from error
        return ObjectInfo(name, int(head["ContentLength"]), _seconds(head["LastModified"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.location.prefix
        found: builtins.list[ObjectInfo] = []
        token: dict[str, str] = {}
        try:
            while True:
                page = self._client.list_objects_v2(
                    Bucket=self.location.bucket, Prefix=base + prefix, **token
                )
                for entry in page.get("Contents", []):
                    name = entry["Key"][len(base) :]
                    found.append(
                        ObjectInfo(name, int(entry["Size"]), _seconds(entry["LastModified"]))
                    )
                if not page.get("IsTruncated"):
                    break
                token = {"ContinuationToken": page["NextContinuationToken"]}
        except (ClientError, BotoCoreError) as error:
            raise self._fail("listing of", prefix or "/", error) from error
        # S3 orders keys by UTF-8 bytes; names are ASCII, but sort to keep the contract exact.
        yield from sorted(found, key=lambda info: info.name)

    def delete(self, name: str, *, bypass_governance: bool = False) -> None:
        """Delete every version of the object. A held or locked version is refused here, before
        the store is asked (`lock.check_delete`); `bypass_governance` lets a GOVERNANCE lock
        yield and is the only way BypassGovernanceRetention is ever sent."""
        key = self._key(name)
        if self.stat(name) is None:
            raise NotFoundError(f"object {name!r} not found")
        versions = self._all_versions(name, key)
        if not versions:
            self._call("delete of", name, "delete_object", Key=key)
            return
        # Delete markers carry no lock (and cannot be HEADed); real versions are checked.
        locks = [
            self._lock_state(name, key, v["VersionId"]) if "Size" in v else (None, False)
            for v in versions
        ]
        for retention, held in locks:
            check_delete(name, retention, held, bypass_governance=bypass_governance)
        # Deleting each version (not adding a delete marker) removes the object for good.
        for version, (retention, _held) in zip(versions, locks, strict=True):
            extra = {}
            if bypass_governance and retention is not None and retention.mode == GOVERNANCE:
                extra["BypassGovernanceRetention"] = True
            self._call(
                "delete of", name, "delete_object", Key=key, VersionId=version["VersionId"], **extra
            )

    def close(self) -> None:
        # Closing the connection pool also ends calls abandoned to their deadline sooner.
        self._client.raw.close()


def _keeps(stored: Retention | None, wanted: Retention) -> bool:
    """Whether a lock the store reports is the one asked for, or stronger (HTTP dates drop the
    microseconds)."""
    if stored is None:
        return False
    mode_ok = stored.mode == wanted.mode or stored.mode == COMPLIANCE
    return mode_ok and stored.until >= wanted.until.replace(microsecond=0)


def _stronger(first: Retention, second: Retention) -> Retention:
    mode = COMPLIANCE if COMPLIANCE in (first.mode, second.mode) else GOVERNANCE
    return Retention(mode, max(first.until, second.until))


def _seconds(moment: datetime) -> datetime:
    """HEAD reports whole seconds (an HTTP date), listings milliseconds: agree on seconds."""
    return moment.astimezone(UTC).replace(microsecond=0)
