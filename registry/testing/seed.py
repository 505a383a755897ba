"""Fill an initialised registry's catalog with a large, realistic history, fast: this module's one
job is `seed_catalog`, the fixture of the web UI's benchmark (bench/ui_pages.py) and of tests that
need a catalog at scale.

What it writes, straight into the catalog tables of `registry.catalog.models` with SQLAlchemy
Core bulk inserts (one transaction per batch of a few tens of thousands of rows):

- models `org-NN/model-NNNN` under a few hundred organisations, their versions spread unevenly
  (about a tenth with one version, a few with several thousand, the rest around the mean);
- versions numbered 1..n per model, created over the past year in the order of their numbers,
  with messages of every length, markup (`<script>`, `[bold]`), control characters and unicode;
- their files (config.json, often tokenizer.json, 1 to 3 safetensors shards), a version sharing
  most of its blobs with its predecessor as a fine-tune does; one `blobs` row per distinct blob.
  config.json alone is real: JSON whose digest and chunk root are its own, sealed and written to
  every region as a push writes it, its key slots in the catalog (the UI shows a version's
  config and diffs two); the other files are rows only;
- each version's signed manifest, in the catalog's manifest cache: its digest is the version's
  digest and the home's signing key signs it, so `show` answers as for a pushed version;
- placements of every blob and manifest in every region of the home (mostly verified);
- aliases (production on about half the models, staging on some) with their moves (promotes and
  rollbacks with reasons), legal holds on a few hundred versions, a few expired or deleted
  versions, retention policies on some models;
- the audit trail of all of it (push, promote, rollback, protect-alias, hold, retention, expire,
  delete), in time order, each entry chained exactly as `registry.catalog.audit.append_audit`
  chains it, so `verify_audit` passes.

It is a fixture, not a history the registry lived through:

- No journal entries are written. The journal is an outbox the catalog's transactions fill and
  the stores keep a copy of; a benchmark fixture has no business in the stores' history, and the
  registry needs none to open the catalog. `Registry.verify_audit` checks the chain, then
  compares it with each region's journal: right after seeding, the seeded entries count there
  as not yet journaled (pending), not as differences; once a later change has been journaled (a
  token created, a push), the journal holds entries after them that it never held, and the
  comparison names them as inserted. The chain itself (`Catalog.verify_audit`) keeps verifying.
  A `catalog rebuild` from the stores would not bring the seeded rows back.
- The stores hold the config.json files and nothing else (no shard, tokenizer or manifest):
  pull, verify, scrub and replication of a seeded version fail; everything that reads the
  catalog works (listings, resolve, show, aliases and their history, holds, retention plans,
  the audit trail), and so does reading a version's config.json.
- The seeded year ends at `now` (the current time by default), so the entries `init` wrote before
  (with lower ids) are newer than the seeded ones: the audit trail is in id order, which is the
  chain's, not strictly in time order.

The same `seed` gives the same models, numbers, digests, messages, sizes, aliases, holds and
audit details; the times are offsets from `now` and the object names and signatures depend on
the home's keys. Seeding refuses a catalog that already has models, and expects no other writer
while it runs (it checks the audit chain's tail before each batch of entries).
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, func, insert, select, text

from registry.blobstore import BLOB, MANIFEST, seal_bytes
from registry.catalog.audit import AUDIT_LOCK, GENESIS, audit_hash
from registry.catalog.db import open_catalog_engine
from registry.catalog.models import (
    Alias,
    AliasMove,
    AuditEvent,
    Base,
    Blob,
    CachedManifest,
    KeySlot,
    LegalHold,
    Model,
    Placement,
    RetentionPolicy,
    Version,
    VersionFile,
)
from registry.catalog.parts import details_json
from registry.config import load_settings
from registry.crypto.keys import read_key_file
from registry.crypto.sealed import HEADER_SIZE, TAG_SIZE
from registry.crypto.signing import Signer
from registry.digest import chunk_root, hash_bytes, hash_chunk, keyed_id
from registry.errors import ConflictError, InvalidInputError
from registry.manifest import ENVELOPE_FORMAT, SCHEMA_V2, ChunkRoot, ManifestFile
from registry.replication import ReplicaSet, Replicated
from registry.retention import Policy
from registry.safetensors_header import DTYPE_BITS, SafetensorsHeader, TensorEntry
from registry.service import Registry

__all__ = ["SeedSummary", "seed_catalog"]

_YEAR = timedelta(days=365)
# Rows buffered before a transaction writes them: large enough that the per-transaction cost
# (an fsync on SQLite, a round trip on PostgreSQL) vanishes, small enough to keep memory flat.
_BATCH_ROWS = 40_000
_AUDIT_BATCH = 20_000
_PREFIX = {BLOB: "blobs", MANIFEST: "manifests"}

# Who pushes, promotes, holds: CI tokens push most, people the rest (tokens are named as the
# REST API names them in the audit trail: token:NAME:ID).
_PUSHERS = (
    ("token:ci-train:4f1c9a02d7e3b815", 30),
    ("token:ci-nightly:a93e07c2b1d45f60", 20),
    ("alice@ml-workstation-3", 10),
    ("bob@gpu-node-17", 8),
    ("chen.wei@research", 6),
    ("dana@laptop", 4),
    ("eve.ops@bastion", 2),
)
_PROMOTERS = ("token:release-bot:0be4c6f19d2a7e53", "alice@ml-workstation-3", "frank@sre-1")
_LEGAL = ("legal@compliance", "gita.counsel@legal")
_OPERATORS = ("ops@bastion", "frank@sre-1")

_DATASETS = ("dolly-15k", "oasst2", "ultrachat", "internal-support-v3", "code-alpaca", "mmlu-aux")
_MARKUP = (
    "<script>alert(1)</script>",
    "[bold]x[/bold] [link=https://evil.example]release notes[/link]",
    '<img src=x onerror="alert(document.cookie)"> & friends',
    "**bold** _italic_ `code` <b>html</b> &amp; &lt;tag&gt; {{ template }} ${shell}",
    "\x1b[31mred text\x1b[0m through ANSI escapes",
    "right-to-left override: \u202egnp.exe (zero\u200bwidth too)",
)
_UNICODE = (
    "模型更新：中文语料微调",
    "Ünïcödé ✓ — naïve café, Ωmega ≥ 3",
    "日本語のチューニング 🚀🔥",
    "Привет, мир: русская версия",
    "emoji only 🤖🧠📦",
)
_PROMOTE_REASONS = (
    "passed eval suite",
    "canary healthy for 24h",
    "weekly release",
    "hotfix for tokenizer regression",
    "A/B test winner (+2.1% win rate)",
    "",
)
_ROLLBACK_REASONS = (
    "regression on eval suite",
    "p99 latency up 30% in canary",
    "toxicity filter flagged outputs <see INC-4821>",
    "wrong tokenizer shipped",
    "customer escalation [bold]urgent[/bold]",
)
_HOLD_REASONS = (
    "litigation hold: case 2026-CV-0113",
    "regulator request REG-88/2026",
    "incident review INC-4821",
    "audit of training data provenance",
    "customer contract dispute <ACME Corp>",
)
_DELETE_REASONS = (
    "pushed with the wrong tokenizer",
    "contains evaluation data",
    "PII found in the fine-tuning set",
    "accidental push of a debug checkpoint",
)
_HIDDEN = (2048, 3072, 4096, 5120, 8192)


@dataclass(frozen=True)
class SeedSummary:
    """What `seed_catalog` wrote, and the models a benchmark looks at."""

    models: int
    versions: int
    files: int
    blobs: int
    manifests: int
    placements: int
    aliases: int
    alias_moves: int
    holds: int
    expired: int
    retention_policies: int
    audit_events: int
    seconds: float
    # The models with the most versions, most first: (name, versions).
    busiest: tuple[tuple[str, int], ...]
    # A model with production and staging aliases (a rollback in their history) and holds.
    featured: str
    featured_holds: tuple[int, ...]
    actors: tuple[str, ...]
    regions: tuple[str, ...]
    # Objects written to the stores (config.json files; nothing else is stored).
    stored_objects: int


@dataclass
class _Counts:
    files: int = 0
    blobs: int = 0
    placements: int = 0
    aliases: int = 0
    alias_moves: int = 0
    holds: int = 0
    expired: int = 0
    policies: int = 0


@dataclass(frozen=True)
class _Choices:
    """The picks made across the whole catalog before any model is written."""

    counts: list[int]
    names: list[str]
    expired: set[tuple[int, int]]  # (model index, version number)
    held: set[tuple[int, int]]
    policies: set[int]
    featured: int


@dataclass
class _Home:
    """What the seeded home gives: its keys, regions, chunk size, and its stores' writer."""

    naming: bytes
    signer: Signer
    regions: tuple[str, ...]
    chunk_size: int
    stores: _Stores


