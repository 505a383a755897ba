"""What the CLI prints (issue 18): text from users and the file system verbatim everywhere, tables
that fit 80 columns when not on a terminal, confirmations, Ctrl-C, hints, `--json` coverage and
the docs that describe them."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from cli.ui import human_size
from registry import errors
from registry.errors import RegistryError
from registry.service import Registry
from registry.testing.models import make_model

ROOT = Path(__file__).resolve().parent.parent
# Each would be eaten, changed or crash rich's markup, emoji codes or highlighting.
HOSTILE = ("[bold]x[/bold]", "[/]", "[a-z0-9]", "C:\\path\\", ":thumbs_up:", "[red]", "\\[x]")
ACTOR = "ci[bot]"


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, (args, result.output)
    return result.output


@pytest.fixture
def hostile(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry whose messages, reasons, file names, actor and token name hold HOSTILE."""
    monkeypatch.setenv("MODEL_REGISTRY_ACTOR", ACTOR)
    Registry.init(home)
    model = make_model(tmp_path / "m", shards=1, shard_size=4_000)
    (model / "extra [x].txt").write_text("x")
    (model / "[bold] y.json").write_text("{}")
    words = " ".join(HOSTILE)
    with Registry.open(home) as registry:
        registry.push("org/llama", model, message=words)
        (model / "more.txt").write_text("more")
        registry.push("org/llama", model, message="second")
        registry.promote("org/llama@1", "production", reason=words)
        registry.hold("org/llama@1", reason=words)
        registry.set_retention("org/llama", keep_last=1)
        registry.create_token("t [x] :x:", role="reader", models=("org/*",))
    return home


def test_user_and_file_system_text_prints_verbatim(hostile: Path) -> None:
    outputs = {
        "ls NAME": ok("ls", "org/llama"),
        "history": ok("history", "org/llama"),
        "hold ls": ok("hold", "ls"),
        "audit": ok("audit", "org/llama"),
    }
    for where, output in outputs.items():
        # Free text folds at the table's last column: read it with the folds undone.
        unfolded = re.sub(r"\s+", "", output)
        for word in HOSTILE:
            assert word.replace(" ", "") in unfolded, (where, word, output)
        assert ACTOR in output, where
    shown = ok("show", "org/llama@1")
    assert "extra [x].txt" in shown and "[bold] y.json" in shown
    assert f"by {ACTOR}" in shown and "[/]" in shown
    assert ACTOR in ok("alias", "ls", "org/llama")
    assert "t [x] :x:" in ok("token", "list")


