"""Push and pull of one model through the REST API on loopback vs directly on the local home, in
the same run, alternating (issue 5's aim: the API at >= 0.7x of direct).

    .venv/bin/python bench/api_push_pull.py --size-mib 1024 --repeat 2

The server is `model-registry serve` in its own process (one uvicorn worker) on a fresh home;
the client is `registry.client.RemoteRegistry` in this process (what the CLI uses). Direct runs
use a second fresh home with the same store settings. Each round pushes the model as a new model
name (nothing deduplicated) and pulls it into a fresh folder; the best time of each is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from registry.client import RemoteRegistry
from registry.service import ADMIN, Registry
from registry.testing.models import make_model


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/api"))
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"model-{args.size_mib}m"
    if not model.exists():
        make_model(model, shards=8, shard_size=args.size_mib * 1024 * 1024 // 8, seed=5)
    size = sum(p.stat().st_size for p in model.iterdir())
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
                for label, registry in (("api ", remote), ("", direct)):
                    name = f"bench/m{round_}"
                    started = time.perf_counter()
                    registry.push(name, model)
                    times[f"{label}push"].append(time.perf_counter() - started)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
