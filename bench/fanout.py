"""Fan-out: N loaders of one version straight from `model-registry serve` against N loaders
through nginx in front of it (deploy/nginx/objects-cache.conf), in the same run: the wall time
of the N concurrent loads, the bytes the server sent and its CPU seconds.

    .venv/bin/python bench/fanout.py --size-mib 128 --loaders 8

The server runs in its own process (one uvicorn worker) on a fresh home, nginx (Debian's
nginx-light) in its own; the loaders are threads of this process (`registry.loader.load`, CPU,
numpy, no local cache), each with its own RemoteRegistry. Rounds: direct, through the cache
while it is empty (the first loads fill it), and through the filled cache.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from registry import loader
from registry.client import RemoteRegistry
from registry.service import READER, Registry
from registry.testing.models import make_model

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _bytes_sent(origin: str) -> float:
    with urllib.request.urlopen(f"{origin}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(r"^model_registry_bytes_sent_total (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def _nginx_config(origin_port: int, port: int, root: Path) -> str:
    conf = (ROOT / "deploy" / "nginx" / "objects-cache.conf").read_text()
    conf = conf.replace("127.0.0.1:8080", f"127.0.0.1:{origin_port}")
    conf = conf.replace("listen 8081;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("/var/cache/nginx/model-registry", str(root / "cache"))
    temps = "".join(
        f"    {kind}_temp_path {root}/tmp/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = conf.replace("http {", f"http {{\n{temps}    access_log off;\n", 1)
    user = "user root;\n" if os.getuid() == 0 else ""
    return f"daemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n{user}" + conf


def _round(origin: str, cache: str, loaders: int, server_pid: int) -> tuple[float, float, float]:
    """(seconds, bytes the server sent, server CPU seconds) of `loaders` concurrent loads."""
    sent, cpu = _bytes_sent(origin), _cpu_of(server_pid)
    token = os.environ["BENCH_TOKEN"]
    start = threading.Barrier(loaders + 1)
    failures: list[BaseException] = []

    def load() -> None:
        try:
            with RemoteRegistry(origin, token, cache_url=cache) as remote:
                start.wait()
                loader.load("bench/m@1", registry=remote, framework="numpy", cache=False)
        except BaseException as error:  # noqa: BLE001 - reported after the round
            failures.append(error)

    threads = [threading.Thread(target=load) for _ in range(loaders)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if failures:
        raise failures[0]
    return seconds, _bytes_sent(origin) - sent, _cpu_of(server_pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--loaders", type=int, default=8)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    root = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    home = root / "home"
    os.environ.update(MODEL_REGISTRY_HOME=str(home), MODEL_REGISTRY_ACTOR="bench@local")
    os.environ.pop("MODEL_REGISTRY_CACHE_URL", None)
    shard = args.size_mib * 1024 * 1024 // 4
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("bench/m", make_model(root / "model", shards=4, shard_size=shard, seed=3))
        os.environ["BENCH_TOKEN"] = registry.create_token("b", role=READER, models=["*"])[1]
    origin_port, port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(origin_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (root / "cache").mkdir()
    (root / "tmp").mkdir()
    (root / "nginx.conf").write_text(_nginx_config(origin_port, port, root))
    cache = subprocess.Popen([nginx, "-c", str(root / "nginx.conf"), "-p", str(root)])
    origin, through = f"http://127.0.0.1:{origin_port}", f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{origin}/healthz")
        _wait_for(f"{through}/healthz")
        rounds = {
            "direct": _round(origin, "", args.loaders, server.pid),
            "cache, empty": _round(origin, through, args.loaders, server.pid),
            "cache, filled": _round(origin, through, args.loaders, server.pid),
        }
    finally:
        for process in (cache, server):
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    base_seconds, base_sent, base_cpu = rounds["direct"]
    print(f"{args.loaders} loaders x {args.size_mib} MiB, {os.cpu_count()} cores")
    print("round            seconds  x direct   server sent MiB  x direct   server CPU s")
    for name, (seconds, sent, cpu) in rounds.items():
        print(
            f"{name:15} {seconds:8.2f} {seconds / base_seconds:9.2f} "
            f"{sent / 2**20:17.1f} {sent / base_sent:9.3f} {cpu:14.2f}"
            f"  ({cpu / base_cpu:.2f}x)"
        )


if __name__ == "__main__":
    main()
