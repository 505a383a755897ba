"""Push and pull of one model through the REST API on loopback vs directly on the local home, in
the same run, alternating (issue 5's aim: the API at >= 0.7x of direct).

    .venv/bin/python bench/api_push_pull.py --size-mib 1024 --repeat 2

The server is `model-registry serve` in its own process (one uvicorn worker) on a fresh home;
the client is `registry.client.RemoteRegistry` in this process (what the CLI uses). Direct runs
use a second fresh home with the same store settings. Each round pushes the model as a new model
name, with content of its own (nothing deduplicated), and pulls it into a fresh folder; the best
time of each is printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from registry.client import RemoteRegistry
from registry.service import ADMIN, Registry
from registry.testing.models import make_model


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Phases:
    """A progress sink that times the phases of a push through the API."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.ended = 0.0

    def begin(self, description: str, total: int) -> None:
        self.started, self.description = time.perf_counter(), description

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        self.ended = time.perf_counter()
        self.times[self.description] = self.ended - self.started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/api"))
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    models = []
    for round_ in range(args.repeat):
        # New content each round: a store deduplicates what it has seen, which is not a push.
        model = work / f"model-{args.size_mib}m-{round_}"
        if not model.exists():
            make_model(model, shards=8, shard_size=args.size_mib * 1024 * 1024 // 8, seed=round_)
        models.append(model)
    size = sum(p.stat().st_size for p in models[0].iterdir())
    scratch = Path(tempfile.mkdtemp(dir=work))
    served, direct_home = scratch / "served", scratch / "direct"
    Registry.init(served)
    Registry.init(direct_home)
    with Registry.open(served) as registry:
        _record, token = registry.create_token("bench", role=ADMIN, models=["*"])
    port = _free_port()
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(served)}
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {"api push": [], "api pull": [], "push": [], "pull": []}
    phases: list[dict[str, float]] = []
    cpu: dict[str, list[tuple[float, float]]] = {"api push": [], "push": []}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        with RemoteRegistry(url, token) as remote, Registry.open(direct_home) as direct:
            for round_ in range(args.repeat):
                sides: list[tuple[str, Any]] = [("api ", remote), ("", direct)]
                for label, registry in sides:
                    name = f"bench/m{round_}"
                    sink = _Phases()
                    client_cpu, server_cpu = _cpu_self(), _cpu_of(server.pid)
                    started = time.perf_counter()
                    registry.push(name, models[round_], progress=sink)
                    finished = time.perf_counter()
                    times[f"{label}push"].append(finished - started)
                    used = (_cpu_self() - client_cpu, _cpu_of(server.pid) - server_cpu)
                    cpu[f"{label}push"].append(used)
                    if label:
                        phases.append({**sink.times, "commit": finished - sink.ended})
                    out = scratch / f"out-{label.strip() or 'direct'}-{round_}"
                    started = time.perf_counter()
                    registry.pull(f"{name}@1", out)
                    times[f"{label}pull"].append(time.perf_counter() - started)
                    shutil.rmtree(out)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(scratch, ignore_errors=True)
    best = {key: min(values) for key, values in times.items()}
    print(f"model: {size / 2**20:.0f} MiB in 8 shards; best of {args.repeat}")
    for key in ("push", "pull"):
        api, local = best[f"api {key}"], best[key]
        print(
            f"{key}: direct {local:.2f} s ({size / local / 1e9:.2f} GB/s), "
            f"API {api:.2f} s ({size / api / 1e9:.2f} GB/s), ratio {local / api:.2f}x"
        )
    for round_, phase in enumerate(phases):
        (client, server_used), (direct_cpu, _) = cpu["api push"][round_], cpu["push"][round_]
        print(
            f"API push round {round_ + 1}: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in phase.items())
            + f"; CPU client {client:.2f} s + server {server_used:.2f} s"
            + f" vs direct {direct_cpu:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
