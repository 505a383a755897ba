"""The REST API's lists of models and versions come a page at a time (`limit`, `after`, `next`):
every model or version on exactly one page, a token's scope applied before the page is cut,
bad paging refused with a 400 that says what to send; the client (and the CLI's `ls` through a
server) walks the pages to the last."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from cli.main import main
from registry import wire
from registry.api.app import create_app
from registry.client import RemoteRegistry
from registry.client import remote as remote_module
from registry.service import ADMIN, READER, Registry
from registry.testing.models import make_model
from registry.testing.seed import seed_catalog
from tests.test_api_cli import LiveServer

ORG_MODELS = ["org/a", "org/b", "org/c", "org/d", "org/e"]
VERSIONS = 5


@pytest.fixture
def listed(home: Path, tmp_path: Path) -> Iterator[tuple[Registry, dict[str, str]]]:
    """Five org/ models (org/a with five versions, one of them deleted) and two others."""
    Registry.init(home)
    with Registry.open(home) as registry:
        for index, name in enumerate([*ORG_MODELS, "other/x", "zzz/y"]):
            model = make_model(tmp_path / f"m{index}", shards=1, shard_size=999, seed=index)
            registry.push(name, model)
        for seed in range(1, VERSIONS):
            model = make_model(tmp_path / f"a{seed}", shards=1, shard_size=999, seed=100 + seed)
            registry.push("org/a", model)
        registry.delete("org/a@3", reason="bad eval")
        tokens = {
            "org": registry.create_token("org", role=READER, models=["org/*"])[1],
            "all": registry.create_token("all", role=ADMIN, models=["*"])[1],
        }
        yield registry, tokens


def _walk(client: TestClient[Any], path: str, token: str, key: str, **params: Any) -> list[Any]:
    """Every page of a list, asserting each holds at most `limit` and ends where `next` says."""
    pages: list[list[Any]] = []
    while True:
        answer = client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {key, "next"}
        pages.append(body[key])
        assert len(body[key]) <= params["limit"]
        if body["next"] is None:
            break
        assert len(body[key]) == params["limit"]  # only a full page has one after it
        last = body[key][-1]
        assert body["next"] == (last["name"] if key == "models" else last["number"])
        params = {**params, "after": body["next"]}
    return pages


def test_models_come_a_page_at_a_time_within_the_tokens_scope(
    listed: tuple[Registry, dict[str, str]], tmp_path: Path
) -> None:
    registry, tokens = listed
    with TestClient(create_app(registry)) as client:
        pages = _walk(client, "/v1/models", tokens["org"], "models", limit=2)
        assert [[m["name"] for m in page] for page in pages] == [
            ["org/a", "org/b"],
            ["org/c", "org/d"],
            ["org/e"],
        ]
        # The page's figures are the model's: org/a has four live versions, the newest 5.
        first = pages[0][0]
        assert (first["versions"], first["latest"]) == (VERSIONS - 1, VERSIONS)
        whole = {m.name: m for m in registry.models()}
        assert first["size"] == whole["org/a"].total_size
        assert first["stored_size"] == whole["org/a"].stored_size
        # A token for every model sees them all; a page that ends on the last model says so.
        every = _walk(client, "/v1/models", tokens["all"], "models", limit=7)
        assert [m["name"] for m in every[0]] == sorted(whole) and len(every) == 1
        # After the last visible model, an empty page and no next one.
        after = _walk(client, "/v1/models", tokens["org"], "models", limit=3, after="org/e")
        assert after == [[]]


def test_versions_come_a_page_at_a_time_oldest_first(
    listed: tuple[Registry, dict[str, str]], tmp_path: Path
) -> None:
    registry, tokens = listed
    with TestClient(create_app(registry)) as client:
        pages = _walk(client, "/v1/versions", tokens["org"], "versions", model="org/a", limit=2)
        assert [[v["number"] for v in page] for page in pages] == [[1, 2], [4, 5]]
        tombstones = _walk(
            client, "/v1/versions", tokens["org"], "versions", model="org/a", limit=2, expired=True
        )
        assert [[v["number"] for v in page] for page in tombstones] == [[1, 2], [3, 4], [5]]
        assert tombstones[1][0]["expired_at"] is not None
        # Without `limit`, a page of up to 100: everything here.
        answer = client.get(
            "/v1/versions",
            params={"model": "org/a"},
            headers={"Authorization": f"Bearer {tokens['org']}"},
        )
        assert [v["number"] for v in answer.json()["versions"]] == [1, 2, 4, 5]
        assert answer.json()["next"] is None


@pytest.mark.parametrize(
    ("path", "params", "says"),
    [
        ("/v1/models", {"limit": "0"}, "limit must be 1 to 1000"),
        ("/v1/models", {"limit": "1001"}, "limit must be 1 to 1000"),
        ("/v1/models", {"limit": "ten"}, "limit"),
        ("/v1/versions", {"model": "org/a", "limit": "0"}, "limit must be 1 to 1000"),
        ("/v1/models", {"after": "org/a\x00"}, "invalid model name"),
        ("/v1/models", {"after": "x" * 300}, "the limit is"),
        ("/v1/versions", {"model": "org/a", "after": "-1"}, "after must be a version number"),
        ("/v1/versions", {"model": "org/a", "after": str(2**31)}, "after must be a version number"),
        ("/v1/versions", {"model": "org/a", "after": str(10**30)}, "after"),
        ("/v1/versions", {"model": "org/a", "after": "org/b"}, "after"),
    ],
)
def test_bad_paging_is_a_400_that_says_what_to_send(
    listed: tuple[Registry, dict[str, str]], tmp_path: Path, path: str, params: Any, says: str
) -> None:
    registry, tokens = listed
    with TestClient(create_app(registry)) as client:
        answer = client.get(
            path, params=params, headers={"Authorization": f"Bearer {tokens['org']}"}
        )
        assert answer.status_code == 400, answer.text
        assert says in json.dumps(answer.json())


def test_the_client_and_the_cli_walk_every_page(
    listed: tuple[Registry, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tokens = listed
    monkeypatch.setattr(remote_module, "LIST_PAGE", 2)  # three pages of models, two of versions
    with LiveServer(registry, tmp_path / "staging") as server:
        with RemoteRegistry(server.url, tokens["all"]) as remote:
            assert remote.models() == registry.models()
            # The stored object's name is the server's business (empty in the client's records).
            assert remote.versions("org/a") == [
                dataclasses.replace(v, manifest_object="") for v in registry.versions("org/a")
            ]
            expired = [v.number for v in remote.versions("org/a", expired=True)]
            assert expired == [1, 2, 3, 4, 5]
        env = {"MODEL_REGISTRY_URL": server.url, "MODEL_REGISTRY_TOKEN": tokens["org"]}
        result = CliRunner(env=env).invoke(main, ["ls", "--json"])
        assert result.exit_code == 0, result.output
        assert [m["name"] for m in json.loads(result.stdout)] == ORG_MODELS
        result = CliRunner(env=env).invoke(main, ["ls", "org/a", "--json"])
        assert result.exit_code == 0, result.output
        assert [v["number"] for v in json.loads(result.stdout)] == [1, 2, 4, 5]


def test_a_page_of_a_thousand_models_matches_the_whole_listing(
    home: Path, tmp_path: Path, catalog_url: str | None
) -> None:
    """Past the few hundred models one query of the page can take (SQLite refuses an
    expression a thousand deep): every figure as the unpaged listing gives it."""
    Registry.init(home, catalog_url=catalog_url)
    seed_catalog(home, models=600, versions=1300, seed=5)
    with Registry.open(home) as registry:
        _record, token = registry.create_token("all", role=READER, models=["*"])
        whole = [wire.dump(wire.Model.of(m)) for m in registry.models()]
        with TestClient(create_app(registry)) as client:
            pages = _walk(client, "/v1/models", token, "models", limit=1000)
            assert pages == [whole] and len(whole) == 600
            halves = _walk(client, "/v1/models", token, "models", limit=300)
            assert [m for page in halves for m in page] == whole and len(halves) == 2
