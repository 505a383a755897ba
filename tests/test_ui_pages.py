"""The web UI's pages (issue 19): hostile text shown as text everywhere, the security headers
of every answer, paging (models, versions, the audit trail's cursor), and what each page says
of a version (files, tensors, config, snippets, its audit entries), of a diff, and of a model
(copies per region, retention in words, holds, its aliases' moves)."""

from __future__ import annotations

import html as markup
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from litestar import Litestar
from markupsafe import escape
from sqlalchemy import delete, select, update

from registry.api.ui.render import size
from registry.catalog.models import Model, Placement, Version
from registry.errors import InvalidReferenceError
from registry.service import Registry
from tests.uikit import (
    ATTRIBUTE,
    ESCAPED,
    HOSTILE,
    SCRIPT,
    TEMPLATE,
    TEXTAREA,
    UI,
    UNICODE,
    assert_shows_escaped,
    page_problems,
    security_headers_problems,
    seed_versions,
    signed_in,
    sql,
    tiny_model,
    ui_app,
)

LISTED = 120  # models named list/m000...: more than two pages of 50
MANY = 120  # versions of page/many
EXPIRED = range(5, 10)  # of those, tombstones
NOTES = 13  # audit entries by the seeder besides its pushes (253 in all: 6 pages, one short)


@dataclass
class Site:
    registry: Registry
    app: Litestar
    scratch: Path
    tokens: dict[str, str]

    def ui(self, who: str = "admin") -> UI:
        return signed_in(self.app, self.tokens[who])

    def push(self, name: str, message: str = "", **model: Any) -> int:
        source = tiny_model(self.scratch / "src", **{"note": f"{name} {message}", **model})
        return self.registry.push(name, source, message=message).version.number


def _hostile(site: Site) -> None:
    """org/hostile: every text a user writes (messages, reasons, tensor names, config values,
    file names, the model card) is hostile."""
    name = "org/hostile"
    site.push(
        name,
        "v1 " + SCRIPT,
        tensors={SCRIPT: ("F32", [2, 2]), "w": ("F32", [2])},
        config={"model_type": SCRIPT, "architectures": [ATTRIBUTE], ATTRIBUTE: TEMPLATE},
        files={"README.md": "\n".join(HOSTILE), ATTRIBUTE + ".txt": "x"},
    )
    site.push(
        name,
        ATTRIBUTE,
        tensors={ATTRIBUTE: ("F16", [3]), "w": ("F32", [2])},
        config={"model_type": TEXTAREA, ATTRIBUTE: UNICODE},
    )
    for message in (TEMPLATE, TEXTAREA, UNICODE):
        site.push(name, message)
    site.registry.promote(f"{name}@1", "production", reason=SCRIPT)
    site.registry.promote(f"{name}@2", "production", reason=ATTRIBUTE)
    site.registry.promote(f"{name}@3", "staging", reason=TEMPLATE)
    site.registry.hold(f"{name}@1", reason=TEXTAREA)
    site.registry.hold(f"{name}@2", reason=UNICODE)


