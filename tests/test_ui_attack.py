"""The web UI attacked (issue 19's review): every user-written string that reaches a page, the
URLs pages build, CSRF, session fixation, redirects, what a token limited to some models can
learn of the others, pages and inputs sized to hurt, the static files, odd methods, a tampered
or hostile config.json, and hypothesis over every query parameter and form field.

Each test that found a problem says so in its docstring (`Found:`); the others pin down an
attack that held."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from registry.errors import InvalidInputError
from registry.service import Registry
from tests.uikit import (
    ATTRIBUTE,
    BASE,
    ESCAPED,
    HOSTILE,
    SCRIPT,
    TEMPLATE,
    TEXTAREA,
    UI,
    assert_shows_escaped,
    page_problems,
    security_headers_problems,
    signed_in,
    sql,
    tiny_model,
    ui_app,
)

TOKENS = {
    # name: (role, model patterns)
    "admin": ("admin", ["*"]),
    "reader": ("reader", ["*"]),
    "org-admin": ("admin", ["org/*"]),
    # A pattern that happens to match `registry`, the subject of the registry's own entries.
    "r-admin": ("admin", ["org/*", "r*"]),
}
WIDE = 600  # tensors (and config keys) that change between org/wide's two versions


@dataclass
class Site:
    registry: Registry
    app: Litestar
    home: Path
    scratch: Path
    tokens: dict[str, str]

    def ui(self, who: str = "admin") -> UI:
        return signed_in(self.app, self.tokens[who])

    def push(self, name: str, message: str = "", **model: Any) -> int:
        note = model.pop("note", f"{name} {message} {uuid.uuid4()}")
        source = tiny_model(self.scratch / "src", note=note, **model)
        return self.registry.push(name, source, message=message).version.number

    def audit_count(self) -> int:
        return int(sql(self.registry, "SELECT count(*) FROM audit_events")[0][0])


def _seed(site: Site) -> None:
    registry = site.registry
    # Hostile text in the places test_ui_pages.py does not reach: a multimodal config's nested
    # text_config (shown when the top level lacks a field) and config keys that a diff lists.
    site.push(
        "org/a",
        SCRIPT,
        tensors={SCRIPT: ("F32", [2]), "w": ("F32", [2])},
        config={"text_config": {"model_type": SCRIPT, "architectures": [ATTRIBUTE, TEXTAREA]}},
        files={"README.md": "\n".join(HOSTILE), f"{ATTRIBUTE}.md": TEMPLATE},
    )
    site.push("org/a", ATTRIBUTE, config={ATTRIBUTE: TEMPLATE, "text_config": {SCRIPT: 1}})
    registry.promote("org/a@1", "production", reason=SCRIPT)
    registry.promote("org/a@2", "production", reason=ATTRIBUTE)
    for name in ("other/secret", "other/diff"):
        site.push(name, "secret v1")
        site.push(name, "secret v2")
        registry.promote(f"{name}@1", "production", reason="secret release")
        registry.promote(f"{name}@2", "production", reason="secret release 2")
        registry.hold(f"{name}@1", reason="secret hold")
    for number, dtype in ((1, "F32"), (2, "F16")):
        site.push(
            "org/wide",
            f"wide {number}",
            tensors={f"layers.{i:04d}.w": (dtype, [1]) for i in range(WIDE)},
            config={f"key_{i:04d}": number for i in range(WIDE)},
        )
    # Nested deeper than anything that walks or prints it can follow (json.loads itself fails
    # at about a thousand levels), and merely deep (json.loads copes, printing it may not).
    for depth in (5000, 100):
        site.push("org/deep", f"depth {depth}", files={"config.json": _nested(depth)})
    for number in (1, 2):
        site.push("org/fuzz", f"fuzz {number}")
    registry.promote("org/fuzz@1", "production", reason="r")
    registry.promote("org/fuzz@2", "production", reason="r")
    for number in (1, 2):
        site.push("org/roll", f"roll {number}")
        registry.promote(f"org/roll@{number}", "production", reason="r")


def _nested(depth: int) -> str:
    return '{"architectures": ' + "[" * depth + '"x"' + "]" * depth + ', "model_type": "m"}'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("ui-attack")
    Registry.init(root / "home")
    with Registry.open(root / "home", actor="tester@example") as registry:
        tokens = {
            name: registry.create_token(name, role=role, models=models)[1]
            for name, (role, models) in TOKENS.items()
        }
        registry.create_token("ci-secret-pipeline", role="pusher", models=["other/*"])
        found = Site(registry, ui_app(registry), root / "home", root, tokens)
        _seed(found)
        yield found


def _squash(html: str) -> str:
    return " ".join(html.split())


# -- stored and reflected XSS ----------------------------------------------------------------------


def test_hostile_nested_config_and_config_keys_are_text(site: Site) -> None:
    """Held: a nested text_config's values on the version page and hostile config keys on the
    diff page are escaped like everything else."""
    ui = site.ui()
    version = ui.get("/ui/models/org/a/versions/1")
    assert version.status_code == 200
    assert_shows_escaped(version.text, SCRIPT, ATTRIBUTE, TEXTAREA, TEMPLATE)
    assert f"<dt>Model type</dt><dd>{ESCAPED[SCRIPT]}</dd>" in version.text
    assert f"<dt>Architecture</dt><dd>{ESCAPED[ATTRIBUTE]}, {ESCAPED[TEXTAREA]}</dd>" in (
        version.text
    )
    diff = ui.get("/ui/models/org/a/diff?a=1&b=2")
    assert diff.status_code == 200
    assert_shows_escaped(diff.text, SCRIPT, ATTRIBUTE, TEMPLATE)
    assert f"<code>{ESCAPED[ATTRIBUTE]}</code>" in diff.text
    assert f"<code>text_config.{ESCAPED[SCRIPT]}</code>" in diff.text


@pytest.mark.parametrize(
    "url",
    [
        "/ui/?page={}",
        "/ui/models/org/a?page={}",
        "/ui/models/org/a/diff?a={}",
        "/ui/models/org/a/diff?b={}",
        "/ui/audit?since={}",
        "/ui/audit?until={}",
        "/ui/audit?before={}",
        "/ui/audit?model={}",
        "/ui/models/{}",
        "/ui/models/org/{}/versions/1",
    ],
)
def test_error_messages_that_echo_input_echo_it_as_text(site: Site, url: str) -> None:
    """Held: a refusal that quotes what was sent (`invalid page '...'`) quotes it escaped."""
    ui = site.ui()
    for hostile in (SCRIPT, ATTRIBUTE, TEMPLATE):
        answer = ui.get(url.format(quote(hostile, safe="")))
        assert 400 <= answer.status_code < 500, (url, hostile, answer.status_code)
        assert SCRIPT not in answer.text and "<img" not in answer.text
        assert "x49y" not in answer.text and page_problems(answer.text) == []
        assert "Traceback" not in answer.text


def test_the_next_parameter_and_an_unsigned_notice_are_never_markup(site: Site) -> None:
    """Held: `next` goes back into the sign-in form as an escaped attribute (or is dropped),
    and a notice without this session's signature is not shown at all."""
    anonymous = UI(site.app)
    for hostile in HOSTILE:
        login = anonymous.get("/ui/login?next=" + quote("/ui/" + hostile))
        assert login.status_code == 200
        assert SCRIPT not in login.text and "<img" not in login.text
        assert page_problems(login.text) == []
    ui = site.ui()
    forged = "forged notice " + SCRIPT
    shown = ui.get("/ui/models/org/a?notice=" + quote(forged) + "&sig=" + "0" * 32)
    assert shown.status_code == 200 and "forged notice" not in shown.text
    assert SCRIPT not in shown.text


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("href", "src", "action", "formaction") and value is not None:
                self.urls.append(value)


