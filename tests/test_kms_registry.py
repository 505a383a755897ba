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
from registry.crypto.keys import LocalKeyProvider
from registry.errors import KeyAccessError
from registry.service import Registry
from registry.testing.models import make_model
from tests.conftest import tree
from tests.test_kms import closed_port_url


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


class PowerCutError(Exception):
    pass


def _cut_after_first_object(registry: Registry) -> None:
    def stop() -> None:
        raise PowerCutError

    registry.checkpoints["rotate-object"] = stop


def test_keys_show_lists_every_regions_key_during_rotations(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        east = boto3.client("kms", region_name="us-east-1")
        east_old = east.create_key()["KeyMetadata"]["Arn"]
        east_new = east.create_key()["KeyMetadata"]["Arn"]
        east.create_alias(AliasName="alias/registry-east", TargetKeyId=east_new)
        west = boto3.client("kms", region_name="us-west-2").create_key()["KeyMetadata"]["Arn"]
        Registry.init(
            home,
            store=[
                str(tmp_path / "local"),
                f"s3://keys-east?region=us-east-1&kms={east_old}&name=east",
                f"s3://keys-west?region=us-west-2&kms={west}&name=west",
            ],
        )
        old_file = home / "keys" / "kek.key"
        old_local = LocalKeyProvider.from_file(old_file).kek_id
        model = make_model(tmp_path / "m", shards=1, shard_size=20_000, seed=5)
        new_file = tmp_path / "kek-2.key"
        with Registry.open(home) as registry:
            registry.push("org/keys", model)
            # Both rotations stop after their first object: config.toml names the old keys.
            _cut_after_first_object(registry)
            with pytest.raises(PowerCutError):
                registry.rotate_keys(str(new_file))
        with Registry.open(home) as registry:
            _cut_after_first_object(registry)
            with pytest.raises(PowerCutError):
                registry.rotate_keys("alias/registry-east", region="east")
        new_local = LocalKeyProvider.from_file(new_file).kek_id
        # West's KMS endpoint, set by hand, is not reachable: a region's key is shown all the
        # same (the registry opens while another region can serve).
        endpoint = closed_port_url()
        config = home / "config.toml"
        config.write_text(
            config.read_text().replace(
                f'kms_key = "{west}"', f'kms_key = "{west}"\nkms_endpoint_url = "{endpoint}"'
            )
        )

        runner = CliRunner()
        shown = runner.invoke(main, ["keys", "show", "--json"])
        assert shown.exit_code == 0, shown.output
        payload = json.loads(shown.stdout)
        assert payload["kek_file"] == str(new_file)
        assert payload["regions"] == [
            {
                "name": "region-1",
                "provider": "local",
                "kek_id": new_local,
                "file": str(new_file),
                "key": None,
                "region": None,
                "endpoint": None,
                "previous": [{"file": str(old_file), "kek_id": old_local}],
            },
            {
                "name": "east",
                "provider": "aws-kms",
                "kek_id": f"aws-kms:{east_new}",
                "file": None,
                "key": "alias/registry-east",
                "region": "us-east-1",
                "endpoint": None,
                "previous": [{"key": east_old, "kek_id": f"aws-kms:{east_old}"}],
            },
            {
                "name": "west",
                "provider": "aws-kms",
                "kek_id": f"aws-kms:{west}",
                "file": None,
                "key": west,
                "region": "us-west-2",
                "endpoint": endpoint,
                "previous": [],
            },
        ]

        text = runner.invoke(main, ["keys", "show"])
        assert text.exit_code == 0, text.output
        lines = text.stdout.splitlines()
        region_lines = {line.split()[0]: line for line in lines if line.startswith("  ")}
        assert f"local key file {new_file}" in region_lines["region-1"]
        assert new_local in region_lines["region-1"]
        assert (
            f"AWS KMS key alias/registry-east in us-east-1  (aws-kms:{east_new})"
            in (region_lines["east"])
        )
        assert f"AWS KMS key {west} in us-west-2 via {endpoint}" in region_lines["west"]
        previous = [line.strip() for line in lines if "previous" in line]
        assert previous == [
            f"previous {old_file}  ({old_local}), being rotated away",
            f"previous {east_old}  (aws-kms:{east_old}), being rotated away",
        ]


def test_keys_show_of_a_kms_only_registry_has_no_key_file(kms_key, home: Path) -> None:
    _client, arn = kms_key
    Registry.init(home, kms=KmsSettings(arn, "us-east-1"))
    runner = CliRunner()
    payload = json.loads(runner.invoke(main, ["keys", "show", "--json"]).stdout)
    assert payload["kek_file"] is None and payload["kek_id"] == f"aws-kms:{arn}"
    assert [(r["name"], r["provider"], r["key"]) for r in payload["regions"]] == [
        ("primary", "aws-kms", arn)
    ]
    text = runner.invoke(main, ["keys", "show"]).stdout
    assert f"AWS KMS key {arn} in us-east-1" in text and "None" not in text


def test_a_push_through_the_api_under_kms_keys_pulls_back_bit_exact(
    kms_key: tuple[object, str], home: Path, tmp_path: Path
) -> None:
    """The upload session's keys are KMS requests (issued and given again on many threads,
    the boto3 client shared): the push commits, each object's key slot is wrapped by KMS, and
    the version pulls back bit-exact."""
    from litestar.testing import TestClient

    from registry.api.app import create_app
    from registry.ops import uploads as upload_ops
    from registry.service import PUSHER
    from tests.apikit import api_settings
    from tests.test_sealed_upload import Pusher, _commit, _open, _send_all

    _client, arn = kms_key
    Registry.init(home, kms=KmsSettings(arn, "us-east-1"))
    model = make_model(tmp_path / "model", shards=5, shard_size=300_000, seed=3)
    with Registry.open(home) as registry:
        api_settings(registry, part_size=1024 * 1024, chunk_size=64 * 1024)
        assert upload_ops.keys_at_once(registry._context) == upload_ops.KEY_REQUESTS
        secret = registry.create_token("ci", role=PUSHER, models=["org/*"])[1]
        with TestClient(create_app(registry)) as client:
            pusher = Pusher(client, registry, {"Authorization": f"Bearer {secret}"}, home)
            session = _open(pusher, model)
            again = client.get(f"/v1/uploads/{session['id']}", headers=pusher.headers).json()
            assert [e["key"] for e in again["files"]] == [e["key"] for e in session["files"]]
            _send_all(pusher, session, model)
            done = _commit(pusher, session)
            assert done.status_code == 201, done.text
        registry.pull("org/m@1", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(model)
        assert registry.verify("org/m@1", read_data=True).ok
    slots = [p for p in (home / "store" / "objects" / "slots").rglob("*") if p.is_file()]
    assert slots
    assert {json.loads(slot.read_bytes())["provider"] for slot in slots} == {"aws-kms"}
