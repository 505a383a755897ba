"""One JSON form per record (`registry.wire`): the CLI's `--json`, the REST API and the client
agree on it, and the client gives back the service's own types; the client has every method the
CLI calls (`registry.client.RegistrySurface`), failing clearly for what the API does not
offer; the key broker audits the key unwraps it took."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from cli.main import main
from registry import wire
from registry.api.app import create_app
from registry.client import NotOfferedError, RegistrySurface, RemoteRegistry
from registry.errors import InvalidInputError
from registry.service import ADMIN, READER, Registry
from registry.testing.models import make_model
from tests.test_api_cli import LiveServer


@dataclass
class Served:
    server: LiveServer
    registry: Registry
    tokens: dict[str, str]

    def get(self, path: str, **params: str) -> Any:
        answer = httpx.get(
            self.server.url + path,
            params=params,
            headers={"Authorization": f"Bearer {self.tokens[ADMIN]}"},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def served(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    Registry.init(home)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Registry.open(home) as registry:
        registry.push("org/llama", make_model(tmp_path / "m1", shards=2, shard_size=30_000, seed=1))
        registry.push("org/llama", make_model(tmp_path / "m2", shards=1, shard_size=20_000, seed=2))
        registry.promote("org/llama@1", "production", reason="evals")
        registry.promote("org/llama@2", "production")
        registry.hold("org/llama@1", reason="litigation")
        registry.set_retention("org/llama", keep_last=1)
        registry.add_tag("org/llama@1", "eval-passed")
        tokens = {
            ADMIN: registry.create_token("admin", role=ADMIN, models=["*"])[1],
            READER: registry.create_token("reader", role=READER, models=["org/*"])[1],
        }
        with LiveServer(registry, tmp_path / "staging") as server:
            yield Served(server, registry, tokens)


def _cli_json(*args: str) -> Any:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_version_is_the_same_json_from_the_cli_the_api_and_the_client(served: Served) -> None:
    ref = "org/llama@1"
    from_cli = _cli_json("show", ref)
    from_api = served.get("/v1/version", ref=ref)
    with RemoteRegistry(served.server.url, served.tokens[ADMIN]) as remote:
        details = remote.show(ref)
    from_client = wire.dump(wire.VersionDetails.of(details))
    from_service = wire.dump(wire.VersionDetails.of(served.registry.show(ref)))
    assert from_cli == from_api == from_client == from_service
    # The one shape: files listed, their count beside, the signing key and the signer's name.
    assert from_cli["file_count"] == len(from_cli["files"]) > 1
    assert {"path", "size", "digest", "tensors"} == set(from_cli["files"][0])
    assert from_cli["signed_by"] == served.registry.show(ref).version.signed_by
    assert from_cli["signer"] == "local"
    # The client returns the service's own types, equal to the service's values (but for the
    # stored object's name, which is the server's business).
    local = served.registry.show(ref)
    assert details.manifest == local.manifest and details.signer == local.signer
    assert details.version == dataclasses.replace(local.version, manifest_object="")


@pytest.mark.parametrize(
    ("cli", "path", "params", "call"),
    [
        (["ls"], "/v1/models", {}, lambda r: [wire.Model.of(m) for m in r.models()]),
        (
            ["ls", "org/llama"],
            "/v1/versions",
            {"model": "org/llama"},
            lambda r: [wire.Version.of(v) for v in r.versions("org/llama")],
        ),
        (
            ["alias", "ls", "org/llama"],
            "/v1/aliases",
            {"model": "org/llama"},
            lambda r: [wire.Alias.of(a) for a in r.aliases("org/llama")],
        ),
        (
            ["history", "org/llama"],
            "/v1/history",
            {"model": "org/llama"},
            lambda r: [wire.AliasMove.of(m) for m in r.history("org/llama")],
        ),
        (["hold", "ls"], "/v1/holds", {}, lambda r: [wire.Hold.of(h) for h in r.holds()]),
        (
            ["tag", "ls", "org/llama@1"],
            "/v1/tags",
            {"ref": "org/llama@1"},
            lambda r: [wire.Tag.of(t) for t in r.tags("org/llama@1")],
        ),
        (
            ["ls", "--tag", "eval-passed"],
            "/v1/tagged",
            {"tag": "eval-passed"},
            lambda r: [wire.Version.of(v) for v in r.tagged("eval-passed")],
        ),
        (
            ["search", "llama"],
            "/v1/search",
            {"q": "llama"},
            lambda r: wire.SearchResult.of(r.search("llama")),
        ),
        (
            ["retention", "show", "org/llama"],
            "/v1/retention",
            {"model": "org/llama"},
            lambda r: wire.Retention.of("org/llama", *r.retention("org/llama")),
        ),
        (
            ["audit", "verify"],
            "/v1/audit/verify",
            {},
            lambda r: wire.AuditVerification.of(r.verify_audit()),
        ),
    ],
)
def test_records_round_trip_through_the_api_and_the_client(
    served: Served, cli: list[str], path: str, params: dict[str, str], call: Any
) -> None:
    from_cli = _cli_json(*cli)
    from_api = served.get(path, **params)
    if path in ("/v1/models", "/v1/versions"):  # a page: this one is the only one
        assert from_api.pop("next") is None
        (from_api,) = from_api.values()
    with RemoteRegistry(served.server.url, served.tokens[ADMIN]) as remote:
        from_client = wire.dump(call(remote))
    assert from_cli == from_api == from_client == wire.dump(call(served.registry))


def test_reports_round_trip_through_the_client(served: Served, tmp_path: Path) -> None:
    with RemoteRegistry(served.server.url, served.tokens[ADMIN]) as remote:
        plan = remote.plan_retention("org/llama")
        assert plan == served.registry.plan_retention("org/llama")
        verified = remote.verify("org/llama@2")
        assert wire.dump(wire.VerifyReport.of(verified)) == wire.dump(
            wire.VerifyReport.of(served.registry.verify("org/llama@2"))
        )
        gc = wire.dump(wire.GcReport.of(remote.gc(dry_run=True, grace="0h")))
        assert gc == wire.dump(wire.GcReport.of(served.registry.gc(dry_run=True, grace="0h")))
        assert gc["dry_run"] is True and gc["expired"] == []  # @1 is held, @2 the newest
        pushed = remote.push("org/new", make_model(tmp_path / "n", shards=1, shard_size=9_000))
        assert pushed.created and pushed.files == pushed.version.file_count > 1
        assert pushed.version == remote.resolve("org/new@1")


def test_the_client_has_every_method_of_the_surface_and_refuses_what_the_api_lacks() -> None:
    members = {
        name
        for name, _ in inspect.getmembers(RegistrySurface)
        if not name.startswith("_") or name in ("__enter__", "__exit__")
    } - set(dir(object))
    for implementation in (Registry, RemoteRegistry):
        for name in members:
            assert hasattr(implementation, name), (implementation, name)
            ours = getattr(implementation, name)
            if callable(ours):
                wanted = inspect.signature(getattr(RegistrySurface, name)).parameters
                have = inspect.signature(ours).parameters
                assert set(wanted) <= set(have), (implementation, name)
    # Nothing hides behind __getattr__ any more: an unknown name is an AttributeError.
    remote = RemoteRegistry("http://127.0.0.1:9", "mrt_unused")
    assert not hasattr(remote, "catalog")
    for call, what, command in (
        (remote.drill, "drill", "drill"),
        (remote.regions_status, "regions status", "regions status"),
        (remote.key_report, "key report", "keys show"),
        (lambda: remote.deliveries(pending_only=True), "deliveries", "events ls"),
        (lambda: remote.rotate_keys("new.key"), "rotate keys", "keys rotate"),
    ):
        with pytest.raises(NotOfferedError) as refused:
            call()  # no request is sent: port 9 would refuse it
        assert isinstance(refused.value, InvalidInputError)
        assert refused.value.code == "not_offered" and refused.value.exit_code == 3
        assert str(refused.value) == f"`{what}` is not available through the REST API"
        assert f"`model-registry {command}`" in refused.value.hint  # what to run, and where
        assert "run it on the registry server" in refused.value.hint


def test_cli_through_a_server_says_what_it_cannot_do(served: Served, tmp_path: Path) -> None:
    """Commands the REST API does not offer are refused by name, those that administer a
    home (init, serve, tokens) included: they never touch a local home instead."""
    elsewhere = tmp_path / "no-home"
    env = {
        "MODEL_REGISTRY_URL": served.server.url,
        "MODEL_REGISTRY_TOKEN": served.tokens[ADMIN],
        "MODEL_REGISTRY_HOME": str(elsewhere),
    }
    for args in (
        ["events", "ls", "--json"],
        ["keys", "show", "--json"],
        ["init", "--json"],
        ["token", "create", "x", "--role", "reader", "--models", "*", "--json"],
        ["token", "list", "--json"],
        ["serve"],
    ):
        result = CliRunner(env=env).invoke(main, args)
        assert result.exit_code == 3, (args, result.output)
        if "--json" in args:
            error = json.loads(result.stdout[: result.stdout.rindex("}") + 1])["error"]
            assert error["code"] == "not_offered" and "registry server" in error["hint"]
            assert f"model-registry {args[0]}" in error["message"] + error["hint"]
    assert not elsewhere.exists()  # no local registry was made or opened


def test_the_key_broker_audits_the_unwraps_it_took(home: Path, tmp_path: Path) -> None:
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/m", make_model(tmp_path / "m", shards=3, shard_size=10_000, seed=3))
        record, text = registry.create_token("fleet", role=READER, models=["org/*"])
        before = registry.unwraps
        # Through a token's registry, as the API calls it.
        view = registry.acting_as(record)
        brokered = view.broker_keys("org/m@1", token=record.id)
        assert brokered.unwraps == len(brokered.keys) == view.unwraps > 0
        assert registry.unwraps == before  # the token's unwraps are its own
        event = registry.audit_events(subject="org/m", limit=1)[0]
        assert event.action == "key-broker" and event.actor == view.actor
        assert event.details["key_unwraps"] == len(brokered.keys) == event.details["keys"]
        assert event.details["token"] == record.id
        # Through the REST API: the audit, the metric and the answer agree.
        with TestClient(create_app(registry)) as client:
            answer = client.post(
                "/v1/keys", json={"ref": "org/m@1"}, headers={"Authorization": f"Bearer {text}"}
            )
            assert answer.status_code == 200, answer.text
            keys = answer.json()["keys"]
            event = registry.audit_events(subject="org/m", limit=1)[0]
            assert event.action == "key-broker"
            assert event.details["key_unwraps"] == len(keys) == event.details["keys"]
            scraped = client.get("/metrics").text
            line = f'model_registry_key_unwraps_total{{token="{record.id}"}} {float(len(keys))}'
            assert line in scraped
        assert registry.unwraps == before
