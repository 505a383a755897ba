"""boto3 clients for S3 stores: a connection pool that fits the driver's parallelism, retries
that give up fast where another region can answer, socket timeouts within the request deadline,
and every API call under a deadline (`registry.storage.deadline`), an upload's scaled by the
size of its body.

The clients of a process share one botocore data loader: a new client otherwise parses
botocore's JSON models (S3's, the endpoint rules, the partitions) again, about 0.1-0.2 s of
CPU per client and per region, and those objects then cost the cyclic garbage collector on
every later pass. Each client still has a session of its own, so its credentials and profile
are resolved as before (a test or a caller that changes the environment gets fresh ones).
"""

from __future__ import annotations

import threading
from typing import Any

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from registry.errors import ConfigurationError
from registry.storage.base import S3Location
from registry.storage.deadline import DeadlineSettings, call_with_deadline


def make_client(
    location: S3Location,
    *,
    parallelism: int,
    fail_fast: bool = False,
    deadlines: DeadlineSettings | None = None,
) -> Any:
    """A boto3 S3 client whose connection pool fits `parallelism` concurrent requests.

    `fail_fast` (a store with replicas elsewhere) gives up on an unreachable endpoint within
    seconds, so that reads fail over to another region instead of waiting out long retries.
    Socket timeouts stay within the request deadline, so that an abandoned call ends soon too."""
    limits = deadlines or DeadlineSettings()
    try:
        session = botocore.session.Session(profile=location.profile)
        session.register_component("data_loader", shared_loader())
        return session.create_client(
            "s3",
            region_name=location.region,
            endpoint_url=location.endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": 2 if fail_fast else 6},
                max_pool_connections=max(10, 2 * parallelism),
                connect_timeout=min(3 if fail_fast else 10, limits.request_seconds),
                read_timeout=min(30 if fail_fast else 60, limits.request_seconds),
            ),
        )
    except (BotoCoreError, ValueError) as error:
        raise ConfigurationError(
            f"cannot use the S3 settings of bucket {location.bucket}: {error}",
            hint="check the profile, region and endpoint of the store",
        ) from None


_loader: botocore.loaders.Loader | None = None
_loader_lock = threading.Lock()


def shared_loader() -> botocore.loaders.Loader:
    """The botocore data loader every client of this process reads its models through (it
    caches what it parsed; the models are only read)."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        return _loader


def bounded_client(location: S3Location, *, deadlines: DeadlineSettings | None = None) -> Any:
    """A client for one-off requests (bucket preparation), each under the request deadline."""
    limits = deadlines or DeadlineSettings()
    client = make_client(location, parallelism=1, deadlines=limits)
    return Bounded(client, limits, f"s3://{location.bucket}")


class Bounded:
    """A boto3 client whose API calls each run under a deadline (uploads: scaled by the body's
    size). Everything else (meta, close) is the client's own."""

    def __init__(self, client: Any, deadlines: DeadlineSettings, where: str) -> None:
        self._client = client
        self._deadlines = deadlines
        self._where = where
        # Python method name -> S3 operation name, for every API call of the client.
        self._operations: dict[str, str] = dict(client.meta.method_to_api_mapping)

    @property
    def raw(self) -> Any:
        return self._client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name not in self._operations:
            return method

        def bounded(**kwargs: Any) -> Any:
            body = kwargs.get("Body")
            size = len(body) if isinstance(body, bytes | bytearray | memoryview) else 0
            return call_with_deadline(
                lambda _budget: method(**kwargs),
                seconds=self._deadlines.transfer_seconds(size),
                what=f"{self._where}: {self._operations[name]}",
            )

        return bounded
