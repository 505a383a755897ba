"""The web UI in a real browser: Debian's headless Chromium, driven by Playwright, against
`model-registry serve` in its own process. Signing in through the form, browsing, filtering as
you type (ui.js's fetch under the strict CSP), promoting and rolling back through the
confirmation step, the audit trail and its check, signing out; a reader's pages; the pages with
JavaScript off. No page may log a console error, a CSP violation or an uncaught exception.

One server and one browser for the module, meant for one xdist worker (an `xdist_group`), but
no test depends on another or on their order: only the change test changes anything, and only
org/mistral, which no other test reads an alias of. Each test has its own browser context, so its
own cookies.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from registry.service import ADMIN, READER, Registry
from registry.testing.browser import ServedHome, browser_problem, launch_chromium
from registry.testing.models import make_model

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

MODELS = ("org/llama", "org/mistral", "team/bert")


@dataclass(frozen=True)
class Site:
    home: Path
    url: str
    admin: str  # token texts
    reader: str
    admin_actor: str  # how the audit trail names the admin token


def _config(path: Path, architecture: str, layers: int) -> None:
    config = {
        "architectures": [architecture],
        "model_type": architecture.removesuffix("ForCausalLM").lower(),
        "num_hidden_layers": layers,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "vocab_size": 1000,
        "torch_dtype": "float16",
    }
    (path / "config.json").write_text(json.dumps(config))


def _seed(home: Path, scratch: Path) -> tuple[str, str, str]:
    """org/llama (to browse) and org/mistral (to change) at @1 and @2, each with `production`
    moved @1 then @2 (so it can roll back), team/bert at @1; an admin and a reader token."""
    Registry.init(home)
    with Registry.open(home, actor="seed@example") as registry:
        for index, name in enumerate(MODELS):
            source = make_model(
                scratch / f"m{index}", shards=1, shard_size=16_000, tensors_per_shard=3, seed=index
            )
            _config(source, "BertModel" if "bert" in name else "LlamaForCausalLM", 2)
            registry.push(name, source, message=f"first cut of {name}")
            if name.startswith("org/"):
                _config(source, "LlamaForCausalLM", 3)
                registry.push(name, source, message="one layer more")
                registry.promote(f"{name}@1", "production", reason="first release")
                registry.promote(f"{name}@2", "production", reason="second release")
        admin_record, admin = registry.create_token("ui-admin", role=ADMIN, models=["*"])
        _, reader = registry.create_token("ui-reader", role=READER, models=["*"])
    return admin, reader, f"token:{admin_record.name}:{admin_record.id}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    problem = browser_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem} (under CI=true the browser tests must run, not skip)")
        pytest.skip(problem)
    scratch = tmp_path_factory.mktemp("ui-browser")
    home = scratch / "home"
    admin, reader, actor = _seed(home, scratch)
    with ServedHome(home) as served:
        yield Site(home, served.url, admin, reader, actor)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        opened = launch_chromium(playwright)
        try:
            yield opened
        finally:
            opened.close()


OpenPage = Callable[..., "Page"]


@pytest.fixture
def open_page(browser: Browser, site: Site) -> Iterator[OpenPage]:
    """A fresh context's page (`javascript=False` for one without it) whose console errors,
    CSP violations among them, uncaught exceptions and failed answers fail the test."""
    from playwright.sync_api import expect

    # Generous: the whole suite shares two cores with this browser and its server.
    expect.set_options(timeout=20_000)
    problems: list[str] = []
    contexts = []

    def opened(*, javascript: bool = True) -> Page:
        context = browser.new_context(
            base_url=site.url,
            java_script_enabled=javascript,
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.on(
            "console",
            lambda message: (
                problems.append(f"console error: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "response",
            lambda answer: (
                problems.append(f"{answer.status} for {answer.url}")
                if answer.status >= 400
                else None
            ),
        )
        return page

    yield opened
    for context in contexts:
        context.close()
    assert problems == []


def _sign_in(page: Page, token: str, target: str = "/ui/") -> None:
    page.goto(target)
    page.wait_for_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(target) + "$"))


def _model_rows(page: Page) -> list[str]:
    return page.locator("#listing tbody tr td:first-child a").all_inner_texts()


def test_browse_as_admin(open_page: OpenPage, site: Site) -> None:
    from playwright.sync_api import expect

    page = open_page()
    _sign_in(page, site.admin)
    assert _model_rows(page) == sorted(MODELS)
    expect(
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit")
    ).to_be_visible()

    # Filter as you type: ui.js fetches the filtered page and swaps the listing in.
    page.get_by_label("Filter by name").press_sequentially("lla", delay=30)
    expect(page.locator("#listing tbody tr")).to_have_count(1)
    assert _model_rows(page) == ["org/llama"]
    expect(page.locator("#listing")).to_contain_text("1 model matching “lla”")
    assert page.url.endswith("/ui/?q=lla")  # the address follows, for reload and sharing

    page.get_by_role("link", name="org/llama", exact=True).click()
    page.wait_for_url("**/ui/models/org/llama")
    expect(page.get_by_role("heading", level=1)).to_have_text("org/llama")
    aliases = page.locator("ul.aliases")
    expect(aliases).to_contain_text("production → @2")
    expect(page.locator("table.versions tbody tr")).to_have_count(2)

    page.locator("table.versions").get_by_role("link", name="@1", exact=True).click()
    page.wait_for_url("**/ui/models/org/llama/versions/1")
    expect(page.get_by_role("heading", level=1)).to_have_text("org/llama@1")
    expect(page.locator("p.message")).to_have_text("first cut of org/llama")
    config = page.get_by_role("region", name="config.json")
    expect(config).to_contain_text("LlamaForCausalLM")
    expect(config.locator("div", has_text="Layers")).to_contain_text("2")
    tensors = page.locator("#tensor-list tbody tr")
    expect(tensors).to_have_count(3)
    expect(tensors.first).to_contain_text("model.layers.0.weight")
    use = page.get_by_role("region", name="Use it")
    expect(use).to_contain_text("model-registry pull org/llama@1")
    expect(use).to_contain_text('loader.load("org/llama@1", device="cuda:0")')
    expect(use.get_by_role("button", name="Copy")).to_have_count(4)  # ui.js's, one a snippet

    # The tensor filter is live too.
    page.get_by_label("Find a tensor").press_sequentially("layers.2", delay=30)
    expect(tensors).to_have_count(1)
    expect(page.locator("#tensor-list")).to_contain_text("1 of 3 tensors")

    page.goto("/ui/models/org/llama/diff")
    expect(page.get_by_role("heading", level=1)).to_contain_text("@1 → @2")
    expect(page.get_by_role("region", name="config.json")).to_contain_text("num_hidden_layers")


def test_promote_roll_back_and_audit(open_page: OpenPage, site: Site) -> None:
    from playwright.sync_api import expect

    page = open_page()
    _sign_in(page, site.admin, "/ui/models/org/mistral/versions/1")

    # Promote the older version to staging: a review step first, where nothing moves yet.
    page.get_by_label("Promote to alias").fill("staging")
    page.get_by_label("Reason", exact=True).fill("canary for the <eval> suite")
    page.get_by_role("button", name="Review promotion…").click()
    page.wait_for_url("**/ui/confirm")
    expect(page.locator(".confirm")).to_contain_text(
        "Point alias staging of org/mistral (new alias)"
    )
    expect(page.locator(".confirm")).to_contain_text("canary for the <eval> suite")
    with Registry.open(site.home) as registry:
        assert "staging" not in {a.alias for a in registry.aliases("org/mistral")}
    page.get_by_role("button", name="Confirm promote").click()
    page.wait_for_url("**/ui/models/org/mistral?notice=*")
    expect(page.get_by_role("status")).to_have_text("staging now points at @1")

    # Roll production back from @2 to @1, from the model page.
    production = page.locator("ul.aliases li", has=page.locator("#rb-production"))
    production.get_by_label("Reason to roll back production").fill("latency regression")
    production.get_by_role("button", name="Roll back…").click()
    page.wait_for_url("**/ui/confirm")
    expect(page.locator(".confirm")).to_contain_text("back from @2 to @1")
    page.get_by_role("button", name="Confirm rollback").click()
    page.wait_for_url("**/ui/models/org/mistral?notice=*")
    expect(page.get_by_role("status")).to_have_text("production rolled back to @1")
    expect(page.locator("ol.timeline")).to_contain_text("latency regression")

    with Registry.open(site.home) as registry:
        moved = {a.alias: (a.number, a.updated_by) for a in registry.aliases("org/mistral")}
    assert moved == {"production": (1, site.admin_actor), "staging": (1, site.admin_actor)}

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    page.wait_for_url("**/ui/audit")
    rows = page.locator("table.list tbody tr")
    promote = rows.filter(has_text="canary for the <eval> suite")
    expect(promote).to_have_count(1)
    expect(promote).to_contain_text("promote")
    expect(promote).to_contain_text(site.admin_actor)
    rollback = rows.filter(has_text="latency regression")
    expect(rollback).to_have_count(1)
    expect(rollback).to_contain_text("rollback")
    expect(rollback).to_contain_text(site.admin_actor)

    page.get_by_role("link", name="Verify the audit trail").click()
    expect(page.get_by_role("status")).to_contain_text("The chain holds")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    page.goto("/ui/audit")
    page.wait_for_url(re.compile(r"/ui/login\?next=%2Fui%2Faudit$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")


def test_a_reader_sees_no_change_forms(open_page: OpenPage, site: Site) -> None:
    from playwright.sync_api import expect

    page = open_page()
    _sign_in(page, site.reader, "/ui/models/org/llama")
    expect(page.locator("ul.aliases")).to_contain_text("production")
    expect(page.locator("form[action='/ui/confirm']")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit")).to_have_count(0)
    page.goto("/ui/models/org/llama/versions/2")
    expect(page.get_by_role("heading", level=1)).to_have_text("org/llama@2")
    expect(page.locator("form[action='/ui/confirm']")).to_have_count(0)
    expect(page.get_by_role("heading", name="Change")).to_have_count(0)
    expect(page.get_by_role("heading", name="Audit entries")).to_have_count(0)


def test_pages_work_without_javascript(open_page: OpenPage, site: Site) -> None:
    from playwright.sync_api import expect

    page = open_page(javascript=False)
    _sign_in(page, site.admin)
    page.get_by_label("Filter by name").fill("bert")
    page.get_by_label("Filter by name").press("Enter")  # the form submits: a plain GET
    page.wait_for_url("**/ui/?q=bert")
    assert _model_rows(page) == ["team/bert"]

    page.goto("/ui/models/team/bert/versions/1")
    expect(page.get_by_role("button", name="Copy")).to_have_count(0)  # ui.js did not run
    page.get_by_label("Find a tensor").fill("layers.1")
    page.get_by_role("button", name="Find").click()
    page.wait_for_url("**/versions/1?t=layers.1")
    expect(page.locator("#tensor-list tbody tr")).to_have_count(1)

    # The change forms are plain forms too; reviewing moves nothing, and Cancel goes back.
    page.get_by_label("Reason", exact=True).fill("try it")
    page.get_by_role("button", name="Review promotion…").click()
    page.wait_for_url("**/ui/confirm")
    expect(page.get_by_role("button", name="Confirm promote")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_url("**/ui/models/team/bert")
    expect(page.locator("ul.aliases")).to_have_count(0)
