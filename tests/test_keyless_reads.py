"""What each command needs of this home's secrets: the commands that only read the catalog run
without the key-encryption key, and pulls and verifies need only the trusted signers' public
keys, never this home's private signing key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.errors import KeyAccessError
from registry.service import Registry
from tests.conftest import tree

READS = (
    ["ls"],
    ["ls", "llama"],
    ["ls", "--json"],
    ["show", "llama@1"],
    ["history", "llama"],
    ["alias", "ls", "llama"],
    ["audit"],
)


@pytest.fixture
def pushed(registry: Registry, model_dir: Path) -> Path:
    registry.push("llama", model_dir, message="first")
    registry.promote("llama@1", "prod")
    return model_dir


@pytest.mark.parametrize("args", READS, ids=lambda a: " ".join(a))
def test_catalog_reads_need_no_key_encryption_key(
    pushed: Path, home: Path, tmp_path: Path, args: list[str]
) -> None:
    (home / "keys" / "kek.key").rename(tmp_path / "kek.key")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "key-encryption key" not in result.output


def test_a_pull_without_the_key_encryption_key_is_a_clear_error(
    pushed: Path, home: Path, tmp_path: Path
) -> None:
    (home / "keys" / "kek.key").unlink()
    result = CliRunner().invoke(main, ["pull", "llama", str(tmp_path / "out")])
    assert result.exit_code == KeyAccessError.exit_code
    assert "does not exist" in result.output and "backup" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("unreadable", ["gone", "garbage"])
def test_pull_and_verify_need_no_private_signing_key(
    pushed: Path, home: Path, tmp_path: Path, unreadable: str
) -> None:
    signing = home / "keys" / "signing.key"
    if unreadable == "gone":
        signing.unlink()
    else:
        signing.write_bytes(b"not a key")
    runner = CliRunner()
    pulled = runner.invoke(main, ["pull", "llama@1", str(tmp_path / "out")])
    assert pulled.exit_code == 0, pulled.output
    assert tree(tmp_path / "out") == tree(pushed)
    for args in (["verify", "llama@1"], ["verify", "llama@1", "--read-data"]):
        verified = runner.invoke(main, args)
        assert verified.exit_code == 0, verified.output


def test_audit_verify_reads_the_stores_and_so_needs_the_key(
    pushed: Path, home: Path, tmp_path: Path
) -> None:
    # It holds the chain against each region's journal: a region is proven this registry's
    # store (its naming key unwrapped) before its journal is believed.
    (home / "keys" / "kek.key").rename(tmp_path / "kek.key")
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "key-encryption key" in result.output
    (tmp_path / "kek.key").rename(home / "keys" / "kek.key")
    assert CliRunner().invoke(main, ["audit", "verify"]).exit_code == 0