@dataclass
class _BlobSpec:
    """One distinct file content: its catalog facts, its manifest entry, and its bytes when it
    is stored for real (config.json)."""

    digest: str
    size: int
    entry: dict[str, Any]
    tensors: int
    parameters: int
    dtypes: tuple[str, ...]
    content: bytes | None = None


class _Stores:
    """Writes config.json files to every region of the home, sealed as a push seals them, on a
    few threads: each write is a handful of fsyncs, which one by one would dominate the seeding.
    The key slots and placements of what was written are buffered by `drain`."""

    def __init__(self, replicas: ReplicaSet, chunk_size: int) -> None:
        self._replicas = replicas
        self._chunk_size = chunk_size
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="seed-store")
        self._pending: list[tuple[datetime, Future[Replicated]]] = []
        self.objects = 0

    def put(self, digest: str, data: bytes, at: datetime) -> None:
        seal = functools.partial(seal_bytes, digest=digest, data=data, chunk_size=self._chunk_size)
        future = self._pool.submit(
            self._replicas.replicate, BLOB, digest, what=f"config.json {digest}", seal=seal
        )
        self._pending.append((at, future))
        self.objects += 1

    def drain(self, buffer: _Buffer) -> int:
        """Wait for the writes under way and buffer their rows; how many placements."""
        placed = 0
        for at, future in self._pending:
            result = future.result()
            for slot in result.slots:
                buffer.add(
                    KeySlot,
                    {
                        "digest": result.digest,
                        "purpose": BLOB,
                        "kek_id": slot.kek_id,
                        "provider": slot.provider,
                        "wrapped": slot.ciphertext,
                        "created_at": at,
                    },
                )
            for outcome in result.outcomes:
                buffer.add(
                    Placement,
                    {
                        "digest": result.digest,
                        "purpose": BLOB,
                        "region": outcome.region,
                        "object_name": result.object_name,
                        "state": outcome.state,
                        "checksum": outcome.checksum,
                        "detail": outcome.detail,
                        "updated_at": at,
                    },
                )
                placed += 1
        self._pending.clear()
        return placed

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Buffer:
    """Rows waiting for the next transaction, per table."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    size: int = 0

    def add(self, table: type[Base], row: dict[str, Any]) -> None:
        self.rows.setdefault(table.__tablename__, []).append(row)
        self.size += 1


# The order foreign keys need: parents before children.
_ORDER: tuple[type[Base], ...] = (
    Model,
    Version,
    Blob,
    VersionFile,
    CachedManifest,
    Placement,
    KeySlot,
    Alias,
    AliasMove,
    LegalHold,
    RetentionPolicy,
)
_Note = Callable[[datetime, str, str, dict[str, Any]], None]


def seed_catalog(
    home: Path,
    *,
    models: int = 1000,
    versions: int = 100_000,
    seed: int = 0,
    now: datetime | None = None,
) -> SeedSummary:
    """Fill the catalog of the registry in `home` (made by `Registry.init`, on SQLite or
    PostgreSQL as its settings say) with `models` models and `versions` versions in all, the
    newest at `now` (default: the current time); see the module's docstring for what is written."""
    if models < 1 or versions < models:
        raise InvalidInputError("seeding needs at least one model and one version per model")
    started = time.perf_counter()
    settings = load_settings(home)
    end = (now or datetime.now(UTC)).astimezone(UTC)
    rng = random.Random(seed)
    choices = _choose(rng, models, versions)
    registry = Registry.open(home)
    engine = open_catalog_engine(settings.catalog_url, registry_id=settings.registry_id)
    setup = _Home(
        naming=read_key_file(settings.naming_key_file, label="naming key"),
        signer=Signer.from_file(settings.signing_key_file),
        regions=tuple(region.name for region in settings.regions),
        chunk_size=settings.chunk_size,
        stores=_Stores(registry.replicas, settings.chunk_size),
    )
    try:
        # No models means no versions, aliases or moves either: their ids start at 1.
        with engine.connect() as connection:
            if connection.scalar(select(func.count()).select_from(Model)):
                raise ConflictError(
                    f"the catalog of {home} already has models: seed a fresh home",
                    hint="make one with `Registry.init` (or `model-registry init`)",
                )
        counts = _Counts()
        audit: list[tuple[datetime, int, str, str, str, str]] = []
        buffer = _Buffer()
        version_id = 0
        for index in range(models):
            version_id = _seed_model(
                index, choices, setup, end, seed, buffer, audit, counts, first_id=version_id + 1
            )
            if buffer.size >= _BATCH_ROWS:
                counts.placements += setup.stores.drain(buffer)
                _flush(engine, buffer)
        counts.placements += setup.stores.drain(buffer)
        _flush(engine, buffer)
        written = _write_audit(engine, audit)
        _advance_sequences(engine)
    finally:
        setup.stores.close()
        engine.dispose()
        registry.close()
    order = sorted(range(models), key=lambda i: (-choices.counts[i], i))
    featured = choices.featured
    return SeedSummary(
        models=models,
        versions=versions,
        files=counts.files,
        blobs=counts.blobs,
        manifests=versions,
        placements=counts.placements,
        aliases=counts.aliases,
        alias_moves=counts.alias_moves,
        holds=counts.holds,
        expired=counts.expired,
        retention_policies=counts.policies,
        audit_events=written,
        seconds=round(time.perf_counter() - started, 2),
        busiest=tuple((choices.names[i], choices.counts[i]) for i in order[:5]),
        featured=choices.names[featured],
        featured_holds=tuple(sorted(n for i, n in choices.held if i == featured)),
        actors=tuple(
            sorted({a for a, _ in _PUSHERS} | set(_PROMOTERS) | set(_LEGAL) | set(_OPERATORS))
        ),
        regions=setup.regions,
        stored_objects=setup.stores.objects,
    )


