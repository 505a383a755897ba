"""Retention: the planner on golden cases (a pure function), policies set, shown and planned
through the service and the CLI, and a policy below the store's Object Lock minimum refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.errors import InvalidInputError, NotFoundError, PermissionDeniedError, RetentionError
from registry.retention import Policy, VersionFacts, last_demotions, parse_duration, plan
from registry.service import PROMOTER, Registry
from registry.testing.models import make_model
from tests.conftest import LOCKED_BUCKET

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
# Ten versions, one a day: @10 is today's, @1 nine days old.
VERSIONS = [VersionFacts(n, NOW - (10 - n) * DAY) for n in range(1, 11)]


def kept(decisions: list[Any]) -> list[int]:
    return sorted(d.number for d in decisions if d.keep)


def run(policy: Policy, **facts: Any) -> list[Any]:
    return plan(
        VERSIONS,
        policy=policy,
        aliased=facts.get("aliased", {}),
        demoted=facts.get("demoted", {}),
        held=facts.get("held", ()),
        now=NOW,
        locked_for=facts.get("locked_for"),
    )


GOLDEN = [
    ("no rule keeps everything", Policy(), {}, list(range(1, 11))),
    ("keep-last 3", Policy(keep_last=3), {}, [8, 9, 10]),
    ("keep-within 4d", Policy(keep_within=4 * DAY), {}, [7, 8, 9, 10]),
    ("aliased", Policy(keep_last=1), {"aliased": {2: ["production"]}}, [2, 10]),
    (
        "recently demoted",
        Policy(keep_last=1, keep_demoted_for=7 * DAY),
        {"demoted": {3: NOW - 2 * DAY, 4: NOW - 8 * DAY}},
        [3, 10],
    ),
    ("held", Policy(keep_last=1), {"held": [1]}, [1, 10]),
    (
        "combined",
        Policy(keep_last=2, keep_within=3 * DAY, keep_demoted_for=5 * DAY),
        {"aliased": {5: ["staging"]}, "demoted": {4: NOW - DAY}, "held": [2]},
        [2, 4, 5, 8, 9, 10],
    ),
    ("lock minimum", Policy(keep_last=1), {"locked_for": 3 * DAY}, [8, 9, 10]),
]


@pytest.mark.parametrize(
    ("case", "policy", "facts", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_golden_cases(
    case: str, policy: Policy, facts: dict[str, Any], expected: list[int]
) -> None:
    decisions = run(policy, **facts)
    assert kept(decisions) == expected, case
    assert [d.number for d in decisions] == list(range(10, 0, -1))  # newest first
    for d in decisions:
        assert d.keep == bool(d.reasons)  # every kept version says why; expired ones say nothing


def test_reasons_name_every_rule_that_keeps() -> None:
    decisions = run(
        Policy(keep_last=1, keep_within=2 * DAY),
        aliased={10: ["production", "staging"]},
        held=[10],
    )
    assert decisions[0].reasons == (
        "among the last 1",
        "younger than 2d",
        "alias production",
        "alias staging",
        "legal hold",
    )


def test_how_long_each_rule_keeps_a_version() -> None:
    """What Object Lock follows: dated rules give a date, undated ones keep open-ended, and no
    policy promises nothing beyond the write-time lock."""
    nothing = run(Policy())
    assert all(d.keep and d.until is None and not d.open_ended for d in nothing)
    within = {d.number: d for d in run(Policy(keep_within=4 * DAY))}
    assert within[9].until == VERSIONS[8].created_at + 4 * DAY and not within[9].open_ended
    last = {d.number: d for d in run(Policy(keep_last=1), aliased={3: ["prod"]}, held=[2])}
    assert last[10].open_ended and last[3].open_ended and last[2].open_ended
    assert not last[5].keep and not last[5].open_ended
    demoted = run(Policy(keep_demoted_for=7 * DAY), demoted={4: NOW - DAY})
    assert {d.number: d.until for d in demoted}[4] == NOW + 6 * DAY


def test_demotions_from_alias_moves() -> None:
    moves = [(None, 1, NOW - 5 * DAY), (1, 2, NOW - 4 * DAY), (2, 1, NOW - 3 * DAY), (1, 3, NOW)]
    assert last_demotions(moves) == {1: NOW, 2: NOW - 3 * DAY}


@pytest.mark.parametrize("text", ["", "10", "d", "1.5d", "-3d", "10y", "9999999d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_duration(text)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        Policy(keep_last=0)
    assert parse_duration("2w") == 14 * DAY and parse_duration("12h") == timedelta(hours=12)


@pytest.fixture
def five(home: Path, tmp_path: Path, catalog_url: str | None) -> Path:
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        for seed in range(5):
            model = make_model(tmp_path / f"m{seed}", shards=1, shard_size=5_000, seed=seed)
            registry.push("llama", model)
        registry.promote("llama@2", "production")
        registry.promote("llama@3", "production")  # @2 is demoted now
        registry.hold("llama@1", reason="audit")
    return home


def test_policy_set_show_plan(five: Path) -> None:
    with Registry.open(five) as registry:
        assert registry.retention("llama") == (Policy(), "none")
        registry.set_retention(None, keep_last=4)
        assert registry.retention("llama")[1] == "*"
        registry.set_retention("llama", keep_last=1, keep_demoted_for="7d")
        policy, source = registry.retention("llama")
        assert source == "llama" and policy.keep_last == 1
        [(model, _policy, decisions)] = registry.plan_retention("llama")
        assert model == "llama"
        by_number = {d.number: d for d in decisions}
        assert kept(decisions) == [1, 2, 3, 5]
        assert by_number[1].reasons == ("legal hold",)
        assert "demoted less than 7d ago" in by_number[2].reasons
        assert "alias production" in by_number[3].reasons
        assert not by_number[4].keep
        # Nothing was deleted by planning.
        assert len(registry.versions("llama")) == 5
        actions = [e.action for e in registry.audit_events()]
        assert actions.count("retention") == 2
        with pytest.raises(NotFoundError):
            registry.set_retention("nope", keep_last=1)
        with pytest.raises(InvalidInputError):
            registry.set_retention("llama", keep_within="ninety days")
    with Registry.open(five, role=PROMOTER) as promoter, pytest.raises(PermissionDeniedError):
        promoter.set_retention("llama", keep_last=10)


def test_cli_retention(five: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["retention", "set", "llama", "--keep-last", "2", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["keep_last"] == 2
    shown = json.loads(runner.invoke(main, ["retention", "show", "llama", "--json"]).stdout)
    assert shown["source"] == "llama"
    planned = json.loads(runner.invoke(main, ["retention", "plan", "--json"]).stdout)
    versions = {v["version"]: v for v in planned[0]["versions"]}
    assert [n for n, v in versions.items() if not v["keep"]] == [2]
    table = runner.invoke(main, ["retention", "plan", "llama"])
    assert "expire" in table.output and "legal hold" in table.output
    assert runner.invoke(main, ["retention", "set", "--keep-last", "2"]).exit_code == 3
    assert runner.invoke(main, ["retention", "set", "llama", "--default"]).exit_code == 3
    assert (
        runner.invoke(main, ["retention", "set", "--default", "--keep-within", "30d"]).exit_code
        == 0
    )


def test_keep_within_below_the_lock_minimum_is_refused(
    moto_s3: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    Registry.init(home, store=f"s3://{LOCKED_BUCKET}?region=us-east-1&retention_days=30")
    with Registry.open(home) as registry:
        with pytest.raises(RetentionError, match="Object Lock minimum 30d"):
            registry.set_retention(None, keep_within="10d")
        registry.set_retention(None, keep_within="30d", keep_last=2)
        assert registry.plan_retention() == []


def test_set_without_a_rule_is_refused_and_clear_is_explicit(five: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["retention", "set", "llama", "--keep-last", "2"]).exit_code == 0
    refused = runner.invoke(main, ["retention", "set", "llama"])
    assert refused.exit_code == 3 and "--clear" in refused.output
    shown = json.loads(runner.invoke(main, ["retention", "show", "llama", "--json"]).stdout)
    assert shown["keep_last"] == 2  # unchanged
    assert runner.invoke(main, ["retention", "set", "llama", "--clear"]).exit_code == 0
    shown = json.loads(runner.invoke(main, ["retention", "show", "llama", "--json"]).stdout)
    assert shown["keep_last"] is None