def test_errors_and_hints_print_verbatim(hostile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = cli("show", "Org/[x]")
    assert bad.exit_code == errors.InvalidReferenceError.exit_code, bad.output
    assert "'Org/[x]'" in bad.output and bad.output.count("[a-z0-9]") >= 2  # message and hint
    deleted = cli("delete", "org/llama@1", "--reason", "[/] gone", "--yes")
    assert deleted.exit_code == errors.RetentionError.exit_code, deleted.output
    assert "Traceback" not in deleted.output and "hint:" in deleted.output

    def broken(self: Registry) -> None:
        raise RuntimeError("[/] boom [bold]x :thumbs_up:")

    monkeypatch.setattr(Registry, "models", broken)
    crashed = cli("ls")
    assert crashed.exit_code == 1 and not isinstance(crashed.exception, Exception), crashed.output
    assert "unexpected error: RuntimeError: [/] boom [bold]x :thumbs_up:" in crashed.output


def test_tables_fit_80_columns_and_keep_names_whole(hostile: Path) -> None:
    for args in (
        ("ls",),
        ("ls", "org/llama"),
        ("show", "org/llama@1"),
        ("history", "org/llama"),
        ("alias", "ls", "org/llama"),
        ("hold", "ls"),
        ("audit",),
        ("retention", "plan"),
        ("token", "list"),
        ("regions", "status"),
    ):
        output = cli(*args).output
        # `show`'s heading names the version by its whole digest, on purpose.
        lines = [line for line in output.splitlines() if not re.search(r"blake3:\w{64}", line)]
        assert all(len(line) <= 80 for line in lines), (args, output)
        assert not any(line != line.rstrip() for line in output.splitlines()), args
    # A digest is a prefix with an ellipsis, whole with --digests.
    details = json.loads(ok("show", "org/llama@1", "--json"))
    digest = details["files"][0]["digest"]
    assert digest[:19] + "…" in ok("show", "org/llama@1")
    full = ok("show", "org/llama@1", "--digests")
    assert all(entry["digest"] in full for entry in details["files"])
    # A name too long for 80 columns stays whole, on one line.
    long_name = "org/" + "a" * 100
    model = make_model(hostile.parent / "long", shards=1, shard_size=1_000)
    with Registry.open(hostile) as registry:
        registry.push(long_name, model)
    assert any(long_name in line for line in ok("ls").splitlines())
    assert any(f"{long_name}@1" in line for line in ok("ls", long_name).splitlines())


def test_ls_shows_the_stored_size_beside_the_logical_one(home: Path, tmp_path: Path) -> None:
    Registry.init(home)
    model = make_model(tmp_path / "m", shards=2, shard_size=50_000)
    with Registry.open(home) as registry:
        first = registry.push("org/llama", model).version
        for extra in ("a", "b"):
            (model / f"{extra}.txt").write_text(extra)
            registry.push("org/llama", model)
    (listed,) = json.loads(ok("ls", "--json"))
    assert listed["size"] == 3 * first.total_size + 1 + 2 * 1  # every version counted whole
    assert listed["stored_size"] == first.total_size + 2  # shared content counted once
    header, row = ok("ls").splitlines()[:2]
    assert header.split()[3:5] == ["size", "stored"]
    assert human_size(listed["size"]) in row and human_size(listed["stored_size"]) in row


def test_delete_asks_only_what_could_go_through(hostile: Path) -> None:
    # A delete that would be refused is refused before the question.
    kept = cli("delete", "org/llama@1", "--reason", "x", input="y\n")
    assert kept.exit_code == errors.RetentionError.exit_code, kept.output
    assert "Delete " not in kept.output
    ok("retention", "set", "org/llama", "--clear")
    # No: not a bug, nothing changed.
    declined = cli("delete", "org/llama@2", "--reason", "x", input="n\n")
    assert declined.exit_code == errors.NotConfirmedError.exit_code, declined.output
    assert "not confirmed" in declined.output and "bug" not in declined.output
    assert "--yes" in declined.output
    assert [v["ref"] for v in json.loads(ok("ls", "org/llama", "--json"))][-1] == "org/llama@2"
    # --json asks no questions (like gc --json).
    refused = cli("delete", "org/llama@2", "--reason", "x", "--json", input="y\n")
    assert refused.exit_code == errors.InvalidInputError.exit_code, refused.output
    assert "Delete " not in refused.output and "--yes" in refused.output
    assert json.loads(refused.output[: refused.output.rindex("}") + 1])["error"]["hint"]
    # gc's question answered no is the same.
    with Registry.open(hostile) as registry:
        registry.set_retention("org/llama", keep_last=1)
        registry.release_hold("org/llama@1", reason="done")
        registry.rollback("org/llama", "production", to="org/llama@2")
    gc = cli("gc", input="n\n")
    assert gc.exit_code == errors.NotConfirmedError.exit_code, gc.output
    assert "bug" not in gc.output
    yes = cli("delete", "org/llama@1", "--reason", "x", input="y\n")
    assert yes.exit_code == 0 and "deleted org/llama@1" in yes.output


_INTERRUPTED_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "cli.main":
            raise KeyboardInterrupt  # Ctrl-C while the commands are being imported
        return None
sys.meta_path.insert(0, Interrupt())
{call}
"""


@pytest.mark.parametrize(
    "call",
    [
        "from cli.entry import run; run()",
        "import runpy; runpy.run_module('cli', run_name='__main__')",
    ],
)
def test_ctrl_c_while_starting_is_no_traceback(call: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT.format(call=call), "ls"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "interrupted" in result.stderr


def test_the_console_script_is_the_guarded_entry_point() -> None:
    scripts = re.search(
        r"\[project\.scripts\]\n(.*?)\n\n", (ROOT / "pyproject.toml").read_text(), re.S
    )
    assert scripts is not None and 'model-registry = "cli.entry:run"' in scripts.group(1)


def _error_classes() -> list[type[RegistryError]]:
    from registry.client.remote import NotOfferedError

    found: list[type[RegistryError]] = [NotOfferedError]
    pending: list[type[RegistryError]] = [RegistryError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return sorted(set(found), key=lambda cls: cls.__name__)


def test_every_error_a_user_meets_has_a_hint() -> None:
    assert [cls.__name__ for cls in _error_classes() if not cls.default_hint] == []


def test_show_and_invalid_model_errors_carry_hints(home: Path, tmp_path: Path) -> None:
    Registry.init(home)
    missing = cli("show", "nothing@1")
    assert missing.exit_code == 4 and re.search(r"hint: \S", missing.output), missing.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    pushed = cli("push", "bad", str(bad))
    assert pushed.exit_code == errors.InvalidModelError.exit_code, pushed.output
    assert re.search(r"hint: \S", pushed.output), pushed.output


def test_serve_on_a_busy_port_says_so(home: Path) -> None:
    Registry.init(home)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "--port", str(port))
    assert result.exit_code == errors.ConflictError.exit_code, result.output
    assert f"127.0.0.1:{port}" in result.output and "in use" in result.output
    assert "--port" in result.output


def test_gc_grace_takes_seconds_and_minutes(home: Path) -> None:
    Registry.init(home)
    for grace, shown in (("30s", "30s"), ("15m", "15m"), ("90m", "90m"), ("2h", "2h")):
        result = cli("gc", "--dry-run", "--grace", grace)
        assert result.exit_code == 0, result.output
        assert f"grace window {shown}" in result.output


def _leaves(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_leaves(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_command_but_two_takes_json() -> None:
    lacking = [
        name
        for name, command in _leaves(main).items()
        if not any("--json" in param.opts for param in command.params)
    ]
    # The server's log and KServe's init container's log: documented as the exceptions.
    assert sorted(lacking) == ["serve", "storage-initializer"]
    readme = (ROOT / "README.md").read_text()
    assert "all but `serve` and `storage-initializer`" in readme


def test_the_exit_code_table_lists_every_error_code() -> None:
    table = (ROOT / "docs" / "cli.md").read_text().split("## Exit codes", 1)[1]
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \|(.*)$", table, re.M)}
    for cls in _error_classes():
        assert cls.exit_code in rows, cls
        assert f"`{cls.code}`" in rows[cls.exit_code], (cls.code, cls.exit_code)
    assert set(errors.EXIT_CODES) <= set(rows)


def test_audit_help_shows_the_forms_cli_md_documents() -> None:
    usage = ok("audit", "--help")
    assert "audit [NAME] [--since TIME] [--limit N]" in usage and "audit verify" in usage
    assert "`audit [NAME] [--since TIME] [--limit N]`" in (ROOT / "docs" / "cli.md").read_text()


def test_the_readme_tour_runs_as_written(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = (ROOT / "README.md").read_text().split("## A five-minute tour", 1)[1]
    block = block.split("```console", 1)[1].split("```", 1)[0]
    commands = [
        shlex.split(line[2:], comments=True)
        for line in block.splitlines()
        if line.startswith("$ model-registry ")
    ]
    assert len(commands) > 10
    monkeypatch.chdir(tmp_path)
    make_model(tmp_path / "checkpoint", shards=2, shard_size=20_000, seed=1)
    second = make_model(tmp_path / "checkpoint-2", shards=2, shard_size=20_000, seed=1)
    (second / "model-00002-of-00002.safetensors").unlink()
    make_model(tmp_path / "other", shards=2, shard_size=20_000, seed=2)
    os.replace(
        tmp_path / "other" / "model-00002-of-00002.safetensors",
        second / "model-00002-of-00002.safetensors",
    )
    for words in commands:
        assert words[0] == "model-registry"
        result = cli(*words[1:])
        assert result.exit_code == 0, (words, result.output)


def test_with_one_region_a_bad_copy_is_not_said_to_be_repairable_from_another(
    home: Path, tmp_path: Path
) -> None:
    Registry.init(home)
    model = make_model(tmp_path / "m", shards=1, shard_size=30_000, seed=5)
    with Registry.open(home) as registry:
        registry.push("org/m", model)
        version = registry.resolve("org/m@1")
        blob = (
            home / "store" / "objects" / registry.store.object_name("blob", version.files[0].digest)
        )
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 1
    blob.write_bytes(bytes(data))
    scrubbed = CliRunner().invoke(main, ["verify", "--all", "--read-data"])
    assert scrubbed.exit_code == errors.IntegrityError.exit_code, scrubbed.output
    assert "another region" not in scrubbed.output
    assert "with one region there is no good copy" in scrubbed.output
    assert "model-registry push NAME PATH" in scrubbed.output
    status = CliRunner().invoke(main, ["regions", "status"])
    assert "another region" not in status.output and "bad" in status.output
    assert "no good copy to repair a bad one from" in status.output
    # The advice works: pushing the same files again rewrites the damaged copy.
    pushed = CliRunner().invoke(main, ["push", "org/m", str(model)])
    assert pushed.exit_code == 0, pushed.output
    assert CliRunner().invoke(main, ["verify", "--all", "--read-data"]).exit_code == 0
