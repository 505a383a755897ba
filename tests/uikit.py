"""What the web UI tests share: an app with room for many requests, a signed-in browser (its
session cookie and CSRF token), tiny models written by hand, versions seeded straight into the
catalog (a page of a listing needs rows, not stored bytes), hostile text, and the check that a
page holds nothing a strict CSP would have to allow."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import text

from registry.api.app import create_app
from registry.records import FileRecord, NewBlob, NewVersion
from registry.service import Registry
from registry.testing.models import write_safetensors

BASE = "http://testserver.local"
SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
TEMPLATE = "x{{7*7}}y"
TEXTAREA = "</textarea><b>bold</b>"
UNICODE = "ünïcødé ✓ 模型 \u202etxt"
HOSTILE = (SCRIPT, ATTRIBUTE, TEMPLATE, TEXTAREA, UNICODE)
# Each hostile text as the page must show it: as text, never as markup or a template.
ESCAPED = {
    SCRIPT: "&lt;script&gt;alert(1)&lt;/script&gt;",
    ATTRIBUTE: "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;",
    TEMPLATE: "x{{7*7}}y",
    TEXTAREA: "&lt;/textarea&gt;&lt;b&gt;bold&lt;/b&gt;",
    UNICODE: UNICODE,
}


def ui_app(registry: Registry, **api: Any) -> Litestar:
    """The application over `registry`, its `[api]` settings changed by `api`; the rate limit
    is lifted (a test signs in and reads far faster than a person)."""
    settings = {"requests_per_second": 100_000.0, "burst": 100_000, **api}
    registry.settings.__dict__["api"] = dataclasses.replace(registry.settings.api, **settings)
    return create_app(registry)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no CSRF token on the page"
    return found[1]


class UI:
    """A browser signed in to the UI (or not yet): a test client that keeps its cookies."""

    def __init__(self, app: Litestar, *, base_url: str = BASE) -> None:
        self.client: TestClient[Any] = TestClient(app, base_url=base_url)
        self.origin = base_url
        self.csrf = ""

    def sign_in(self, token: str, **form: str) -> Any:
        answer = self.client.post(
            "/ui/login", data={"token": token, **form}, follow_redirects=False
        )
        if answer.status_code == 303:
            self.csrf = csrf_of(self.get("/ui/").text)
        return answer

    @property
    def session(self) -> str | None:
        value: str | None = self.client.cookies.get("mr_session")
        return value

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.client.get(url, follow_redirects=False, **kwargs)

    def post(self, url: str, data: Mapping[str, str], **kwargs: Any) -> Any:
        return self.client.post(url, data=dict(data), follow_redirects=False, **kwargs)

    def change(self, step: str, **form: str) -> Any:
        """POST a change's form (`confirm` or `act`) with this session's CSRF token, unless
        the form names another."""
        return self.post(f"/ui/{step}", {"csrf": self.csrf, **form})


def signed_in(app: Litestar, token: str, *, base_url: str = BASE) -> UI:
    ui = UI(app, base_url=base_url)
    answer = ui.sign_in(token)
    assert answer.status_code == 303, answer.text
    return ui


def tiny_model(
    path: Path,
    *,
    note: str,
    tensors: Mapping[str, tuple[str, list[int]]] | None = None,
    config: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """A model directory of a few hundred bytes: one safetensors file of zero-filled `tensors`
    (name -> (dtype, shape)), config.json, and `note.txt` holding `note` (so that two notes
    make two versions)."""
    from registry.testing.models import DTYPE_SIZES

    path.mkdir(parents=True, exist_ok=True)
    for old in path.iterdir():
        old.unlink()
    chosen = tensors if tensors is not None else {"w": ("F32", [2, 2])}
    data = {}
    for name, (dtype, shape) in chosen.items():
        count = 1
        for dimension in shape:
            count *= dimension
        data[name] = (dtype, list(shape), bytes(count * DTYPE_SIZES[dtype]))
    write_safetensors(path / "model.safetensors", data)
    (path / "config.json").write_text(json.dumps(config if config is not None else {}))
    (path / "note.txt").write_text(note)
    for name, content in (files or {}).items():
        (path / name).write_text(content)
    return path


def seed_versions(registry: Registry, name: str, count: int, *, actor: str = "seeder") -> None:
    """`count` versions of `name` recorded in the catalog only (no stored objects): what a
    listing pages through, at a fraction of a push's cost. Messages are `v0001`, `v0002`..."""
    for index in range(count):
        blob = "blake3:" + hashlib.sha256(f"{name} blob {index}".encode()).hexdigest()
        registry.catalog.commit_version(
            NewVersion(
                name=name,
                digest="blake3:" + hashlib.sha256(f"{name} {index}".encode()).hexdigest(),
                manifest_object=f"manifests/seed-{index}",
                manifest_slots=(),
                message=f"v{index + 1:04d}",
                actor=actor,
                signed_by="seed",
                total_size=10,
                tensor_count=0,
                parameter_count=0,
                dtypes=(),
                files=(FileRecord("w.bin", 10, blob, 0),),
                blobs=(NewBlob(blob, 10, f"blobs/seed-{index}", 100, 65536, ()),),
            )
        )