def test_every_url_a_page_builds_stays_on_this_site(site: Site) -> None:
    """Held: hrefs, form actions and script sources are paths of this UI: model names and file
    paths never become a scheme (`javascript:`), another host (`//evil`) or a path elsewhere."""
    ui = site.ui()
    confirm = ui.change(
        "confirm",
        action="promote",
        model="org/a",
        version="1",
        alias="staging",
        reason=ATTRIBUTE,
    )
    pages = [
        ui.get(url).text
        for url in (
            "/ui/",
            "/ui/?q=" + quote(SCRIPT),
            "/ui/models/org/a",
            "/ui/models/org/a/versions/1",
            "/ui/models/org/a/diff",
            "/ui/audit?model=org/a",
            "/ui/audit",
        )
    ]
    pages += [confirm.text, UI(site.app).get("/ui/login?next=javascript:alert(1)").text]
    for html in pages:
        links = _Links()
        links.feed(html)
        assert links.urls
        for url in links.urls:
            if url == "data:,":  # the empty favicon
                continue
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, url
            assert url.startswith("/ui/") or url.startswith("#"), url


# -- CSRF, methods, sessions ---------------------------------------------------------------------


def test_odd_methods_and_method_overrides_change_nothing(site: Site) -> None:
    """Held: GET, HEAD, OPTIONS, TRACE and override headers or fields never make a change,
    never answer 5xx, and every answer keeps the security headers."""
    ui = site.ui()
    before = (site.registry.aliases("org/fuzz"), site.registry.holds(), site.audit_count())
    form = {"action": "hold", "model": "org/fuzz", "version": "1", "reason": "r"}
    form |= {"confirm": "yes", "csrf": ui.csrf}
    query = "?" + "&".join(f"{k}={quote(v)}" for k, v in form.items())
    for method in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "PATCH"):
        for url in ("/ui/act", "/ui/confirm", "/ui/logout", "/ui/login"):
            answer = ui.client.request(method, url + query, follow_redirects=False)
            expected = {"OPTIONS": 204, "GET": 200 if url == "/ui/login" else 405}
            assert answer.status_code == expected.get(method, 405), (method, url)
            assert security_headers_problems(answer, page=False) == [], (method, url)
    for headers in ({"X-HTTP-Method-Override": "GET"}, {"X-HTTP-Method": "GET"}):
        answer = ui.post("/ui/act", {**form, "csrf": ""}, headers=headers)
        assert answer.status_code == 403
    for override in ("PUT", "GET"):
        answer = ui.post("/ui/act?_method=" + override, {**form, "csrf": "", "_method": override})
        assert answer.status_code == 403
    after = (site.registry.aliases("org/fuzz"), site.registry.holds(), site.audit_count())
    assert after == before
    assert ui.get("/ui/").status_code == 200  # and the session lives on


