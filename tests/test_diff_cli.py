"""`diff A B` and `show REF --card` (issue 20): what changed between two versions (files reused
and new bytes, tensors added, removed, reshaped or retyped, config.json keys, metadata), and a
version's model card printed byte for byte; both through a server too, where the client decrypts
what it shows (the server never sends a file's plaintext) and both references are checked
against the token's models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.main import main
from registry.service import READER, Registry
from registry.testing.metadata import write_meta
from tests.test_api_cli import LiveServer
from tests.uikit import tiny_model

# What users wrote, to be printed as written: rich markup, emoji codes, escapes, no final newline.
CARD = "# Model [bold]card[/bold] :thumbs_up:\n\n\x1b[31mred\x1b[0m <script>x</script>\r\nend"
CANARY = "plaintext-canary-7f3a"  # a config value only a client that decrypts may see


@pytest.fixture
def two(home: Path, tmp_path: Path, catalog_url: str | None) -> Path:
    """org/m@1 and @2 (tensors, config, metadata changed; README.md reused), other/x@1 (a
    lower-case readme.md), org/plain@1 (a README only below the root)."""
    Registry.init(home, catalog_url=catalog_url)
    source = tmp_path / "src"
    with Registry.open(home) as registry:
        registry.push(
            "org/m",
            tiny_model(
                source,
                note="one",
                tensors={"w": ("F32", [2, 2]), "gone": ("F16", [3])},
                config={"hidden_size": 8, "nested": {"a": 1}, "secret": CANARY},
                files={"README.md": CARD},
            ),
        )
        registry.push(
            "org/m",
            tiny_model(
                source,
                note="two",
                tensors={"w": ("F16", [2, 2]), "new": ("F32", [4])},
                config={"hidden_size": 16, "nested": {"a": 1, "b": 2}, "secret": CANARY + "!"},
                files={"README.md": CARD},
            ),
        )
        write_meta(registry.catalog.engine, "org/m@1", {"base_model": "x", "meta.lr": "1e-4"})
        write_meta(registry.catalog.engine, "org/m@2", {"base_model": "y", "dataset.d": "r"})
        registry.push("other/x", tiny_model(source, note="x", files={"readme.md": "lower\n"}))
        plain = tiny_model(tmp_path / "plain", note="plain")
        (plain / "docs").mkdir()
        (plain / "docs" / "README.md").write_text("not the card")
        registry.push("org/plain", plain)
    return home


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner(env=env).invoke(main, list(args))


def test_diff_says_what_changed(two: Path) -> None:
    out = _cli("diff", "org/m@1", "org/m@2")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0] == "org/m@1 -> org/m@2"
    assert lines[1].startswith("files: 1 reused (") and "3 changed, 0 removed" in lines[1]
    for expected in (
        "  ~ model.safetensors",
        "  ~ config.json",
        "tensors: 1 added, 1 removed, 1 reshaped or retyped, 0 unchanged",
        "  + new",
        "  - gone",
        "  ~ w  F32 [2, 2] -> F16 [2, 2]",
        "config.json: 3 keys changed",
        "  hidden_size: 8 -> 16",
        "  nested.b: (absent) -> 2",
        f'  secret: "{CANARY}" -> "{CANARY}!"',
        "metadata: 3 keys changed",
        "  base_model: x -> y",
        "  dataset.d: (absent) -> r",
        "  meta.lr: 1e-4 -> (absent)",
    ):
        assert expected in lines, (expected, out.stdout)
    document = json.loads(_cli("diff", "org/m@1", "org/m@2", "--json").stdout)
    assert document["a"]["ref"] == "org/m@1" and document["b"]["ref"] == "org/m@2"
    assert document["reused"] == ["README.md"] and document["new_bytes"] > 0
    assert document["tensors_added"] == ["new"] and document["tensors_removed"] == ["gone"]
    assert document["tensors_changed"] == [
        {"name": "w", "dtype": ["F32", "F16"], "shape": [[2, 2], [2, 2]]}
    ]
    assert document["config_compared"] is True
    assert {"key": "nested.b", "a": None, "b": 2} in document["config_changes"]
    assert document["meta_changes"] == [
        {"key": "base_model", "a": "x", "b": "y"},
        {"key": "dataset.d", "a": None, "b": "r"},
        {"key": "meta.lr", "a": "1e-4", "b": None},
    ]
    same = _cli("diff", "org/m@2", "org/m@2")
    assert same.exit_code == 0
    assert "config.json: unchanged" in same.stdout and "metadata: unchanged" in same.stdout
    across = json.loads(_cli("diff", "org/m@1", "other/x@1", "--json").stdout)
    assert across["b"]["ref"] == "other/x@1"
    for args, code in (
        (("diff", "org/m@1", "org/m@9"), 4),
        (("diff", "org/none", "org/m@1"), 4),
        (("diff", "org/m@@1", "org/m@1"), 3),
    ):
        refused = _cli(*args, "--json")
        assert refused.exit_code == code, (args, refused.output)
        assert json.loads(refused.stdout[: refused.stdout.rindex("}") + 1])["error"]["message"]
    with Registry.open(two) as registry:
        assert registry.diff("org/m@1", "org/m@2").meta_changes["base_model"] == ("x", "y")


def test_show_card_prints_the_model_card_byte_for_byte(two: Path) -> None:
    out = _cli("show", "org/m@2", "--card")
    assert out.exit_code == 0, out.output
    assert out.stdout_bytes == CARD.encode()
    assert _cli("show", "other/x", "--card").stdout_bytes == b"lower\n"  # any case of the name
    card = json.loads(_cli("show", "org/m@1", "--card", "--json").stdout)
    assert card["ref"] == "org/m@1" and card["path"] == "README.md" and card["text"] == CARD
    assert card["size"] == len(CARD.encode()) and card["digest"].startswith("blake3:")
    missing = _cli("show", "org/plain", "--card")
    assert missing.exit_code == 4 and missing.stdout == ""
    assert "org/plain@1 has no model card (no README.md at its root)" in missing.stderr
    assert _cli("show", "org/m@9", "--card").exit_code == 4


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_diff_and_card_through_a_server(
    two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Registry.open(two) as registry:
        record, token = registry.create_token("ci", role=READER, models=["org/*"])
        with LiveServer(registry, tmp_path / "staging") as server:
            env = {"MODEL_REGISTRY_URL": server.url, "MODEL_REGISTRY_TOKEN": token}
            for args in (
                ["diff", "org/m@1", "org/m@2", "--json"],
                ["diff", "org/m@1", "org/m@2"],
                ["show", "org/m@2", "--card"],
                ["show", "org/m@2", "--card", "--json"],
            ):
                there, here = _cli(*args, env=env), _cli(*args)
                assert there.exit_code == here.exit_code == 0, there.output
                assert there.stdout_bytes == here.stdout_bytes, args
            # The server's own answer compares no config: no plaintext of a file leaves it.
            raw = httpx.get(
                f"{server.url}/v1/diff",
                params={"a": "org/m@1", "b": "org/m@2"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert raw.status_code == 200, raw.text
            assert raw.json()["config_compared"] is False and raw.json()["config_changes"] == []
            assert CANARY not in raw.text
            assert raw.json()["meta_changes"][0] == {"key": "base_model", "a": "x", "b": "y"}
            # Both references are checked against the token's models: 403 (exit 10).
            for args in (
                ["diff", "org/m@1", "other/x@1"],
                ["diff", "other/x@1", "org/m@1"],
                ["show", "other/x", "--card"],
            ):
                refused = _cli(*args, env=env)
                assert refused.exit_code == 10, (args, refused.output)
                assert "may not act on that model" in refused.stderr
            missing = _cli("show", "org/plain", "--card", env=env)
            assert missing.exit_code == 4 and "has no model card" in missing.stderr
        # The client read the card with the key broker's keys: audited, as the token.
        brokered = [e for e in registry.audit_events(subject="org/m") if e.action == "key-broker"]
        assert brokered and brokered[0].details["token"] == record.id


def test_a_config_a_diff_cannot_compare_is_left_out_not_a_crash() -> None:
    """The one reader of configs for diffs, the server's and the client's alike: JSON nested
    past the bound (a pusher's few KiB of brackets), other JSON values and non-JSON are no
    config to compare (None), never a RecursionError."""
    from registry.reports import config_object

    assert config_object(b'{"a": {"b": 1}}') == {"a": {"b": 1}}
    for data in (b"[" * 5000 + b"]" * 5000, b'{"x":' * 100 + b"1" + b"}" * 100, b"[1]", b"\xff"):
        assert config_object(data) is None