def sql(registry: Registry, statement: str, **params: object) -> list[Any]:
    with registry.catalog.engine.begin() as connection:
        result = connection.execute(text(statement), params)
        return list(result) if result.returns_rows else []


class _PageCheck(HTMLParser):
    """What a strict CSP (no inline script or style) would block, or a hostile text turned
    into markup: inline scripts, style elements and attributes, event handlers, images,
    javascript: URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {key for key, _ in attrs}
        if tag in ("style", "img", "iframe", "object", "embed", "textarea"):
            self.problems.append(f"<{tag}> element")
        if "style" in names:
            self.problems.append(f"style attribute on <{tag}>")
        self.problems += [f"{key} handler on <{tag}>" for key in names if key.startswith("on")]
        for key, value in attrs:
            if key in ("href", "src", "action") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.problems.append(f"javascript: URL in <{tag} {key}>")
        if tag == "script":
            if "src" not in names:
                self.problems.append("<script> without src")
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append(f"inline script {data.strip()[:40]!r}")


def page_problems(html: str) -> list[str]:
    check = _PageCheck()
    check.feed(html)
    check.close()
    return check.problems


def assert_shows_escaped(html: str, *texts: str) -> None:
    """Each hostile text is on the page as text, and none of it as markup."""
    for hostile in texts:
        assert ESCAPED[hostile] in html, f"{hostile!r} is not shown (escaped) on the page"
    assert SCRIPT not in html and "<img" not in html and "</textarea>" not in html
    assert "x49y" not in html, "a message was rendered as a template"
    assert page_problems(html) == []


def security_headers_problems(answer: Any, *, page: bool) -> list[str]:
    headers = answer.headers
    problems = []
    policy = headers.get("content-security-policy", "")
    if "default-src 'none'" not in policy or "unsafe-inline" in policy:
        problems.append(f"CSP {policy!r}")
    if "frame-ancestors 'none'" not in policy:
        problems.append("CSP without frame-ancestors 'none'")
    if headers.get("x-frame-options") != "DENY":
        problems.append(f"X-Frame-Options {headers.get('x-frame-options')!r}")
    if headers.get("x-content-type-options") != "nosniff":
        problems.append(f"X-Content-Type-Options {headers.get('x-content-type-options')!r}")
    if page and headers.get("cache-control") != "no-store":
        problems.append(f"Cache-Control {headers.get('cache-control')!r}")
    kind = headers.get("content-type", "")
    # Under nosniff the browser goes by this alone: a page must say it is HTML.
    if page and answer.status_code != 303 and kind != "text/html; charset=utf-8":
        problems.append(f"Content-Type {kind!r}")
    return problems
