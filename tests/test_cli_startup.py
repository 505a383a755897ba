"""CLI start-up (docs/benchmarks.md, "CLI start-up"): `--help`, `ls` and `show` import only what
they use. Timing is machine-dependent, so this checks what the time went to instead: the heavy
modules each of these commands used to import stay out of the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.config import DEFAULT_CHUNK_SIZE
from registry.digest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from registry.service import Registry
from registry.testing.models import make_model

# Run the command, then write the names of every module the process imported.
_RUN = """
import atexit, json, sys
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(sorted(sys.modules))))
from cli.main import main
main(sys.argv[2:], prog_name="model-registry")
"""
# What none of them needs: SQLAlchemy and Alembic (the catalog is read with sqlite3), the stores
# and their clients, the sealed format, the JSON models, progress bars, the server, the loader.
NEVER = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "boto3",
    "botocore",
    "registry.catalog.repository",
    "registry.catalog.db",
    "registry.replication",
    "registry.blobstore",
    "registry.journal",
    "registry.crypto.sealed",
    "registry.crypto.kms",
    "registry.wire.versions",
    "msgspec",
    "rich.progress",
    "litestar",
    "httpx",
    "torch",
    "numpy",
)
# `--help` and `ls` do not check signatures or parse manifests either.
LISTING = (*NEVER, "registry.manifest", "registry.reports", "registry.safetensors_header")


def _imported(home: Path, *args: str, tmp_path: Path) -> set[str]:
    listing = tmp_path / "modules.json"
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(home)}
    env.pop("MODEL_REGISTRY_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", _RUN, str(listing), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(listing.read_text()))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.fixture
def listed(home: Path, tmp_path: Path) -> Path:
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/llama", make_model(tmp_path / "m", shards=2, shard_size=20_000))
        registry.promote("org/llama@1", "production")
    return home


@pytest.mark.parametrize(
    ("args", "unused"),
    [
        (("--help",), LISTING),
        (("ls",), LISTING),
        (("ls", "org/llama"), LISTING),
        (("show", "org/llama:production"), NEVER),
    ],
    ids=["help", "ls", "ls-name", "show"],
)
def test_help_ls_and_show_import_only_what_they_use(
    listed: Path, tmp_path: Path, args: tuple[str, ...], unused: tuple[str, ...]
) -> None:
    assert not _loaded(_imported(listed, *args, tmp_path=tmp_path), unused)


def test_the_default_chunk_size_needs_no_check() -> None:
    # Settings skip the sealed format's bounds (and its import) for the default size.
    assert MIN_CHUNK_SIZE <= DEFAULT_CHUNK_SIZE <= MAX_CHUNK_SIZE