def test_a_rollback_needs_the_target_its_confirmation_showed(site: Site) -> None:
    """Held: a rollback posted straight to /ui/act without `expected` (no confirmation seen)
    is refused; so is one with a target the alias would not go to."""
    ui = site.ui()
    form = {"action": "rollback", "model": "org/roll", "alias": "production", "reason": "r"}
    count = site.audit_count()
    for expected in ({}, {"expected": ""}, {"expected": "2"}, {"expected": " 1"}):
        answer = ui.change("act", confirm="yes", **form, **expected)
        assert answer.status_code == 409 and "moved since" in answer.text, expected
    assert site.audit_count() == count
    assert ui.change("act", confirm="yes", expected="1", **form).status_code == 303


def test_sign_in_never_adopts_a_cookie_it_did_not_make(site: Site) -> None:
    """Held (session fixation): a cookie planted before sign-in (a made-up id, or the
    attacker's own live session) is replaced by a fresh id; the made-up one never signs in."""
    planted = "attacker-chosen-session-id"
    attacker = site.ui("reader")
    assert attacker.session is not None
    for value in (planted, attacker.session):
        victim = UI(site.app)
        victim.client.cookies.set("mr_session", value, domain="testserver.local", path="/ui")
        assert victim.get("/ui/").status_code == (303 if value == planted else 200)
        answer = victim.client.post(
            "/ui/login", data={"token": site.tokens["admin"]}, follow_redirects=False
        )
        assert answer.status_code == 303
        fresh = answer.cookies.get("mr_session")
        assert fresh and fresh not in (planted, attacker.session)
        signed = UI(site.app)
        signed.client.cookies.set("mr_session", fresh, domain="testserver.local")
        assert '<span class="role">admin</span>' in signed.get("/ui/").text
    fixed = UI(site.app)
    fixed.client.cookies.set("mr_session", planted, domain="testserver.local")
    assert fixed.get("/ui/").status_code == 303


