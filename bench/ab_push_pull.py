"""In-process push and pull of one model through two checkouts of the registry, to compare them
on one machine in one sitting (figures of different machines do not compare).

    git worktree add /tmp/old f05ca7f
    .venv/bin/python bench/ab_push_pull.py /tmp/old
    .venv/bin/python bench/ab_push_pull.py .

Each run: a 512 MiB model in 4 shards (generated once under --workdir), then --repeat rounds of
`Registry.init` in a fresh home, `push`, `pull` into a fresh folder; prints the best GB/s of each.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="root of the registry checkout to measure")
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/ab"))
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout.resolve()))
    from registry.service import Registry
    from registry.testing.models import make_model

    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"model-{args.size_mib}m"
    if not model.exists():
        make_model(model, shards=4, shard_size=args.size_mib * 1024 * 1024 // 4, seed=3)
    size = sum(p.stat().st_size for p in model.iterdir())
    push = pull = float("inf")
    for _ in range(args.repeat):
        home = Path(tempfile.mkdtemp(dir=work))
        try:
            Registry.init(home)
            with Registry.open(home) as registry:
                started = time.perf_counter()
                registry.push("m", model)
                push = min(push, time.perf_counter() - started)
                started = time.perf_counter()
                registry.pull("m", home / "out")
                pull = min(pull, time.perf_counter() - started)
        finally:
            shutil.rmtree(home)
    print(f"{args.checkout}: push {size / push / 1e9:.2f} GB/s  pull {size / pull / 1e9:.2f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
