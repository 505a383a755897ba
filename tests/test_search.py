"""Search (issue 20): versions found by their model's name, tags, metadata (`KEY=VALUE` exactly,
or a word in a key or value) and messages, newest first, each hit saying what matched; bounded
by its limit; the same answer whether the newest versions hold enough hits or the older ones are
searched too; limited to a token's models in the REST API and the web UI; the CLI and a server.
On SQLite and PostgreSQL."""

from __future__ import annotations

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
from registry.catalog import search as catalog_search
from registry.client import RemoteRegistry
from registry.errors import InvalidInputError
from registry.records import SearchMatch
from registry.service import ADMIN, READER, Registry
from registry.testing.metadata import write_meta
from registry.testing.models import make_model
from tests.test_api_cli import LiveServer
from tests.uikit import ESCAPED, SCRIPT, page_problems, security_headers_problems, signed_in

# (model, message, metadata, tags), pushed in this order: the last is the newest.
PUSHES: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = [
    ("org/llama", "base run", {"base_model": "meta-llama/Llama-3.1-8B"}, ()),
    (
        "org/llama",
        "fine-tune on Dolly-15k",
        {"base_model": "org/llama@1", "dataset.dolly-15k": "rev-a1"},
        ("eval-passed",),
    ),
    ("org/mistral", "first mistral " + SCRIPT, {"base_model": "mistralai/Mistral-7B"}, ()),
    ("org/dolly-chat", "chat model", {"source.repo": "https://git.example/org/chat"}, ()),
    ("other/secret", "secret dolly run", {"base_model": "meta-llama/Llama-3.1-8B"}, ("nightly",)),
    ("org/llama", "100% done_ok", {"meta.lr": "2e-5", "meta.note": "Dolly was here"}, ("rc",)),
    ("org/mistral", "second", {"base_model": "mistralai/Mistral-7B"}, ("dolly-tagged",)),
]


@pytest.fixture
def searchable(home: Path, tmp_path: Path, catalog_url: str | None) -> Path:
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        for index, (name, message, meta, tags) in enumerate(PUSHES):
            model = make_model(tmp_path / f"m{index}", shards=1, shard_size=3_000, seed=index)
            version = registry.push(name, model, message=message).version
            write_meta(registry.catalog.engine, version.ref, meta)
            for tag in tags:
                registry.add_tag(version.ref, tag)
        registry.delete("org/mistral@1", reason="withdrawn")  # a tombstone is never a hit
    return home


def _hits(result: Any) -> list[tuple[str, list[tuple[str, str | None, str]]]]:
    return [
        (hit.version.ref, [(m.field, m.key, m.value) for m in hit.matches]) for hit in result.hits
    ]


def test_a_word_is_found_in_names_tags_metadata_and_messages_newest_first(
    searchable: Path,
) -> None:
    with Registry.open(searchable) as registry:
        found = registry.search("DOLLY")
        assert _hits(found) == [
            ("org/mistral@2", [("tag", None, "dolly-tagged")]),
            ("org/llama@3", [("meta", "meta.note", "Dolly was here")]),
            ("other/secret@1", [("message", None, "secret dolly run")]),
            ("org/dolly-chat@1", [("name", None, "org/dolly-chat")]),
            (
                "org/llama@2",
                [
                    ("meta", "dataset.dolly-15k", "rev-a1"),
                    ("message", None, "fine-tune on Dolly-15k"),
                ],
            ),
        ]
        assert found.more is False and found.query == "DOLLY"
        # An exact KEY=VALUE: the metadata's index, case and all.
        exact = registry.search("base_model=meta-llama/Llama-3.1-8B")
        assert [h.version.ref for h in exact.hits] == ["other/secret@1", "org/llama@1"]
        assert exact.hits[0].matches == (
            SearchMatch("meta", "meta-llama/Llama-3.1-8B", "base_model"),
        )
        assert registry.search("base_model=META-llama/Llama-3.1-8B").hits == ()
        assert registry.search(" base_model = org/llama@1 ").hits[0].version.ref == "org/llama@2"
        assert registry.search("nobody=knows").hits == ()
        # A name matches the model's newest live version only (org/mistral@1 is deleted).
        mistral = registry.search("mistral")
        assert [h.version.ref for h in mistral.hits] == ["org/mistral@2"]
        assert mistral.hits[0].matches[0] == SearchMatch("name", "org/mistral")
        # `%` and `_` are letters, not wildcards.
        assert [h.version.ref for h in registry.search("100% done_ok").hits] == ["org/llama@3"]
        assert registry.search("100%%").hits == () and registry.search("d_ne").hits == ()
        # Markup is text like any other.
        assert [h.version.ref for h in registry.search("<script>").hits] == []  # deleted
        # The limit: the newest ones, and whether there were more.
        two = registry.search("dolly", limit=2)
        assert [h.version.ref for h in two.hits] == ["org/mistral@2", "org/llama@3"]
        assert two.more is True
        assert registry.search("dolly", limit=5).more is False


