"""Where a load's CPU time goes, by stage: one `loader.load` in a fresh process, sampled by
`perf record -e cpu-clock` (software clock: works in VMs without hardware counters) from the
moment the load starts to the moment it returns, its samples grouped by the function they hit.

    apt-get install -y linux-perf          # Debian's perf
    .venv/bin/python bench/load_stages.py --size-mib 1024
    .venv/bin/python bench/load_stages.py --size-mib 1024 --cpus 0      # one core
    .venv/bin/python bench/load_stages.py --home /tmp/old-home --tree /tmp/old-checkout   # A/B

Stages: decrypt (AES-GCM), hash (BLAKE3), fresh memory (the kernel zeroing and mapping the
tensors' pages), reading sealed bytes (copies out of the page cache, mapping file pages),
Python (the interpreter: scheduling, bookkeeping, the catalog), other. Prints CPU seconds per
GB for each, and the load's wall time and CPU time. Run by hand; not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = {
    "decrypt (AES-GCM)": ("aes", "gcm", "ghash", "gcm_"),
    "hash (BLAKE3)": ("blake3",),
    "fresh memory (page faults, zeroing)": (
        "clear_page",
        "clear_huge",
        "page_fault",
        "do_anonymous",
        "memcg",
        "alloc_pages",
        "get_page_from_freelist",
        "__folio",
        "folio_",
        "lru",
        "pte",
        "rmqueue",
        "huge",
        "madvise",
        "populate",
    ),
    "reading sealed bytes (page cache)": ("copy_to_iter", "copy_user", "filemap", "readahead"),
    "Python interpreter": ("_Py", "Py", "frame", "dict", "unicode", "gc_", "tuple", "list_"),
}

CHILD = r"""
import os, sys, time, resource
from pathlib import Path
from registry import loader
from registry.service import Registry
import torch  # imported before the clock, as a serving process has it
registry = Registry.open(Path(sys.argv[1]))
for path in (Path(sys.argv[1]) / "store").rglob("*"):
    if path.is_file():
        path.read_bytes()  # page cache warm, as for every contestant of bench/load.py
print("ready", flush=True)
sys.stdin.readline()
usage = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
state = loader.load(sys.argv[2], registry=registry, cache=False)
wall = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
size = sum(t.numel() * t.element_size() for t in state.values())
cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
print(f"done {wall} {cpu} {size}", flush=True)
sys.stdin.readline()
"""


def classify(symbol: str) -> str:
    lowered = symbol.lower()
    for stage, needles in STAGES.items():
        if any(needle.lower() in lowered for needle in needles):
            return stage
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--cpus", help="CPUs the load runs on, e.g. 0 or 0,1")
    parser.add_argument("--home", type=Path, help="a registry home holding bench/model")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/load"))
    parser.add_argument("--show-other", type=int, default=0, help="list the top N 'other' symbols")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed: apt-get install -y linux-perf")
    scratch = Path(tempfile.mkdtemp(prefix="load-stages-"))
    env = {**os.environ, "PYTHONPATH": str(args.tree)}
    try:
        home = args.home
        if home is None:
            home = scratch / "home"
            model = args.workdir.absolute() / f"model-{args.size_mib}m-{args.shards}"
            setup = (
                "import sys; from pathlib import Path; from registry.service import Registry; "
                "from registry.testing.models import make_model; "
                "model = Path(sys.argv[2]); "
                "model.exists() or make_model(model, shards=int(sys.argv[3]), "
                "shard_size=int(sys.argv[4]), tensors_per_shard=8, dtype='BF16', seed=1); "
                "Registry.init(Path(sys.argv[1])); "
                "r = Registry.open(Path(sys.argv[1])); r.push('bench/model', model); r.close()"
            )
            shard_size = args.size_mib * 1024 * 1024 // args.shards
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    setup,
                    str(home),
                    str(model),
                    str(args.shards),
                    str(shard_size),
                ],
                check=True,
                env=env,
                cwd=args.tree,
            )
        command = [sys.executable, "-c", CHILD, str(home), "bench/model"]
        if args.cpus:
            command = ["taskset", "-c", args.cpus, *command]
        child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=args.tree,
        )
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the load process failed to start")
        data = scratch / "perf.data"
        perf = subprocess.Popen(
            [
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "4000",
                "-p",
                str(child.pid),
                "-o",
                str(data),
            ],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf attached
        child.stdin.write("go\n")
        child.stdin.flush()
        _done, wall, cpu, size = child.stdout.readline().split()
        perf.send_signal(signal.SIGINT)
        perf.wait()
        child.stdin.write("exit\n")
        child.stdin.flush()
        child.wait()
        report = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                str(data),
                "--no-children",
                "--sort",
                "symbol",
                "--stdio",
                "-q",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shares: dict[str, float] = {}
    others: list[str] = []
    for line in report.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].endswith("%"):
            stage = classify(parts[2])
            shares[stage] = shares.get(stage, 0.0) + float(parts[0].rstrip("%")) / 100
            if stage == "other" and len(others) < args.show_other:
                others.append(f"    {parts[0]:>7s} {parts[2].strip()[:90]}")
    gigabytes = int(size) / 1e9
    print(
        f"load of {int(size) / 2**20:.0f} MiB{' on CPUs ' + args.cpus if args.cpus else ''}: "
        f"wall {float(wall):.3f} s ({gigabytes / float(wall):.2f} GB/s), "
        f"CPU {float(cpu):.3f} s ({float(cpu) / gigabytes:.3f} CPU-s per GB)"
    )
    for stage, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {stage:40s} {share:6.1%}  {share * float(cpu) / gigabytes:.3f} CPU-s per GB")
    print("\n".join(others))
    return 0


if __name__ == "__main__":
    sys.exit(main())
