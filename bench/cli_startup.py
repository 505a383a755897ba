"""CLI start-up: wall and CPU time of `--help`, `ls`, `ls NAME` and `show REF`, each command its
own process, and the start-up part of push, pull and verify (from launch to their first progress
`begin`: the first byte hashed or read), optionally against another checkout run alternately.

    .venv/bin/python bench/cli_startup.py                          # this checkout, N = 20
    .venv/bin/python bench/cli_startup.py --before ../old-checkout --repeat 15 --big-mib 1024

Makes its own home (a 4-shard 32 MiB model, one version; with --big-mib, a second model of that
size for the push of known content) in a temporary folder; every checkout reads the same home.
A checkout is chosen with PYTHONPATH; run each once first so that its bytecode is cached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from registry.service import Registry
from registry.testing.models import make_model

QUICK = ("--help", "ls", "ls demo/llama", "show demo/llama@1")
# Run the CLI, writing the time of its first progress `begin` to argv[1].
MARKED = r"""
import sys, time
import cli.ui as ui
begin = ui.ProgressBar.begin
def first(self, description, total):
    if not getattr(ui, "_marked", False):
        ui._marked = True
        open(sys.argv[1], "w").write(repr(time.time()))
    return begin(self, description, total)
ui.ProgressBar.begin = first
from cli.main import main
main(sys.argv[2:], prog_name="model-registry")
"""


def _run(checkout: Path, args: list[str], *, marked: bool = False) -> tuple[float, float, float]:
    """(wall, CPU, start-up) seconds of one command; start-up is 0 unless `marked`."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as scratch:
        mark = Path(scratch) / "mark"
        command = [sys.executable, "-c", MARKED, str(mark)] if marked else [sys.executable, "-m"]
        command += args if marked else ["cli", *args]
        started = time.time()
        # Run from the checkout: `-m` and `-c` put the working directory first on sys.path.
        process = subprocess.Popen(
            command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.time() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(args)} failed in {checkout}")
        first = float(mark.read_text()) - started if marked else 0.0
    return wall, usage.ru_utime + usage.ru_stime, first


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout, run alternately")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--big-mib", type=int, default=0, help="size of the push of known content")
    args = parser.parse_args()
    checkouts = {"after": Path(__file__).resolve().parents[1]}
    if args.before is not None:
        checkouts = {"before": args.before.resolve(), **checkouts}
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as workdir:
        root = Path(workdir)
        home = root / "home"
        os.environ["MODEL_REGISTRY_HOME"] = str(home)
        os.environ.pop("MODEL_REGISTRY_URL", None)
        Registry.init(home)
        model = make_model(root / "llama", shards=4, shard_size=8 << 20, seed=1)
        with Registry.open(home) as registry:
            registry.push("demo/llama", model)
            big = None
            if args.big_mib:
                big = make_model(root / "big", shards=4, shard_size=args.big_mib << 18, seed=2)
                registry.push("demo/big", big)
        quick = [command.split() for command in QUICK]
        slow = [
            ["push", "demo/llama", str(model), "-q"],
            ["pull", "demo/llama@1", str(root / "out"), "-q"],
            ["verify", "demo/llama@1", "--read-data", "-q"],
        ]
        if big is not None:
            slow.append(["push", "demo/big", str(big), "-q"])
        for command in [*quick, *slow]:
            marked = command in slow
            times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in checkouts}
            for checkout in checkouts.values():  # bytecode written, caches warm
                shutil.rmtree(root / "out", ignore_errors=True)
                _run(checkout, command, marked=marked)
            for _ in range(args.repeat):
                for name, checkout in checkouts.items():
                    shutil.rmtree(root / "out", ignore_errors=True)
                    times[name].append(_run(checkout, command, marked=marked))
            line = " ".join(command).replace(str(root) + "/", "")
            for name, runs in times.items():
                walls, cpus, firsts = zip(*runs, strict=True)
                line += f" | {name}: wall {_median(list(walls))}"
                line += f", start-up {_median(list(firsts))}" if marked else ""
                line += f", CPU {statistics.median(cpus):.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
