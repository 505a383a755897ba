"""Push and pull through the registry on an S3 store vs boto3's `upload_file` / `download_file`,
in one run, same bytes, same server.

The server is moto's (`--server moto`, the default: one moto server process per region on
127.0.0.1), Ceph RGW (`--server ceph`: a real S3 implementation with Object Lock, started by this
bench in a temporary folder with `tests/ceph_rgw.py`, installed from Debian's packages when
missing, stopped at the end), or any running endpoint (`--endpoint URL`, credentials from the
environment). Generates a model of --size-mib, then, --repeat rounds, each in a fresh bucket:

- registry push (hash, seal, multipart upload with If-None-Match, lock, read-back) of the model
  into a fresh registry home on the S3 store (a versioned Object Lock bucket);
- boto3 `upload_file` of the same files into a plain bucket (unencrypted, no lock, default
  TransferConfig: 8 MiB parts, 10 threads), one file after another;
- registry pull (parallel ranged GETs, decrypt, verify, write, fsync, rename) into a fresh folder;
- boto3 `download_file` of the same files into a fresh folder (default TransferConfig; it does
  not fsync, the registry does).

With `--regions N` the registry has N regions, each its own moto server process, and the boto3
baseline uploads every copy to the first of them (one after another) and downloads one: the cost
of writing every copy and reading each back against a plain upload of the same copies.

`--profile` also counts the registry's S3 requests per operation (and the seconds spent in them,
summed over threads) and times the push's hashing and uploading phases: where the time goes.

Prints a markdown table: medians (and best) of the rounds, ratios registry / boto3 (median over
median). Run by hand:
    .venv/bin/python bench/s3_push_pull.py --size-mib 192                  # moto
    .venv/bin/python bench/s3_push_pull.py --size-mib 192 --server ceph    # Ceph RGW
    .venv/bin/python bench/s3_push_pull.py --server ceph --rgw-nodelay     # RGW without Nagle
    .venv/bin/python bench/s3_push_pull.py --size-mib 256 --regions 2
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry.service import Registry
from registry.testing.models import make_model

MIB = 1024 * 1024


class Requests:
    """Every botocore API call of this process while `on`: count and seconds per operation."""

    def __init__(self) -> None:
        self.on = False
        self.count: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._lock = threading.Lock()
        original = botocore.client.BaseClient._make_api_call

        def timed(client: Any, operation: str, params: Any) -> Any:
            if not self.on:
                return original(client, operation, params)
            started = time.perf_counter()
            try:
                return original(client, operation, params)
            finally:
                with self._lock:
                    self.count[operation] += 1
                    self.seconds[operation] += time.perf_counter() - started

        botocore.client.BaseClient._make_api_call = timed  # type: ignore[method-assign]

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self.count.clear()
        self.seconds.clear()
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def lines(self) -> list[str]:
        return [
            f"  {op}: {n} requests, {self.seconds[op]:.2f} s summed"
            for op, n in sorted(self.count.items(), key=lambda kv: -self.seconds[kv[0]])
        ]


class Phases:
    """The push's progress phases (hashing, uploading), timed."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, description: str, total: int) -> None:
        self._current = (description, time.perf_counter())

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        if self._current is not None:
            name, started = self._current
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - started
            self._current = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_moto(count: int, servers: list[subprocess.Popen[bytes]]) -> list[str]:
    # Each server runs in a process of its own: in-process, it would compete for the GIL with
    # the client being measured.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    endpoints = []
    for _ in range(count):
        port = _free_port()
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        endpoints.append(f"http://127.0.0.1:{port}")
    for url in endpoints:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
    return endpoints


