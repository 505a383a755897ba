"""Disaster-recovery figures on a two-region registry (the runbook in docs/operations.md quotes
them): restore drills, a full scrub, the journal's lag after a change, a catalog rebuild from the
secondary region alone, and a key rotation.

    .venv/bin/python bench/dr.py                     # the demo's model: 4 shards, 32 MiB
    .venv/bin/python bench/dr.py --shards 8 --shard-mib 128 --versions 2   # 1 GiB a version

Every step runs the CLI in a fresh process (what an operator runs), timed from outside, and the
command's own figures are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from registry.service import Registry
from registry.testing.models import make_model

CLI = [sys.executable, "-m", "cli"]


def run(*args: str, env: dict[str, str]) -> tuple[float, Any]:
    started = time.perf_counter()
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")
    try:
        return seconds, json.loads(done.stdout)
    except json.JSONDecodeError:
        return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=8)
    parser.add_argument("--versions", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary registry.")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dr-bench-"))
    home = root / "home"
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(home)}
    env.pop("MODEL_REGISTRY_URL", None)
    try:
        Registry.init(home, store=[str(root / "region-a"), str(root / "region-b")])
        size = options.shards * options.shard_mib << 20
        with Registry.open(home) as registry:
            for number in range(1, options.versions + 1):
                model = make_model(
                    root / f"m{number}",
                    shards=options.shards,
                    shard_size=options.shard_mib << 20,
                    seed=number,
                )
                registry.push("bench/llama", model, message=f"version {number}")
                shutil.rmtree(model)
            registry.promote(f"bench/llama@{options.versions}", "production")
            registry.hold("bench/llama@1", reason="bench")
        print(
            f"registry: 2 local regions, {options.versions} versions of "
            f"{size / 2**20:.0f} MiB ({options.shards} shards), production = newest"
        )
        for region in ("region-1", "region-2"):
            seconds, report = run("drill", "--region", region, "--json", "-q", env=env)
            model = report["models"][0]
            print(
                f"drill --region {region}: {report['seconds']:.2f} s measured "
                f"({model['bytes'] / 2**20:.0f} MiB, "
                f"{model['bytes'] / max(model['seconds'], 1e-9) / 1e9:.2f} GB/s), "
                f"{seconds:.2f} s with process start"
            )
        seconds, report = run("drill", "--sample", "8", "--json", "-q", env=env)
        print(f"drill --sample 8: {report['seconds']:.2f} s measured, {seconds:.2f} s in all")
        seconds, report = run("verify", "--all", "--read-data", "--json", "-q", env=env)
        print(f"verify --all --read-data: {report['objects']} objects, {seconds:.2f} s")
        seconds, report = run("catalog", "journal", "--json", env=env)
        print(
            "catalog journal: "
            + ", ".join(
                f"{r['region']} at entry {r['journal_seq']}, {r['behind']} behind" for r in report
            )
            + f" ({seconds:.2f} s)"
        )
        catalog = home / "catalog.db"
        catalog.rename(root / "lost-catalog.db")
        seconds, report = run("catalog", "rebuild", "--from", "region-2", "--json", env=env)
        print(
            f"catalog rebuild --from region-2: {report['journal_entries']} journal entries, "
            f"{report['restored']['versions']} versions, {report['restored']['placements']} "
            f"copies read back, {report['seconds']:.2f} s measured, {seconds:.2f} s in all"
        )
        seconds, report = run(
            "keys", "rotate", "--to", str(root / "new-kek.key"), "--json", "-q", env=env
        )
        print(
            f"keys rotate: {report['objects']} objects, {report['slots_written']} slots "
            f"written, {report['old_slot_objects_deleted']} old slot objects deleted, "
            f"{report['seconds']:.2f} s measured, {seconds:.2f} s in all"
        )
    finally:
        if options.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
