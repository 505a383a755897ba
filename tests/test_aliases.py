"""Aliases: promote, rollback (back through the history, or --to), history --at, protection by
role, NAME:ALIAS references, and concurrent promotes that leave one consistent history, on
SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.errors import ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from registry.service import PROMOTER, PUSHER, READER, Registry
from registry.testing.models import make_model
from tests.conftest import tree


@pytest.fixture
def three_versions(home: Path, tmp_path: Path, catalog_url: str | None) -> list[Path]:
    Registry.init(home, catalog_url=catalog_url)
    models = []
    with Registry.open(home) as registry:
        for seed in (1, 2, 3):
            model = make_model(tmp_path / f"m{seed}", shards=1, shard_size=20_000, seed=seed)
            registry.push("llama", model)
            models.append(model)
    return models


def test_promote_rollback_history_round_trip(
    home: Path, tmp_path: Path, three_versions: list[Path]
) -> None:
    with Registry.open(home) as registry:
        with pytest.raises(NotFoundError, match="no alias"):
            registry.resolve("llama:production")
        first = registry.promote("llama@1", "production", reason="first release")
        assert first.move is not None and first.move.previous is None
        time.sleep(0.01)
        t1 = datetime.now(UTC)
        time.sleep(0.01)
        registry.promote("llama@2", "production", reason="better evals")
        registry.promote("llama@3", "production")
        registry.promote("llama:production", "staging")  # an alias as the reference
        assert registry.resolve("llama:staging").number == 3
        time.sleep(0.01)
        t3 = datetime.now(UTC)
        same = registry.promote("llama@3", "production")
        assert same.move is None  # already there: nothing recorded

        back = registry.rollback("llama", "production", reason="regression")
        assert back.move is not None and (back.move.previous, back.alias.number) == (3, 2)
        again = registry.rollback("llama", "production")
        assert again.alias.number == 1  # repeated rollbacks keep going back
        with pytest.raises(ConflictError, match="no earlier version"):
            registry.rollback("llama", "production")
        to = registry.rollback("llama", "production", to="llama@3", reason="hotfix verified")
        assert to.alias.number == 3 and to.move is not None and to.move.kind == "rollback-to"

        registry.pull("llama:production", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(three_versions[2])

        moves = registry.history("llama", "production")
        assert [(m.kind, m.number, m.previous) for m in moves] == [
            ("promote", 1, None),
            ("promote", 2, 1),
            ("promote", 3, 2),
            ("rollback", 2, 3),
            ("rollback", 1, 2),
            ("rollback-to", 3, 1),
        ]
        assert moves[1].reason == "better evals" and moves[0].moved_by == "tester@example"
        at_t1 = registry.history("llama", at=t1)
        assert [(m.alias, m.number) for m in at_t1] == [("production", 1)]
        at_t3 = registry.history("llama", at=t3)
        assert [(m.alias, m.number) for m in at_t3] == [("production", 3), ("staging", 3)]
        assert registry.history("llama", at=datetime(2000, 1, 1, tzinfo=UTC)) == []
        actions = [e.action for e in registry.audit_events(subject="llama")]
        assert actions.count("promote") == 4 and actions.count("rollback") == 2


def test_bad_requests_change_nothing(home: Path, three_versions: list[Path]) -> None:
    with Registry.open(home) as registry:
        with pytest.raises(InvalidInputError):
            registry.promote("llama@1", "Production!")
        with pytest.raises(NotFoundError):
            registry.promote("llama@9", "production")
        with pytest.raises(NotFoundError):
            registry.rollback("llama", "production")
        with pytest.raises(NotFoundError):
            registry.promote("other@1", "production")
        registry.promote("llama@1", "production")
        with pytest.raises(InvalidInputError, match="not a version of"):
            registry.rollback("other", "production", to="llama@1")
        with pytest.raises(InvalidInputError):
            registry.history("llama", at=datetime(2026, 1, 1))
        assert len(registry.history("llama")) == 1


def test_protected_alias_needs_the_promoter_role(home: Path, three_versions: list[Path]) -> None:
    with Registry.open(home) as admin:
        admin.promote("llama@1", "production")
        admin.protect_alias("llama", "production")
    with Registry.open(home, role=PUSHER) as pusher:
        pusher.promote("llama@2", "staging")  # unprotected: fine
        with pytest.raises(PermissionDeniedError, match="protected"):
            pusher.promote("llama@2", "production")
        with pytest.raises(PermissionDeniedError):
            pusher.rollback("llama", "production", to="llama@3")
        with pytest.raises(PermissionDeniedError):
            pusher.protect_alias("llama", "production", protected=False)
    with Registry.open(home, role=READER) as reader, pytest.raises(PermissionDeniedError):
        reader.promote("llama@2", "canary")
    with Registry.open(home, role=PROMOTER) as promoter:
        assert promoter.promote("llama@2", "production").alias.number == 2
        assert promoter.aliases("llama")[0].protected
    with Registry.open(home) as admin:
        assert [m.number for m in admin.history("llama", "production")] == [1, 2]


def test_concurrent_promotes_leave_one_consistent_history(
    home: Path, three_versions: list[Path]
) -> None:
    def promote(number: int) -> None:
        with Registry.open(home) as registry:
            for _ in range(3):
                registry.promote(f"llama@{number}", "production", reason=f"from {number}")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(promote, [1, 2, 3, 1, 2, 3]))
    with Registry.open(home) as registry:
        moves = registry.history("llama", "production")
        assert moves and moves[0].previous is None
        # One chain: every move starts where the one before it ended.
        for before, after in itertools.pairwise(moves):
            assert after.previous == before.number
            assert after.number != before.number
        assert registry.resolve("llama:production").number == moves[-1].number
        assert registry.aliases("llama")[0].number == moves[-1].number


def test_cli_promote_rollback_history_alias(home: Path, three_versions: list[Path]) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["promote", "llama@1", "production", "--reason", "go", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["version"] == 1
    assert runner.invoke(main, ["promote", "llama@2", "production"]).exit_code == 0
    back = runner.invoke(main, ["rollback", "llama", "production", "--json"])
    assert back.exit_code == 0 and json.loads(back.stdout)["version"] == 1
    listed = runner.invoke(main, ["history", "llama", "--json"])
    assert [m["version"] for m in json.loads(listed.stdout)] == [1, 2, 1]
    table = runner.invoke(main, ["history", "llama", "production"])
    assert "rollback" in table.output and "go" in table.output
    assert runner.invoke(main, ["history", "llama", "--at", "yesterday"]).exit_code == 3
    at = runner.invoke(main, ["history", "llama", "--at", "2000-01-01T00:00:00Z", "--json"])
    assert json.loads(at.stdout) == []
    assert runner.invoke(main, ["alias", "protect", "llama", "production"]).exit_code == 0
    aliases = json.loads(runner.invoke(main, ["alias", "ls", "llama", "--json"]).stdout)
    assert aliases[0]["protected"] is True
    assert runner.invoke(main, ["promote", "llama@1", "Bad Alias"]).exit_code == 3
    assert runner.invoke(main, ["rollback", "nope", "production"]).exit_code == 4
    assert runner.invoke(main, ["alias", "unprotect", "llama", "staging"]).exit_code == 4
