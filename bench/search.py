"""Answer times of `search` (issue 20) on a catalog of 1,000 models and 100,000 versions, each
version with about eight metadata rows (850,000 in all) and a share of them tagged.

    PYTHONPATH=. .venv/bin/python bench/search.py --copy /tmp/ui-seed-home --json out.json
    PYTHONPATH=. .venv/bin/python bench/search.py --catalog-url postgresql+psycopg://…/db

With `--copy DIR`, a home seeded by bench/ui_pages.py (`registry.testing.seed`) is copied into a
temporary folder first (the original is never written: the copy's catalog is migrated and given
its metadata); with `--catalog-url`, a fresh home on that (empty) database is seeded here (about
90 s); otherwise a temporary SQLite home is; `--home DIR` times a home prepared before. Metadata
and tags come from `registry.testing.metadata.seed_metadata` (the push that records metadata
writes the same rows).

Each query runs in this process through the facade (`Registry.search`, as the CLI's local
`search` and the API's route call it), `--warmup` (2) untimed then `--repeat` (7) timed; the
table gives the median and the fastest wall time and the median CPU time of this process, in
ms, the hits and whether more matched. The queries:
an exact `key=value` (the index), words many versions hold (a tag, a metadata key, a message
word: found among the newest versions), a word only one model's versions hold and one nothing
holds (a pass over the older versions: the worst case), a word in every model's name, the same
within one organisation's models (`--model`) and within a token's patterns, and 500 hits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from registry.service import Registry
from registry.testing.metadata import seed_metadata
from registry.testing.seed import seed_catalog

QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("base_model=Qwen/Qwen2.5-7B", {}),
    ("source.commit=0000000000000000000000000000000000000000", {}),
    ("eval-passed", {}),
    ("dolly", {}),
    ("<script>", {}),
    ("model", {}),
    ("model-0295", {}),
    ("zzz-nothing", {}),
    ("dolly", {"model": "org-37/*"}),
    ("dolly", {"patterns": ("org-1*",)}),
    ("dolly", {"limit": 500}),
]


def _home(args: argparse.Namespace, scratch: Path) -> Path:
    home = scratch / "home"
    if args.copy is not None:
        shutil.copytree(args.copy, home)
        config = home / "config.toml"
        config.write_text(config.read_text().replace(str(args.copy), str(home)))
        for log in home.glob("*.log"):
            log.unlink()
        print(f"copied {args.copy} to {home}", file=sys.stderr)
    else:
        Registry.init(home, catalog_url=args.catalog_url)
        started = time.perf_counter()
        seed_catalog(home, models=args.models, versions=args.versions)
        print(f"seeded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    with Registry.open(home) as registry:  # migrates a copied catalog to this release's schema
        written = seed_metadata(registry.catalog.engine)
        if registry.catalog.engine.dialect.name == "sqlite":
            with registry.catalog.engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
        else:
            with registry.catalog.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "ANALYZE"
                )
    print(f"metadata: {written}", file=sys.stderr)
    return home


def _time(
    registry: Registry, query: str, options: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    for _ in range(args.warmup):
        registry.search(query, **options)
    times, cpu = [], []
    for _ in range(args.repeat):
        started, used = time.perf_counter(), time.process_time()
        result = registry.search(query, **options)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - used) * 1000)
    return {
        "query": query,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "hits": len(result.hits),
        "more": result.more,
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        # This process's CPU time: all of a SQLite search (the database runs in the process),
        # less sensitive than wall time to other work on the machine; on PostgreSQL the
        # client's share only.
        "cpu_ms": round(statistics.median(cpu), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copy", type=Path, help="a seeded SQLite home to copy (not changed)")
    parser.add_argument("--home", type=Path, help="a home this script prepared before, as it is")
    parser.add_argument("--catalog-url", help="seed a fresh home on this empty database")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as scratch:
        home = args.home if args.home is not None else _home(args, Path(scratch))
        with Registry.open(home) as registry:
            rows = [_time(registry, query, options, args) for query, options in QUERIES]
            backend = registry.catalog.engine.dialect.name
    load = os.getloadavg()[0]
    print(f"search on {backend}, {platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}")
    print("| query | options | hits | more | median ms | fastest ms | CPU ms (this process) |")
    print("|---|---|---:|---|---:|---:|---:|")
    for row in rows:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "-"
        print(
            f"| `{row['query']}` | {options} | {row['hits']} | {row['more']} | "
            f"{row['median_ms']} | {row['min_ms']} | {row['cpu_ms']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"backend": backend, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
