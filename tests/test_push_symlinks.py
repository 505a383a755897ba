"""Symbolic links in a pushed directory: one that stays inside it is pushed as its target's
content; one that leads outside it (a link to /etc/passwd) is refused, naming the link and its
target, unless the push asks to follow links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.errors import InvalidModelError
from registry.service import Registry
from tests.conftest import store_bytes, tree


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text("root:x:0:0\n")
    return path


@pytest.mark.parametrize("how", ["absolute", "relative", "through an inside link"])
def test_a_link_leading_outside_is_refused_and_nothing_is_stored(
    registry: Registry, home: Path, model_dir: Path, secret: Path, how: str
) -> None:
    before = store_bytes(home)
    if how == "absolute":
        os.symlink(secret, model_dir / "passwd")
    elif how == "relative":
        os.symlink(os.path.relpath(secret, model_dir), model_dir / "passwd")
    else:
        os.symlink(secret, model_dir / ".hop")  # hidden: not pushed itself
        os.symlink(".hop", model_dir / "passwd")
    with pytest.raises(InvalidModelError, match="passwd is a symbolic link to") as raised:
        registry.push("llama", model_dir)
    assert str(secret) in raised.value.message
    assert "--follow-symlinks" in (raised.value.hint or "")
    assert registry.models() == []
    assert store_bytes(home) == before


def test_the_cli_refuses_it_with_a_clear_error_and_follows_when_asked(
    registry: Registry, model_dir: Path, secret: Path, tmp_path: Path
) -> None:
    os.symlink(secret, model_dir / "passwd")
    runner = CliRunner()
    refused = runner.invoke(main, ["push", "llama", str(model_dir)])
    assert refused.exit_code == InvalidModelError.exit_code
    assert "passwd is a symbolic link to" in refused.output and "outside" in refused.output
    assert "Traceback" not in refused.output

    followed = runner.invoke(main, ["push", "llama", str(model_dir), "--follow-symlinks"])
    assert followed.exit_code == 0, followed.output
    pulled = runner.invoke(main, ["pull", "llama@1", str(tmp_path / "out")])
    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "out" / "passwd").read_text() == secret.read_text()
    assert not (tmp_path / "out" / "passwd").is_symlink()


def test_a_link_inside_the_directory_is_pushed_as_its_content(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    (model_dir / "sub").mkdir()
    os.symlink("../config.json", model_dir / "sub" / "config.json")
    registry.push("llama", model_dir)
    registry.pull("llama", tmp_path / "out")
    pulled = tree(tmp_path / "out")
    assert pulled["sub/config.json"] == (model_dir / "config.json").read_bytes()
