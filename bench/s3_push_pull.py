"""Push and pull through the registry on an S3 store vs plain boto3 transfers, in one run.

Starts one moto server on 127.0.0.1 (or uses --endpoint), generates a model of --size-mib, then
times, best of --repeat:

- registry push (hash, seal, multipart upload with If-None-Match, lock, read-back) of the model
  into a fresh registry home on the S3 store;
- boto3 `upload_fileobj` of the same files (plain, unencrypted, default TransferConfig);
- registry pull (parallel ranged GETs, decrypt, verify, write, fsync, rename);
- boto3 `download_fileobj` of the same number of bytes into files.

With `--regions N` the registry has N regions, each its own moto server process, and the boto3
baseline uploads to (and downloads from) the first of them once per region for the upload, once
for the download: the cost of writing every copy and reading each back against a plain upload of
the same copies.

Prints a markdown table with the ratios registry / boto3. Run by hand:
    .venv/bin/python bench/s3_push_pull.py --size-mib 512
    .venv/bin/python bench/s3_push_pull.py --size-mib 256 --regions 2
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry.service import Registry
from registry.testing.models import make_model

GB = 1e9
MIB = 1024 * 1024


def best(runs: list[float]) -> float:
    return min(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/s3"))
    parser.add_argument("--endpoint", help="an S3 endpoint instead of a local moto server")
    parser.add_argument("--regions", type=int, default=1, help="regions, one server each")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    work = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = make_model(
        work / "model", shards=args.shards, shard_size=args.size_mib * MIB // args.shards, seed=5
    )
    files = sorted(p for p in model.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)

    servers: list[subprocess.Popen[bytes]] = []
    endpoints = [args.endpoint] if args.endpoint else []
    if not endpoints:
        # Each server runs in a process of its own: in-process, it would compete for the GIL
        # with the client being measured.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        for _ in range(args.regions):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
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
    server = servers[0] if servers else None
    endpoint = endpoints[0]
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        timings: dict[str, list[float]] = {"push": [], "upload": [], "pull": [], "download": []}
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
                started = time.perf_counter()
                registry.push("bench/model", model)
                timings["push"].append(time.perf_counter() - started)
                dest = work / f"pulled{index}"
                started = time.perf_counter()
                registry.pull("bench/model", dest)
                timings["pull"].append(time.perf_counter() - started)
                shutil.rmtree(dest)

            plain = f"plain-{uuid.uuid4().hex[:10]}"
            client.create_bucket(Bucket=plain)
            started = time.perf_counter()
            for copy in range(len(endpoints)):
                for path in files:
                    with path.open("rb") as source:
                        client.upload_fileobj(source, plain, f"{copy}/{path.name}")
            timings["upload"].append(time.perf_counter() - started)
            target = work / f"downloaded{index}"
            target.mkdir()
            started = time.perf_counter()
            for path in files:
                with (target / path.name).open("wb") as sink:
                    client.download_fileobj(plain, f"0/{path.name}", sink)
                    sink.flush()
                    os.fsync(sink.fileno())
            timings["download"].append(time.perf_counter() - started)
            shutil.rmtree(target)
            shutil.rmtree(home)
    finally:
        for process in servers:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    rate = {key: total / best(values) for key, values in timings.items()}
    print("# S3 push/pull vs boto3 transfers\n")
    print(
        f"- date {datetime.now(UTC):%Y-%m-%dT%H:%M}Z; {platform.node()}, {os.cpu_count()} cores; "
        f"server {'moto_server (own process) on loopback' if server else endpoint}; "
        f"{len(endpoints)} region(s)"
    )
    print(f"- model {total / MIB:.0f} MiB in {len(files)} files; best of {args.repeat}\n")
    print("| operation | seconds | MiB/s | ratio |")
    print("|---|---:|---:|---:|")
    for key, baseline in (
        ("push", "upload"),
        ("upload", None),
        ("pull", "download"),
        ("download", None),
    ):
        ratio = f"{rate[key] / rate[baseline]:.2f}x {baseline}" if baseline else "-"
        print(f"| {key} | {best(timings[key]):.2f} | {rate[key] / MIB:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
