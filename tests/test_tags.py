"""Tags (issue 20): added and removed with an audit entry in the same transaction, idempotent
adds, clear refusals that change nothing (a bad tag, an unknown version, a tag that is not
there, a role below promoter, a model outside a token's patterns), `ls --tag`, `show`, the REST
API and the CLI through a server, and tags that survive a catalog rebuild; on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from cli.main import main
from registry.api.app import create_app
from registry.client import RemoteRegistry
from registry.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from registry.service import PROMOTER, PUSHER, READER, Registry
from registry.testing.models import make_model
from tests.test_api_cli import LiveServer


def _model(tmp_path: Path, seed: int) -> Path:
    return make_model(tmp_path / f"m{seed}", shards=1, shard_size=4_000, seed=seed)


@pytest.fixture
def tagged_home(home: Path, tmp_path: Path, catalog_url: str | None) -> Path:
    """org/llama@1..3 and other/secret@1."""
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        for seed in (1, 2, 3):
            registry.push("org/llama", _model(tmp_path, seed), message=f"run {seed}")
        registry.push("other/secret", _model(tmp_path, 9))
    return home


def _actions(registry: Registry, name: str = "org/llama") -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.action, e.details)
        for e in registry.audit_events(subject=name, limit=1000)
        if e.action.startswith("tag-")
    ]


def test_tags_are_added_listed_found_and_removed_with_their_audit_entries(
    tagged_home: Path,
) -> None:
    with Registry.open(tagged_home) as registry:
        added = registry.add_tag("org/llama@2", "eval-passed")
        assert added.changed and added.tag.ref == "org/llama@2" and added.tag.tag == "eval-passed"
        assert added.tag.added_by == "tester@example"
        again = registry.add_tag("org/llama@2", "eval-passed")  # idempotent: nothing written
        assert not again.changed and again.tag.added_at == added.tag.added_at
        registry.add_tag("org/llama", "nightly")  # the newest: @3
        registry.add_tag("org/llama@1", "nightly")
        registry.add_tag("other/secret@1", "nightly")
        assert [t.tag for t in registry.tags("org/llama@2")] == ["eval-passed"]
        assert [(t.tag, t.ref) for t in registry.tags("org/llama@3")] == [
            ("nightly", "org/llama@3")
        ]
        assert registry.tags("org/llama@1")[0].added_by == "tester@example"
        # Versions with a tag: across models, or one model's; by model and number.
        assert [v.ref for v in registry.tagged("nightly")] == [
            "org/llama@1",
            "org/llama@3",
            "other/secret@1",
        ]
        assert [v.ref for v in registry.tagged("nightly", name="org/llama")] == [
            "org/llama@1",
            "org/llama@3",
        ]
        assert registry.tagged("nobody-has-it") == []
        with pytest.raises(NotFoundError, match="model org/none does not exist"):
            registry.tagged("nightly", name="org/none")
        assert registry.show("org/llama@2").tags == ("eval-passed",)
        assert registry.show("org/llama@1").tags == ("nightly",)

        removed = registry.remove_tag("org/llama@2", "eval-passed")
        assert removed.changed and removed.tag.tag == "eval-passed"
        assert registry.tags("org/llama@2") == []
        assert _actions(registry) == [
            ("tag-rm", {"version": 2, "tag": "eval-passed"}),
            ("tag-add", {"version": 1, "tag": "nightly"}),
            ("tag-add", {"version": 3, "tag": "nightly"}),
            ("tag-add", {"version": 2, "tag": "eval-passed"}),
        ]
        assert registry.verify_audit().ok


def test_bad_requests_are_refused_clearly_and_change_nothing(tagged_home: Path) -> None:
    with Registry.open(tagged_home) as registry:
        registry.add_tag("org/llama@1", "keep")
        before = (registry.tags("org/llama@1"), _actions(registry))
        for bad in ("", "Upper", "-lead", "spa ce", "a/b", "x" * 65, "ü", "tag\x00"):
            with pytest.raises(InvalidInputError, match="invalid tag"):
                registry.add_tag("org/llama@1", bad)
            with pytest.raises(InvalidInputError, match="invalid tag"):
                registry.remove_tag("org/llama@1", bad)
        assert registry.add_tag("org/llama@1", "x" * 64).changed  # 64 is the limit
        registry.remove_tag("org/llama@1", "x" * 64)
        with pytest.raises(NotFoundError, match="org/llama@1 has no tag 'absent'"):
            registry.remove_tag("org/llama@1", "absent")
        with pytest.raises(NotFoundError, match="org/llama@9 does not exist"):
            registry.add_tag("org/llama@9", "keep")
        with pytest.raises(NotFoundError, match="model org/none does not exist"):
            registry.add_tag("org/none@1", "keep")
        registry.delete("org/llama@2", reason="bad eval")
        with pytest.raises(NotFoundError, match="deleted"):
            registry.add_tag("org/llama@2", "keep")
        assert (registry.tags("org/llama@1"), _actions(registry)[-1:]) == (
            before[0],
            before[1][-1:],
        )
        assert len(_actions(registry)) == len(before[1]) + 2  # the 64-character add and remove


def test_adding_or_removing_a_tag_needs_the_promoter_role(tagged_home: Path) -> None:
    for role in (READER, PUSHER):
        with Registry.open(tagged_home, role=role) as registry:
            with pytest.raises(PermissionDeniedError, match="may not add or remove tags"):
                registry.add_tag("org/llama@1", "mine")
            with pytest.raises(PermissionDeniedError, match="may not add or remove tags"):
                registry.remove_tag("org/llama@1", "mine")
            assert registry.tags("org/llama@1") == []  # reading is a reader's right
    with Registry.open(tagged_home, role=PROMOTER) as promoter:
        assert promoter.add_tag("org/llama@1", "mine").changed
    with Registry.open(tagged_home) as admin:
        assert [a for a, _d in _actions(admin)] == ["tag-add"]


def test_cli_tag_add_rm_ls_and_ls_tag(tagged_home: Path) -> None:
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(main, list(args))

    out = cli("tag", "add", "org/llama@2", "eval-passed")
    assert out.exit_code == 0 and out.stdout == "tagged org/llama@2 eval-passed\n", out.output
    again = cli("tag", "add", "org/llama@2", "eval-passed", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["changed"] is False
    assert cli("tag", "add", "org/llama:production", "x").exit_code == 4  # no such alias
    assert cli("tag", "add", "org/llama@1", "rc.1").exit_code == 0
    listed = json.loads(cli("tag", "ls", "org/llama@2", "--json").stdout)
    assert [(t["ref"], t["tag"], t["added_by"]) for t in listed] == [
        ("org/llama@2", "eval-passed", "tester@example")
    ]
    table = cli("tag", "ls", "org/llama@2")
    assert "eval-passed" in table.stdout and "tester@example" in table.stdout
    assert "has no tags" in cli("tag", "ls", "org/llama@3").stdout
    shown = cli("show", "org/llama@2")
    assert "  tags       eval-passed\n" in shown.stdout
    assert json.loads(cli("show", "org/llama@2", "--json").stdout)["tags"] == ["eval-passed"]
    assert json.loads(cli("show", "org/llama@3", "--json").stdout)["tags"] == []
    every = json.loads(cli("ls", "--tag", "eval-passed", "--json").stdout)
    assert [v["ref"] for v in every] == ["org/llama@2"]
    assert "org/llama@2" in cli("ls", "--tag", "eval-passed").stdout
    assert cli("ls", "org/llama", "--tag", "rc.1").stdout.count("org/llama@") == 1
    assert (
        "no version of org/llama is tagged nope" in cli("ls", "org/llama", "--tag", "nope").stdout
    )
    assert cli("ls", "org/none", "--tag", "rc.1").exit_code == 4
    assert cli("ls", "--tag", "Not A Tag").exit_code == 3

    for args, code in (
        (("tag", "add", "org/llama@2", "Bad Tag"), 3),
        (("tag", "add", "org/llama@9", "fine"), 4),
        (("tag", "rm", "org/llama@2", "absent"), 4),
        (("tag", "add", "../x", "fine"), 3),
    ):
        refused = cli(*args, "--json")
        assert refused.exit_code == code, (args, refused.output)
        error = json.loads(refused.stdout[: refused.stdout.rindex("}") + 1])["error"]
        assert error["message"] and error["hint"]
    removed = cli("tag", "rm", "org/llama@2", "eval-passed")
    assert removed.exit_code == 0 and "removed tag eval-passed from org/llama@2" in removed.stdout
    with Registry.open(tagged_home) as registry:
        assert [a for a, _d in _actions(registry)] == ["tag-rm", "tag-add", "tag-add"]
        assert registry.tags("org/llama@2") == []


@pytest.fixture
def api(home: Path, tmp_path: Path) -> Iterator[tuple[TestClient[Any], Registry, dict[str, str]]]:
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/llama", _model(tmp_path, 1))
        registry.push("other/secret", _model(tmp_path, 2))
        registry.add_tag("other/secret@1", "nightly")
        tokens = {
            role: registry.create_token(role, role=role, models=["org/*"])[1]
            for role in (READER, PUSHER, PROMOTER)
        }
        tokens["all"] = registry.create_token("all", role=READER, models=["*"])[1]
        with TestClient(create_app(registry)) as client:
            yield client, registry, tokens


def test_api_tags_follow_the_roles_and_the_tokens_models(
    api: tuple[TestClient[Any], Registry, dict[str, str]],
) -> None:
    client, registry, tokens = api

    def auth(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[who]}"}

    body = {"ref": "org/llama@1", "tag": "nightly"}
    for who in (READER, PUSHER):
        refused = client.post("/v1/tags", json=body, headers=auth(who))
        assert refused.status_code == 403, refused.text
        assert "may not add or remove tags" in refused.json()["error"]["message"]
    added = client.post("/v1/tags", json=body, headers=auth(PROMOTER))
    assert added.status_code == 200, added.text
    assert added.json()["changed"] is True
    assert added.json()["added_by"].startswith("token:promoter:")
    assert client.post("/v1/tags", json=body, headers=auth(PROMOTER)).json()["changed"] is False
    # Another model, whether or not the version exists: the same 403, nothing tagged.
    answers = [
        client.post("/v1/tags", json={"ref": ref, "tag": "x"}, headers=auth(PROMOTER))
        for ref in ("other/secret@1", "other/secret@9", "other/none@1")
    ]
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert len({a.json()["error"]["message"] for a in answers}) == 1
    assert registry.tags("other/secret@1")[0].tag == "nightly"
    assert len(registry.tags("other/secret@1")) == 1
    bad = client.post("/v1/tags", json={"ref": "org/llama@1", "tag": "No!"}, headers=auth(PROMOTER))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    listed = client.get("/v1/tags", params={"ref": "org/llama@1"}, headers=auth(READER))
    assert [t["tag"] for t in listed.json()] == ["nightly"]
    hidden = client.get("/v1/tags", params={"ref": "other/secret@1"}, headers=auth(READER))
    assert hidden.status_code == 403
    # Versions with a tag: only those of the token's models.
    scoped = client.get("/v1/tagged", params={"tag": "nightly"}, headers=auth(READER))
    assert [v["ref"] for v in scoped.json()] == ["org/llama@1"]
    everything = client.get("/v1/tagged", params={"tag": "nightly"}, headers=auth("all"))
    assert [v["ref"] for v in everything.json()] == ["org/llama@1", "other/secret@1"]
    outside = client.get(
        "/v1/tagged", params={"tag": "nightly", "model": "other/secret"}, headers=auth(READER)
    )
    assert outside.status_code == 403
    missing = client.post(
        "/v1/tags/remove", json={"ref": "org/llama@1", "tag": "absent"}, headers=auth(PROMOTER)
    )
    assert missing.status_code == 404 and "has no tag" in missing.json()["error"]["message"]
    gone = client.post("/v1/tags/remove", json=body, headers=auth(PROMOTER))
    assert gone.status_code == 200 and gone.json()["tag"] == "nightly"
    assert registry.tags("org/llama@1") == []
    assert [e.action for e in registry.audit_events(subject="org/llama")][:2] == [
        "tag-rm",
        "tag-add",
    ]
    assert client.post("/v1/tags", json=body).status_code == 401


def test_tags_through_a_server_match_the_local_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Registry.init(home)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Registry.open(home) as registry:
        registry.push("org/llama", _model(tmp_path, 1))
        registry.push("org/llama", _model(tmp_path, 2))
        token = registry.create_token("ci", role=PROMOTER, models=["org/*"])[1]
        with LiveServer(registry, tmp_path / "staging") as server:
            with RemoteRegistry(server.url, token) as remote:
                assert remote.add_tag("org/llama@1", "eval-passed").changed
                assert not remote.add_tag("org/llama@1", "eval-passed").changed
                assert remote.tags("org/llama@1") == registry.tags("org/llama@1")
                assert [v.ref for v in remote.tagged("eval-passed")] == ["org/llama@1"]
                assert remote.show("org/llama@1").tags == ("eval-passed",)
                with pytest.raises(PermissionDeniedError):
                    remote.add_tag("other/x@1", "eval-passed")
            env = {"MODEL_REGISTRY_URL": server.url, "MODEL_REGISTRY_TOKEN": token}
            for args in (
                ["tag", "ls", "org/llama@1", "--json"],
                ["ls", "--tag", "eval-passed", "--json"],
                ["show", "org/llama@1", "--json"],
                ["tag", "ls", "org/llama@1"],
                ["ls", "org/llama", "--tag", "eval-passed"],
            ):
                there = CliRunner(env=env).invoke(main, args)
                here = CliRunner().invoke(main, args)
                assert there.exit_code == here.exit_code == 0, there.output
                assert there.stdout == here.stdout, args
            added = CliRunner(env=env).invoke(main, ["tag", "add", "org/llama@2", "rc"])
            assert added.exit_code == 0 and added.stdout == "tagged org/llama@2 rc\n"
            bad = CliRunner(env=env).invoke(main, ["tag", "add", "org/llama@2", "Bad"])
            assert bad.exit_code == 3
            removed = CliRunner(env=env).invoke(main, ["tag", "rm", "org/llama@2", "absent"])
            assert removed.exit_code == 4
        event = registry.audit_events(subject="org/llama", limit=1)[0]
        assert event.action == "tag-add" and event.actor.startswith("token:ci:")


def test_tags_survive_a_catalog_rebuild(home: Path, tmp_path: Path) -> None:
    """Tags are journaled (added and removed): a catalog rebuilt from the stores has them."""
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/llama", _model(tmp_path, 1))
        registry.add_tag("org/llama@1", "eval-passed")
        registry.add_tag("org/llama@1", "nightly")
        registry.remove_tag("org/llama@1", "nightly")
        before = registry.tags("org/llama@1")
        region = registry.region_names()[0]
        database = Path(registry.settings.catalog_url.split("///", 1)[1])
    shutil.move(database, tmp_path / "lost.db")
    rebuilt = CliRunner().invoke(main, ["catalog", "rebuild", "--from", region])
    assert rebuilt.exit_code == 0, rebuilt.output
    with Registry.open(home) as registry:
        assert registry.tags("org/llama@1") == before
        assert [e.action for e in registry.audit_events(subject="org/llama")][:3] == [
            "tag-rm",
            "tag-add",
            "tag-add",
        ]
        assert registry.verify_audit().ok
