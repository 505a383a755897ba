"""A registry whose data keys are wrapped by AWS KMS (moto) instead of the local key file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws

from cli.main import main
from registry.config import KmsSettings
from registry.errors import KeyAccessError
from registry.service import Registry
from registry.testing.models import make_model
from tests.conftest import tree


@pytest.fixture
def kms_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        key = client.create_key(Description="model-registry test")["KeyMetadata"]
        yield client, key["Arn"]


def test_push_pull_with_kms_and_no_key_file(kms_key, home: Path, tmp_path: Path) -> None:
    client, arn = kms_key
    result = Registry.init(home, kms=KmsSettings(arn, "us-east-1"))
    assert arn in result.keys
    assert not (home / "keys" / "kek.key").exists()
    assert 'provider = "aws-kms"' in (home / "config.toml").read_text()
    model = make_model(tmp_path / "model", shards=2, shard_size=200_000, seed=2)
    with Registry.open(home) as registry:
        version = registry.push("m", model).version
        registry.pull("m", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(model)
        assert registry.verify("m", read_data=True).ok
    slots = [p for p in (home / "store" / "objects" / "slots").rglob("*") if p.is_file()]
    assert slots
    for slot in slots:
        record = json.loads(slot.read_bytes())
        assert record["provider"] == "aws-kms" and record["kek_id"] == f"aws-kms:{arn}"
        assert version.digest[7:] not in slot.read_text()

    # A disabled key: nothing opens, with a clear error, and nothing is written.
    client.disable_key(KeyId=arn.rsplit("/", 1)[1])
    with Registry.open(home) as reopened, pytest.raises(KeyAccessError):
        # The first use of the store unwraps its copy of the naming key.
        reopened.pull("m", tmp_path / "again")
    result_cli = CliRunner().invoke(main, ["pull", "m", str(tmp_path / "again")])
    assert result_cli.exit_code == KeyAccessError.exit_code, result_cli.output
    assert "Disabled" in result_cli.output or "disabled" in result_cli.output
    assert not (tmp_path / "again").exists()


def test_init_with_half_the_kms_options_is_refused(home: Path) -> None:
    result = CliRunner().invoke(main, ["init", "--kms-key", "arn:aws:kms:us-east-1:1:key/x"])
    assert result.exit_code == 3
    assert "--kms-region" in result.output
    assert not (home / "config.toml").exists()