def test_sign_in_is_rate_limited_per_client_address(site: Site) -> None:
    """Held: wrong tokens from one address run into 429 (with Retry-After) after the burst,
    while another address still signs in; the right token is refused too while limited."""
    before = site.registry.settings.api
    try:
        app = ui_app(site.registry, requests_per_second=0.01, burst=3)
    finally:
        site.registry.settings.__dict__["api"] = before

    def from_peer(address: str) -> TestClient[Any]:
        async def peer(scope: Any, receive: Any, send: Any) -> None:
            scope["client"] = (address, 40000)
            await app(scope, receive, send)

        client: TestClient[Any] = TestClient(app, base_url=BASE)
        client.app = peer  # type: ignore[assignment]
        return client

    guesser, other = from_peer("192.0.2.7"), from_peer("192.0.2.8")
    statuses = [
        guesser.post("/ui/login", data={"token": f"mrt_{i:012x}_{'A' * 43}"}).status_code
        for i in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429]
    limited = guesser.post(
        "/ui/login", data={"token": site.tokens["reader"]}, follow_redirects=False
    )
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "set-cookie" not in limited.headers
    fine = other.post("/ui/login", data={"token": site.tokens["reader"]}, follow_redirects=False)
    assert fine.status_code == 303


def test_a_session_ends_the_moment_its_token_expires_or_is_revoked(site: Site) -> None:
    """Held: the session is checked against its token at every request, not only at sign-in:
    a token that expires (or is revoked) mid-session ends it for pages and changes alike."""
    for ending in ("expire", "revoke"):
        record, token = site.registry.create_token(f"brief-{ending}", role="admin", models=["*"])
        ui = signed_in(site.app, token)
        assert ui.get("/ui/audit").status_code == 200
        if ending == "expire":
            sql(
                site.registry,
                "UPDATE api_tokens SET expires_at = :t WHERE id = :i",
                t=datetime.now(UTC) - timedelta(seconds=1),
                i=record.id,
            )
        else:
            site.registry.revoke_token(record.id)
        page = ui.get("/ui/audit")
        assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
        hold = {"action": "hold", "model": "org/fuzz", "version": "1", "reason": "r"}
        assert ui.change("act", confirm="yes", **hold).status_code == 401
        assert ui.change("confirm", **hold).status_code == 401


def test_the_script_and_stylesheet_take_nothing_as_markup_or_from_elsewhere(site: Site) -> None:
    """Held: ui.js moves nodes parsed by DOMParser from a same-origin page (never innerHTML,
    document.write or eval), fetches same-origin only, and the stylesheet loads nothing."""
    script = UI(site.app).get("/ui/static/ui.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert 'credentials: "same-origin"' in script and "http" not in script.replace("html", "")
    style = UI(site.app).get("/ui/static/ui.css").text
    assert "url(" not in style and "@import" not in style and "expression(" not in style


@pytest.mark.parametrize(
    "target",
    [
        "/ui/..//evil.example",
        "/ui/%2e%2e//evil.example",
        "/ui/../../evil.example",
        "/ui/%2F%2Fevil.example",
        "/ui/\u2028//evil.example",
        "/ui/\u3000/evil.example",
        "/ui/\r\nLocation: https://evil.example",
        "/ui/@evil.example",
        "/ui/?next=https://evil.example",
    ],
)
def test_after_sign_in_every_redirect_stays_on_this_host(site: Site, target: str) -> None:
    """Held (open redirect): whatever `next` holds, the browser lands on this host."""
    answer = UI(site.app).client.post(
        "/ui/login",
        data={"token": site.tokens["reader"], "next": target},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert "\r" not in location and "\n" not in location
    landed = urlsplit(urljoin(BASE + "/ui/login", location))
    assert landed.netloc == urlsplit(BASE).netloc and landed.scheme == "http", location


# -- what a token limited to some models learns of the others ------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/ui/models/{}",
        "/ui/models/{}?expired=1&page=2",
        "/ui/models/{}/versions/1",
        "/ui/models/{}/versions/1?t=w",
        "/ui/models/{}/versions/99",
        "/ui/models/{}/diff",
        "/ui/models/{}/diff?a=1&b=2",
        "/ui/models/{}/diff?a=1&b=99",
        "/ui/audit?model={}",
        "/ui/audit?model={}&actor=tester%40example&action=hold&verify=1",
    ],
)
def test_a_hidden_model_is_answered_exactly_as_a_missing_one(site: Site, url: str) -> None:
    """Held: pages, filters, tensor searches and diffs of a model outside the patterns answer
    word for word as for a model that does not exist; `other/diff` (a model named like the
    diff of `other`) too."""
    ui = site.ui("org-admin")
    cases = [
        ("other/secret", "other/nothere", [("other/secret", "other/nothere")]),
        ("other/diff", "nobody/diff", [("other/diff", "nobody/diff"), ("other", "nobody")]),
    ]
    for hidden, missing, swaps in cases:
        shown = ui.get(url.format(hidden))
        absent = ui.get(url.format(missing))
        assert shown.status_code == absent.status_code == 404, url
        text = shown.text
        for old, new in swaps:
            text = text.replace(old, new)
        assert text == absent.text, url
        assert "secret" not in shown.text.replace(hidden, "")


