"""Fleet load: N `model-registry serve` processes on one PostgreSQL catalog and one local store,
driven by C concurrent clients doing what serving nodes do (issue 21, "throughput of the fleet").

    PYTHONPATH=. .venv/bin/python bench/fleet.py --processes 3 --clients 300 --seconds 30
    PYTHONPATH=. .venv/bin/python bench/fleet.py --processes 1 --clients 40 --push-mib 64
    PYTHONPATH=. .venv/bin/python bench/fleet.py --processes 3 --clients 100 --soak 30

(PYTHONPATH picks the checkout whose `registry` and `cli` are measured: the servers are started
with the same environment, from a scratch folder, so `python -m cli` is that checkout's too.)

What it does: creates a PostgreSQL database of its own (`fleet_<random>`, through `--pg-admin`,
dropped at the end), initialises a home on it with a local store in a scratch folder, raises the
home's `[api]` rate limits and threat-signal thresholds out of the way (a fleet of serving nodes
is what they would throttle), pushes a model (`--model-mib` MiB in 4 safetensors shards), creates
`--tokens` reader tokens (the serving nodes) and starts `--processes` servers (`model-registry
serve`, one uvicorn worker each) on free loopback ports.

Then `--clients` asyncio tasks (httpx, one connection pool per server) each loop as a serving
node loading the model: GET /v1/version (resolve and show the version), POST /v1/keys (the key
broker, audited), then `--ranges` ranged ciphertext reads of `--range-kib` KiB at random offsets
of random shards (GET /v1/blob), every request sent to the next server in turn. After
`--warmup` seconds, for `--seconds` seconds, it measures:

- requests/s and p50/p95/p99 latency, in all and per kind (only requests that started inside
  the window count; errors are counted by status and left out of the latencies);
- the servers' CPU seconds per request (user + system, from /proc/PID/stat, the servers and
  their children), and this process's own (the clients share the machine);
- PostgreSQL lock waits: pg_stat_activity sampled every 50 ms for sessions of the database in a
  `Lock` wait (and of those, on an advisory lock: the catalog's write lock); the share of samples
  with a waiter, the mean and the most waiting at once;
- the catalog's write transactions per key-broker call over the whole run (journal entries
  added: each write transaction adds one) and the audit entries added;
- the machine's load average (1 min) at the start and end of the window (it may be shared).

`--only keys` (or `show`, `blob`) sends that kind of request alone: `--only keys` puts the key
broker's audited write path under load by itself.

`--push-mib M` adds a push's duration under read load: a push of M MiB of fresh content through
the REST API (RemoteRegistry, to the first server) with no load first, then another (fresh
content again) started as the window opens; the window lasts until it ends.

`--soak MINUTES` runs the load that long and prints each server's RSS (VmRSS) every minute, with
that minute's requests/s.

`--json FILE` writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from registry.client import RemoteRegistry
from registry.service import ADMIN, READER, Registry
from registry.testing.models import make_model

LIMITS = """
[api]
requests_per_second = 1000000.0
burst = 1000000
key_requests_per_second = 1000000.0
key_burst = 1000000
transfer_requests_per_second = 1000000.0
transfer_burst = 1000000
signal_distinct_models = 1000000
signal_unwraps = 1000000000
"""
MODEL = "fleet/m"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _family(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn may run the app in a child)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                queue.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its descendants so far."""
    total = 0.0
    for member in _family(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _rss_mib(pid: int) -> float:
    total = 0.0
    for member in _family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextlib.contextmanager
def _database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards."""
    name = f"fleet_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class LockSampler(threading.Thread):
    """pg_stat_activity of one database every `every` seconds: sessions in a Lock wait."""

    def __init__(self, engine: Engine, database: str, *, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.engine, self.database, self.every = engine, database, every
        self.samples: list[tuple[int, int]] = []  # (lock waiters, of which advisory)
        self.stopped = threading.Event()

    def run(self) -> None:
        query = text(
            "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),"
            " count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'advisory')"
            " FROM pg_stat_activity WHERE datname = :db"
        )
        with self.engine.connect() as connection:
            while not self.stopped.wait(self.every):
                waiting, advisory = connection.execute(query, {"db": self.database}).one()
                connection.commit()
                self.samples.append((int(waiting), int(advisory)))

    def summary(self) -> dict[str, float]:
        waits = [w for w, _a in self.samples] or [0]
        advisory = [a for _w, a in self.samples] or [0]
        return {
            "samples": len(self.samples),
            "share_with_waiter": sum(1 for w in waits if w) / len(waits),
            "mean_waiting": statistics.fmean(waits),
            "max_waiting": max(waits),
            "mean_waiting_advisory": statistics.fmean(advisory),
        }


@dataclass
class Load:
    """What the clients did: (kind, started, seconds, status) per request."""

    servers: list[str]
    tokens: list[str]
    files: list[tuple[str, int]]
    ranges: int
    range_bytes: int
    only: str | None = None  # one kind of request ("keys": the key broker alone)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    done: list[tuple[str, float, float, int]] = field(default_factory=list)
    # Requests that got no answer (status 0 in `done`), by the client's exception.
    failures: dict[str, int] = field(default_factory=dict)
    turn: int = 0

    def next_server(self) -> int:
        self.turn += 1
        return self.turn % len(self.servers)


async def _timed(load: Load, kind: str, send: Any) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response: httpx.Response = await send
        status = response.status_code
    except httpx.HTTPError as error:
        response, status = None, 0
        name = type(error).__name__
        load.failures[name] = load.failures.get(name, 0) + 1
    load.done.append((kind, started, time.monotonic() - started, status))
    return response


async def _serving_node(load: Load, clients: list[httpx.AsyncClient], index: int) -> None:
    token = load.tokens[index % len(load.tokens)]
    headers = {"Authorization": f"Bearer {token}"}
    ref = f"{MODEL}@1"
    rng = random.Random(index)
    while not load.stop.is_set():
        if load.only in (None, "show"):
            client = clients[load.next_server()]
            await _timed(
                load, "show", client.get("/v1/version", params={"ref": ref}, headers=headers)
            )
        if load.only in (None, "keys"):
            client = clients[load.next_server()]
            await _timed(load, "keys", client.post("/v1/keys", json={"ref": ref}, headers=headers))
        for _ in range(load.ranges if load.only in (None, "blob") else 0):
            path, size = rng.choice(load.files)
            start = rng.randrange(max(1, size - load.range_bytes))
            ranged = {**headers, "Range": f"bytes={start}-{start + load.range_bytes - 1}"}
            client = clients[load.next_server()]
            await _timed(
                load,
                "blob",
                client.get("/v1/blob", params={"ref": ref, "path": path}, headers=ranged),
            )


@dataclass
class Servers:
    processes: list[subprocess.Popen[bytes]]
    urls: list[str]

    def cpu(self) -> float:
        return sum(_cpu_of(p.pid) for p in self.processes)

    def rss(self) -> list[float]:
        return [round(_rss_mib(p.pid), 1) for p in self.processes]


def _start_servers(home: Path, count: int, scratch: Path) -> Servers:
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(home)}
    processes, urls = [], []
    for index in range(count):
        port = _free_port()
        log = (scratch / f"server-{index}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--port", str(port)],
                env=env,
                cwd=scratch,  # not a checkout: `-m cli` is PYTHONPATH's
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 90
    for url, process in zip(urls, processes, strict=True):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"a server did not start; see {scratch}/server-*.log")
            time.sleep(0.2)
    return Servers(processes, urls)


def _counts(engine: Engine) -> tuple[int, int]:
    """(journal entries, audit entries): the catalog's write transactions and its audit rows."""
    with engine.connect() as connection:
        journal = connection.execute(text("SELECT count(*) FROM journal_entries")).scalar_one()
        audit = connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
    return int(journal), int(audit)


def _push(url: str, token: str, model: Path, name: str) -> float:
    with RemoteRegistry(url, token) as remote:
        started = time.perf_counter()
        remote.push(name, model)
        return time.perf_counter() - started


async def _drive(
    load: Load,
    args: argparse.Namespace,
    servers: Servers,
    sampler: LockSampler,
    push: tuple[str, str, Path] | None,
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    clients = [
        httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) for url in servers.urls
    ]
    tasks = [asyncio.create_task(_serving_node(load, clients, i)) for i in range(args.clients)]
    await asyncio.sleep(args.warmup)
    start = time.monotonic()
    cpu, mine, load_before = servers.cpu(), _cpu_self(), os.getloadavg()[0]
    sampler.start()
    pushed: asyncio.Future[float] | None = None
    if push is not None:
        pushed = asyncio.get_running_loop().run_in_executor(None, _push, *push, "fleet/pushed")
    soak: list[dict[str, Any]] = []
    length = args.soak * 60 if args.soak else args.seconds
    if args.soak:
        soak.append({"minute": 0, "rss_mib": servers.rss()})
        print(f"minute 0: RSS MiB {soak[-1]['rss_mib']}", flush=True)
        for minute in range(1, args.soak + 1):
            await asyncio.sleep(start + minute * 60 - time.monotonic())
            ended = [
                d for d in load.done if start + (minute - 1) * 60 <= d[1] < start + minute * 60
            ]
            soak.append({"minute": minute, "rss_mib": servers.rss(), "rps": len(ended) / 60})
            print(
                f"minute {minute}: RSS MiB {soak[-1]['rss_mib']}, {soak[-1]['rps']:.0f} req/s,"
                f" load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    else:
        await asyncio.sleep(length)
    push_seconds = await pushed if pushed is not None else None
    end = time.monotonic()
    cpu, mine = servers.cpu() - cpu, _cpu_self() - mine
    sampler.stopped.set()
    load_after = os.getloadavg()[0]
    load.stop.set()
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()
    window = [d for d in load.done if start <= d[1] < end]
    return {
        "seconds": end - start,
        "window": window,
        "server_cpu": cpu,
        "client_cpu": mine,
        "loadavg": [load_before, load_after],
        "push_under_load_s": push_seconds,
        "soak": soak,
    }


def _latencies(window: list[tuple[str, float, float, int]], seconds: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for kind in ("all", "show", "keys", "blob"):
        chosen = [d for d in window if kind in ("all", d[0])]
        ok = sorted(d[2] for d in chosen if 200 <= d[3] < 300)
        errors: dict[str, int] = {}
        for d in chosen:
            if not 200 <= d[3] < 300:
                errors[str(d[3])] = errors.get(str(d[3]), 0) + 1
        report[kind] = {
            "requests": len(chosen),
            "rps": len(chosen) / seconds,
            "p50_ms": _percentile(ok, 0.50) * 1000,
            "p95_ms": _percentile(ok, 0.95) * 1000,
            "p99_ms": _percentile(ok, 0.99) * 1000,
            "errors": errors,
        }
    return report


def _setup(args: argparse.Namespace, url: str, scratch: Path) -> tuple[Path, list[str], str]:
    home = scratch / "home"
    Registry.init(home, catalog_url=url)
    config = home / "config.toml"
    config.write_text(config.read_text() + LIMITS)
    shard = args.model_mib * 1024 * 1024 // 4
    model = make_model(scratch / "model", shards=4, shard_size=shard, seed=1)
    with Registry.open(home) as registry:
        registry.push(MODEL, model)
        tokens = [
            registry.create_token(f"node-{i}", role=READER, models=["fleet/*"])[1]
            for i in range(args.tokens)
        ]
        _record, admin = registry.create_token("pusher", role=ADMIN, models=["*"])
    shutil.rmtree(model)
    return home, tokens, admin


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="fleet-"))
    try:
        with _database(args.pg_admin) as url:
            home, tokens, admin = _setup(args, url, scratch)
            with Registry.open(home) as registry:
                version = registry.resolve(f"{MODEL}@1")
            files = [(f.path, f.size) for f in version.files if f.path.endswith(".safetensors")]
            push: tuple[str, str, Path] | None = None
            idle_push = None
            servers = _start_servers(home, args.processes, scratch)
            engine = create_engine(url)
            try:
                if args.push_mib:
                    part = args.push_mib * 1024 * 1024 // 4
                    idle = make_model(scratch / "idle", shards=4, shard_size=part, seed=2)
                    idle_push = _push(servers.urls[0], admin, idle, "fleet/idle")
                    loaded = make_model(scratch / "loaded", shards=4, shard_size=part, seed=3)
                    push = (servers.urls[0], admin, loaded)
                journal_before, audit_before = _counts(engine)
                load = Load(
                    servers.urls, tokens, files, args.ranges, args.range_kib * 1024, args.only
                )
                sampler = LockSampler(engine, url.rsplit("/", 1)[1])
                result = asyncio.run(_drive(load, args, servers, sampler, push))
                journal_after, audit_after = _counts(engine)
                keys_total = sum(1 for d in load.done if d[0] == "keys" and 200 <= d[3] < 300)
            finally:
                for process in servers.processes:
                    process.terminate()
                for process in servers.processes:
                    process.wait(30)
                engine.dispose()
        window, seconds = result.pop("window"), result["seconds"]
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.processor()}",
            "python": sys.version.split()[0],
            "command": " ".join(sys.argv),
            "processes": args.processes,
            "clients": args.clients,
            "only": args.only,
            **result,
            "latency": _latencies(window, seconds),
            "server_cpu_ms_per_request": 1000 * result["server_cpu"] / max(1, len(window)),
            "client_cpu_ms_per_request": 1000 * result["client_cpu"] / max(1, len(window)),
            "locks": sampler.summary(),
            "key_calls_whole_run": keys_total,
            "write_transactions_whole_run": journal_after - journal_before,
            "audit_entries_whole_run": audit_after - audit_before,
            "push_idle_s": idle_push,
            "unanswered_whole_run": load.failures,
        }
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _print(report: dict[str, Any]) -> None:
    print(
        f"{report['processes']} process(es), {report['clients']} clients, "
        f"{report['seconds']:.1f} s, load average {report['loadavg'][0]:.2f} -> "
        f"{report['loadavg'][1]:.2f}"
    )
    print("kind   requests   req/s   p50 ms   p95 ms   p99 ms   errors")
    for kind, row in report["latency"].items():
        print(
            f"{kind:5} {row['requests']:9} {row['rps']:7.1f} {row['p50_ms']:8.1f} "
            f"{row['p95_ms']:8.1f} {row['p99_ms']:8.1f}   {row['errors'] or ''}"
        )
    locks = report["locks"]
    print(
        f"server CPU {report['server_cpu_ms_per_request']:.2f} ms/request, client CPU "
        f"{report['client_cpu_ms_per_request']:.2f} ms/request; lock waits: "
        f"{100 * locks['share_with_waiter']:.1f}% of {locks['samples']} samples, mean "
        f"{locks['mean_waiting']:.2f} (advisory {locks['mean_waiting_advisory']:.2f}), "
        f"max {locks['max_waiting']}"
    )
    print(
        f"key-broker calls {report['key_calls_whole_run']}, catalog write transactions "
        f"{report['write_transactions_whole_run']}, audit entries "
        f"{report['audit_entries_whole_run']} (whole run)"
        + (
            f"; unanswered: {report['unanswered_whole_run']}"
            if report["unanswered_whole_run"]
            else ""
        )
    )
    if report["push_idle_s"] is not None:
        print(
            f"push: {report['push_idle_s']:.2f} s idle, {report['push_under_load_s']:.2f} s "
            "under load"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--tokens", type=int, default=8, help="serving nodes' reader tokens")
    parser.add_argument("--model-mib", type=int, default=16)
    parser.add_argument("--ranges", type=int, default=4, help="ciphertext ranges per load")
    parser.add_argument("--range-kib", type=int, default=256)
    parser.add_argument(
        "--only", choices=("show", "keys", "blob"), help="one kind of request, not the mix"
    )
    parser.add_argument("--push-mib", type=int, default=0, help="also time a push under load")
    parser.add_argument("--soak", type=int, default=0, metavar="MINUTES")
    parser.add_argument(
        "--pg-admin",
        default=os.environ.get(
            "MODEL_REGISTRY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
        help="a PostgreSQL URL allowed to create and drop databases",
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    report = run(args)
    _print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
