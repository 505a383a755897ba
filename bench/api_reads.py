"""Read requests per second of one `model-registry serve` process on a PostgreSQL catalog, with
its limits and signals counted in memory (each process alone) against counted in the catalog
and swapped with the fleet's (`[api] shared_state = "catalog"`, the default on PostgreSQL), and
optionally in Redis: alternating rounds in one run, so the shared counts' cost on the hot read
path shows as a ratio (issue 21: no catalog write per request).

    .venv/bin/python bench/api_reads.py --clients 40 --seconds 8 --repeat 2 \
        [--redis redis://127.0.0.1:6379/12]

Each round starts a fresh server (one uvicorn worker) with MODEL_REGISTRY_SHARED_STATE set to the
round's mode, and `--clients` threads each send GET /v1/version on a kept-alive connection for
`--seconds` seconds, with a token whose limits are too high to refuse anything. It prints each
round's requests/s and latency percentiles, then each mode's median against memory's.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from registry.service import READER, Registry
from registry.testing.models import make_model

PG_ADMIN = os.environ.get(
    "MODEL_REGISTRY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _client(port: int, token: str, until: float, latencies: list[float], errors: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    mine: list[float] = []
    while time.perf_counter() < until:
        started = time.perf_counter()
        connection.request("GET", "/v1/version?ref=org/bench@1", headers=headers)
        response = connection.getresponse()
        response.read()
        mine.append(time.perf_counter() - started)
        if response.status != 200:
            errors.append(response.status)
    connection.close()
    latencies.extend(mine)


def _round(home: Path, mode: str, token: str, clients: int, seconds: float) -> dict[str, float]:
    port = _free_port()
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(home), "MODEL_REGISTRY_SHARED_STATE": mode}
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                probe.request("GET", "/healthz")
                if probe.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        latencies: list[float] = []
        errors: list[int] = []
        until = time.perf_counter() + seconds
        threads = [
            threading.Thread(target=_client, args=(port, token, until, latencies, errors))
            for _ in range(clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    if errors:
        raise SystemExit(f"{mode}: {len(errors)} answers were not 200 (e.g. {errors[0]})")
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "p50": ordered[len(ordered) // 2] * 1000,
        "p99": ordered[int(len(ordered) * 0.99)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--redis", default="", help="also a Redis URL as the shared state")
    args = parser.parse_args()
    name = f"mr_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    modes = ["memory", "catalog", *([args.redis] if args.redis else [])]
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            home = Path(scratch) / "home"
            Registry.init(home, catalog_url=url)
            config = home / "config.toml"
            config.write_text(
                config.read_text() + "\n[api]\nrequests_per_second = 1000000.0\nburst = 1000000\n"
            )
            with Registry.open(home) as registry:
                registry.push("org/bench", make_model(Path(scratch) / "m", shards=2, seed=1))
                token = registry.create_token("bench", role=READER, models=["*"])[1]
            for repeat in range(args.repeat):
                for mode in modes if repeat % 2 == 0 else modes[::-1]:
                    figures = _round(home, mode, token, args.clients, args.seconds)
                    results[mode].append(figures)
                    label = "redis" if mode.startswith("redis") else mode
                    print(
                        f"round {repeat + 1} {label:8} {figures['rps']:7.1f} requests/s  "
                        f"p50 {figures['p50']:6.1f} ms  p99 {figures['p99']:6.1f} ms",
                        flush=True,
                    )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    base = statistics.median(r["rps"] for r in results["memory"])
    for mode, rounds in results.items():
        rps = statistics.median(r["rps"] for r in rounds)
        p99 = statistics.median(r["p99"] for r in rounds)
        label = "redis" if mode.startswith("redis") else mode
        print(
            f"{label:8} median {rps:7.1f} requests/s ({rps / base:.2f}x memory), p99 {p99:.1f} ms"
        )


if __name__ == "__main__":
    main()
