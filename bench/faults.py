"""Pulls while regions misbehave: three S3 regions (buckets on one moto server), each behind its
own fault-injecting proxy (tests/faultproxy.py), one model pushed to all three; then each pull in
a fresh CLI process, healthy and with faults in front of the preferred regions.

    .venv/bin/python bench/faults.py                    # 100 MiB in 4 shards, 3 rounds
    .venv/bin/python bench/faults.py --size-mib 32 --rounds 1   # a quick look

The aims (issue 14): with the preferred region frozen (TCP accepted, nothing answered) a pull
takes at most 1.5 x its healthy time + 3 s; with every region but one frozen, at most 2 x + 5 s.
Trickle (10 KB/s), a reset mid-body and a 503 storm in front of the preferred region are timed
too. Default [deadlines] (request 10 s, hedge after 0.5 s, degraded for 30 s). Each figure is the
median of the rounds; the healthy pull of the same round is the baseline of its ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry.service import Registry
from registry.testing.models import make_model
from tests.faultproxy import FaultProxy

CLI = [sys.executable, "-m", "cli"]


def pull(env: dict[str, str], dest: Path) -> tuple[float, list[str]]:
    """Seconds for one `pull` in a fresh process, and the copies it read around."""
    shutil.rmtree(dest, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(
        [*CLI, "pull", "bench/model:production", str(dest), "--json", "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pull failed ({done.returncode}): {done.stderr}")
    return seconds, list(json.loads(done.stdout)["bad_copies"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help="Run only these scenarios (repeat; 'healthy' always runs): frozen, two-frozen, "
        "trickle, reset, 503.",
    )
    options = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    root = Path(tempfile.mkdtemp(prefix="faults-bench-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxies = {name: FaultProxy((host, int(port))).start() for name in "abc"}
    try:
        stores = [
            f"s3://bench-{name}-{uuid.uuid4().hex[:8]}?region=us-east-1&endpoint={proxy.url}"
            f"&retention_days=1&name=region-{name}"
            for name, proxy in proxies.items()
        ]
        home = root / "home"
        Registry.init(home, store=stores)
        model = make_model(
            root / "model",
            shards=options.shards,
            shard_size=(options.size_mib << 20) // options.shards,
            seed=5,
        )
        with Registry.open(home) as registry:
            registry.push("bench/model", model)
            registry.promote("bench/model@1", "production")
        env = {**os.environ, "MODEL_REGISTRY_HOME": str(home)}
        env.pop("MODEL_REGISTRY_URL", None)

        def heal() -> None:
            for proxy in proxies.values():
                proxy.heal()

        def freeze_two() -> None:
            proxies["a"].freeze()
            proxies["b"].freeze()

        scenarios: dict[str, Callable[[], None]] = {
            "healthy": heal,
            "region-a frozen": lambda: proxies["a"].freeze(),
            "region-a and region-b frozen": freeze_two,
            "region-a trickles 10 KB/s": lambda: proxies["a"].trickle(10_000),
            "region-a resets mid-body": lambda: proxies["a"].reset_after(1 << 20),
            "region-a answers 503": lambda: proxies["a"].fail_503(),
        }
        short = {
            "frozen": "region-a frozen",
            "two-frozen": "region-a and region-b frozen",
            "trickle": "region-a trickles 10 KB/s",
            "reset": "region-a resets mid-body",
            "503": "region-a answers 503",
        }
        if options.only:
            wanted = {"healthy", *(short[name] for name in options.only)}
            scenarios = {name: fault for name, fault in scenarios.items() if name in wanted}
        results: dict[str, list[float]] = {name: [] for name in scenarios}
        read_around: dict[str, list[str]] = {}
        for _round in range(options.rounds):
            healthy = 0.0
            for name, fault in scenarios.items():
                heal()
                fault()
                seconds, bad = pull(env, root / "out")
                if name == "healthy":
                    healthy = seconds
                results[name].append(seconds / healthy if healthy else 1.0)
                results.setdefault(f"{name} (s)", []).append(seconds)
                read_around[name] = sorted({line.split(":", 1)[0] for line in bad})
        heal()
        figures = {
            name: {
                "seconds": round(statistics.median(results[f"{name} (s)"]), 2),
                "ratio": round(statistics.median(results[name]), 2),
                "read_around": read_around[name],
            }
            for name in scenarios
        }
        healthy_seconds = figures["healthy"]["seconds"]
        aims = {
            "region-a frozen": 1.5 * float(healthy_seconds) + 3,
            "region-a and region-b frozen": 2 * float(healthy_seconds) + 5,
        }
        for name, limit in aims.items():
            if name not in figures:
                continue
            figures[name]["aim_seconds"] = round(limit, 2)
            figures[name]["met"] = float(figures[name]["seconds"]) <= limit
        if options.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"{options.size_mib} MiB in {options.shards} shards, {options.rounds} rounds")
            for name, figure in figures.items():
                aim = (
                    f"  aim <= {figure['aim_seconds']} s: {'met' if figure['met'] else 'MISSED'}"
                    if "aim_seconds" in figure
                    else ""
                )
                print(
                    f"{name:<30} {figure['seconds']:>7} s  {figure['ratio']:>5} x healthy"
                    f"  read around: {', '.join(figure['read_around']) or '-'}{aim}"  # type: ignore[arg-type]
                )
    finally:
        for proxy in proxies.values():
            proxy.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
