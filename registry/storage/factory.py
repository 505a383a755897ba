"""Which store a registry uses: parse a store URL or config section, open its driver, and prepare
an S3 bucket (create it with versioning and Object Lock, or refuse one without).

    /path/to/store                                   local directory
    s3://BUCKET[/PREFIX]?region=R&endpoint=URL&profile=P&lock=COMPLIANCE|GOVERNANCE&retention_days=30
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from registry.errors import ConfigurationError, InvalidInputError, StorageError
from registry.storage.base import Driver, S3Location
from registry.storage.deadline import DeadlineSettings
from registry.storage.local import LocalDriver
from registry.storage.lock import COMPLIANCE, MODES

DEFAULT_RETENTION_DAYS = 30
_S3_OPTIONS = {"region", "endpoint", "profile", "lock", "retention_days"}
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_LOCAL_KEYS = {"driver", "path", "chunk_size"}
_S3_KEYS = {
    "driver",
    "bucket",
    "prefix",
    "region",
    "endpoint_url",
    "profile",
    "lock_mode",
    "minimum_retention_days",
    "chunk_size",
}


@dataclass(frozen=True)
class StoreSpec:
    """A local directory (`path`) or an S3 bucket (`s3`) with its Object Lock settings."""

    path: Path | None = None
    s3: S3Location | None = None
    lock_mode: str = COMPLIANCE
    retention_days: int = DEFAULT_RETENTION_DAYS

    def __post_init__(self) -> None:
        if (self.path is None) == (self.s3 is None):
            raise InvalidInputError("a store is either a local path or an S3 bucket")
        if self.lock_mode not in MODES:
            raise InvalidInputError(
                f"lock mode must be COMPLIANCE or GOVERNANCE, not {self.lock_mode!r}"
            )
        if not 1 <= self.retention_days <= 36500:
            raise InvalidInputError("retention_days must be between 1 and 36500")

    @property
    def kind(self) -> str:
        return "local" if self.path is not None else "s3"

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        assert self.s3 is not None
        where = f"s3://{self.s3.bucket}/{self.s3.prefix}".rstrip("/")
        extra = [f"region {self.s3.region}"] if self.s3.region else []
        extra += [f"endpoint {self.s3.endpoint_url}"] if self.s3.endpoint_url else []
        extra.append(f"{self.lock_mode} lock, {self.retention_days} days minimum")
        return f"{where} ({', '.join(extra)})"


def parse_store(text: str) -> StoreSpec:
    """A store from the `--store` option: a directory path or an s3:// URL."""
    if not text.startswith("s3://"):
        return StoreSpec(path=Path(text).expanduser().absolute())
    url = urllib.parse.urlsplit(text)
    hint = "s3://BUCKET[/PREFIX]?region=R&endpoint=URL&profile=P&lock=COMPLIANCE&retention_days=30"
    try:
        pairs = urllib.parse.parse_qsl(
            url.query, keep_blank_values=True, strict_parsing=bool(url.query)
        )
    except ValueError:
        raise InvalidInputError(f"invalid options in store URL {text!r}", hint=hint) from None
    options = dict(pairs)
    unknown = set(options) - _S3_OPTIONS
    problems = []
    if unknown:
        problems.append(f"unknown options {sorted(unknown)}")
    if len(options) != len(pairs):
        problems.append("an option given twice")
    if any(not value for value in options.values()):
        problems.append("an empty option")
    if url.fragment:
        problems.append("a '#' fragment")
    if not _BUCKET.fullmatch(url.netloc) or ".." in url.netloc:
        problems.append(f"bucket name {url.netloc!r} (3-63 of a-z 0-9 . -, no user or port)")
    prefix = urllib.parse.unquote(url.path).strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        problems.append(f"prefix {prefix!r}")
    if problems:
        raise InvalidInputError(f"invalid store URL {text!r}: {'; '.join(problems)}", hint=hint)
    try:
        days = int(options.get("retention_days", DEFAULT_RETENTION_DAYS))
    except ValueError:
        raise InvalidInputError("retention_days must be a whole number of days") from None
    return StoreSpec(
        s3=S3Location(
            bucket=url.netloc,
            region=options.get("region"),
            endpoint_url=options.get("endpoint"),
            profile=options.get("profile"),
            prefix=prefix,
        ),
        lock_mode=options.get("lock", COMPLIANCE).upper(),
        retention_days=days,
    )


