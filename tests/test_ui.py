"""The web UI's routes (issue 19): signing in and out, the session cookie and where it ends,
the token's role and model patterns on every page and change, CSRF and same-origin checks, and
changes that land as the API's would (the same audit entries, the same state).

Pages' content, escaping, headers and paging are in test_ui_pages.py; the catalog reads behind
them, on SQLite and PostgreSQL, in test_ui_browse.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from litestar import Litestar
from sqlalchemy import update

from registry.catalog.models import ApiToken, UiSession
from registry.records import TokenRecord
from registry.service import Registry
from tests.uikit import BASE, UI, signed_in, sql, tiny_model, ui_app

TOKENS = {
    # name: (role, model patterns)
    "admin": ("admin", ["*"]),
    "reader": ("reader", ["*"]),
    "pusher": ("pusher", ["*"]),
    "promoter": ("promoter", ["*"]),
    "org-admin": ("admin", ["org/*"]),
    "org-promoter": ("promoter", ["org/*"]),
    "org-reader": ("reader", ["org/*"]),
}


@dataclass
class World:
    registry: Registry
    home: Path
    app: Litestar
    scratch: Path
    tokens: dict[str, tuple[TokenRecord, str]]

    def ui(self, who: str) -> UI:
        return signed_in(self.app, self.tokens[who][1])

    def model(self, name: str, versions: int = 2) -> str:
        """A new model of `versions` tiny versions."""
        for number in range(1, versions + 1):
            source = tiny_model(self.scratch / "src", note=f"{name} {number}")
            self.registry.push(name, source, message=f"{name} v{number}")
        return name

    def alias(self, name: str, alias: str) -> int | None:
        return next((a.number for a in self.registry.aliases(name) if a.alias == alias), None)

    def audit_count(self) -> int:
        return int(sql(self.registry, "SELECT count(*) FROM audit_events")[0][0])

    def newest_entry(self, subject: str) -> tuple[str, str, dict[str, Any]]:
        entry = self.registry.catalog.audit_page(subjects=[subject], limit=1)[0]
        return entry.actor, entry.action, entry.details


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("ui")
    Registry.init(root / "home")
    with Registry.open(root / "home", actor="tester@example") as registry:
        tokens = {
            name: registry.create_token(name, role=role, models=models)
            for name, (role, models) in TOKENS.items()
        }
        found = World(registry, root / "home", ui_app(registry), root, tokens)
        found.model("org/llama")
        found.model("org/tiny", 1)
        found.model("other/secret")
        registry.promote("other/secret@1", "production", reason="secret release")
        yield found


def _id_hash(session_id: str | None) -> str:
    assert session_id
    return hashlib.sha256(session_id.encode()).hexdigest()


def _set_session(world: World, session_id: str | None, **values: object) -> None:
    with world.registry.catalog.engine.begin() as connection:
        connection.execute(
            update(UiSession).where(UiSession.id_hash == _id_hash(session_id)).values(**values)
        )


def _sessions(world: World, token_id: str) -> int:
    found = sql(world.registry, "SELECT count(*) FROM ui_sessions WHERE token_id = :t", t=token_id)
    return int(found[0][0])


def _secret(token: str) -> str:
    """The secret part of `mrt_<id>_<secret>` (the secret itself may hold `_`)."""
    assert len(token) == 4 + 12 + 1 + 43
    return token[17:]


def _cookie_parts(answer: Any) -> list[str]:
    header = answer.headers.get("set-cookie", "")
    assert header.startswith("mr_session="), header
    return [part.strip().lower() for part in header.split(";")]


def _from_peer(ui: UI, address: str) -> None:
    """Requests of `ui` come from `address` (the test client's peer is not an address)."""
    app = ui.client.app

    async def peer(scope: Any, receive: Any, send: Any) -> None:
        scope["client"] = (address, 40000)
        await app(scope, receive, send)

    ui.client.app = peer  # type: ignore[assignment]


def _is_sign_in(answer: Any, target: str) -> bool:
    expected = "/ui/login?" + urlencode({"next": target})
    return bool(answer.status_code == 303 and answer.headers["location"] == expected)


# -- signing in ---------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_session_cookie_of_a_server_side_session(world: World) -> None:
    token = world.tokens["reader"][1]
    ui = UI(world.app)
    answer = ui.sign_in(token, next="/ui/models/org/llama?page=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/models/org/llama?page=1"
    parts = _cookie_parts(answer)
    assert {"httponly", "samesite=strict", "path=/ui"} <= set(parts)
    assert not any(part == "secure" for part in parts)  # plain http: a Secure cookie is lost
    max_age = next(int(p.split("=")[1]) for p in parts if p.startswith("max-age="))
    assert 0 < max_age <= 12 * 3600
    session_id = ui.session
    assert session_id and session_id not in token and _secret(token) not in session_id
    rows = sql(
        world.registry,
        "SELECT id_hash, csrf FROM ui_sessions WHERE token_id = :t",
        t=world.tokens["reader"][0].id,
    )
    assert (_id_hash(session_id), ui.csrf) in [tuple(row) for row in rows]
    assert ui.get("/ui/models/org/llama").status_code == 200


def test_the_token_is_kept_and_shown_nowhere(world: World) -> None:
    record, token = world.registry.create_token("scanned", role="admin", models=["*"])
    secret = _secret(token)
    ui = UI(world.app)
    answers = [ui.sign_in(token, next="/ui/audit")]
    for url in ("/ui/", "/ui/models/org/llama", "/ui/models/org/llama/versions/1", "/ui/audit"):
        answers.append(ui.get(url))
    answers.append(ui.get("/ui/models/no/such"))
    answers.append(UI(world.app).sign_in(token[:-2] + "xx"))
    for answer in answers:
        shown = answer.text + str(answer.headers)
        assert secret not in shown and token not in shown
    rows = sql(world.registry, "SELECT * FROM ui_sessions WHERE token_id = :t", t=record.id)
    assert len(rows) == 1 and not any(secret in str(value) for value in rows[0])
    assert ui.session is not None
    files = [path for path in world.home.rglob("*") if path.is_file()]
    assert any(path.name == "catalog.db" for path in files)
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data, path
        # The catalog holds the session id's hash: a copy of it signs nobody in.
        assert ui.session.encode() not in data, path


def test_the_cookie_is_secure_over_tls(world: World) -> None:
    ui = UI(world.app, base_url="https://testserver.local")
    answer = ui.sign_in(world.tokens["reader"][1])
    assert answer.status_code == 303
    assert "secure" in _cookie_parts(answer)
    assert ui.get("/ui/").status_code == 200


def test_the_cookie_is_secure_behind_a_trusted_proxy_only(world: World) -> None:
    token = world.tokens["reader"][1]
    before = world.registry.settings.api
    try:
        behind = ui_app(world.registry, trusted_proxies=("10.0.0.0/8",))
    finally:
        world.registry.settings.__dict__["api"] = before
    tls = {"X-Forwarded-Proto": "https"}
    for app, peer, headers, secure in [
        (behind, "10.0.0.2", tls, True),
        # The browser's Origin is the proxy's https one, and that is this site.
        (behind, "10.0.0.2", {**tls, "Origin": "https://testserver.local"}, True),
        (behind, "10.0.0.2", {}, False),
        (behind, "10.0.0.2", {"X-Forwarded-Proto": "http"}, False),
        (behind, "192.0.2.1", tls, False),  # anyone may write the header
        (world.app, "10.0.0.2", tls, False),  # no proxy is trusted
    ]:
        ui = UI(app)
        _from_peer(ui, peer)
        answer = ui.client.post(
            "/ui/login", data={"token": token}, headers=headers, follow_redirects=False
        )
        assert answer.status_code == 303
        assert ("secure" in _cookie_parts(answer)) is secure, (peer, headers)
    # Over plain http, a page from the https origin is another site's.
    ui = UI(behind)
    _from_peer(ui, "192.0.2.1")
    answer = ui.client.post(
        "/ui/login",
        data={"token": token},
        headers={**tls, "Origin": "https://testserver.local"},
        follow_redirects=False,
    )
    assert answer.status_code == 403 and "set-cookie" not in answer.headers
    # A proxy that rewrites Host says the browser's in X-Forwarded-Host: believed from it
    # alone, so a form from another site stays refused whatever a client writes there.
    moved = {**tls, "Host": "registry-backend:8080", "X-Forwarded-Host": "testserver.local"}
    for peer, accepted in (("10.0.0.2", True), ("192.0.2.1", False)):
        ui = UI(behind)
        _from_peer(ui, peer)
        answer = ui.client.post(
            "/ui/login",
            data={"token": token},
            headers={**moved, "Origin": "https://testserver.local"},
            follow_redirects=False,
        )
        assert (answer.status_code == 303) is accepted, peer


def test_bad_expired_and_revoked_tokens_get_a_401_page_and_no_cookie(world: World) -> None:
    expired, expired_token = world.registry.create_token("expired", role="admin", models=["*"])
    with world.registry.catalog.engine.begin() as connection:
        connection.execute(
            update(ApiToken)
            .where(ApiToken.id == expired.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    revoked, revoked_token = world.registry.create_token("revoked", role="admin", models=["*"])
    world.registry.revoke_token(revoked.id)
    unknown = "mrt_" + "0" * 12 + "_" + "A" * 43
    for token in ("", "nonsense", unknown, expired_token, revoked_token, "mrt_" + "x" * 400):
        answer = UI(world.app).sign_in(token)
        assert answer.status_code == 401, token
        assert "set-cookie" not in answer.headers
        assert "invalid, expired or revoked API token" in answer.text
        assert 'action="/ui/login"' in answer.text  # the form again, to try once more
    assert _sessions(world, expired.id) == _sessions(world, revoked.id) == 0


def test_pages_without_a_session_lead_to_the_sign_in_page(world: World) -> None:
    anonymous = UI(world.app)
    for target in ("/ui/models/org/llama?page=1", "/ui/audit?actor=a%20b&before=3"):
        assert _is_sign_in(anonymous.get(target), target), target
    # The root comes back as /ui, which the sign-in turns into /ui/.
    assert anonymous.get("/ui/").headers["location"] in (
        "/ui/login?next=%2Fui",
        "/ui/login?next=%2Fui%2F",
    )
    forged = UI(world.app)
    forged.client.cookies.set("mr_session", "forged-session-id", domain="testserver.local")
    assert _is_sign_in(forged.get("/ui/models/org/llama"), "/ui/models/org/llama")
    # A change is not a page to come back to: it is refused.
    refused = forged.post("/ui/act", {"action": "hold", "model": "org/llama", "csrf": "x"})
    assert refused.status_code == 401 and "sign in again" in refused.text
    login = anonymous.get("/ui/login?next=/ui/models/org/llama")
    assert login.status_code == 200 and 'value="/ui/models/org/llama"' in login.text


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "/\\evil.com",
        "https://evil.example/ui/",
        "/ui//evil.com",
        "/ui/\\evil.com",
        "/ui/\t/evil.com",
        "javascript:alert(1)",
        "/uievil",
        "",
    ],
)
def test_after_sign_in_only_pages_of_the_ui_are_followed(world: World, target: str) -> None:
    answer = UI(world.app).sign_in(world.tokens["reader"][1], next=target)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    login = UI(world.app).get("/ui/login?" + urlencode({"next": target}))
    assert 'name="next" value="/ui/"' in login.text


def test_sign_out_ends_the_session_on_the_server(world: World) -> None:
    ui = world.ui("reader")
    old = ui.session
    record = world.tokens["reader"][0]
    before = _sessions(world, record.id)
    answer = ui.post("/ui/logout", {"csrf": ui.csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert "mr_session=" in answer.headers["set-cookie"]
    assert _sessions(world, record.id) == before - 1
    replay = UI(world.app)
    replay.client.cookies.set("mr_session", old or "", domain="testserver.local")
    assert _is_sign_in(replay.get("/ui/audit"), "/ui/audit")
    # Signing out of an ended session only clears the cookie (nothing is left to end).
    again = replay.post("/ui/logout", {"csrf": ui.csrf})
    assert again.status_code == 303 and again.headers["location"] == "/ui/login"


def test_revoking_a_token_ends_its_sessions(world: World) -> None:
    record, token = world.registry.create_token("to-revoke", role="admin", models=["*"])
    first, second = signed_in(world.app, token), signed_in(world.app, token)
    assert _sessions(world, record.id) == 2
    world.registry.revoke_token(record.id)
    assert _sessions(world, record.id) == 0
    for ui in (first, second):
        assert _is_sign_in(ui.get("/ui/audit"), "/ui/audit")
        assert ui.change("act", action="hold", model="org/llama", version="1").status_code == 401


def test_a_session_ends_when_it_expires_or_sits_idle(world: World) -> None:
    now = datetime.now(UTC)
    ended, idle, recent = (world.ui("reader") for _ in range(3))
    _set_session(world, ended.session, expires_at=now - timedelta(seconds=1))
    _set_session(world, idle.session, seen_at=now - timedelta(minutes=31))
    _set_session(world, recent.session, seen_at=now - timedelta(minutes=29))
    for ui in (ended, idle):
        assert _is_sign_in(ui.get("/ui/audit"), "/ui/audit")
        found = sql(
            world.registry,
            "SELECT count(*) FROM ui_sessions WHERE id_hash = :h",
            h=_id_hash(ui.session),
        )
        assert found[0][0] == 0  # dropped, not just refused
    assert recent.get("/ui/").status_code == 200
    seen = world.registry.catalog.ui_session(_id_hash(recent.session))
    assert seen is not None and seen.seen_at > now - timedelta(minutes=1)  # its use renewed it


def test_a_session_ends_no_later_than_its_token(world: World) -> None:
    record, token = world.registry.create_token("brief", role="reader", models=["*"], expires="1h")
    answer = UI(world.app).sign_in(token)
    max_age = next(int(p[8:]) for p in _cookie_parts(answer) if p.startswith("max-age="))
    assert 3500 < max_age <= 3600
    rows = sql(world.registry, "SELECT count(*) FROM ui_sessions WHERE token_id = :t", t=record.id)
    assert rows[0][0] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "https://testserver.local"},  # another scheme is another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": BASE, "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_sign_in_from_another_site_is_refused(world: World, headers: dict[str, str]) -> None:
    before = _sessions(world, world.tokens["reader"][0].id)
    answer = UI(world.app).client.post(
        "/ui/login",
        data={"token": world.tokens["reader"][1]},
        headers=headers,
        follow_redirects=False,
    )
    assert answer.status_code == 403 and "another site" in answer.text
    assert "set-cookie" not in answer.headers
    assert _sessions(world, world.tokens["reader"][0].id) == before


def test_sign_in_from_this_site_is_accepted(world: World) -> None:
    answer = UI(world.app).client.post(
        "/ui/login",
        data={"token": world.tokens["reader"][1]},
        headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and "set-cookie" in answer.headers


# -- what a token may see and do -----------------------------------------------------------------


def test_a_token_limited_to_some_models_lists_and_counts_only_those(world: World) -> None:
    ui = world.ui("org-reader")
    html = ui.get("/ui/").text
    mine = sorted(m.name for m in world.registry.models() if m.name.startswith("org/"))
    assert len(mine) >= 2 and all(name in html for name in mine)
    assert "other/" not in html
    assert f"{len(mine)} models" in html
    for query in ("other", "secret", "other/secret"):
        html = ui.get(f"/ui/?q={query}").text
        assert "0 models" in html and 'href="/ui/models/other/secret"' not in html
    everything = world.ui("reader").get("/ui/?q=secret").text
    assert "1 model " in everything and 'href="/ui/models/other/secret"' in everything


@pytest.mark.parametrize(
    "path",
    ["", "/versions/1", "/versions/2", "/diff", "/diff?a=1&b=2", "?expired=1", "?page=2"],
)
def test_a_model_outside_the_patterns_is_answered_as_missing(world: World, path: str) -> None:
    ui = world.ui("org-admin")
    hidden = ui.get(f"/ui/models/other/secret{path}")
    missing = ui.get(f"/ui/models/other/nothing{path}")
    assert hidden.status_code == missing.status_code == 404
    # One answer whether the model exists or not: nothing tells the token other/secret is there.
    assert hidden.text.replace("secret", "nothing") == missing.text
    assert "production" not in hidden.text and "v1" not in hidden.text


def test_the_audit_page_of_a_token_limited_to_some_models(world: World) -> None:
    ui = world.ui("org-admin")
    whole = ui.get("/ui/audit")
    assert whole.status_code == 200
    assert "choose one of them to see its entries" in whole.text
    assert "<table" not in whole.text and "Verify the audit trail" not in whole.text
    assert "choose one of them" in ui.get("/ui/audit?actor=tester%40example&action=push").text
    assert "choose one of them" in ui.get("/ui/audit?verify=1").text
    assert ui.get("/ui/audit?model=other/secret").status_code == 404
    assert ui.get("/ui/audit?model=other/secret&verify=1").status_code == 404
    mine = ui.get("/ui/audit?model=org/llama")
    assert mine.status_code == 200 and "<td>org/llama</td>" in mine.text
    assert "other/secret" not in mine.text and "secret release" not in mine.text


def test_a_reader_sees_no_change_forms_and_may_make_no_change(world: World) -> None:
    ui = world.ui("reader")
    for url in ("/ui/models/org/llama", "/ui/models/org/llama/versions/1"):
        html = ui.get(url).text
        assert 'action="/ui/confirm"' not in html and 'action="/ui/act"' not in html
        assert 'action="/ui/logout"' in html  # signing out is for everyone
    assert 'href="/ui/audit"' not in html
    before = (world.registry.aliases("org/llama"), world.audit_count())
    forms = [
        {"action": "promote", "model": "org/llama", "version": "2", "alias": "production"},
        {"action": "rollback", "model": "org/llama", "alias": "production"},
        {"action": "hold", "model": "org/llama", "version": "1"},
        {"action": "release", "model": "org/llama", "version": "1"},
    ]
    for form in forms:
        for step in ("confirm", "act"):
            answer = ui.change(step, reason="because", confirm="yes", **form)
            assert answer.status_code == 403, (step, form)
            assert "may not" in answer.text
    assert (world.registry.aliases("org/llama"), world.audit_count()) == before
    assert world.registry.holds() == []


def test_a_pusher_moves_unprotected_aliases_only(world: World) -> None:
    name = world.model("org/pushed", 3)
    world.registry.promote(f"{name}@3", "production", reason="first")
    world.registry.promote(f"{name}@1", "production", reason="back to the first")
    world.registry.protect_alias(name, "production")
    ui = world.ui("pusher")
    assert 'action="/ui/confirm"' in ui.get(f"/ui/models/{name}/versions/2").text
    staging = {"action": "promote", "model": name, "version": "2", "alias": "staging"}
    assert ui.change("confirm", reason="try it", **staging).status_code == 200
    assert ui.change("act", reason="try it", confirm="yes", **staging).status_code == 303
    assert world.alias(name, "staging") == 2
    count = world.audit_count()
    production = {**staging, "alias": "production"}
    rollback = {"action": "rollback", "model": name, "alias": "production"}
    for form in (production, rollback):
        for step in ("confirm", "act"):
            # Refused from the first step: no confirmation page for a change that cannot be.
            refused = ui.change(step, reason="ship it", confirm="yes", **form)
            assert refused.status_code == 403 and "protected" in refused.text, (step, form)
    assert world.alias(name, "production") == 1 and world.audit_count() == count


@pytest.mark.parametrize("who", ["reader", "pusher", "promoter"])
def test_the_audit_trail_and_holds_are_for_admins_only(world: World, who: str) -> None:
    ui = world.ui(who)
    refused = ui.get("/ui/audit")
    assert refused.status_code == 403 and "may not read the audit trail" in refused.text
    assert ui.get("/ui/audit?model=org/llama").status_code == 403
    version = ui.get("/ui/models/org/llama/versions/1").text
    assert 'value="hold"' not in version and "Audit entries" not in version
    hold = {"action": "hold", "model": "org/llama", "version": "1", "reason": "keep"}
    assert ui.change("confirm", **hold).status_code == 403
    assert ui.change("act", confirm="yes", **hold).status_code == 403
    assert world.registry.holds() == []
    admin = world.ui("admin")
    assert admin.get("/ui/audit").status_code == 200
    assert 'value="hold"' in admin.get("/ui/models/org/llama/versions/1").text


@pytest.mark.parametrize(
    ("who", "form"),
    [
        ("org-promoter", {"action": "promote", "version": "2", "alias": "production"}),
        ("org-promoter", {"action": "rollback", "alias": "production"}),
        ("org-admin", {"action": "hold", "version": "1"}),
        ("org-admin", {"action": "release", "version": "1"}),
        ("org-admin", {"action": "promote", "version": "1", "alias": "fresh"}),
    ],
)
def test_a_token_cannot_change_models_outside_its_patterns(
    world: World, who: str, form: dict[str, str]
) -> None:
    ui = world.ui(who)
    before = (world.registry.aliases("other/secret"), world.registry.holds(), world.audit_count())
    for step in ("confirm", "act"):
        answer = ui.change(step, model="other/secret", reason="mine now", confirm="yes", **form)
        assert answer.status_code == 404 and "other/secret does not exist" in answer.text
    after = (world.registry.aliases("other/secret"), world.registry.holds(), world.audit_count())
    assert after == before


# -- CSRF and same-origin checks -----------------------------------------------------------------


@pytest.fixture
def csrf_case(world: World) -> tuple[UI, UI, str]:
    """An admin's session, another session of the same token, and a model whose production
    alias points at @1 (a promote to @2 would move it)."""
    name = "org/csrf"
    if name not in {m.name for m in world.registry.models()}:
        world.model(name)
        world.registry.promote(f"{name}@1", "production", reason="first")
    return world.ui("admin"), world.ui("admin"), name


def _unchanged(world: World, name: str) -> tuple[object, ...]:
    return (world.registry.aliases(name), world.registry.holds(), world.audit_count())


@pytest.mark.parametrize("step", ["confirm", "act"])
def test_a_change_needs_its_sessions_csrf_token(
    world: World, csrf_case: tuple[UI, UI, str], step: str
) -> None:
    ui, other, name = csrf_case
    assert ui.csrf != other.csrf
    before = _unchanged(world, name)
    form = {"action": "promote", "model": name, "version": "2", "alias": "production"}
    form |= {"reason": "ship", "confirm": "yes"}
    for sent in ({}, {"csrf": ""}, {"csrf": "wrong"}, {"csrf": other.csrf}, {"csrf": ui.csrf[:-1]}):
        answer = ui.post(f"/ui/{step}", {**form, **sent})
        assert answer.status_code == 403, sent
        assert "did not come from this site" in answer.text
    assert _unchanged(world, name) == before
    hold = {"action": "hold", "model": name, "version": "1", "reason": "r", "confirm": "yes"}
    assert ui.post(f"/ui/{step}", {**hold, "csrf": other.csrf}).status_code == 403
    assert _unchanged(world, name) == before


def test_signing_out_needs_the_csrf_token(world: World, csrf_case: tuple[UI, UI, str]) -> None:
    ui, other, _name = csrf_case
    for form in ({}, {"csrf": "wrong"}, {"csrf": other.csrf}):
        assert ui.post("/ui/logout", form).status_code == 403
    # Neither session ended: a page on another site cannot sign anyone out.
    assert ui.get("/ui/audit").status_code == other.get("/ui/audit").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_form_from_another_site_is_refused_even_with_the_csrf_token(
    world: World, csrf_case: tuple[UI, UI, str], headers: dict[str, str]
) -> None:
    ui, _other, name = csrf_case
    before = _unchanged(world, name)
    form = {"action": "promote", "model": name, "version": "2", "alias": "production"}
    form |= {"reason": "ship", "confirm": "yes", "csrf": ui.csrf}
    for url in ("/ui/confirm", "/ui/act", "/ui/logout"):
        answer = ui.post(url, form, headers=headers)
        assert answer.status_code == 403 and "another site" in answer.text, url
    assert _unchanged(world, name) == before
    assert ui.get("/ui/audit").status_code == 200
    same = ui.post("/ui/confirm", form, headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200


def test_a_change_must_be_confirmed(world: World, csrf_case: tuple[UI, UI, str]) -> None:
    ui, _other, name = csrf_case
    before = _unchanged(world, name)
    form = {"action": "promote", "model": name, "version": "2", "alias": "production"}
    for confirm in ({}, {"confirm": ""}, {"confirm": "no"}, {"confirm": "YES"}):
        answer = ui.change("act", reason="ship", **form, **confirm)
        assert answer.status_code == 400 and "not confirmed" in answer.text
    assert _unchanged(world, name) == before


@pytest.mark.parametrize(
    ("form", "status", "words"),
    [
        ({"action": "launch"}, 400, "unknown action"),
        ({"action": ""}, 400, "unknown action"),
        (
            {"action": "promote", "version": "2", "alias": "production", "reason": " "},
            400,
            "reason",
        ),
        ({"action": "promote", "version": "2", "alias": "Bad Alias"}, 400, "invalid alias"),
        ({"action": "promote", "version": "two", "alias": "production"}, 400, "version"),
        ({"action": "promote", "version": "-1", "alias": "production"}, 400, "version"),
        ({"action": "promote", "version": "9", "alias": "production"}, 404, "does not exist"),
        ({"action": "promote", "version": "1" * 12, "alias": "production"}, 400, "version"),
        ({"action": "hold", "version": ""}, 400, "version"),
        ({"action": "rollback", "alias": "nothing"}, 404, "nothing"),
        ({"action": "promote", "model": "Org/<b>", "version": "1", "alias": "x"}, 400, "name"),
        ({"action": "hold", "model": "org/none", "version": "1"}, 404, "does not exist"),
        (
            {"action": "promote", "version": "2", "alias": "production", "reason": "r" * 5000},
            400,
            "",
        ),
    ],
)
def test_a_malformed_change_is_a_clear_4xx_and_changes_nothing(
    world: World, csrf_case: tuple[UI, UI, str], form: dict[str, str], status: int, words: str
) -> None:
    ui, _other, name = csrf_case
    before = _unchanged(world, name)
    full = {"model": name, "reason": "because", "confirm": "yes", **form}
    for step in ("confirm", "act"):
        answer = ui.change(step, **full)
        assert answer.status_code == status, (step, answer.text)
        assert words in answer.text and "Traceback" not in answer.text
    assert _unchanged(world, name) == before


# -- changes, as the API makes them --------------------------------------------------------------


def _entry_of_twin(world: World, ui_model: str, api_model: str) -> None:
    """The UI's newest audit entry about `ui_model` is the one the API's call made about
    `api_model`: same actor, action and details."""
    ui_entry, api_entry = world.newest_entry(ui_model), world.newest_entry(api_model)
    assert ui_entry == api_entry


def test_a_promotion_is_confirmed_then_made_as_the_api_makes_it(world: World) -> None:
    record, _token = world.tokens["promoter"]
    mine, twin = world.model("org/ui-promote"), world.model("org/api-promote")
    ui = world.ui("promoter")
    form = {"action": "promote", "model": mine, "version": "2", "alias": "production"}
    form["reason"] = "evals are better"
    count = world.audit_count()
    confirm = ui.change("confirm", **form)
    assert confirm.status_code == 200
    text = " ".join(confirm.text.split())
    assert f"<strong>{mine}</strong> (new alias) at <strong>@2</strong>" in text
    assert "<q>evals are better</q>" in text
    assert f"as promoter (token {record.id})" in text
    # The confirmation carries the change on: the same fields, confirmed, and the CSRF token.
    for field, value in {**form, "confirm": "yes", "csrf": ui.csrf}.items():
        assert f'name="{field}" value="{value}"' in confirm.text
    assert world.registry.aliases(mine) == [] and world.audit_count() == count
    made = ui.change("act", confirm="yes", **form)
    assert made.status_code == 303
    assert made.headers["location"].startswith(f"/ui/models/{mine}?notice=")
    assert "production now points at @2" in ui.get(made.headers["location"]).text
    assert world.alias(mine, "production") == 2
    world.registry.acting_as(record).promote(f"{twin}@2", "production", reason="evals are better")
    _entry_of_twin(world, mine, twin)
    actor, action, details = world.newest_entry(mine)
    assert (actor, action) == (f"token:promoter:{record.id}", "promote")
    assert details["reason"] == "evals are better"
    again = ui.change("confirm", **{**form, "version": "1"})
    assert "from @2 at <strong>@1</strong>" in " ".join(again.text.split())


def test_a_rollback_confirmation_names_the_version_it_goes_back_to(world: World) -> None:
    record, _token = world.tokens["promoter"]
    mine, twin = world.model("org/ui-rollback", 3), world.model("org/api-rollback", 3)
    for name in (mine, twin):
        for number in (1, 3, 2):
            world.registry.promote(f"{name}@{number}", "production", reason=f"to {number}")
    ui = world.ui("promoter")
    form = {"action": "rollback", "model": mine, "alias": "production", "reason": "regression"}
    count = world.audit_count()
    confirm = ui.change("confirm", **form)
    text = " ".join(confirm.text.split())
    assert confirm.status_code == 200
    assert "back from @2 to <strong>@3</strong>" in text
    assert world.alias(mine, "production") == 2 and world.audit_count() == count
    # Confirmed for another target (the alias moved since the page was shown): refused.
    moved = ui.change("act", confirm="yes", expected="1", **form)
    assert moved.status_code == 409 and "moved since" in moved.text
    assert world.alias(mine, "production") == 2 and world.audit_count() == count
    assert ui.change("act", confirm="yes", expected="3", **form).status_code == 303
    assert world.alias(mine, "production") == 3
    world.registry.acting_as(record).rollback(twin, "production", reason="regression")
    _entry_of_twin(world, mine, twin)
    assert world.newest_entry(mine)[:2] == (f"token:promoter:{record.id}", "rollback")
    # Rolling back again goes further back, and the page says where before anything moves.
    assert "back from @3 to <strong>@1</strong>" in " ".join(
        ui.change("confirm", **form).text.split()
    )


def test_a_hold_is_placed_and_released_through_the_ui(world: World) -> None:
    record, _token = world.tokens["admin"]
    mine, twin = world.model("org/ui-hold", 1), world.model("org/api-hold", 1)
    ui = world.ui("admin")
    version = f"/ui/models/{mine}/versions/1"
    assert 'name="action" value="hold"' in ui.get(version).text
    form = {"action": "hold", "model": mine, "version": "1", "reason": "litigation 42"}
    count = world.audit_count()
    nothing = ui.change("confirm", **{**form, "action": "release"})
    assert nothing.status_code == 404 and "not under legal hold" in nothing.text
    confirm = ui.change("confirm", **form)
    assert f"Place a legal hold on <strong>{mine}@1</strong>" in confirm.text
    assert world.registry.holds() == [] and world.audit_count() == count
    assert ui.change("act", confirm="yes", **form).status_code == 303
    assert [(h.name, h.number, h.reason) for h in world.registry.holds()] == [
        (mine, 1, "litigation 42")
    ]
    world.registry.acting_as(record).hold(f"{twin}@1", reason="litigation 42")
    _entry_of_twin(world, mine, twin)
    assert world.newest_entry(mine) == (
        f"token:admin:{record.id}",
        "hold",
        {"version": 1, "reason": "litigation 42"},
    )
    page = ui.get(version).text
    assert 'name="action" value="release"' in page and "litigation 42" in page
    release = {**form, "action": "release", "reason": "settled"}
    assert "Release the legal hold" in ui.change("confirm", **release).text
    assert len(world.registry.holds()) == 2
    assert ui.change("act", confirm="yes", **release).status_code == 303
    world.registry.acting_as(record).release_hold(f"{twin}@1", reason="settled")
    assert world.registry.holds() == []
    _entry_of_twin(world, mine, twin)
    assert world.newest_entry(mine)[1:] == ("release-hold", {"version": 1, "reason": "settled"})
