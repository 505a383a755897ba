"""Answer times of the web UI's pages on a registry of 1,000 models and 100,000 versions (issue 19:
every page under 100 ms), with the JSON API's listings beside them for comparison.

    PYTHONPATH=. .venv/bin/python bench/ui_pages.py --keep /tmp/ui-seed-home --json out.json

(PYTHONPATH makes this checkout's `registry` the one imported, where the virtualenv's editable
install points at another worktree.) The first run seeds the home (a few minutes); later runs with
the same `--keep DIR` reuse it. Without `--keep` a temporary home is seeded and deleted.

What it measures: the catalog is filled by `registry.testing.seed.seed_catalog` (`--models`,
`--versions`, `--seed`), an admin token for every model is created, and `model-registry serve`
runs in its own process (one uvicorn worker) on a free loopback port. This process signs in to
the UI (POST /ui/login with the token; the session cookie is kept) and times each page as a
client sees it: wall time from sending the GET to having read the whole body, sequential
requests on one keep-alive connection, `--warmup` (3) untimed then `--repeat` (30) timed. It
prints p50, p95 and max in ms, the body's size and status, and with `--json FILE` writes them.
Any status but 200 stops the run, except that a /ui page answering 404 is reported as skipped
(the UI, or that page of it, is not there yet).

The pages: the model list (first page, a search, the last page), the model with the most
versions (first page and a deep page), a model with aliases and legal holds, one version, the
diff of two consecutive versions, the audit trail (unfiltered, by a rare actor, by action, by
model), and the JSON API's pages with the bearer token: `/v1/models` (its first page of 100, and
`limit=1000`, every model here) and `/v1/versions?model=<the biggest>` (first page of 100, the
last 100 by `after`, and `limit=1000`); before the fleet work (issue 21) these two answered
everything unpaged. Page numbers assume `--page-size` (50) rows a page, the UI's.

The home's `[api]` rate limit is raised in its config.toml (the default, 50 requests a second
per token, would answer 429 to a benchmark). The server's CPU is only ever observed through
HTTP: nothing here reaches into its process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from registry.config import load_settings
from registry.service import ADMIN, Registry
from registry.testing.seed import seed_catalog

ROOT = Path(__file__).resolve().parents[1]
SEED_FILE = "bench-seed.json"
UI_TARGET_MS = 100.0
RATE_LIMITS = "\n[api]\nrequests_per_second = 100000.0\nburst = 100000\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _seeded_home(args: argparse.Namespace) -> tuple[Path, dict[str, Any], bool]:
    """The home to serve, its seed summary, and whether it is temporary."""
    if args.keep is not None and (args.keep / SEED_FILE).exists():
        summary = json.loads((args.keep / SEED_FILE).read_text())
        if (summary["models"], summary["versions"]) != (args.models, args.versions):
            raise SystemExit(
                f"{args.keep} was seeded with {summary['models']} models and "
                f"{summary['versions']} versions, not {args.models}/{args.versions}: "
                "give another --keep folder"
            )
        print(f"reusing the seeded home {args.keep}")
        return args.keep, summary, False
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        raise SystemExit(f"{args.keep} exists but holds no {SEED_FILE}: give an empty folder")
    home = args.keep or Path(tempfile.mkdtemp(prefix="ui-bench-")) / "home"
    Registry.init(home)
    print(f"seeding {home}: {args.models} models, {args.versions} versions ...", flush=True)
    seeded = seed_catalog(home, models=args.models, versions=args.versions, seed=args.seed)
    summary = dataclasses.asdict(seeded)
    (home / SEED_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"seeded in {seeded.seconds:.1f} s")
    return home, summary, args.keep is None


def _catalog_bytes(home: Path) -> int | None:
    """The SQLite catalog's size, its write-ahead log included (None on PostgreSQL)."""
    url = load_settings(home).catalog_url
    if not url.startswith("sqlite"):
        return None
    path = Path(url.split("///", 1)[1])
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _raise_rate_limits(home: Path) -> None:
    config = home / "config.toml"
    text = config.read_text()
    if "\n[api]" not in text:
        config.write_text(text + RATE_LIMITS)