def store_from_config(section: dict[str, Any], *, resolve: Any) -> StoreSpec:
    """The `[store]` section of config.toml; `resolve` makes a configured path absolute."""
    driver = section.get("driver", "local")
    allowed = _S3_KEYS if driver == "s3" else _LOCAL_KEYS
    unknown = set(section) - allowed
    if unknown:
        raise ConfigurationError(
            f"unknown [store] settings {sorted(unknown)}",
            hint=f"[store] with driver = {driver!r} takes {', '.join(sorted(allowed))}",
        )
    if driver == "local":
        return StoreSpec(path=resolve(section.get("path")))
    if driver == "s3":
        if not section.get("bucket"):
            raise ConfigurationError('store.bucket is required for driver = "s3"')
        return StoreSpec(
            s3=S3Location(
                bucket=str(section["bucket"]),
                region=section.get("region"),
                endpoint_url=section.get("endpoint_url"),
                profile=section.get("profile"),
                prefix=str(section.get("prefix", "")),
            ),
            lock_mode=str(section.get("lock_mode", COMPLIANCE)),
            retention_days=int(section.get("minimum_retention_days", DEFAULT_RETENTION_DAYS)),
        )
    raise ConfigurationError(f"unknown store driver {driver!r}", hint='use "local" or "s3"')


def store_config_lines(spec: StoreSpec, *, chunk_size: int) -> list[str]:
    """The `[store]` section of config.toml for `spec`."""
    return ["[store]", *store_lines(spec), f"chunk_size = {chunk_size}"]


def store_lines(spec: StoreSpec) -> list[str]:
    """The TOML settings (`key = value` lines) that describe where `spec` lives."""

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    if spec.path is not None:
        lines += ['driver = "local"', f"path = {quoted(str(spec.path))}"]
    else:
        assert spec.s3 is not None
        lines += ['driver = "s3"', f"bucket = {quoted(spec.s3.bucket)}"]
        for key, value in (
            ("prefix", spec.s3.prefix),
            ("region", spec.s3.region),
            ("endpoint_url", spec.s3.endpoint_url),
            ("profile", spec.s3.profile),
        ):
            if value:
                lines.append(f"{key} = {quoted(value)}")
        lines += [
            f"lock_mode = {quoted(spec.lock_mode)}",
            f"minimum_retention_days = {spec.retention_days}",
        ]
    return lines


def open_driver(
    spec: StoreSpec,
    *,
    parallelism: int = 4,
    fail_fast: bool = False,
    deadlines: DeadlineSettings | None = None,
) -> Driver:
    """The driver of a store; `fail_fast` when other regions can serve what this one cannot.
    A remote store's requests run under `deadlines`; a local directory's are system calls."""
    if spec.path is not None:
        return LocalDriver(spec.path)
    assert spec.s3 is not None
    from registry.storage.s3 import S3Driver  # boto3 only for a registry that uses S3

    return S3Driver(
        spec.s3,
        parallelism=parallelism,
        lock_mode=spec.lock_mode,
        minimum_retention=timedelta(days=spec.retention_days),
        fail_fast=fail_fast,
        deadlines=deadlines,
    )


def prepare_bucket(spec: StoreSpec, *, deadlines: DeadlineSettings | None = None) -> None:
    """Create the bucket with versioning and Object Lock, or check an existing one has both."""
    if spec.s3 is None:
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from registry.storage.s3_client import bounded_client

    location = spec.s3
    client = bounded_client(location, deadlines=deadlines)
    try:
        try:
            client.head_bucket(Bucket=location.bucket)
            exists = True
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) not in (
                "404",
                "NoSuchBucket",
                "NotFound",
            ):
                raise
            exists = False
        if not exists:
            arguments: dict[str, Any] = {
                "Bucket": location.bucket,
                "ObjectLockEnabledForBucket": True,
            }
            region = location.region or client.meta.region_name
            if region and region != "us-east-1":
                arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
            client.create_bucket(**arguments)
            return
        versioning = client.get_bucket_versioning(Bucket=location.bucket).get("Status")
        try:
            lock = client.get_object_lock_configuration(Bucket=location.bucket)
            configuration = lock.get("ObjectLockConfiguration", {})
            enabled = configuration.get("ObjectLockEnabled") == "Enabled"
            default = configuration.get("Rule", {}).get("DefaultRetention")
        except ClientError:
            enabled, default = False, None
        if enabled and default:
            raise ConfigurationError(
                f"bucket {location.bucket} has a default retention ({default})",
                hint="remove the bucket's default retention rule: the registry locks every object "
                "itself, and a default lock would also pin racing writers' versions forever",
            )
        if versioning != "Enabled" or not enabled:
            raise ConfigurationError(
                f"bucket {location.bucket} has no Object Lock (versioning {versioning or 'off'})",
                hint="Object Lock can only be chosen when a bucket is created: use a new bucket "
                "(init creates it with versioning and Object Lock) or one created with "
                "--object-lock-enabled-for-bucket",
            )
    except (ClientError, BotoCoreError) as error:
        raise StorageError(
            f"cannot prepare bucket {location.bucket}: {error}",
            hint="check credentials (AWS_PROFILE / environment), region and endpoint",
        ) from None
    finally:
        client.close()