def _paged(site: Site) -> None:
    for index in range(LISTED):
        seed_versions(site.registry, f"list/m{index:03d}", 1)
    seed_versions(site.registry, "page/many", MANY)
    for index in range(NOTES):
        site.registry.catalog.audit("seeder", "verify", "page/many", {"note": index})
    many = select(Model.id).where(Model.name == "page/many").scalar_subquery()
    with site.registry.catalog.engine.begin() as connection:
        connection.execute(
            update(Version)
            .where(Version.model_id == many, Version.number.in_(list(EXPIRED)))
            .values(expired_at=datetime.now(UTC), expired_by="gc", expiry_reason="policy")
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("ui-pages")
    Registry.init(root / "home", store=[str(root / "region-a"), str(root / "region-b")])
    with Registry.open(root / "home", actor="tester@example") as registry:
        tokens = {
            "admin": registry.create_token("admin", role="admin", models=["*"])[1],
            "reader": registry.create_token("reader", role="reader", models=["*"])[1],
        }
        found = Site(registry, ui_app(registry), root, tokens)
        _hostile(found)
        _paged(found)
        yield found


def _squash(html: str) -> str:
    return " ".join(html.split())


# -- hostile text --------------------------------------------------------------------------------


def test_hostile_text_is_text_on_every_page(site: Site) -> None:
    ui = site.ui()
    base = "/ui/models/org/hostile"
    pages = [
        (f"{base}", HOSTILE),
        (f"{base}?expired=1", HOSTILE),
        (f"{base}/versions/1", HOSTILE),  # the card holds them all
        (f"{base}/versions/2", (ATTRIBUTE, TEXTAREA, UNICODE)),
        (f"{base}/versions/3", (TEMPLATE,)),
        (f"{base}/diff?a=1&b=2", (SCRIPT, ATTRIBUTE, TEMPLATE, TEXTAREA, UNICODE)),
        ("/ui/audit?model=org/hostile", HOSTILE),
        ("/ui/audit?actor=tester%40example", HOSTILE),
    ]
    for url, shown in pages:
        answer = ui.get(url)
        assert answer.status_code == 200, url
        assert_shows_escaped(answer.text, *shown)
    version = ui.get(f"{base}/versions/1").text
    # Where each came from: the message, a tensor's name, config.json, a file's name.
    assert f'<p class="message">v1 {ESCAPED[SCRIPT]}</p>' in version
    assert f"<td><code>{ESCAPED[SCRIPT]}</code></td>" in version
    assert f"<dt>Model type</dt><dd>{ESCAPED[SCRIPT]}</dd>" in version
    assert f"<dt>Architecture</dt><dd>{ESCAPED[ATTRIBUTE]}</dd>" in version
    assert f"<td>{ESCAPED[ATTRIBUTE]}.txt</td>" in version
    reason = " ".join(HOSTILE)
    form = {"action": "promote", "model": "org/hostile", "version": "3", "alias": "production"}
    confirm = ui.change("confirm", reason=reason, **form)
    assert confirm.status_code == 200
    assert_shows_escaped(confirm.text, *HOSTILE)
    assert f'name="reason" value="{escape(reason)}"' in confirm.text


@pytest.mark.parametrize(
    "url",
    [
        "/ui/?q={}",
        "/ui/models/org/hostile/versions/1?t={}",
        "/ui/audit?actor={}",
        "/ui/audit?action={}",
        "/ui/audit?model=org/hostile&actor={}&action={}",
    ],
)
def test_hostile_query_parameters_are_echoed_as_text(site: Site, url: str) -> None:
    ui = site.ui()
    for hostile in HOSTILE:
        answer = ui.get(url.format(*[quote(hostile)] * url.count("{}")))
        assert answer.status_code == 200, (url, hostile)
        assert_shows_escaped(answer.text, hostile)


def test_a_notice_shows_only_when_this_session_made_it(site: Site) -> None:
    """A notice ("production now points at @5") is the redirect of a change this session
    made: a link from elsewhere with a notice of its own shows nothing."""
    from registry.api.ui.session import notice_signature

    ui = site.ui()
    claim = "production now points at @9"
    for query in (f"notice={quote(claim)}", f"notice={quote(claim)}&sig=0123456789abcdef"):
        answer = ui.get(f"/ui/models/org/hostile?{query}")
        assert answer.status_code == 200 and claim not in answer.text, query
    other = site.ui()
    forged = notice_signature(other.csrf, claim)  # another session's signature
    assert claim not in ui.get(f"/ui/models/org/hostile?notice={quote(claim)}&sig={forged}").text
    mine = notice_signature(ui.csrf, claim)
    assert claim in ui.get(f"/ui/models/org/hostile?notice={quote(claim)}&sig={mine}").text


def test_hostile_token_and_actor_names_are_text(site: Site) -> None:
    """Names are user-written too: a token's name shows in the page header, the confirmation,
    and (as the actor `token:NAME:ID`) beside every push and move it made."""
    hostile = f"{SCRIPT}{ATTRIBUTE}"
    record, token = site.registry.create_token(hostile, role="admin", models=["org/*"])
    name = "org/named"
    source = tiny_model(site.scratch / "named", note="named")
    site.registry.acting_as(record).push(name, source, message="by a hostile name")
    ui = signed_in(site.app, token)
    form = {"action": "promote", "model": name, "version": "1", "alias": "production"}
    confirm = ui.change("confirm", reason="r", **form)
    assert confirm.status_code == 200
    assert_shows_escaped(confirm.text, SCRIPT, ATTRIBUTE)
    assert ui.change("act", reason="r", confirm="yes", **form).status_code == 303
    for url in (
        "/ui/",
        f"/ui/models/{name}",
        f"/ui/models/{name}/versions/1",
        f"/ui/audit?model={name}",
        f"/ui/audit?model={name}&actor={quote(f'token:{hostile}:{record.id}')}",
    ):
        answer = ui.get(url)
        assert answer.status_code == 200, url
        assert_shows_escaped(answer.text, SCRIPT, ATTRIBUTE)
    assert f"by token:{ESCAPED[SCRIPT]}{ESCAPED[ATTRIBUTE]}:{record.id}" in _squash(
        ui.get(f"/ui/models/{name}").text
    )


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/ui/?page=0", 400),
        ("/ui/?q=" + "x" * 201, 400),
        ("/ui/models/org/hostile?expired=maybe", 400),
        ("/ui/models/org/hostile?page=1e3", 400),
        ("/ui/models/org/hostile/versions/1?t=" + "x" * 201, 400),
        ("/ui/models/org/hostile/versions/99", 404),
        ("/ui/models/org/hostile/diff?a=0", 400),
        ("/ui/models/org/hostile/diff?a=-1", 400),
        ("/ui/models/org/hostile/diff?a=x&b=2", 400),
        ("/ui/models/org/hostile/diff?b=99", 404),
        ("/ui/models/org/hostile/diff?a=99999999999", 400),
        ("/ui/models/page/many/diff?a=7&b=8", 404),  # a tombstone
        ("/ui/audit?model=org/*", 400),
        ("/ui/audit?model=" + "a" * 300, 400),
        ("/ui/audit?since=2026-13-45", 400),
        ("/ui/audit?until=0001-01-01T00:00:00%2B05:00", 400),
        ("/ui/audit?verify=maybe", 400),
        ("/ui/audit?actor=" + "x" * 300, 400),
        ("/ui/audit?until=9999-12-31", 200),
        ("/ui/act", 405),
        ("/ui/models", 404),
    ],
)
def test_bad_query_parameters_are_clear_4xx_pages(site: Site, url: str, status: int) -> None:
    answer = site.ui().get(url)
    assert answer.status_code == status, answer.text[-600:]
    assert answer.headers["content-type"].startswith("text/html")
    assert "Traceback" not in answer.text and page_problems(answer.text) == []
    if status >= 400:
        assert '<p class="error" role="alert">' in answer.text