@pytest.mark.parametrize(
    "form",
    [
        {"action": "promote", "version": "1", "alias": "production"},
        {"action": "promote", "version": "9", "alias": "production"},
        {"action": "rollback", "alias": "production"},
        {"action": "rollback", "alias": "nothing"},
        {"action": "hold", "version": "2"},
        {"action": "release", "version": "1"},
        {"action": "release", "version": "2"},
    ],
)
def test_a_change_to_a_hidden_model_is_answered_as_one_to_a_missing_model(
    site: Site, form: dict[str, str]
) -> None:
    """Held: whatever the form asks of a hidden model (a live alias or none, a held version
    or not), both steps answer as for a model that does not exist, and nothing changes."""
    ui = site.ui("org-admin")
    before = (site.registry.aliases("other/secret"), site.registry.holds(), site.audit_count())
    for step in ("confirm", "act"):
        full = {"reason": "mine now", "confirm": "yes", "expected": "1", **form}
        hidden = ui.change(step, model="other/secret", **full)
        missing = ui.change(step, model="other/nothere", **full)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.text.replace("other/secret", "other/nothere") == missing.text
    after = (site.registry.aliases("other/secret"), site.registry.holds(), site.audit_count())
    assert after == before


def test_the_registrys_own_audit_entries_need_a_token_for_every_model(site: Site) -> None:
    """Found: the registry's own entries (token-create with every token's name, role and
    patterns; gc with the versions it expired of any model; drills, scrubs) have the subject
    `registry`, which is also a valid model name: an admin token whose patterns match it
    (`r*`) read them all with ?model=registry, here and at /v1/audit."""
    ui = site.ui("r-admin")
    assert "ci-secret-pipeline" in _squash(site.ui().get("/ui/audit?model=registry").text)
    answer = ui.get("/ui/audit?model=registry")
    assert answer.status_code in (200, 404)
    assert "ci-secret-pipeline" not in answer.text and "other/*" not in answer.text
    assert "token-create" not in answer.text.split("</datalist>")[-1]
    mine = ui.get("/ui/audit?model=org/a")
    assert mine.status_code == 200 and "<td>org/a</td>" in mine.text
    client = TestClient(site.app)
    bearer = {"Authorization": f"Bearer {site.tokens['r-admin']}"}
    api = client.get("/v1/audit", params={"model": "registry"}, headers=bearer)
    assert api.status_code == 403 and "ci-secret-pipeline" not in api.text
    assert client.get("/v1/audit", params={"model": "org/a"}, headers=bearer).status_code == 200
    everything = {"Authorization": f"Bearer {site.tokens['admin']}"}
    whole = client.get("/v1/audit", params={"model": "registry"}, headers=everything)
    assert whole.status_code == 200 and "ci-secret-pipeline" in whole.text


# -- sizes ----------------------------------------------------------------------------------------


