"""Opening an upload session of many files: the time the server takes to issue their keys (a key
of the session's own per distinct content, wrapped by the key provider and kept in the session's
row), the keys wrapped one at a time (as with a key file) against `--at-once` together (as with a
KMS), alternating in one run: the setting is forced here whatever the key provider.

    PYTHONPATH=. .venv/bin/python bench/upload_open.py --files 2000 --rounds 3
    PYTHONPATH=. .venv/bin/python bench/upload_open.py --files 2000 --regions 2
    PYTHONPATH=. .venv/bin/python bench/upload_open.py --files 1000 --s3 moto
    PYTHONPATH=. .venv/bin/python bench/upload_open.py --files 1000 --s3 ceph

Each round opens a session of `--files` files of distinct content, through the facade (what the
REST handler calls), in a fresh home: on local stores in a scratch folder (`--regions` of them),
or with `--s3` on S3, a moto server process per region or one region on Ceph RGW
(`tests/ceph_rgw.py`, started and stopped here). It reports the median seconds per open and
files per second for both settings, and their ratio. PYTHONPATH may name an older checkout to
measure it (before session keys for every file, its opening chose each object's key and stored
its slot, a PUT per file on S3; the setting forced here does not exist there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import blake3

import registry.ops.uploads as uploads
from registry.records import DeclaredFile
from registry.service import Registry


def _open_once(
    scratch: Path, files: list[DeclaredFile], *, regions: int, endpoints: list[str], at_once: int
) -> float:
    home = Path(tempfile.mkdtemp(dir=scratch))
    if endpoints:
        bucket = f"open-{uuid.uuid4().hex[:10]}"
        stores = [
            f"s3://{bucket}?endpoint={url}&retention_days=1&name=r{number}"
            for number, url in enumerate(endpoints)
        ]
    else:
        stores = [str(home / f"region-{index}") for index in range(regions)]
    Registry.init(home / "home", store=stores if len(stores) > 1 or endpoints else None)
    uploads.keys_at_once = lambda ctx: at_once  # forced, see above
    with Registry.open(home / "home") as registry:
        started = time.perf_counter()
        registry.open_upload("bench/open", files)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--regions", type=int, default=1)
    parser.add_argument("--at-once", type=int, default=getattr(uploads, "KEY_REQUESTS", 16))
    parser.add_argument("--s3", choices=("moto", "ceph"), help="S3 regions instead of folders")
    args = parser.parse_args()
    servers: list[subprocess.Popen[bytes]] = []
    ceph: Any = None
    try:
        if args.s3 == "ceph":
            from tests.ceph_rgw import ACCESS_KEY, SECRET_KEY, CephRGW

            ceph = CephRGW.start(Path(tempfile.mkdtemp(prefix="bench-ceph-")))
            os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
            os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
            endpoints = [ceph.endpoint]
        elif args.s3 == "moto":
            # Imported here: it puts its own checkout first on sys.path, and the code measured
            # is PYTHONPATH's (bench/ is the script's folder, first on sys.path).
            from s3_push_pull import _start_moto

            endpoints = _start_moto(args.regions, servers)
        else:
            endpoints = []
        _run(args, endpoints)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        if ceph is not None:
            ceph.stop()


def _run(args: argparse.Namespace, endpoints: list[str]) -> None:
    os.environ.setdefault("MODEL_REGISTRY_ACTOR", "bench@example")
    os.environ.pop("MODEL_REGISTRY_CATALOG_URL", None)
    files = [
        DeclaredFile(
            f"shards/part-{index:05d}.bin",
            1000 + index,
            "blake3:" + blake3.blake3(f"content {index}".encode()).hexdigest(),
        )
        for index in range(args.files)
    ]
    times: dict[int, list[float]] = {1: [], args.at_once: []}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for at_once in times:
                seconds = _open_once(
                    Path(scratch),
                    files,
                    regions=args.regions,
                    endpoints=endpoints,
                    at_once=at_once,
                )
                times[at_once].append(seconds)
                print(f"  {at_once:>2} at once: {seconds:6.2f} s", flush=True)
    one, many = (statistics.median(times[key]) for key in times)
    where = f"{args.s3} S3" if endpoints else "local"
    print(f"{args.files} files, {args.regions} {where} region(s), median of {args.rounds}:")
    print(f"  one at a time: {one:.2f} s ({args.files / one:,.0f} files/s)")
    print(f"  {args.at_once} at once:   {many:.2f} s ({args.files / many:,.0f} files/s)")
    print(f"  ratio: {one / many:.2f}x")


if __name__ == "__main__":
    main()