def test_a_bug_is_a_plain_500_page(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom: /srv/secret/path")

    ui = site.ui()
    monkeypatch.setattr(Registry, "model_page", broken)
    answer = ui.get("/ui/")
    assert answer.status_code == 500
    assert "unexpected server error (a bug: please report it)" in answer.text
    assert "boom" not in answer.text and "Traceback" not in answer.text
    assert security_headers_problems(answer, page=True) == []


@pytest.mark.parametrize(
    "path",
    [
        "Org/Llama",
        "a/b/c",
        "%3Cscript%3Ealert(1)%3C/script%3E",
        "%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E",
        "-x",
        "a" * 200,
        "org/llama/versions/99999999999",
        "org/..x",
        "%00",
        "org/hostile/versions/0",
        "org/hostile/versions/1%3Cb%3E",
    ],
)
def test_an_invalid_name_in_a_url_is_a_4xx_page(site: Site, path: str) -> None:
    answer = site.ui().get(f"/ui/models/{path}")
    assert answer.status_code in (400, 404), path
    assert "Traceback" not in answer.text and page_problems(answer.text) == []
    assert "<script>" not in answer.text and "<img" not in answer.text


def test_model_names_are_limited_by_the_name_rules(site: Site) -> None:
    source = tiny_model(site.scratch / "bad", note="bad")
    for name in ("Org/x", "org/<b>", 'a"b', "org/x/y", "../x", "{{7*7}}"):
        with pytest.raises(InvalidReferenceError):
            site.registry.push(name, source)
    assert all(re.fullmatch(r"[a-z0-9/._-]+", m.name) for m in site.registry.models())


# -- security headers and what a strict CSP needs ------------------------------------------------


def test_every_answer_under_ui_has_the_security_headers(site: Site) -> None:
    ui, anonymous, reader = site.ui(), UI(site.app), site.ui("reader")
    form = {"action": "hold", "model": "org/hostile", "version": "3", "reason": "r"}
    answers = {
        "models": (ui.get("/ui/"), True),
        "model": (ui.get("/ui/models/org/hostile"), True),
        "version": (ui.get("/ui/models/org/hostile/versions/1"), True),
        "diff": (ui.get("/ui/models/org/hostile/diff"), True),
        "audit": (ui.get("/ui/audit?verify=1"), True),
        "confirm": (ui.change("confirm", **form), True),
        "400": (ui.get("/ui/?page=0"), True),
        "403": (reader.get("/ui/audit"), True),
        "403 csrf": (ui.post("/ui/act", form), True),
        "404 model": (ui.get("/ui/models/no/such"), True),
        "404 path": (ui.get("/ui/no/such/page"), True),
        "405": (ui.get("/ui/act"), True),
        "login": (anonymous.get("/ui/login"), True),
        "401 login": (anonymous.sign_in("mrt_wrong"), True),
        "redirect to login": (anonymous.get("/ui/models/org/hostile"), True),
        "redirect after login": (UI(site.app).sign_in(site.tokens["reader"]), True),
        "redirect after act": (ui.change("act", confirm="yes", **form), True),
        "static css": (anonymous.get("/ui/static/ui.css"), False),
        "static js": (anonymous.get("/ui/static/ui.js"), False),
        "static 404": (anonymous.get("/ui/static/nothing.js"), True),
    }
    site.registry.release_hold("org/hostile@3", reason="undo the test's hold")
    assert answers["redirect after act"][0].status_code == 303
    assert answers["static js"][0].status_code == 200
    assert answers["static css"][0].headers["content-type"].startswith("text/css")
    assert "javascript" in answers["static js"][0].headers["content-type"]
    problems = {
        name: found
        for name, (answer, page) in answers.items()
        if (found := security_headers_problems(answer, page=page))
    }
    assert problems == {}, problems
    for name, (answer, _page) in answers.items():
        if answer.headers.get("content-type", "").startswith("text/html"):
            assert page_problems(answer.text) == [], name
            assert answer.status_code < 500, name


# -- paging --------------------------------------------------------------------------------------


def _listed(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<td><a href="/ui/models/list/m(\d+)">', html)]


def test_the_models_listing_pages_by_name(site: Site) -> None:
    ui = site.ui()
    first = ui.get("/ui/?q=list/").text
    assert _listed(first) == list(range(0, 50))
    assert f"{LISTED} models matching" in first and "page 1 of 3" in first
    assert 'href="/ui/?page=2&amp;q=list%2F" rel="next"' in first
    assert _listed(ui.get("/ui/?q=list/&page=2").text) == list(range(50, 100))
    last = ui.get("/ui/?q=list/&page=3").text
    assert _listed(last) == list(range(100, LISTED)) and 'rel="next"' not in last
    beyond = ui.get("/ui/?q=list/&page=4")
    assert beyond.status_code == 200 and _listed(beyond.text) == []
    narrowed = ui.get("/ui/?q=LIST/M11").text  # case-insensitive
    assert _listed(narrowed) == list(range(110, 120)) and "10 models matching" in narrowed
    assert "page 1 of" not in narrowed  # one page: no pager
    everything = ui.get("/ui/").text
    assert f"{len(site.registry.models())} models" in everything
    for bad in ("0", "-1", "abc", "1.5", "", "99999999999"):
        answer = ui.get(f"/ui/?page={quote(bad)}")
        assert answer.status_code == (200 if bad == "" else 400), bad


def _numbers(html: str) -> list[int]:
    return [int(n) for n in re.findall(r"<td>(?:<a href=\"[^\"]+\">)?@(\d+)(?:</a>)?</td>", html)]


def test_a_models_versions_page_newest_first_without_tombstones(site: Site) -> None:
    ui = site.ui()
    live = [n for n in range(MANY, 0, -1) if n not in EXPIRED]
    first = ui.get("/ui/models/page/many").text
    assert f"{len(live)} live versions" in first and "page 1 of 3" in first
    pages = [_numbers(ui.get(f"/ui/models/page/many?page={n}").text) for n in (1, 2, 3)]
    assert pages == [live[:50], live[50:100], live[100:]]
    beyond = ui.get("/ui/models/page/many?page=4")
    assert beyond.status_code == 200 and _numbers(beyond.text) == []
    for bad in ("0", "-1", "abc"):
        assert ui.get(f"/ui/models/page/many?page={bad}").status_code == 400


def test_the_expired_listing_shows_tombstones(site: Site) -> None:
    ui = site.ui()
    third = ui.get("/ui/models/page/many?expired=1&page=3").text
    assert f"{MANY} versions, tombstones included" in third
    assert _numbers(third) == list(range(20, 0, -1))
    rows = re.findall(r'<tr class="expired">\s*<td>@(\d+)</td>', third)
    assert sorted(int(n) for n in rows) == list(EXPIRED)
    assert third.count("expired ") >= len(EXPIRED) and "by gc" in third and ": policy" in third
    # A tombstone is listed, not linked: its page is gone with its objects.
    assert 'href="/ui/models/page/many/versions/7"' not in third
    assert 'href="/ui/models/page/many?page=2&amp;expired=1" rel="prev"' in third


def _entries(html: str) -> list[int]:
    return [int(n) for n in re.findall(r"<tr>\s*<td>(\d+)</td>\s*<td><time", html)]


def _older(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Older', html)
    return None if found is None else markup.unescape(found[1])


def test_the_audit_trail_pages_by_cursor_without_overlap_or_gap(site: Site) -> None:
    ui = site.ui()
    expected = [
        row[0]
        for row in sql(
            site.registry, "SELECT id FROM audit_events WHERE actor = 'seeder' ORDER BY id DESC"
        )
    ]
    assert len(expected) == LISTED + MANY + NOTES
    url: str | None = "/ui/audit?actor=seeder"
    seen: list[int] = []
    pages = 0
    while url is not None:
        answer = ui.get(url)
        assert answer.status_code == 200
        shown = _entries(answer.text)
        assert len(shown) == 50 or _older(answer.text) is None
        seen += shown
        url = _older(answer.text)
        pages += 1
        assert "actor=seeder" in (url or "actor=seeder")  # the filter travels with the cursor
    assert seen == expected and pages == 6
    last = ui.get(f"/ui/audit?actor=seeder&before={expected[-1]}")
    assert last.status_code == 200 and "No entries." in last.text
    for bad in ("abc", "-1", "1.5", "99999999999"):
        assert ui.get(f"/ui/audit?before={bad}").status_code == 400, bad


def test_the_audit_trail_filters(site: Site) -> None:
    ui = site.ui()

    def shown(query: str) -> list[int]:
        answer = ui.get(f"/ui/audit?{query}")
        assert answer.status_code == 200, query
        return _entries(answer.text)

    notes = sql(
        site.registry, "SELECT id FROM audit_events WHERE action = 'verify' ORDER BY id DESC"
    )
    assert shown("actor=seeder&action=verify") == [row[0] for row in notes]
    assert len(shown("model=page/many&action=push")) == 50
    assert shown("model=list/m007") == [
        sql(site.registry, "SELECT id FROM audit_events WHERE subject = 'list/m007'")[0][0]
    ]
    assert shown("actor=nobody") == []
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert shown(f"since={tomorrow}") == [] and shown("until=2000-01-01") == []
    assert shown(f"actor=seeder&action=verify&since={yesterday}&until={tomorrow}") == [
        row[0] for row in notes
    ]
    moments = site.registry.catalog.audit_page(actor="seeder", action="verify", limit=NOTES)
    middle = moments[4]
    assert shown(f"actor=seeder&action=verify&since={quote(middle.at.isoformat())}") == [
        e.id for e in moments if e.at >= middle.at
    ]
    for bad in ("since=soon", "until=2026-02-30", "since=2026-01-01T00:00:00"):
        answer = ui.get(f"/ui/audit?{bad}")
        assert answer.status_code == 400 and "Traceback" not in answer.text, bad


def test_the_audit_page_shows_the_check_of_the_chain(site: Site) -> None:
    ui = site.ui()
    assert "Verify the audit trail" in ui.get("/ui/audit").text
    total = sql(site.registry, "SELECT count(*) FROM audit_events")[0][0]
    good = _squash(ui.get("/ui/audit?verify=1").text)
    assert f"The chain holds: {total} entries checked" in good
    target, actor = sql(site.registry, "SELECT id, actor FROM audit_events WHERE id = 3")[0]
    sql(site.registry, "UPDATE audit_events SET actor = 'mallory' WHERE id = 3")
    try:
        bad = _squash(ui.get("/ui/audit?verify=1").text)
    finally:
        sql(site.registry, "UPDATE audit_events SET actor = :a WHERE id = :i", a=actor, i=target)
    assert "✗" in bad and "(first bad entry #3)" in bad and "chain holds" not in bad
    assert "The chain holds" in ui.get("/ui/audit?verify=1").text


# -- what the pages say --------------------------------------------------------------------------

DETAIL_TENSORS = {
    "model.embed_tokens.weight": ("F32", [10, 4]),
    "model.layers.0.mlp.up_proj.weight": ("F32", [8, 4]),
    "model.norm.weight": ("F16", [4]),
    "lm_head.weight": ("BF16", [10, 4]),
}
DETAIL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 4,
    "num_attention_heads": 2,
    "vocab_size": 10,
    "max_position_embeddings": 128,
    "torch_dtype": "bfloat16",
}


def test_a_version_page_shows_files_tensors_config_snippets_and_its_own_audit(site: Site) -> None:
    name = "org/detail"
    card = "# Detail\n\nA model card."
    for number in (1, 2):
        site.push(
            name,
            f"detail {number}",
            tensors=DETAIL_TENSORS,
            config={**DETAIL_CONFIG, "num_hidden_layers": number + 1},
            files={"README.md": card},
        )
    site.registry.promote(f"{name}@1", "staging", reason="reason-for-v1")
    site.registry.promote(f"{name}@2", "production", reason="reason-for-v2")
    ui = site.ui()
    html = ui.get(f"/ui/models/{name}/versions/1").text
    version = site.registry.resolve(f"{name}@1")
    for entry in version.files:
        assert f'<tr><td>{entry.path}</td><td class="num">{size(entry.size)}</td>' in html
        assert entry.digest in html
    assert version.digest in html
    for tensor, (dtype, shape) in DETAIL_TENSORS.items():
        listed = (
            f"<td><code>{tensor}</code></td><td>{dtype}</td><td>[{', '.join(map(str, shape))}]</td>"
        )
        assert listed in html
    squashed = _squash(html)
    assert "<dt>Tensors</dt><dd>4 · 116 parameters</dd>" in squashed
    by_dtype = re.findall(r'<span class="chip">(\w+)</span> (\d+) parameters', html)
    assert by_dtype == [("F32", "72"), ("BF16", "40"), ("F16", "4")]
    config = dict(re.findall(r"<div><dt>([^<]+)</dt><dd>([^<]*)</dd></div>", html))
    assert {
        key: config[key]
        for key in ("Architecture", "Layers", "Hidden size", "Vocabulary", "Context length")
    } == {
        "Architecture": "LlamaForCausalLM",
        "Layers": "2",
        "Hidden size": "4",
        "Vocabulary": "10",
        "Context length": "128",
    }
    assert config["Attention heads"] == "2" and config["Weights dtype"] == "bfloat16"
    assert f"model-registry pull {name}@1 ./org-detail-1" in html
    assert f'loader.load("{name}@1", device="cuda:0")' in html
    assert f'load_pretrained("{name}@1"' in html
    assert '<pre class="card"># Detail\n\nA model card.</pre>' in html
    events = html[html.index('id="audit-h"') :]
    assert events.count("<tr>") - 1 == 2  # its push and the promote to staging
    assert "reason-for-v1" in events and "reason-for-v2" not in events
    found = ui.get(f"/ui/models/{name}/versions/1?t=LAYERS").text
    assert "1 of 4 tensors" in found and "up_proj" in found and "lm_head" not in found
    reader = site.ui("reader").get(f"/ui/models/{name}/versions/1").text
    assert "Audit entries" not in reader and "reason-for-v1" not in reader
    assert "model.norm.weight" in reader


def _diff_models(site: Site) -> tuple[str, dict[str, int]]:
    name = "org/diff"
    shared = {"shared.bin": "the same bytes in both versions"}
    site.push(
        name,
        "a",
        tensors={"x": ("F32", [2, 3]), "y": ("F16", [4]), "z": ("F32", [5]), "k": ("F32", [1])},
        config={"num_hidden_layers": 2, "hidden_size": 4, "rope": {"theta": 1}, "gone": 1},
        files={**shared, "old.txt": "only in a"},
    )
    site.push(
        name,
        "b",
        tensors={"x": ("F32", [3, 2]), "y": ("BF16", [4]), "w": ("F32", [6]), "k": ("F32", [1])},
        config={"num_hidden_layers": 3, "hidden_size": 4, "rope": {"theta": 2}, "new": True},
        files={**shared, "new.txt": "only in b"},
    )
    files = {f.path: f.size for f in site.registry.resolve(f"{name}@2").files}
    return name, files


def test_the_diff_of_two_versions_that_differ_in_known_ways(site: Site) -> None:
    name, files = _diff_models(site)
    change = site.registry.diff(f"{name}@1", f"{name}@2")
    assert change.reused == ("shared.bin",) and change.reused_bytes == files["shared.bin"]
    assert change.added_files == ("new.txt",) and change.removed_files == ("old.txt",)
    assert change.changed_files == ("config.json", "model.safetensors", "note.txt")
    assert change.new_bytes == sum(size for path, size in files.items() if path != "shared.bin")
    assert (change.tensors_added, change.tensors_removed) == (("w",), ("z",))
    assert [(t.name, t.dtype, t.shape) for t in change.tensors_changed] == [
        ("x", ("F32", "F32"), ((2, 3), (3, 2))),
        ("y", ("F16", "BF16"), ((4,), (4,))),
    ]
    assert change.tensors_same == 1
    assert dict(change.config_changes) == {
        "gone": (1, None),
        "new": (None, True),
        "num_hidden_layers": (2, 3),
        "rope.theta": (1, 2),
    }
    html = site.ui().get(f"/ui/models/{name}/diff").text  # the newest two by default
    squashed = _squash(html)
    assert f"<dt>New bytes</dt><dd>{size(change.new_bytes)}</dd>" in squashed
    assert f"<dt>Reused</dt><dd>{size(change.reused_bytes)} in 1 file</dd>" in squashed
    assert "1 added, 1 removed, 2 reshaped or retyped, 1 alike" in squashed
    assert "<td><code>x</code></td><td>F32 [2, 3]</td><td>F32 [3, 2]</td>" in squashed
    assert "<td><code>y</code></td><td>F16 [4]</td><td>BF16 [4]</td>" in squashed
    assert '<h3>Added</h3><ul class="names"><li><code>w</code></li></ul>' in squashed
    assert '<h3>Removed</h3><ul class="names"><li><code>z</code></li></ul>' in squashed
    for key, a, b in [
        ("gone", "1", "—"),
        ("new", "—", "True"),
        ("num_hidden_layers", "2", "3"),
        ("rope.theta", "1", "2"),
    ]:
        assert f"<tr><td><code>{key}</code></td><td>{a}</td><td>{b}</td></tr>" in squashed
    for path, change_kind in [
        ("new.txt", "added"),
        ("old.txt", "removed"),
        ("config.json", "new content"),
        ("shared.bin", "reused"),
    ]:
        assert re.search(
            rf"<tr><td>{re.escape(path)}</td><td><span[^>]*>{change_kind}</span>", html
        )
    same = site.ui().get(f"/ui/models/{name}/diff?a=2&b=2").text
    assert "Same tensors, same shapes and dtypes." in same and "No key changed." in same


def test_a_model_page_shows_copies_retention_holds_and_moves(site: Site) -> None:
    name = "org/kept"
    for number in range(1, 6):
        # Content of its own: placements are per object, and objects are shared by digest.
        site.push(name, f"kept {number}", tensors={"w": ("F32", [number, 7])}, config={"n": number})
    site.registry.set_retention(name, keep_last=2)
    site.registry.promote(f"{name}@1", "production", reason="pinned")
    site.registry.promote(f"{name}@3", "staging", reason="try three")
    site.registry.promote(f"{name}@4", "staging", reason="try four")
    site.registry.hold(f"{name}@2", reason="audit 7")
    # Region 2 lost track of @4's objects: one pending, one bad, one never recorded.
    version = site.registry.resolve(f"{name}@4")
    digests = sorted(f.digest for f in version.files)
    assert len(digests) == 3
    with site.registry.catalog.engine.begin() as connection:
        for digest, state in zip(digests[:2], ("pending", "bad"), strict=True):
            connection.execute(
                update(Placement)
                .where(Placement.digest == digest, Placement.region == "region-2")
                .values(state=state)
            )
        connection.execute(
            delete(Placement).where(
                Placement.digest == version.digest, Placement.region == "region-2"
            )
        )
    html = site.ui().get(f"/ui/models/{name}").text
    rows = {
        int(number): _squash(row)
        for number, row in re.findall(
            r'<tr>\s*<td><a href="[^"]+">@(\d+)</a></td>(.*?)</tr>', html, re.DOTALL
        )
    }
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert "kept: among the last 2; for as long as that holds" in rows[5]
    assert "kept: among the last 2, alias staging; for as long as that holds" in rows[4]
    assert "goes at the next retention run" in rows[3] and "kept:" not in rows[3]
    assert "kept: legal hold" in rows[2] and 'title="audit 7">hold</span>' in rows[2]
    assert "kept: alias production" in rows[1]
    for number in (1, 2, 3, 5):
        assert "region-1 ✓" in rows[number] and "region-2 ✓" in rows[number]
    assert "region-1 ✓" in rows[4]
    assert "region-2: 1 ok, 1 pending, 1 bad, 1 missing" in rows[4]
    assert "<p>keep the last 2; aliased and held versions always" in _squash(html)
    assert "(this model's own policy)" in html
    moves = re.findall(
        r'<span class="chip">(\w+)</span> (\w+)\s*(?:@(\d+) → )?<a href="[^"]+">@(\d+)</a>', html
    )
    assert moves[:3] == [
        ("staging", "promote", "3", "4"),
        ("staging", "promote", "", "3"),
        ("production", "promote", "", "1"),
    ]
    timeline = _squash(html[html.index("Moves, newest first") :])
    assert timeline.index("try four") < timeline.index("try three") < timeline.index("pinned")
    version_page = _squash(site.ui().get(f"/ui/models/{name}/versions/2").text)
    assert "held</span> since" in version_page and "by tester@example: audit 7" in version_page


def test_a_model_named_like_a_diff_has_its_own_page(site: Site) -> None:
    """`team/diff` is a valid model name and `/ui/models/team/diff` its page; the diff of
    `team` is there only for a token that does not see such a model."""
    for number in (1, 2):
        site.push("team", f"team {number}")
    site.push("team/diff", "the model named diff")
    _record, narrow = site.registry.create_token("team-only", role="reader", models=["team"])

    def heading(ui: UI, url: str) -> str:
        answer = ui.get(url)
        assert answer.status_code == 200, url
        found = re.search(r"<h1>(.*?)</h1>", answer.text, re.DOTALL)
        assert found is not None
        return re.sub(r"<[^>]+>", "", found[1])

    ui = site.ui()
    assert heading(ui, "/ui/models/team/diff") == "team/diff"
    assert heading(ui, "/ui/models/team/diff/versions/1") == "team/diff@1"
    assert heading(signed_in(site.app, narrow), "/ui/models/team/diff") == "team: @1 → @2"
    assert ui.get("/ui/models/team/diff/diff").status_code == 404  # it has one version