def _warm_up(endpoint: str) -> None:
    """One multipart upload on the server before anything is timed: a fresh Ceph cluster creates
    a pool on its first multipart upload (about 2 s), which would land on whoever comes first."""
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"warm-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    upload = client.create_multipart_upload(Bucket=bucket, Key="warm")
    client.abort_multipart_upload(Bucket=bucket, Key="warm", UploadId=upload["UploadId"])
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=192)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/s3"))
    parser.add_argument("--server", choices=("moto", "ceph"), default="moto")
    parser.add_argument(
        "--rgw-nodelay",
        action="store_true",
        help="Ceph RGW with tcp_nodelay=1 (else its Nagle holds every small response ~40 ms)",
    )
    parser.add_argument("--endpoint", help="a running S3 endpoint instead of starting a server")
    parser.add_argument("--regions", type=int, default=1, help="regions (moto: one server each)")
    parser.add_argument("--profile", action="store_true", help="count requests, time phases")
    args = parser.parse_args()
    if args.size_mib < 1 or args.shards < 1 or args.repeat < 1 or args.regions < 1:
        parser.error("--size-mib, --shards, --repeat and --regions must be at least 1")
    if args.regions > 1 and (args.server == "ceph" or args.endpoint):
        parser.error("--regions > 1 runs one moto server per region")
    logging.disable(logging.INFO)
    requests = Requests() if args.profile else None

    work = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = make_model(
        work / "model", shards=args.shards, shard_size=args.size_mib * MIB // args.shards, seed=5
    )
    files = sorted(p for p in model.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)

    servers: list[subprocess.Popen[bytes]] = []
    ceph: Any = None
    if args.endpoint:
        endpoints = [args.endpoint]
        described = args.endpoint
    elif args.server == "ceph":
        from tests.ceph_rgw import ACCESS_KEY, SECRET_KEY, CephRGW

        ceph = CephRGW.start(
            Path(tempfile.mkdtemp(prefix="bench-ceph-")),
            frontend="tcp_nodelay=1" if args.rgw_nodelay else "",
        )
        os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        endpoints = [ceph.endpoint]
        described = "Ceph RGW (memstore OSD, radosgw, one monitor) on loopback" + (
            ", tcp_nodelay=1" if args.rgw_nodelay else ""
        )
    else:
        endpoints = _start_moto(args.regions, servers)
        described = f"moto_server ({len(endpoints)} process(es)) on loopback"
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoints[0], region_name="us-east-1"
    )
    for url in endpoints:
        _warm_up(url)
    timings: dict[str, list[float]] = {"push": [], "upload": [], "pull": [], "download": []}
    # This process's CPU seconds (every thread) per operation: the client's share of 2 cores.
    cpu: dict[str, list[float]] = {key: [] for key in timings}

    @contextlib.contextmanager
    def timed(key: str) -> Iterator[None]:
        started, used = time.perf_counter(), time.process_time()
        yield
        timings[key].append(time.perf_counter() - started)
        cpu[key].append(time.process_time() - used)

    profile: list[str] = []
    try:
        for index in range(args.repeat):
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            home = work / f"home{index}"
            Registry.init(
                home,
                store=[
                    f"s3://{bucket}?endpoint={url}&retention_days=1&name=r{number}"
                    for number, url in enumerate(endpoints)
                ],
            )
            with Registry.open(home) as registry:
                phases = Phases()
                with (
                    requests.watching() if requests else contextlib.nullcontext(),
                    timed("push"),
                ):
                    registry.push("bench/model", model, progress=phases)
                if requests:
                    profile.append(
                        f"round {index + 1} push {timings['push'][-1]:.2f} s; phases "
                        + ", ".join(f"{k} {v:.2f} s" for k, v in phases.times.items())
                    )
                    profile.extend(requests.lines())
                dest = work / f"pulled{index}"
                with (
                    requests.watching() if requests else contextlib.nullcontext(),
                    timed("pull"),
                ):
                    registry.pull("bench/model", dest)
                if requests:
                    profile.append(f"round {index + 1} pull {timings['pull'][-1]:.2f} s")
                    profile.extend(requests.lines())
                shutil.rmtree(dest)

            plain = f"plain-{uuid.uuid4().hex[:10]}"
            client.create_bucket(Bucket=plain)
            with timed("upload"):
                for copy in range(len(endpoints)):
                    for path in files:
                        client.upload_file(str(path), plain, f"{copy}/{path.name}")
            target = work / f"downloaded{index}"
            target.mkdir()
            with timed("download"):
                for path in files:
                    client.download_file(plain, f"0/{path.name}", str(target / path.name))
            shutil.rmtree(target)
            shutil.rmtree(home)
            # The plain copies go again (a memstore OSD holds everything in memory); the
            # registry's stay, locked.
            for copy in range(len(endpoints)):
                for path in files:
                    client.delete_object(Bucket=plain, Key=f"{copy}/{path.name}")
    finally:
        for process in servers:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if ceph is not None:
            ceph.stop()
            shutil.rmtree(ceph.folder, ignore_errors=True)

    median = {key: statistics.median(values) for key, values in timings.items()}
    print("# S3 push/pull vs boto3 upload_file / download_file\n")
    print(
        f"- date {datetime.now(UTC):%Y-%m-%dT%H:%M}Z; {platform.node()}, {os.cpu_count()} cores; "
        f"server {described}; {len(endpoints)} region(s)"
    )
    print(
        f"- model {total / MIB:.0f} MiB ({total / 1e6:.0f} MB) in {len(files)} files; "
        f"median of {args.repeat} (best in brackets)\n"
    )
    print("| operation | seconds | MiB/s | client CPU s | ratio (median) | per round |")
    print("|---|---:|---:|---:|---:|---|")
    for key, baseline in (
        ("push", "upload"),
        ("upload", None),
        ("pull", "download"),
        ("download", None),
    ):
        seconds = median[key]
        ratio, rounds = "-", ""
        if baseline:
            ratio = f"**{median[baseline] / seconds:.2f}x** {baseline}_file"
            rounds = ", ".join(
                f"{b / r:.2f}x" for r, b in zip(timings[key], timings[baseline], strict=True)
            )
        label = f"registry {key}" if baseline else f"boto3 {key}_file"
        print(
            f"| {label} | {seconds:.2f} ({min(timings[key]):.2f}) | {total / seconds / MIB:.0f} "
            f"| {statistics.median(cpu[key]):.2f} | {ratio} | {rounds} |"
        )
    if profile:
        print("\nS3 requests of the registry (seconds summed over threads):\n")
        print("\n".join(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