def test_a_diff_page_is_bounded_whatever_the_number_of_changes(site: Site) -> None:
    """Found: the diff page listed every reshaped or retyped tensor and every changed config
    key (other lists stop at 500): two versions of 20,000 tensors in another dtype made a page
    of 1.6 MB in 2 s, and one of a large MoE model's 90,000 several times that. Now 500 rows
    each, and the page says how many."""
    answer = site.ui().get("/ui/models/org/wide/diff?a=1&b=2")
    assert answer.status_code == 200
    html = answer.text
    tensors = html[html.index('id="tensors-h"') : html.index('id="config-h"')]
    config = html[html.index('id="config-h"') :]
    assert tensors.count("<tr><td><code>layers.") == 500
    assert config.count("<tr><td><code>key_") == 500
    assert f"the first 500 of {WIDE}" in _squash(tensors)
    assert f"the first 500 of {WIDE}" in _squash(config)
    assert len(answer.content) < 400_000


@pytest.mark.parametrize(
    "url",
    [
        "/ui/?page=10000000",
        "/ui/?q=" + "a" * 200,
        "/ui/models/org/wide?page=10000000&expired=1",
        "/ui/models/org/wide/versions/1?t=" + "l" * 200,
        "/ui/models/org/wide/versions/1?t=layers",
        "/ui/audit?before=999999999&actor=" + "a" * 256,
    ],
)
def test_big_parameters_get_small_pages(site: Site, url: str) -> None:
    """Held: the largest parameters the pages accept give a page, not a long wait or a huge
    answer (500 tensor rows at most)."""
    answer = site.ui().get(url)
    assert answer.status_code == 200
    assert answer.text.count("<tr><td><code>") <= 500 and len(answer.content) < 300_000


def test_parameters_past_their_limits_are_400(site: Site) -> None:
    ui = site.ui()
    for url in (
        "/ui/?page=10000001",
        "/ui/?q=" + "a" * 201,
        "/ui/models/org/wide/versions/1?t=" + "l" * 201,
        "/ui/audit?actor=" + "a" * 257,
        "/ui/audit?before=1234567890",
    ):
        answer = ui.get(url)
        assert answer.status_code == 400, url
        assert '<p class="error" role="alert">' in answer.text


# -- static files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "%00",
        "ui.js%00",
        "ui.js%00.png",
        "a" * 300,
        "x/" * 40 + "a" * 250,
        "%2e%2e/pages.py",
        "..%2fpages.py",
        "..%5cpages.py",
        "%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        "../templates/base.html",
        ".",
        "%2e",
        "UI.JS",
        "",
    ],
)
def test_the_static_files_are_the_two_files_and_nothing_else(site: Site, path: str) -> None:
    """Found: a NUL (`/ui/static/%00`) or a name longer than the file system allows made the
    static route fail inside the file system call: a 500 and a logged traceback per request.
    Now anything but ui.css and ui.js is a plain 404 page."""
    answer = UI(site.app).get("/ui/static/" + path)
    assert answer.status_code == 404, answer.status_code
    assert answer.headers["content-type"].startswith("text/html")
    assert security_headers_problems(answer, page=True) == []
    for name in ("ui.css", "ui.js"):
        assert UI(site.app).get("/ui/static/" + name).status_code == 200


# -- what the store and config.json hold ---------------------------------------------------------


