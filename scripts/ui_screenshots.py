"""Screenshots of the web UI for docs/ui.md: seeds a small but realistic registry (models with
several versions, aliases and their moves, a legal hold, retention policies, tokens, a rollback),
serves it with `model-registry serve`, and has Debian's headless Chromium (driven by Playwright)
photograph each main page in the light and the dark colour scheme, at 1280x800:

    .venv/bin/python scripts/ui_screenshots.py            # writes docs/ui/*.png
    .venv/bin/python scripts/ui_screenshots.py --out DIR

Needs /usr/bin/chromium (`make browser`) and playwright (the [test] extra).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from registry.roles import ADMIN, PROMOTER, READER
from registry.service import Registry
from registry.testing.browser import ServedHome, browser_problem, launch_chromium
from registry.testing.models import write_safetensors

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

DOCS = Path(__file__).resolve().parent.parent / "docs" / "ui"
LIMIT = 300 * 1024  # bytes a screenshot may take in the repository
BUDGET = 250 * 1024  # what a picture aims at: the dark one of a page is often a little larger


def _model(
    directory: Path,
    *,
    layers: int,
    hidden: int,
    vocab: int,
    seed: int,
    card: str,
    arch: str,
    embedding_seed: int | None = None,
) -> Path:
    """A Llama-shaped checkpoint, tiny but with a real model's tensor names, its config, a
    tokenizer file and a model card. The embeddings have a shard of their own, from their own
    seed, so that versions which retrain only the layers share that file (the diff says so)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    inner = hidden * 8 // 3

    def tensor(rng: random.Random, *shape: int) -> tuple[str, list[int], bytes]:
        count = 1
        for extent in shape:
            count *= extent
        return ("BF16", list(shape), rng.randbytes(count * 2))

    # Seeded on purpose: the same bytes, so the same digests, at every run.
    fixed = random.Random(seed if embedding_seed is None else embedding_seed)  # noqa: S311
    embeddings = {
        "model.embed_tokens.weight": tensor(fixed, vocab, hidden),
        "lm_head.weight": tensor(fixed, vocab, hidden),
        "model.norm.weight": tensor(fixed, hidden),
    }
    rng = random.Random(seed)  # noqa: S311
    stack = {}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        for projection in ("q", "k", "v", "o"):
            stack[f"{prefix}.self_attn.{projection}_proj.weight"] = tensor(rng, hidden, hidden)
        stack[f"{prefix}.mlp.gate_proj.weight"] = tensor(rng, inner, hidden)
        stack[f"{prefix}.mlp.up_proj.weight"] = tensor(rng, inner, hidden)
        stack[f"{prefix}.mlp.down_proj.weight"] = tensor(rng, hidden, inner)
        stack[f"{prefix}.input_layernorm.weight"] = tensor(rng, hidden)
        stack[f"{prefix}.post_attention_layernorm.weight"] = tensor(rng, hidden)
    shards = {
        "model-00001-of-00002.safetensors": embeddings,
        "model-00002-of-00002.safetensors": stack,
    }
    weight_map = {}
    for filename, tensors in shards.items():
        write_safetensors(directory / filename, tensors, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, filename))
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {
        "architectures": [arch],
        "model_type": "llama" if arch.startswith("Llama") else "mistral",
        "hidden_size": hidden,
        "intermediate_size": inner,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "vocab_size": vocab,
        "max_position_embeddings": 8192,
        "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    (directory / "README.md").write_text(card)
    return directory


def seed(home: Path, scratch: Path) -> dict[str, str]:
    """The registry the screenshots show; returns the tokens to sign in with, by role."""
    Registry.init(home)
    card = "# {name}\n\nFine-tuned for the support assistant.\n\n## Evaluation\n\n{evals}\n"
    with Registry.open(home, actor="ci@build-7") as ci:
        llama = "acme/llama-3-8b-support"
        for number, (layers, message) in enumerate(
            [
                (4, "base: llama-3-8b, SFT on support-v3 (run 1184)"),
                (4, "SFT on support-v4, 3 epochs (run 1207)"),
                (5, "adds a layer; DPO on preference set 12 (run 1233)"),
            ],
            start=1,
        ):
            source = _model(
                scratch / llama,
                layers=layers,
                hidden=128,
                vocab=1024,
                seed=number,
                embedding_seed=0,
                card=card.format(name=llama, evals=f"helpfulness 0.{70 + number * 4}"),
                arch="LlamaForCausalLM",
            )
            ci.push(llama, source, message=message)
        mistral = "acme/mistral-7b-router"
        for number in (1, 2):
            source = _model(
                scratch / mistral,
                layers=3,
                hidden=96,
                vocab=768,
                seed=10 + number,
                card=card.format(name=mistral, evals="routing accuracy 0.93"),
                arch="MistralForCausalLM",
            )
            ci.push(mistral, source, message=f"router v{number} (run {1300 + number})")
        for number, name in enumerate(("research/tiny-llama-ablation", "vision/clip-vit-b16")):
            source = _model(
                scratch / name,
                layers=2,
                hidden=64,
                vocab=512,
                seed=20 + number,
                card=card.format(name=name, evals="n/a"),
                arch="LlamaForCausalLM",
            )
            ci.push(name, source, message="nightly export")
        ci.set_retention(None, keep_last=5, keep_demoted_for="30d")
        ci.set_retention(llama, keep_last=10, keep_within="90d", keep_demoted_for="60d")
    with Registry.open(home, actor="alice@acme") as alice:
        alice.promote(f"{llama}@1", "production", reason="first release, eval 0.74")
        alice.promote(f"{llama}@2", "production", reason="eval +4 points on support-v4")
        alice.promote(f"{llama}@3", "staging", reason="DPO candidate for the canary")
        alice.promote(f"{mistral}@2", "production", reason="router v2 passed shadow traffic")
        alice.promote(f"{mistral}@1", "fallback", reason="keep v1 warm for a quick switch")
        alice.hold(f"{llama}@1", reason="legal hold: contract dispute #4471")
    with Registry.open(home, actor="bob@acme") as bob:
        bob.promote(f"{llama}@3", "production", reason="canary clean for 24 h")
        bob.rollback(llama, "production", reason="latency p99 regression in eu-west")
    with Registry.open(home, actor="admin@acme") as admin:
        tokens = {}
        for role, name in ((ADMIN, "alice"), (PROMOTER, "bob"), (READER, "dashboards")):
            tokens[role] = admin.create_token(name, role=role, models=["*"])[1]
    return tokens


def _sign_in(page: Page, token: str) -> None:
    page.goto("/ui/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/")


def _shoot(page: Page, out: Path, name: str, *, full_page: bool, heights: dict[str, int]) -> None:
    """The page: its whole length when `full_page`, cut short where that would pass BUDGET
    (the top of a long page is what it looks like), and no taller than the same page in the
    scheme shot before, so that the light and the dark picture of a page match."""
    page_name = name.rsplit("-", 1)[0]
    height = page.evaluate("document.documentElement.scrollHeight") if full_page else 800
    height = min(height, heights.get(page_name, height))
    target = out / f"{name}.png"
    for tallest in (height, 2400, 2000, 1600, 1200, 800):
        if tallest > height:
            continue
        page.screenshot(
            path=str(target),
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": tallest},
            animations="disabled",
        )
        if target.stat().st_size <= BUDGET:
            break
    heights[page_name] = tallest
    size = target.stat().st_size
    print(f"{target}: 1280x{tallest}, {size // 1024} KiB", file=sys.stderr)
    if size > LIMIT:
        raise SystemExit(f"{target} takes {size // 1024} KiB, more than {LIMIT // 1024} KiB")


def shoot(
    browser: Browser,
    url: str,
    tokens: dict[str, str],
    out: Path,
    scheme: str,
    heights: dict[str, int],
) -> None:
    context = browser.new_context(
        base_url=url,
        viewport={"width": 1280, "height": 800},
        color_scheme="dark" if scheme == "dark" else "light",
    )
    page = context.new_page()
    try:
        page.goto("/ui/login")
        page.get_by_label("API token").fill("mrt_")
        _shoot(page, out, f"login-{scheme}", full_page=False, heights=heights)
        _sign_in(page, tokens[ADMIN])
        _shoot(page, out, f"models-{scheme}", full_page=True, heights=heights)
        page.goto("/ui/models/acme/llama-3-8b-support")
        _shoot(page, out, f"model-{scheme}", full_page=True, heights=heights)
        # Narrowed by the tensor filter, to show it and to leave room above the cut.
        page.goto("/ui/models/acme/llama-3-8b-support/versions/3?t=layers.4.self_attn")
        _shoot(page, out, f"version-{scheme}", full_page=True, heights=heights)
        # The snippets come below the cut: a picture of their own.
        snippets = out / f"snippets-{scheme}.png"
        page.get_by_role("region", name="Use it").screenshot(path=str(snippets))
        print(f"{snippets}: {snippets.stat().st_size // 1024} KiB", file=sys.stderr)
        page.goto("/ui/models/acme/llama-3-8b-support/diff?a=1&b=3")
        _shoot(page, out, f"diff-{scheme}", full_page=True, heights=heights)
        page.goto("/ui/audit?verify=1")
        _shoot(page, out, f"audit-{scheme}", full_page=True, heights=heights)
        page.goto("/ui/models/acme/llama-3-8b-support/versions/3")
        page.get_by_label("Promote to alias").fill("production")
        page.get_by_label("Reason", exact=True).fill("latency fix verified on the canary")
        page.get_by_role("button", name="Review promotion…").click()
        page.wait_for_url("**/ui/confirm")
        _shoot(page, out, f"confirm-{scheme}", full_page=False, heights=heights)
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go (docs/ui)")
    args = parser.parse_args()
    problem = browser_problem()
    if problem is not None:
        print(f"ui_screenshots: {problem}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mr-shots-") as scratch:
        home = Path(scratch) / "home"
        tokens = seed(home, Path(scratch))
        with ServedHome(home) as served, sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                heights: dict[str, int] = {}
                for scheme in ("light", "dark"):
                    shoot(browser, served.url, tokens, args.out, scheme, heights)
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
