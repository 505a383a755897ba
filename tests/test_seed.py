"""The seeded catalog (registry.testing.seed), read back through the public API on SQLite and
PostgreSQL: listings, references, aliases, holds, the audit chain and the signed manifests are
what was seeded, the registry's own writes go on from there, and a seed gives the same catalog."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from registry.service import Registry
from registry.testing.seed import seed_catalog


def test_seeded_catalog_reads_back(home: Path, catalog_url: str | None, model_dir: Path) -> None:
    Registry.init(home, catalog_url=catalog_url)
    summary = seed_catalog(home, models=20, versions=300, seed=3)
    assert (summary.models, summary.versions, summary.manifests) == (20, 300, 300)
    assert summary.holds >= 3 and summary.expired >= 2 and summary.aliases >= 1
    with Registry.open(home) as registry:
        models = registry.models()
        assert len(models) == 20
        assert sum(m.version_count for m in models) == 300 - summary.expired
        assert all(0 < m.stored_size <= m.total_size for m in models)

        big, count = summary.busiest[0]
        assert count >= max(m.version_count for m in models)
        versions = registry.versions(big, expired=True)
        assert [v.number for v in versions] == list(range(1, count + 1))
        assert all(a.created_at < b.created_at for a, b in itertools.pairwise(versions))
        assert len({v.digest for v in versions}) == count
        assert all(2 <= v.file_count == len(v.files) <= 5 for v in versions)
        # A fine-tune shares blobs with its predecessor.
        assert any(
            {f.digest for f in a.files} & {f.digest for f in b.files}
            for a, b in itertools.pairwise(versions)
        )

        production = registry.resolve(f"{summary.featured}:production")
        assert production.expired_at is None
        assert {a.alias for a in registry.aliases(summary.featured)} == {"production", "staging"}
        assert any(move.kind == "rollback" for move in registry.history(summary.featured))
        held = {(h.name, h.number) for h in registry.holds()}
        assert len(held) == summary.holds
        assert {(summary.featured, n) for n in summary.featured_holds} <= held

        events = registry.audit_events(limit=10)
        assert len(events) == 10
        assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
        pushes = [e for e in registry.audit_events(subject=big, limit=10_000) if e.action == "push"]
        assert sorted(e.details["version"] for e in pushes) == list(range(1, count + 1))
        verification = registry.verify_audit()
        assert verification.ok, verification.problem
        # Seeded entries never reached the stores' journal: pending there, not differences.
        assert verification.not_in_journal == summary.audit_events
        assert verification.checked > summary.audit_events

        # The cached manifest is signed by the home's key and hashes to the version's digest.
        details = registry.show(f"{big}@{count}")
        assert details.manifest.digest == versions[-1].digest
        assert details.manifest.tensor_count == versions[-1].tensor_count
        # config.json is stored for real: read back, decrypted and checked against its digest;
        # a diff of two versions reads both.
        config = json.loads(registry.read_small_file(f"{big}@{count}", "config.json"))
        assert config["_name_or_path"] == big
        live = [v for v in versions if v.expired_at is None]
        changed = next(
            (a, b)
            for a, b in itertools.pairwise(live)
            if a.files[0].digest != b.files[0].digest  # config.json sorts first
        )
        diff = registry.diff(changed[0].ref, changed[1].ref)
        assert diff.config_changes and "config.json" in diff.changed_files

        # The registry's own writes carry on after the seeded rows (ids, sequences, chain).
        numbers = len(registry.versions(summary.featured, expired=True))
        pushed = registry.push(summary.featured, model_dir, message="after the seed")
        assert pushed.version.number == numbers + 1
        registry.push("org-new/model", model_dir)
        registry.promote(pushed.version.ref, "production", reason="after the seed")
        registry.hold(pushed.version.ref, reason="after the seed")
        # The chain still holds; the stores' journal now has entries after the seeded ones,
        # which it never held, so the full check names them (registry.testing.seed says why).
        assert registry.catalog.verify_audit().ok
        after = registry.verify_audit()
        assert not after.ok and "not in the journal" in after.problem


def test_same_seed_same_catalog(tmp_path: Path) -> None:
    homes = [tmp_path / "a", tmp_path / "b"]
    seen = []
    for home in homes:
        Registry.init(home)
        summary = seed_catalog(home, models=12, versions=150, seed=7)
        with Registry.open(home) as registry:
            listing = [(m.name, m.version_count, m.total_size) for m in registry.models()]
            digests = [v.digest for v in registry.versions(summary.busiest[0][0], expired=True)]
            messages = [v.message for v in registry.versions(summary.featured)]
        seen.append((listing, digests, messages, summary.busiest, summary.featured))
    assert seen[0] == seen[1]
