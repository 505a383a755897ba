"""Legal holds and gc's lock checks on S3 regions far apart: `hold set` and `hold release` of a
version, and a `gc --dry-run` whose candidates are all under Object Lock, on three buckets of one
moto server with a round trip added to every S3 request (the latency between regions).

    .venv/bin/python bench/holds.py                       # 3 regions, 100 ms a request
    .venv/bin/python bench/holds.py --latency-ms 170 --shards 4

Prints each step's wall time and how many S3 requests it made.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer

from registry.service import Registry
from registry.storage.s3 import S3Driver
from registry.testing.models import make_model

REGIONS = ("us-east-1", "eu-west-1", "ap-south-1", "us-west-2", "eu-central-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--regions", type=int, default=3, choices=range(1, len(REGIONS) + 1))
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        run(server, args)
    finally:
        server.stop()


def run(server: ThreadedMotoServer, args: argparse.Namespace) -> None:
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    root = Path(tempfile.mkdtemp(prefix="bench-holds-"))
    home = root / "home"
    Registry.init(
        home,
        store=[
            f"s3://bench-{n}/r?region={name}&endpoint={endpoint}&retention_days=1&name={name}"
            for n, name in enumerate(REGIONS[: args.regions])
        ],
    )
    first = make_model(root / "m1", shards=args.shards, shard_size=20_000, seed=1)
    second = make_model(root / "m2", shards=args.shards, shard_size=20_000, seed=2)
    requests = 0
    latency = args.latency_ms / 1000

    def slow(**_kwargs: Any) -> None:
        nonlocal requests
        requests += 1
        time.sleep(latency)

    with Registry.open(home) as registry:
        version = registry.push("bench/model", first).version
        registry.push("bench/model", second)
        for region in registry.replicas.regions:
            driver = region.store.driver
            assert isinstance(driver, S3Driver)
            # The driver's own boto3 client: every request it sends waits the round trip first.
            driver._client.meta.events.register("before-send", slow)
        print(
            f"{len(version.files) + 1} objects in {args.regions} regions, "
            f"{args.latency_ms:.0f} ms a request"
        )

        def timed(label: str, step: Callable[[], str]) -> None:
            nonlocal requests
            requests = 0
            started = time.perf_counter()
            outcome = step()
            seconds = time.perf_counter() - started
            print(f"{label:<14} {seconds:7.2f} s {requests:5} requests  {outcome}")

        timed(
            "hold set",
            lambda: (
                f"failed: {list(registry.hold('bench/model@1', reason='bench').failed_regions)}"
            ),
        )
        timed(
            "hold release",
            lambda: (
                "failed: "
                f"{list(registry.release_hold('bench/model@1', reason='bench').failed_regions)}"
            ),
        )
        registry.set_retention("bench/model", keep_last=1)
        later = datetime.now(UTC) + timedelta(days=2)
        timed(
            "gc --dry-run",
            lambda: f"{len(registry.gc(dry_run=True, grace='0h', now=later).kept)} kept by locks",
        )


if __name__ == "__main__":
    main()