def _pages(summary: dict[str, Any], facts: dict[str, Any], page_size: int) -> list[tuple[str, str]]:
    """(label, path) of every page to time."""
    big, count = summary["busiest"][0]
    featured = summary["featured"]
    n, previous = facts["version"], facts["previous"]
    last_models = max(1, math.ceil(summary["models"] / page_size))
    deep = max(1, math.ceil(count / page_size) // 2)
    q = quote(facts["q"])
    big_path, featured_path = quote(big, safe="/"), quote(featured, safe="/")
    actor = quote(facts["actor"])
    return [
        ("models, first page", "/ui/"),
        (f"models, search q={facts['q']}", f"/ui/?q={q}"),
        (f"models, last page ({last_models})", f"/ui/?page={last_models}"),
        (f"biggest model ({count} versions)", f"/ui/models/{big_path}"),
        (f"biggest model, page {deep}", f"/ui/models/{big_path}?page={deep}"),
        ("model with aliases and holds", f"/ui/models/{featured_path}"),
        (f"version {n} of the biggest", f"/ui/models/{big_path}/versions/{n}"),
        (f"diff {previous} -> {n}", f"/ui/models/{big_path}/diff?a={previous}&b={n}"),
        ("audit trail", "/ui/audit"),
        (f"audit, actor {facts['actor']}", f"/ui/audit?actor={actor}"),
        ("audit, action promote", "/ui/audit?action=promote"),
        ("audit, model (the biggest)", f"/ui/audit?model={quote(big)}"),
        ("API /v1/models (first page: 100)", "/v1/models"),
        ("API /v1/models?limit=1000", "/v1/models?limit=1000"),
        ("API /v1/versions (the biggest, first 100)", f"/v1/versions?model={quote(big)}"),
        (
            f"API /v1/versions (the biggest, after {count - 100})",
            f"/v1/versions?model={quote(big)}&after={count - 100}",
        ),
        (
            "API /v1/versions (the biggest, limit=1000)",
            f"/v1/versions?model={quote(big)}&limit=1000",
        ),
    ]


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _time_page(
    client: httpx.Client, path: str, headers: dict[str, str], warmup: int, repeat: int
) -> dict[str, Any]:
    """Warm up, then time `repeat` sequential GETs; a 404 of a /ui page comes back as skipped."""
    for _ in range(warmup):
        response = client.get(path, headers=headers)
        if response.status_code == 404 and path.startswith("/ui"):
            return {"status": 404, "skipped": _first_line(response.text)}
        _require_ok(response, path)
    times: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        _require_ok(response, path)
    ordered = sorted(times)
    return {
        "status": response.status_code,
        "bytes": len(response.content),
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(_percentile(ordered, 0.95), 2),
        "max_ms": round(ordered[-1], 2),
        "samples_ms": [round(t, 2) for t in times],
    }


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def _require_ok(response: httpx.Response, path: str) -> None:
    if response.status_code != 200:
        raise SystemExit(
            f"GET {path} answered {response.status_code}: {_first_line(response.text)}"
        )


def _sign_in(client: httpx.Client, token: str) -> bool:
    """Sign in to the UI; False when the server has no UI yet (404)."""
    response = client.post("/ui/login", data={"token": token})
    if response.status_code == 404:
        print("the server has no /ui/login (404): the UI is not on this branch yet, so every")
        print("/ui page is skipped and only the /v1 endpoints are timed")
        return False
    if response.status_code != 303 or not client.cookies:
        raise SystemExit(
            f"POST /ui/login answered {response.status_code} "
            f"({'no cookie' if not client.cookies else 'a cookie'}): "
            f"{_first_line(response.text)}"
        )
    return True


def _wait_for(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start; its log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def _facts(home: Path, summary: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A token, and the version numbers, search and actor the pages use."""
    big = summary["busiest"][0][0]
    with Registry.open(home) as registry:
        _record, token = registry.create_token("bench", role=ADMIN, models=["*"])
        live = [v.number for v in registry.versions(big)]
    # Two consecutive live versions in the middle of the biggest model's history.
    middle = next(i for i in range(len(live) // 2, len(live)) if live[i] - live[i - 1] == 1)
    actors = summary["actors"]
    return {
        "token": token,
        "version": live[middle],
        "previous": live[middle - 1],
        "q": args.q or big.split("/")[1][: len("model-00")],
        # A rare actor: a filter that few entries match is the slow case of a paged scan.
        "actor": args.actor
        or ("gita.counsel@legal" if "gita.counsel@legal" in actors else actors[0]),
    }


def _report(results: list[dict[str, Any]]) -> None:
    print(f"\n{'page':<38} {'status':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'bytes':>10}")
    for result in results:
        if "skipped" in result:
            print(f"{result['label']:<38} {'404':>6}  skipped: {result['skipped']}")
            continue
        over = "  over 100 ms" if result["ui"] and result["p95_ms"] > UI_TARGET_MS else ""
        print(
            f"{result['label']:<38} {result['status']:>6} {result['p50_ms']:>8.1f} "
            f"{result['p95_ms']:>8.1f} {result['max_ms']:>8.1f} {result['bytes']:>10}{over}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="seed this folder once and reuse it")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=50, help="rows per UI page")
    parser.add_argument("--q", help="model search (default: a prefix of the biggest's name)")
    parser.add_argument("--actor", help="audit actor filter (default: a rare one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep = args.keep.absolute()

    home, summary, temporary = _seeded_home(args)
    try:
        return _run(home, summary, args)
    finally:
        if temporary:
            shutil.rmtree(home.parent, ignore_errors=True)


def _run(home: Path, summary: dict[str, Any], args: argparse.Namespace) -> int:
    _raise_rate_limits(home)
    facts = _facts(home, summary, args)
    size = _catalog_bytes(home)
    print(
        f"catalog: {summary['models']} models, {summary['versions']} versions, "
        f"{summary['blobs']} blobs, {summary['audit_events']} audit entries"
        + ("" if size is None else f"; SQLite {size / 1e6:.0f} MB")
    )
    port = _free_port()
    log = home / "bench-server.log"
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(home), "PYTHONPATH": str(ROOT)}
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    try:
        _wait_for(url, server, log)
        with httpx.Client(base_url=url, timeout=120, follow_redirects=False) as client:
            ui = _sign_in(client, facts["token"])
            bearer = {"Authorization": f"Bearer {facts['token']}"}
            for label, path in _pages(summary, facts, args.page_size):
                is_ui = path.startswith("/ui")
                if is_ui and not ui:
                    result: dict[str, Any] = {"status": 404, "skipped": "no UI on this server"}
                else:
                    headers = {} if is_ui else bearer
                    result = _time_page(client, path, headers, args.warmup, args.repeat)
                results.append({"label": label, "path": path, "ui": is_ui, **result})
                print(f"  {label}: {'skipped' if 'skipped' in result else 'done'}", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    _report(results)
    if args.json is not None:
        document = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "home": str(home),
            "catalog": {**summary, "sqlite_bytes": size},
            "repeat": args.repeat,
            "warmup": args.warmup,
            "page_size": args.page_size,
            "pages": results,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