def _metric(client: TestClient[Any], kind: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'model_registry_security_events_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("victim", ["config.json", "README.md"])
def test_a_tampered_small_file_is_an_integrity_page_and_a_security_event(
    site: Site, victim: str
) -> None:
    """Held: a config.json or model card whose stored bytes were changed is not shown: the
    version page is the API's answer to an integrity failure (502, what failed and what to
    run), counted as a security event; the rest of the model still reads."""
    name = f"org/tampered-{victim.split('.')[0].lower()}"
    # Unique contents: the pages keep small files by digest, and these must be read.
    site.push(
        name,
        "t",
        config={"model_type": str(uuid.uuid4())},
        files={"README.md": str(uuid.uuid4())},
    )
    digest = next(f.digest for f in site.registry.resolve(name).files if f.path == victim)
    stored = site.home / "store" / "objects"
    path = stored / site.registry.store.object_name("blob", digest)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    ui = site.ui()
    before = _metric(ui.client, "integrity-failure")
    answer = ui.get(f"/ui/models/{name}/versions/1")
    assert _metric(ui.client, "integrity-failure") == before + 1
    assert answer.status_code == 502
    assert f"{name}@1:{victim}" in answer.text and "failed authentication" in answer.text
    assert "model-registry verify" in answer.text and "Traceback" not in answer.text
    assert security_headers_problems(answer, page=True) == []
    assert ui.get(f"/ui/models/{name}").status_code == 200


def test_a_config_json_nested_too_deeply_is_shown_as_unreadable(site: Site) -> None:
    """Found: a config.json of nested brackets (a few KiB, any pusher may push it) made the
    version page and the diff a 500: json.loads raised RecursionError, which nothing caught,
    and a config just shallow enough to load failed again where the diff compared or printed
    it. Now a config nested deeper than 64 levels reads as unreadable."""
    ui = site.ui()
    for number in (1, 2):
        answer = ui.get(f"/ui/models/org/deep/versions/{number}")
        assert answer.status_code == 200, number
        assert "<dt>config.json</dt><dd>nested too deeply to show</dd>" in answer.text
    diff = ui.get("/ui/models/org/deep/diff?a=1&b=2")
    assert diff.status_code == 200
    assert site.registry.diff("org/deep@1", "org/deep@2").config_changes == {}


# -- NULs and the catalog ------------------------------------------------------------------------


def test_audit_filters_holding_a_nul_are_refused_on_every_catalog(
    home: Path, catalog_url: str | None
) -> None:
    """Found: the audit page's actor and action filters reached the catalog as they came; a
    NUL in one is a 503 (catalog unavailable) on PostgreSQL, which refuses NULs in text.
    Now the operation refuses them, as the registry refuses NULs in every other text."""
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        assert registry.audit_page(actor="nobody").events == ()
        for filters in ({"actor": "a\x00"}, {"action": "\x00"}):
            with pytest.raises(InvalidInputError, match="NUL"):
                registry.audit_page(**filters)


def test_a_nul_in_an_audit_filter_is_a_400_page(site: Site) -> None:
    ui = site.ui()
    for query in ("actor=%00", "action=push%00", "model=org/a&actor=x%00y"):
        answer = ui.get("/ui/audit?" + query)
        assert answer.status_code == 400, query
        assert "NUL" in answer.text


def test_a_reason_the_change_would_refuse_is_refused_at_the_first_step(site: Site) -> None:
    """Found: a reason with a NUL got a confirmation page, and only its confirmation was
    refused (the operations refuse NULs): a confirmation for a change that cannot be made.
    Now the first step refuses it, as it refuses a protected alias."""
    ui = site.ui()
    count = site.audit_count()
    form = {"action": "hold", "model": "org/fuzz", "version": "2", "reason": "a\x00b"}
    for step in ("confirm", "act"):
        answer = ui.change(step, confirm="yes", **form)
        assert answer.status_code == 400 and "NUL" in answer.text, step
    assert site.audit_count() == count


# -- hypothesis: no input yields a 5xx -----------------------------------------------------------

EDGES = [
    "",
    " ",
    "\x00",
    "-1",
    "0",
    "1",
    "2",
    "999999999",
    "10000000",
    "99999999999999999999",
    "\u00b2",
    "\u0661",
    "1e3",
    "true",
    "org/fuzz",
    "org/fuzz/diff",
    "registry",
    "*",
    "../x",
    "%00",
    "//evil.example",
    "/ui//x",
    "/ui/x",
    "javascript:alert(1)",
    "9999-12-31",
    "0001-01-01",
    "2026-02-30",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "production",
    "yes",
    SCRIPT,
    "x" * 300,
]
_TEXT = st.one_of(
    st.sampled_from(EDGES),
    st.text(max_size=30),
    st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
)
_PAGES = [
    "/ui/",
    "/ui/login",
    "/ui/audit",
    "/ui/models/org/fuzz",
    "/ui/models/org/fuzz/versions/1",
    "/ui/models/org/fuzz/diff",
    "/ui/models/org/deep/versions/2",
]
_PARAMS = ["q", "page", "expired", "t", "a", "b", "notice", "sig", "model", "actor", "action"]
_PARAMS += ["since", "until", "before", "verify", "next"]
_FIELDS = ["action", "model", "version", "alias", "reason", "confirm", "expected", "csrf"]
_FORMS: list[dict[str, str]] = [
    {},
    {"action": "promote", "model": "org/fuzz", "version": "1", "alias": "staging"},
    {"action": "rollback", "model": "org/fuzz", "alias": "production"},
    {"action": "hold", "model": "org/fuzz", "version": "1"},
    {"action": "release", "model": "org/fuzz", "version": "1"},
]
_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def _sendable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def test_fuzzed_query_parameters_and_form_fields_never_yield_a_server_error(site: Site) -> None:
    """Held (after the fixes above): any text in any query parameter of any page, repeated or
    not, and any form of any change, signed in or with any CSRF token, is a page below 500."""
    ui = site.ui()
    failures: list[str] = []

    @given(
        page=st.sampled_from(_PAGES),
        params=st.lists(st.tuples(st.sampled_from(_PARAMS), _TEXT), max_size=5),
    )
    @_SETTINGS
    def pages(page: str, params: list[tuple[str, str]]) -> None:
        sent = [(key, _sendable(value)) for key, value in params]
        answer = ui.client.get(page, params=sent, follow_redirects=False)
        if answer.status_code >= 500:
            failures.append(f"GET {page} {sent}: {answer.status_code}")

    @given(
        step=st.sampled_from(["confirm", "act", "login"]),
        base=st.sampled_from(_FORMS),
        fields=st.dictionaries(st.sampled_from(_FIELDS), _TEXT, max_size=8),
        csrf=st.booleans(),
    )
    @_SETTINGS
    def forms(step: str, base: dict[str, str], fields: dict[str, str], csrf: bool) -> None:
        data = {**base, **({"csrf": ui.csrf} if csrf else {}), **fields}
        sent = {key: _sendable(value) for key, value in data.items()}
        answer = ui.client.post(f"/ui/{step}", data=sent, follow_redirects=False)
        if answer.status_code >= 500:
            failures.append(f"POST {step} {sent}: {answer.status_code}")

    pages()
    forms()
    assert not failures, failures[:5]
    assert ui.get("/ui/").status_code == 200


def test_changes_made_by_the_fuzzer_are_audited_as_the_cli_s(site: Site) -> None:
    """Whatever the fuzzer managed to change on org/fuzz went through the facade: every entry
    about it names the signed-in token and has a reason."""
    admin = sql(site.registry, "SELECT id FROM api_tokens WHERE name = 'admin'")[0][0]
    rows = sql(
        site.registry,
        "SELECT actor, action, details FROM audit_events WHERE subject = 'org/fuzz'"
        " AND action <> 'push' AND actor <> 'tester@example'",
    )
    for actor, action, details in rows:
        assert actor == f"token:admin:{admin}", (actor, action)
        assert json.loads(details).get("reason", "").strip(), (action, details)


def test_repeated_fields_and_other_encodings_are_4xx(site: Site) -> None:
    """Held: a field sent twice (two actions, two CSRF tokens, two models, two answers to the
    confirmation) or a body in another encoding is a 4xx, never a change or a 5xx."""
    ui = site.ui()
    count = site.audit_count()
    base = {"action": "hold", "model": "org/fuzz", "version": "1", "reason": "r"}
    body = "&".join(f"{k}={quote(v)}" for k, v in {**base, "csrf": ui.csrf}.items())
    headers = {"content-type": "application/x-www-form-urlencoded"}
    for extra in ("&action=promote", "&csrf=x", "&model=other/secret", "&confirm=no&confirm=yes"):
        answer = ui.client.post(
            "/ui/act", content=body + extra, headers=headers, follow_redirects=False
        )
        assert answer.status_code == 400, extra
    for kind in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
        answer = ui.client.post(
            "/ui/act", content=body, headers={"content-type": kind}, follow_redirects=False
        )
        assert 400 <= answer.status_code < 500, kind
    assert site.audit_count() == count