def test_models_can_be_narrowed_by_a_pattern_and_by_a_tokens_patterns(searchable: Path) -> None:
    with Registry.open(searchable) as registry:
        refs = [h.version.ref for h in registry.search("dolly", model="org/llama").hits]
        assert refs == ["org/llama@3", "org/llama@2"]
        refs = [h.version.ref for h in registry.search("dolly", model="org/*").hits]
        assert "other/secret@1" not in refs and len(refs) == 4
        refs = [h.version.ref for h in registry.search("dolly", patterns=("org/*",)).hits]
        assert "other/secret@1" not in refs and len(refs) == 4
        assert registry.search("dolly", model="nobody/*").hits == ()
        assert registry.search("dolly", model="other/*", patterns=("org/*",)).hits == ()
        meta = registry.search("base_model=meta-llama/Llama-3.1-8B", patterns=("org/*",))
        assert [h.version.ref for h in meta.hits] == ["org/llama@1"]


def test_older_versions_are_searched_when_the_newest_hold_too_few_hits(
    searchable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search looks among the newest versions first and, when they hold too few hits, in
    one pass over the older ones: the answer is the same whichever way it was found."""
    with Registry.open(searchable) as registry:
        queries = ["dolly", "llama", "run", "x", "eval", "base_model=mistralai/Mistral-7B"]
        whole = {
            (query, limit): _hits(registry.search(query, limit=limit))
            for query in queries
            for limit in (1, 2, 3, 50)
        }
        for recent in (1, 2, 3):
            monkeypatch.setattr(catalog_search, "RECENT", recent)
            for (query, limit), expected in whole.items():
                assert _hits(registry.search(query, limit=limit)) == expected, (query, recent)
                more = registry.search(query, limit=limit).more
                assert more == (len(_hits(registry.search(query, limit=50))) > limit)
            narrowed = registry.search("dolly", model="org/llama")
            assert [h.version.ref for h in narrowed.hits] == ["org/llama@3", "org/llama@2"]


def test_bad_searches_are_refused_clearly(searchable: Path) -> None:
    with Registry.open(searchable) as registry:
        for query, message in (
            ("", "nothing to search for"),
            ("   ", "nothing to search for"),
            ("x" * 201, "longer than 200"),
            ("a\x00b", "NUL"),
            ("=value", "names no metadata key"),
        ):
            with pytest.raises(InvalidInputError, match=message):
                registry.search(query)
        for limit in (0, 501):
            with pytest.raises(InvalidInputError, match="the limit is 1 to 500"):
                registry.search("dolly", limit=limit)
        with pytest.raises(InvalidInputError, match="empty model pattern"):
            registry.search("dolly", model=" ")
    with Registry.open(searchable, role=READER) as reader:
        assert reader.search("dolly").hits  # reading is a reader's right


def test_cli_search(searchable: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["search", "dolly"])
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["version", "created", "(UTC)", "matched"]
    assert lines[1].startswith("org/mistral@2") and "tag dolly-tagged" in lines[1]
    assert "meta meta.note=Dolly was here" in listed.stdout
    assert "name org/dolly-chat" in listed.stdout
    document = json.loads(runner.invoke(main, ["search", "dolly", "--json"]).stdout)
    assert document["query"] == "dolly" and document["more"] is False
    assert [h["ref"] for h in document["hits"]][:2] == ["org/mistral@2", "org/llama@3"]
    assert document["hits"][0]["matches"] == [
        {"field": "tag", "value": "dolly-tagged", "key": None}
    ]
    assert document["hits"][0]["files"]  # a hit is a version, in the one shape
    limited = runner.invoke(main, ["search", "dolly", "--limit", "1"])
    assert limited.exit_code == 0 and "more than 1 version match" in limited.stderr
    narrowed = json.loads(
        runner.invoke(main, ["search", "dolly", "--model", "org/llama", "--json"]).stdout
    )
    assert [h["ref"] for h in narrowed["hits"]] == ["org/llama@3", "org/llama@2"]
    assert "no version matches zzz" in runner.invoke(main, ["search", "zzz"]).stdout
    for args in (["search", ""], ["search", "=x"], ["search", "x", "--limit", "0"]):
        assert runner.invoke(main, args).exit_code in (2, 3), args  # click's own: 2


@pytest.fixture
def served(
    searchable: Path, tmp_path: Path
) -> Iterator[tuple[TestClient[Any], Registry, dict[str, str]]]:
    with Registry.open(searchable) as registry:
        tokens = {
            "org": registry.create_token("org", role=READER, models=["org/*"])[1],
            "all": registry.create_token("all", role=READER, models=["*"])[1],
        }
        app = create_app(registry)
        with TestClient(app) as client:
            yield client, registry, tokens


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_api_search_shows_only_the_tokens_models(
    served: tuple[TestClient[Any], Registry, dict[str, str]],
) -> None:
    client, _registry, tokens = served

    def search(who: str, **params: str) -> Any:
        return client.get(
            "/v1/search", params=params, headers={"Authorization": f"Bearer {tokens[who]}"}
        )

    everything = search("all", q="dolly").json()
    assert "other/secret@1" in [h["ref"] for h in everything["hits"]]
    scoped = search("org", q="dolly").json()
    assert [h["ref"] for h in scoped["hits"]] == [
        h["ref"] for h in everything["hits"] if h["ref"] != "other/secret@1"
    ]
    assert search("org", q="secret").json()["hits"] == []
    meta = search("org", q="base_model=meta-llama/Llama-3.1-8B").json()
    assert [h["ref"] for h in meta["hits"]] == ["org/llama@1"]
    for model in ("other/secret", "other/none"):  # a name outside: 403, whether it exists or not
        refused = search("org", q="dolly", model=model)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["message"] == "this token may not act on that model"
    assert search("org", q="dolly", model="other/*").json()["hits"] == []
    assert search("org", q="dolly", model="org/llama").json()["hits"][0]["ref"] == "org/llama@3"
    assert search("org", q="dolly", limit="0").status_code == 400
    assert search("org", q="dolly", limit="many").status_code == 400
    assert search("org", q="").status_code == 400
    assert client.get("/v1/search", params={"q": "dolly"}).status_code == 401
    assert json.loads(json.dumps(everything)) == json.loads(
        CliRunner().invoke(main, ["search", "dolly", "--json"]).stdout
    )


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_search_through_a_server_matches_the_local_home(
    searchable: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Registry.open(searchable) as registry:
        token = registry.create_token("ci", role=READER, models=["*"])[1]
        with LiveServer(registry, tmp_path / "staging") as server:
            with RemoteRegistry(server.url, token) as remote:
                # The client gives back the service's own types (the stored object's name
                # aside, the server's business).
                there = remote.search("dolly", limit=2)
                here = registry.search("dolly", limit=2)
                assert wire.dump(wire.SearchResult.of(there)) == wire.dump(
                    wire.SearchResult.of(here)
                )
                assert [h.matches for h in there.hits] == [h.matches for h in here.hits]
            env = {"MODEL_REGISTRY_URL": server.url, "MODEL_REGISTRY_TOKEN": token}
            for args in (["search", "dolly"], ["search", "llama", "--json", "--limit", "2"]):
                there = CliRunner(env=env).invoke(main, args)
                here = CliRunner().invoke(main, args)
                assert there.exit_code == here.exit_code == 0, there.output
                assert there.stdout == here.stdout


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_the_web_ui_searches_within_the_tokens_models(searchable: Path, tmp_path: Path) -> None:
    from tests.uikit import ui_app

    with Registry.open(searchable) as registry:
        registry.push(
            "org/hostile",
            make_model(tmp_path / "h", shards=1, shard_size=1_000, seed=42),
            message="dolly " + SCRIPT,
        )
        tokens = {
            "org": registry.create_token("org", role=READER, models=["org/*"])[1],
            "admin": registry.create_token("admin", role=ADMIN, models=["*"])[1],
        }
        app = ui_app(registry)
        ui = signed_in(app, tokens["org"])
        home = ui.get("/ui/")
        assert 'action="/ui/search"' in home.text and 'id="search-q"' in home.text
        answer = ui.get("/ui/search?q=dolly")
        assert answer.status_code == 200, answer.text
        assert security_headers_problems(answer, page=True) == []
        html = answer.text
        assert page_problems(html) == []
        assert ESCAPED[SCRIPT] in html and SCRIPT not in html
        assert 'href="/ui/models/org/hostile/versions/1"' in html
        assert 'href="/ui/models/org/llama/versions/3"' in html
        assert "other/secret" not in html  # outside the token's patterns
        assert 'value="dolly"' in html  # the query stays in the boxes
        everything = signed_in(app, tokens["admin"]).get("/ui/search?q=dolly").text
        assert 'href="/ui/models/other/secret/versions/1"' in everything
        empty = ui.get("/ui/search")
        assert empty.status_code == 200 and "<table" not in empty.text
        none = ui.get("/ui/search?q=zzz-nothing")
        assert "No version visible to this token matches." in none.text
        exact = ui.get("/ui/search?q=base_model%3Dmeta-llama/Llama-3.1-8B").text
        assert "org/llama/versions/1" in exact and "other/secret" not in exact
        too_long = ui.get("/ui/search?q=" + "x" * 201)
        assert too_long.status_code == 400 and page_problems(too_long.text) == []
        version = ui.get("/ui/models/org/llama/versions/2").text
        assert 'href="/ui/search?q=eval-passed"' in version  # its tags link to a search
        anonymous = signed_in(app, tokens["org"])
        anonymous.client.cookies.clear()
        assert anonymous.get("/ui/search?q=dolly").status_code in (302, 303)