# -- what goes where, decided before anything is written ------------------------------------


def _choose(rng: random.Random, models: int, versions: int) -> _Choices:
    counts = _version_counts(rng, models, versions)
    names = _model_names(rng, models)
    # (model index, version number) of every version, in model order.
    spots = [
        (index, number) for index, count in enumerate(counts) for number in range(1, count + 1)
    ]
    # Expired: never a model's newest version, and only in models with a few versions.
    expirable = [(i, n) for i, n in spots if n < counts[i] and counts[i] >= 3]
    expired = set(rng.sample(expirable, min(len(expirable), max(2, versions // 400))))
    live = [spot for spot in spots if spot not in expired]
    held = set(rng.sample(live, min(len(live), max(3, versions // 300))))
    policies = {i for i in range(models) if rng.random() < 0.05}
    policies |= {i for i, _ in sorted(expired) if rng.random() < 0.7}
    # The featured model: an ordinary one (about the median count), never one of the giants.
    ordinary = sorted(range(models), key=lambda i: (counts[i], i))
    featured = ordinary[len(ordinary) // 2]
    candidates = [n for n in range(1, counts[featured] + 1) if (featured, n) not in expired]
    for number in rng.sample(candidates, min(2, len(candidates))):
        held.add((featured, number))
    return _Choices(counts, names, expired, held, policies, featured)


def _version_counts(rng: random.Random, models: int, versions: int) -> list[int]:
    """How many versions each model has: about a tenth one, a few (one in 300) a large share
    each (several thousand at 100,000), the rest around the mean of what is left."""
    counts = [0] * models
    order = list(range(models))
    rng.shuffle(order)
    if versions == models:
        return [1] * models
    singles = order[: models // 10]
    # Giants only where there are versions to spare: at least three per model on average.
    giants = order[len(singles) : len(singles) + max(1, models // 300)]
    if versions < 3 * models:
        giants = []
    for index in singles:
        counts[index] = 1
    budget = versions - len(singles)
    for index in giants:
        share = min(rng.uniform(0.02, 0.045), 0.3 / len(giants))
        counts[index] = max(int(budget * share), 5 * versions // models)
    rest = [i for i in order if counts[i] == 0]
    remaining = versions - sum(counts)
    if rest:
        weights = [rng.lognormvariate(0, 0.45) for _ in rest]
        scale = max(0, remaining - len(rest)) / sum(weights)
        for index, weight in zip(rest, weights, strict=True):
            counts[index] = 1 + int(weight * scale)
    # Rounding left a few versions over or under: spread them over the ordinary models.
    gap = versions - sum(counts)
    pool = rest or order
    step = 0
    while gap != 0:
        index = pool[step % len(pool)]
        if gap > 0:
            counts[index] += 1
            gap -= 1
        elif counts[index] > 1:
            counts[index] -= 1
            gap += 1
        step += 1
    return counts


def _model_names(rng: random.Random, models: int) -> list[str]:
    """`org-NN/model-NNNN`: a few hundred organisations, some with many models."""
    orgs = max(1, min(300, models // 3))
    weights = [1.0 / (rank + 1) ** 0.6 for rank in range(orgs)]
    picks = rng.choices(range(orgs), weights=weights, k=models)
    return [f"org-{org:02d}/model-{index:04d}" for index, org in enumerate(picks)]


# -- one model and all of its rows ------------------------------------------------------------


def _seed_model(
    index: int,
    choices: _Choices,
    setup: _Home,
    end: datetime,
    seed: int,
    buffer: _Buffer,
    audit: list[tuple[datetime, int, str, str, str, str]],
    counts: _Counts,
    *,
    first_id: int,
) -> int:
    """Buffer every row of model `index` (its versions get ids from `first_id`) and collect its
    audit entries; the id of its last version."""
    rng = random.Random(f"{seed}/{index}")
    name, count = choices.names[index], choices.counts[index]
    created = end - _YEAR + timedelta(seconds=rng.uniform(0, 0.85) * _YEAR.total_seconds())
    times = _spread(rng, created, end - timedelta(minutes=1), count)
    ids = {number: first_id + number - 1 for number in range(1, count + 1)}
    model_id = index + 1

    def note(at: datetime, actor: str, action: str, details: dict[str, Any]) -> None:
        audit.append((at, len(audit), actor, action, name, details_json(details)))

    pusher = rng.choices([a for a, _ in _PUSHERS], weights=[w for _, w in _PUSHERS])[0]
    buffer.add(
        Model,
        {"id": model_id, "name": name, "created_at": times[1], "created_by": pusher},
    )
    digests = _versions(rng, index, name, count, times, ids, choices, setup, buffer, counts, note)
    policy_at = None
    if index in choices.policies:
        policy_at = _policy(rng, name, created, end, buffer, note)
        counts.policies += 1
    for number in range(1, count + 1):
        if (index, number) in choices.expired:
            _expire(rng, name, number, digests[number], times[number], policy_at, end, buffer, note)
            counts.expired += 1
        if (index, number) in choices.held:
            placed = _later(rng, times[number], end, timedelta(days=120))
            reason = rng.choice(_HOLD_REASONS)
            actor = rng.choice(_LEGAL)
            buffer.add(
                LegalHold,
                {
                    "version_id": ids[number],
                    "reason": reason,
                    "placed_by": actor,
                    "placed_at": placed,
                },
            )
            note(placed, actor, "hold", {"version": number, "reason": reason})
            counts.holds += 1
    live = [n for n in range(1, count + 1) if (index, n) not in choices.expired]
    featured = index == choices.featured
    production = (featured or rng.random() < 0.5) and _alias(
        rng, model_id, "production", live, times, ids, end, featured, buffer, note, counts
    )
    if featured or (production and len(live) >= 3 and rng.random() < 0.6):
        _alias(rng, model_id, "staging", live, times, ids, end, featured, buffer, note, counts)
    return ids[count]


def _spread(rng: random.Random, first: datetime, last: datetime, count: int) -> dict[int, datetime]:
    """Version number -> creation time: the first at `first`, the rest spread up to `last`,
    strictly increasing with the number."""
    span = max(1, int((last - first) / timedelta(microseconds=1)))
    offsets = sorted(rng.randrange(span) for _ in range(count - 1))
    times = {1: first}
    previous = first
    for number, offset in enumerate(offsets, start=2):
        moment = max(first + timedelta(microseconds=offset), previous + timedelta(microseconds=1))
        times[number] = previous = moment
    return times


def _later(rng: random.Random, moment: datetime, end: datetime, most: timedelta) -> datetime:
    """A random moment after `moment`, at most `most` later and before `end`."""
    span = min(most, end - timedelta(seconds=1) - moment)
    return moment + max(span, timedelta(microseconds=1)) * rng.uniform(0.01, 1.0)


def _versions(
    rng: random.Random,
    index: int,
    name: str,
    count: int,
    times: dict[int, datetime],
    ids: dict[int, int],
    choices: _Choices,
    setup: _Home,
    buffer: _Buffer,
    counts: _Counts,
    note: _Note,
) -> dict[int, str]:
    """Buffer the model's versions, files, blobs, manifests and placements; their digests."""
    layout = _Layout(rng, setup.chunk_size, name)
    files = layout.first()
    digests: dict[int, str] = {}
    seen: set[str] = set()
    for number in range(1, count + 1):
        at = times[number]
        if number > 1:
            files = layout.next(files)
        paths = sorted(files)
        manifest = {"schema": SCHEMA_V2, "name": name, "files": [files[p].entry for p in paths]}
        canonical = _canonical(manifest)
        digest = hash_bytes(canonical)
        # A config moved back to an earlier state can repeat an earlier version whole; a push of
        # the same content is that version again, so each version's digest is new in its model.
        while digest in seen:
            files = layout.next(files)
            manifest["files"] = [files[p].entry for p in paths]
            canonical = _canonical(manifest)
            digest = hash_bytes(canonical)
        seen.add(digest)
        digests[number] = digest
        for spec in files.values():
            if spec.digest not in layout.stored:
                layout.stored.add(spec.digest)
                _blob_rows(spec, at, setup, buffer, counts, rng)
        envelope = _canonical(
            {
                "format": ENVELOPE_FORMAT,
                "manifest": manifest,
                "signatures": [setup.signer.sign(canonical)],
            }
        )
        manifest_object = _object_name(setup.naming, MANIFEST, digest)
        total = sum(files[p].size for p in paths)
        actor = rng.choices([a for a, _ in _PUSHERS], weights=[w for _, w in _PUSHERS])[0]
        buffer.add(
            Version,
            {
                "id": ids[number],
                "model_id": index + 1,
                "number": number,
                "digest": digest,
                "manifest_object": manifest_object,
                "message": _message(rng, number),
                "created_at": at,
                "created_by": actor,
                "signed_by": setup.signer.key_id,
                "file_count": len(paths),
                "total_size": total,
                "tensor_count": sum(files[p].tensors for p in paths),
                "parameter_count": sum(files[p].parameters for p in paths),
                "dtypes": ",".join(sorted({d for p in paths for d in files[p].dtypes})),
                "expired_at": None,
                "expired_by": None,
                "expiry_reason": None,
            },
        )
        for path in paths:
            spec = files[path]
            buffer.add(
                VersionFile,
                {
                    "version_id": ids[number],
                    "path": path,
                    "size": spec.size,
                    "digest": spec.digest,
                    "tensor_count": spec.tensors,
                },
            )
        counts.files += len(paths)
        buffer.add(
            CachedManifest,
            {"digest": digest, "envelope": envelope},
        )
        _placements(MANIFEST, digest, manifest_object, at, setup, buffer, counts, rng)
        note(
            at,
            actor,
            "push",
            {"version": number, "digest": digest, "files": len(paths), "bytes": total},
        )
    return digests


class _Layout:
    """A model's files across its versions: the same paths and tensor layout throughout, new
    content for what each version changes (some shards, now and then the config)."""

    def __init__(self, rng: random.Random, chunk_size: int, name: str) -> None:
        self.rng = rng
        self.chunk_size = chunk_size
        self.stored: set[str] = set()
        self.hidden = rng.choice(_HIDDEN)
        self.shards = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
        self.tokenizer = rng.random() < 0.85
        self.norms_f32 = rng.random() < 0.35
        self.dtype = "F16" if rng.random() < 0.1 else "BF16"
        self.headers = [self._header(shard) for shard in range(self.shards)]
        family = rng.choice((("llama", "LlamaForCausalLM"), ("mistral", "MistralForCausalLM")))
        self.config: dict[str, Any] = {
            "_name_or_path": name,
            "architectures": [family[1]],
            "model_type": family[0],
            "hidden_size": self.hidden,
            "intermediate_size": self.hidden * 4,
            "num_hidden_layers": self.shards * 4,
            "num_attention_heads": self.hidden // 128,
            "vocab_size": 32000,
            "max_position_embeddings": rng.choice((2048, 4096, 8192)),
            "rope_theta": 10000.0,
            "torch_dtype": "float16" if self.dtype == "F16" else "bfloat16",
            "transformers_version": "4.57.1",
            "use_cache": True,
        }

    def _config(self) -> bytes:
        """config.json of the next version that changes it: one setting moved, as a retrain
        with a longer context or a newer transformers leaves it."""
        before = dict(self.config)
        while self.stored and self.config == before:
            key = self.rng.choice(("max_position_embeddings", "rope_theta", "transformers_version"))
            if key == "max_position_embeddings":
                self.config[key] = self.rng.choice((4096, 8192, 16384, 32768))
            elif key == "rope_theta":
                self.config[key] = self.rng.choice((10000.0, 500000.0, 1000000.0))
            else:
                self.config[key] = f"4.{self.rng.randint(57, 60)}.{self.rng.randint(0, 3)}"
        return (json.dumps(self.config, indent=2) + "\n").encode()

    def _header(self, shard: int) -> SafetensorsHeader:
        """The tensor index of one shard: a few large 2-D tensors (and F32 norms, maybe)."""
        rng, hidden = self.rng, self.hidden
        tensors: list[tuple[str, str, list[int]]] = []
        if shard == 0:
            tensors.append(("model.embed_tokens.weight", self.dtype, [32000, hidden]))
        for position in range(rng.randint(1, 3)):
            layer = shard * 4 + position
            kind = rng.choice(("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj"))
            width = hidden * 4 if kind == "mlp.up_proj" else hidden
            tensors.append((f"model.layers.{layer}.{kind}.weight", self.dtype, [width, hidden]))
            if self.norms_f32:
                tensors.append((f"model.layers.{layer}.input_layernorm.weight", "F32", [hidden]))
        tensors.sort()
        entries: list[TensorEntry] = []
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor_name, dtype, shape in tensors:
            nbytes = DTYPE_BITS[dtype] // 8
            for dim in shape:
                nbytes *= dim
            entries.append(TensorEntry(tensor_name, dtype, tuple(shape), offset, offset + nbytes))
            header[tensor_name] = {
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        # The header's real length (JSON padded to 8 bytes), as a safetensors writer makes it.
        size = len(json.dumps(header, separators=(",", ":")))
        size += -size % 8
        return SafetensorsHeader(size, 8 + size, offset, {"format": "pt"}, tuple(entries))

    def _spec(self, path: str) -> _BlobSpec:
        rng = self.rng
        digest = f"blake3:{rng.getrandbits(256):064x}"
        chunks = ChunkRoot(self.chunk_size, f"blake3:{rng.getrandbits(256):064x}")
        header = None
        content = None
        if path.endswith(".safetensors"):
            header = self.headers[int(path[6:11]) - 1]
            size = header.data_offset + header.data_size
        elif path == "tokenizer.json":
            size = rng.randint(1_500_000, 9_000_000)
        else:
            # The one file stored for real (the UI shows a version's config and diffs two):
            # its digest and chunk root are its content's.
            content = self._config()
            size, digest = len(content), hash_bytes(content)
            pieces = b"".join(
                hash_chunk(content[start : start + self.chunk_size])
                for start in range(0, size, self.chunk_size)
            )
            chunks = ChunkRoot(
                self.chunk_size, chunk_root(pieces, chunk_size=self.chunk_size, size=size)
            )
        entry = ManifestFile(path, size, digest, header, chunks)
        return _BlobSpec(
            digest,
            size,
            entry.to_dict(),
            entry.tensor_count,
            0 if header is None else header.parameter_count,
            () if header is None else header.dtypes,
            content,
        )

    def first(self) -> dict[str, _BlobSpec]:
        paths = ["config.json"] + (["tokenizer.json"] if self.tokenizer else [])
        paths += [
            f"model-{shard:05d}-of-{self.shards:05d}.safetensors"
            for shard in range(1, self.shards + 1)
        ]
        return {path: self._spec(path) for path in paths}

    def next(self, previous: dict[str, _BlobSpec]) -> dict[str, _BlobSpec]:
        """The next version's files: each changes with its own odds, at least one always."""
        odds = {"config.json": 0.05, "tokenizer.json": 0.05}
        changed = [p for p in previous if self.rng.random() < odds.get(p, 0.45)]
        if not changed:
            changed = [self.rng.choice(sorted(previous))]
        return {p: self._spec(p) if p in changed else spec for p, spec in previous.items()}


def _canonical(value: dict[str, Any]) -> bytes:
    """`registry.manifest.canonical_json` without its walk that refuses floats, which cost more
    than the encoding itself here; these manifests hold ints and strings only, and `show`
    (tests/test_seed.py) proves the digests match the canonical bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _object_name(naming_key: bytes, kind: str, digest: str) -> str:
    """Where the stores would keep the object (as `BlobStore.object_name` names it)."""
    object_id = keyed_id(naming_key, kind, digest)
    return f"{_PREFIX[kind]}/{object_id[:2]}/{object_id}"


def _blob_rows(
    spec: _BlobSpec,
    at: datetime,
    setup: _Home,
    buffer: _Buffer,
    counts: _Counts,
    rng: random.Random,
) -> None:
    name = _object_name(setup.naming, BLOB, spec.digest)
    chunks = max(1, -(-spec.size // setup.chunk_size))
    buffer.add(
        Blob,
        {
            "digest": spec.digest,
            "size": spec.size,
            "object_name": name,
            "sealed_size": HEADER_SIZE + spec.size + TAG_SIZE * chunks,
            "chunk_size": setup.chunk_size,
            "created_at": at,
            "swept_at": None,
        },
    )
    counts.blobs += 1
    if spec.content is not None:
        setup.stores.put(spec.digest, spec.content, at)
    else:
        _placements(BLOB, spec.digest, name, at, setup, buffer, counts, rng)


def _placements(
    purpose: str,
    digest: str,
    object_name: str,
    at: datetime,
    setup: _Home,
    buffer: _Buffer,
    counts: _Counts,
    rng: random.Random,
) -> None:
    """One placement per region: nearly all verified, a few pending (a region that was down)
    or bad (a scrub found the copy missing)."""
    for region in setup.regions:
        draw = rng.random()
        state, detail = "verified", ""
        if draw < 0.005:
            state, detail = "bad", "missing"
        elif draw < 0.015:
            state, detail = "pending", "unreachable: connection timed out"
        buffer.add(
            Placement,
            {
                "digest": digest,
                "purpose": purpose,
                "region": region,
                "object_name": object_name,
                "state": state,
                "checksum": None,
                "detail": detail,
                "updated_at": at,
            },
        )
        counts.placements += 1


def _message(rng: random.Random, number: int) -> str:
    """A push message: empty, short, long, hostile markup or unicode."""
    draw = rng.random()
    dataset = rng.choice(_DATASETS)
    if draw < 0.1:
        return ""
    if draw < 0.55:
        return f"fine-tune on {dataset} ({rng.randint(1, 40) * 500} steps)"
    if draw < 0.7:
        return f"eval: mmlu {rng.uniform(40, 80):.1f}, gsm8k {rng.uniform(20, 70):.1f}"
    if draw < 0.8:
        lines = [f"Release {number}: fine-tune on {dataset}", ""]
        lines += [
            f"- step {rng.randint(1, 90_000)}: loss {rng.uniform(0.5, 3):.4f}, "
            f"lr {rng.uniform(1, 9):.1f}e-5"
            for _ in range(rng.randint(3, 40))
        ]
        return "\n".join(lines)
    if draw < 0.9:
        return f"{rng.choice(_MARKUP)} (v{number})"
    return f"{rng.choice(_UNICODE)} v{number}"


def _policy(
    rng: random.Random, name: str, created: datetime, end: datetime, buffer: _Buffer, note: _Note
) -> datetime:
    """A retention policy row for the model and its audit entry; when it was set."""
    keep_last = rng.choice((None, 10, 20, 50))
    keep_within = rng.choice((None, 30, 90, 180)) if keep_last else rng.choice((30, 90, 180))
    demoted = rng.choice((None, None, 14))
    policy = Policy(
        keep_last,
        None if keep_within is None else timedelta(days=keep_within),
        None if demoted is None else timedelta(days=demoted),
    )
    at = _later(rng, created, end, (end - created) / 2)
    actor = rng.choice(_OPERATORS)
    buffer.add(
        RetentionPolicy,
        {
            "model": name,
            "keep_last": keep_last,
            "keep_within_seconds": None if keep_within is None else keep_within * 86400,
            "keep_demoted_for_seconds": None if demoted is None else demoted * 86400,
            "updated_at": at,
            "updated_by": actor,
        },
    )
    note(at, actor, "retention", {"policy": policy.describe(), "model": name})
    return at


def _expire(
    rng: random.Random,
    name: str,
    number: int,
    digest: str,
    created: datetime,
    policy_at: datetime | None,
    end: datetime,
    buffer: _Buffer,
    note: _Note,
) -> None:
    """Tombstone a buffered version: expired by its model's policy, or deleted by an admin."""
    since = max(created, policy_at or created)
    at = _later(rng, since, end, timedelta(days=30))
    actor = rng.choice(_OPERATORS)
    row = next(r for r in reversed(buffer.rows[Version.__tablename__]) if r["digest"] == digest)
    if policy_at is not None:
        reason, action = "expired by the retention policy", "expire"
        described = _policy_text(buffer, name)
        details: dict[str, Any] = {"version": number, "digest": digest, "policy": described}
    else:
        why = rng.choice(_DELETE_REASONS)
        reason, action = f"deleted: {why}", "delete"
        details = {"version": number, "digest": digest, "reason": why}
    row.update(expired_at=at, expired_by=actor, expiry_reason=reason)
    note(at, actor, action, details)


def _policy_text(buffer: _Buffer, name: str) -> str:
    row = next(r for r in buffer.rows[RetentionPolicy.__tablename__] if r["model"] == name)

    def days(seconds: int | None) -> timedelta | None:
        return None if seconds is None else timedelta(seconds=seconds)

    return Policy(
        row["keep_last"], days(row["keep_within_seconds"]), days(row["keep_demoted_for_seconds"])
    ).describe()


def _alias(
    rng: random.Random,
    model_id: int,
    alias: str,
    live: Sequence[int],
    times: dict[int, datetime],
    ids: dict[int, int],
    end: datetime,
    featured: bool,
    buffer: _Buffer,
    note: _Note,
    counts: _Counts,
) -> bool:
    """An alias with a few moves over live versions: promotes forward, now and then a rollback
    to where it pointed before (the featured model always has one), as `_alias_stack` reads.
    False when no move fitted before `end`."""
    wanted = max(3, rng.randint(1, 5)) if featured else rng.randint(1, 5)
    targets = sorted(rng.sample(list(live), min(len(live), wanted)))
    stack: list[int] = []
    moves: list[tuple[str, int, int | None, datetime, str, str]] = []
    last = times[targets[0]]
    for target in targets:
        at = max(times[target] + timedelta(hours=rng.uniform(0.2, 96)), last + timedelta(seconds=1))
        if at >= end:
            break
        actor = rng.choice(_PROMOTERS)
        moves.append(
            (
                "promote",
                target,
                stack[-1] if stack else None,
                at,
                actor,
                rng.choice(_PROMOTE_REASONS),
            )
        )
        stack.append(target)
        last = at
        rollback = len(stack) >= 2 and (rng.random() < 0.3 or (featured and len(moves) == 2))
        back = at + timedelta(hours=rng.uniform(0.1, 48))
        if rollback and back < end:
            reason = rng.choice(_ROLLBACK_REASONS)
            moves.append(("rollback", stack[-2], stack[-1], back, rng.choice(_PROMOTERS), reason))
            stack.pop()
            last = back
    if not moves:
        return False
    for kind, target, previous, at, actor, reason in moves:
        buffer.add(
            AliasMove,
            {
                "model_id": model_id,
                "alias": alias,
                "kind": kind,
                "version_id": ids[target],
                "previous_version_id": None if previous is None else ids[previous],
                "moved_at": at,
                "moved_by": actor,
                "reason": reason,
            },
        )
        note(
            at,
            actor,
            kind,
            {"alias": alias, "version": target, "previous": previous, "reason": reason},
        )
    counts.alias_moves += len(moves)
    _kind, _target, _previous, updated, mover, _reason = moves[-1]
    protected = alias == "production" and rng.random() < 0.2
    buffer.add(
        Alias,
        {
            "model_id": model_id,
            "name": alias,
            "version_id": ids[stack[-1]],
            "protected": protected,
            "updated_at": updated,
            "updated_by": mover,
        },
    )
    counts.aliases += 1
    if protected:
        at = _later(rng, moves[0][3], end, timedelta(days=1))
        note(at, rng.choice(_OPERATORS), "protect-alias", {"alias": alias})
    return True


# -- writing -------------------------------------------------------------------------------------


def _table(mapped: type[Base]) -> Table:
    return cast(Table, mapped.__table__)


def _lock(connection: Connection) -> None:
    """The catalog's write lock on PostgreSQL (SQLite's engine begins IMMEDIATE already)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})


def _flush(engine: Engine, buffer: _Buffer) -> None:
    """Write the buffered rows in one transaction, parents before children."""
    if not buffer.size:
        return
    with engine.begin() as connection:
        _lock(connection)
        for table in _ORDER:
            rows = buffer.rows.get(table.__tablename__)
            if rows:
                connection.execute(insert(_table(table)), rows)
    buffer.rows.clear()
    buffer.size = 0


def _write_audit(engine: Engine, events: list[tuple[datetime, int, str, str, str, str]]) -> int:
    """Append the entries in time order to the audit chain, hashed as `append_audit` hashes
    them; each batch first checks that the chain's tail is still the one it continues."""
    events.sort()
    with engine.connect() as connection:
        tail = connection.execute(
            select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
        ).first()
    last_id, prev = (0, GENESIS) if tail is None else (int(tail[0]), str(tail[1]))
    for batch in _batches(events, _AUDIT_BATCH):
        rows = []
        expected = (last_id, prev)
        for at, _order, actor, action, subject, details in batch:
            last_id += 1
            digest = audit_hash(
                prev,
                id=last_id,
                at=at,
                actor=actor,
                action=action,
                subject=subject,
                details=details,
            )
            rows.append(
                {
                    "id": last_id,
                    "at": at,
                    "actor": actor,
                    "action": action,
                    "subject": subject,
                    "details": details,
                    "prev_hash": prev,
                    "hash": digest,
                }
            )
            prev = digest
        with engine.begin() as connection:
            _lock(connection)
            tail = connection.execute(
                select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
            ).first()
            found = (0, GENESIS) if tail is None else (int(tail[0]), str(tail[1]))
            if found != expected:
                raise ConflictError(
                    "the audit trail changed while the catalog was being seeded",
                    hint="seed a home nothing else is using",
                )
            connection.execute(insert(_table(AuditEvent)), rows)
    return len(events)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _advance_sequences(engine: Engine) -> None:
    """PostgreSQL hands out ids from sequences the explicit ids above did not advance: move them
    past the seeded rows, or the registry's next insert would collide (SQLite takes max + 1)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        for table in ("models", "versions", "alias_moves", "audit_events"):
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) "
                    f"FROM {table} HAVING max(id) IS NOT NULL"
                )
            )
