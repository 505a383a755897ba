"""Versions' metadata and tags written straight into the catalog, for tests and benchmarks: this
module's one job is to stand in for the push that records a version's metadata (`push --meta`,
its source and lineage: rows of `version_meta`, one per key) until that push exists, and to give
a seeded catalog (`registry.testing.seed`) metadata and tags at scale.

`write_meta` writes one version's rows as the push will (keys `meta.<key>`, `source.repo`,
`source.commit`, `source.run_url`, `base_model`, `dataset.<name>`); `seed_metadata` gives every
version of a seeded catalog a realistic set of them (about seven rows a version: its repository,
commit and CI run, a base model, one or two datasets, a few hyperparameters and an eval score)
and tags a share of the versions (`eval-passed`, `nightly`, release candidates, ...). Neither is
journaled or audited: they are fixtures, like the seed itself. The same `seed` gives the same
rows.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from registry.catalog.models import Model, Tag, Version, VersionMeta
from registry.errors import NotFoundError
from registry.refs import parse_reference

__all__ = ["BASE_MODELS", "DATASETS", "TAGS", "seed_metadata", "write_meta"]

BASE_MODELS = (
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B",
    "mistralai/Mistral-7B-v0.3",
    "Qwen/Qwen2.5-7B",
    "google/gemma-2-9b",
    "microsoft/phi-3-mini-4k",
)
DATASETS = ("dolly-15k", "oasst2", "ultrachat", "internal-support-v3", "code-alpaca", "mmlu-aux")
# (tag, share of versions that carry it)
TAGS = (
    ("eval-passed", 0.30),
    ("nightly", 0.20),
    ("rc", 0.02),
    ("release-2026.11", 0.005),
    ("deprecated", 0.03),
    ("gpu-a100", 0.10),
)
_BATCH = 40_000


def write_meta(engine: Engine, ref: str, meta: Mapping[str, str]) -> None:
    """Record `meta` (key -> value) as the metadata of version `ref` (`NAME@N`), replacing
    any it had: what a push with metadata writes."""
    reference = parse_reference(ref)
    with engine.begin() as connection:
        version_id = connection.scalar(
            select(Version.id)
            .join(Model, Model.id == Version.model_id)
            .where(Model.name == reference.name, Version.number == reference.number)
        )
        if version_id is None:
            raise NotFoundError(f"{ref} does not exist")
        connection.execute(delete(VersionMeta).where(VersionMeta.version_id == version_id))
        if meta:
            connection.execute(
                insert(VersionMeta),
                [{"version_id": version_id, "key": k, "value": v} for k, v in meta.items()],
            )


def seed_metadata(engine: Engine, *, seed: int = 0) -> dict[str, float]:
    """Give every version of the catalog behind `engine` metadata rows and some tags (see the
    module's docstring); what was written: `rows`, `tags`, `seconds`."""
    started = time.perf_counter()
    rng = random.Random(seed)
    with engine.connect() as connection:
        versions = connection.execute(
            select(Version.id, Version.number, Model.name)
            .join(Model, Model.id == Version.model_id)
            .order_by(Version.id)
        ).all()
    at = datetime.now(UTC)
    rows = tags = 0
    meta_batch: list[dict[str, Any]] = []
    tag_batch: list[dict[str, Any]] = []
    for version_id, number, name in versions:
        for key, value in _meta(rng, name, number).items():
            meta_batch.append({"version_id": version_id, "key": key, "value": value})
        for tag, share in TAGS:
            if rng.random() < share:
                tag_batch.append(
                    {"version_id": version_id, "tag": tag, "added_at": at, "added_by": "seeder"}
                )
        if len(meta_batch) >= _BATCH:
            rows += _flush(engine, VersionMeta, meta_batch)
            tags += _flush(engine, Tag, tag_batch)
    rows += _flush(engine, VersionMeta, meta_batch)
    tags += _flush(engine, Tag, tag_batch)
    return {"rows": rows, "tags": tags, "seconds": round(time.perf_counter() - started, 2)}


def _flush(
    engine: Engine, table: type[VersionMeta] | type[Tag], batch: list[dict[str, Any]]
) -> int:
    count = len(batch)
    if batch:
        with engine.begin() as connection:
            connection.execute(insert(table), batch)
        batch.clear()
    return count


def _meta(rng: random.Random, name: str, number: int) -> dict[str, str]:
    """One version's metadata: source, lineage, datasets, a few hyperparameters."""
    org, _, model = name.partition("/")
    found = {
        "source.repo": f"https://github.com/{org}/{model}",
        "source.commit": f"{rng.getrandbits(160):040x}",
        "source.run_url": f"https://ci.example.com/{org}/{model}/runs/{rng.randint(1, 10**7)}",
        "base_model": BASE_MODELS[zlib.crc32(name.encode()) % len(BASE_MODELS)]
        if number == 1 or rng.random() < 0.5
        else f"{name}@{number - 1}",
        "meta.lr": f"{rng.choice((1, 2, 3, 5))}e-{rng.choice((4, 5, 6))}",
        "meta.epochs": str(rng.randint(1, 5)),
        "meta.eval.mmlu": f"{rng.uniform(0.4, 0.8):.3f}",
    }
    for dataset in rng.sample(DATASETS, rng.randint(1, 2)):
        found[f"dataset.{dataset}"] = f"rev-{rng.getrandbits(32):08x}"
    return found
