"""`keys rotate`: every data key re-wrapped under a new key-encryption key, the old one retired;
interrupted halfway it resumes; every version loads before, during and after; once it has finished
the old key can be destroyed and everything still loads, scrubs, drills and rebuilds. Local key
files and KMS (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws

from cli.main import main
from registry import loader
from registry.config import KmsSettings
from registry.errors import ConflictError, KeyAccessError
from registry.ops import push as push_ops
from registry.service import Registry
from registry.testing.models import make_model
from tests.conftest import tree


class PowerCutError(Exception):
    pass


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _loads_everything(registry: Registry, models: dict[str, Path], out: Path) -> None:
    for ref, source in models.items():
        target = out / ref.replace("/", "_").replace("@", "_")
        registry.pull(ref, target)
        assert tree(target) == tree(source)
        assert registry.verify(ref, read_data=True).ok
        tensors = loader.load(ref, registry=registry, framework="numpy")
        assert tensors and len(tensors.stats.verified_files) >= 1


def _slots(store: Path) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for path in (store / "objects" / "slots").rglob("*"):
        if path.is_file():
            kek = json.loads(path.read_bytes())["kek_id"]
            kinds[kek] = kinds.get(kek, 0) + 1
    return kinds


@pytest.fixture
def pushed(home: Path, tmp_path: Path) -> dict[str, Path]:
    Registry.init(home, store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")])
    models = {
        "org/llama@1": make_model(tmp_path / "m1", shards=2, shard_size=300_000, seed=1),
        "org/llama@2": make_model(tmp_path / "m2", shards=2, shard_size=300_000, seed=2),
        "org/tiny@1": make_model(tmp_path / "m3", shards=1, shard_size=40_000, seed=3),
    }
    with Registry.open(home) as registry:
        for ref, path in models.items():
            registry.push(ref.split("@")[0], path)
        registry.promote("org/llama@1", "production")
    return models


def test_an_interrupted_rotation_resumes_and_the_old_key_can_then_be_destroyed(
    pushed: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    old_key = home / "keys" / "kek.key"
    new_key = tmp_path / "keys" / "kek-2026-12.key"
    with Registry.open(home) as registry:
        old_id = registry.keys.kek_id
        objects = len(registry.catalog.slotted_objects())
        _loads_everything(registry, pushed, tmp_path / "before")
        seen = 0

        def stop() -> None:
            nonlocal seen
            seen += 1
            if seen == 4:
                raise PowerCutError

        registry.checkpoints["rotate-object"] = stop
        with pytest.raises(PowerCutError):
            registry.rotate_keys(str(new_key))
    assert new_key.exists() and new_key.stat().st_mode & 0o777 == 0o600
    config = (home / "config.toml").read_text()
    assert str(new_key) in config and "previous_kek_files" in config
    # Halfway: the old key still opens what has no new slot yet; new pushes use the new key.
    with Registry.open(home) as registry:
        new_id = registry.keys.kek_id
        assert new_id != old_id and registry.keys.kek_ids == (new_id, old_id)
        kinds = _slots(tmp_path / "region-a")
        assert kinds[new_id] == 4 and kinds[old_id] == objects
        _loads_everything(registry, pushed, tmp_path / "during")
        extra = make_model(tmp_path / "m4", shards=1, shard_size=20_000, seed=4)
        registry.push("org/tiny", extra)
        pushed = {**pushed, "org/tiny@2": extra}
    result = _cli("keys", "rotate", "--to", str(new_key), "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["retired"] == [old_id] and report["to"] == new_id
    assert report["objects"] == objects  # what still had an old slot (the new push had none)
    # Two regions, the first 4 objects already done: the rest got their slot in both.
    assert report["slots_written"] == 2 * (objects - 4)
    assert report["catalog_slots_retired"] == objects
    assert report["created_key_file"] is None
    assert "previous_kek_files" not in (home / "config.toml").read_text()
    for region in ("region-a", "region-b"):
        assert set(_slots(tmp_path / region)) == {new_id}
    # The old key destroyed: everything loads, scrubs, drills, and rebuilds.
    old_key.unlink()
    with Registry.open(home) as registry:
        assert {
            s.kek_id for slots in registry.catalog.slotted_objects().values() for s in slots
        } == {new_id}
        _loads_everything(registry, pushed, tmp_path / "after")
        assert registry.scrub(read_data=True).ok
    for region in ("region-1", "region-2"):
        assert _cli("drill", "--region", region, "-q").exit_code == 0
    assert registry.audit_events(limit=1)[0].action == "drill"
    actions = [e.action for e in registry.audit_events(limit=20)]
    assert "key-rotate" in actions and "key-rotate-start" in actions
    naming = home / "keys" / "naming.key"
    naming.rename(tmp_path / "naming.key")  # only the new KEK left: the stores still open
    catalog = Path(registry.settings.catalog_url.split("///", 1)[1])
    catalog.rename(tmp_path / "old-catalog.db")
    rebuilt = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    (tmp_path / "naming.key").rename(naming)
    # Run again: nothing left to do.
    again = _cli("keys", "rotate", "--to", str(new_key))
    assert again.exit_code == 0 and "nothing to rotate" in again.output


def test_rotation_refuses_what_does_not_fit(pushed: dict[str, Path], home: Path) -> None:
    before = (home / "config.toml").read_text()
    result = _cli("keys", "rotate", "--to", "arn:aws:kms:us-east-1:1:key/x")
    assert result.exit_code == 3 and "KMS key" in result.output
    result = _cli("keys", "rotate", "--to", "/tmp/x.key", "--region", "region-9")
    assert result.exit_code == 3 and "no region 'region-9'" in result.output
    bad = home / "not-a-key"
    bad.write_text("hello\n")
    result = _cli("keys", "rotate", "--to", str(bad))
    assert result.exit_code == KeyAccessError.exit_code and "not a model-registry" in result.output
    assert (home / "config.toml").read_text() == before


@pytest.fixture
def two_kms_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str, str]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        first = client.create_key(Description="old")["KeyMetadata"]["Arn"]
        second = client.create_key(Description="new")["KeyMetadata"]["Arn"]
        yield client, first, second


def test_a_kms_key_rotates_and_the_old_one_can_be_disabled(
    two_kms_keys: tuple[Any, str, str], home: Path, tmp_path: Path
) -> None:
    client, first, second = two_kms_keys
    Registry.init(home, kms=KmsSettings(first, "us-east-1"))
    model = make_model(tmp_path / "m", shards=2, shard_size=100_000, seed=7)
    with Registry.open(home) as registry:
        registry.push("org/kms", model)
        seen = 0

        def stop() -> None:
            nonlocal seen
            seen += 1
            if seen == 2:
                raise PowerCutError

        registry.checkpoints["rotate-object"] = stop
        with pytest.raises(PowerCutError):
            registry.rotate_keys(second)
    assert "kms_previous_keys" in (home / "config.toml").read_text()
    with Registry.open(home) as registry:
        _loads_everything(registry, {"org/kms@1": model}, tmp_path / "during")
        report = registry.rotate_keys(second)
        assert report.retired == (f"aws-kms:{first}",) and report.to == f"aws-kms:{second}"
    config = (home / "config.toml").read_text()
    assert second in config and first not in config
    client.disable_key(KeyId=first.rsplit("/", 1)[1])
    with Registry.open(home) as registry:
        _loads_everything(registry, {"org/kms@1": model}, tmp_path / "after")


def test_a_process_still_on_the_old_key_cannot_commit_after_the_rotation(
    pushed: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    """A server that was not restarted wraps with the old key alone: once the rotation has
    retired that key its pushes are refused (nothing committed), so destroying the old key
    loses nothing; its reads fail with a hint to restart."""
    stale = Registry.open(home)
    try:
        result = _cli("keys", "rotate", "--to", str(tmp_path / "new.key"), "--json", "-q")
        assert result.exit_code == 0, result.output
        old_id = stale.keys.kek_id
        assert json.loads(result.stdout)["retired"] == [old_id]
        late = make_model(tmp_path / "late", shards=1, shard_size=9_000, seed=11)
        shard = next(late.glob("*.safetensors"))  # content of its own: no slot to reuse
        with pytest.raises(ConflictError, match="retired") as refused:
            stale.push("org/late", shard)
        assert "restart" in (refused.value.hint or "")
        with pytest.raises(KeyAccessError) as unreadable:
            stale.pull("org/llama@1", tmp_path / "stale-pull")
        assert "restart this process" in (unreadable.value.hint or "")
    finally:
        stale.close()
    (home / "keys" / "kek.key").unlink()
    with Registry.open(home) as registry:
        assert [m.name for m in registry.models()] == ["org/llama", "org/tiny"]
        _loads_everything(registry, pushed, tmp_path / "after")


def test_bad_rotation_targets_change_nothing(pushed: dict[str, Path], home: Path) -> None:
    before = (home / "config.toml").read_text()
    for target, code, needle in [
        ("arn:aws:kms:us-east-1:1:key/x", 3, "does not use a KMS key"),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", 3, "does not use a KMS key"),
        (str(home / "keys" / "naming.key"), 3, "is the naming key"),
        (str(home / "keys" / "signing.key"), 3, "is the signing key"),
        ("/proc/no-such-dir/new.key", 8, "cannot create the key file"),
    ]:
        result = _cli("keys", "rotate", "--to", target)
        assert result.exit_code == code, (target, result.output)
        assert needle in result.output, (target, result.output)
        assert (home / "config.toml").read_text() == before


def test_a_kms_key_that_cannot_be_used_is_refused_before_anything_changes(
    two_kms_keys: tuple[Any, str, str], home: Path, tmp_path: Path
) -> None:
    _client, first, second = two_kms_keys
    Registry.init(home, kms=KmsSettings(first, "us-east-1"))
    before = (home / "config.toml").read_text()
    typo = second[:-4] + "0000"
    result = _cli("keys", "rotate", "--to", typo)
    assert result.exit_code == KeyAccessError.exit_code, result.output
    assert "cannot be used" in result.output and "nothing was changed" in result.output
    assert (home / "config.toml").read_text() == before
    with Registry.open(home) as registry:
        assert registry.push("org/ok", make_model(tmp_path / "m", shards=1, shard_size=9_000))


def test_what_a_refused_stale_writer_left_behind_does_not_block_the_retry(
    pushed: dict[str, Path], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale process is refused before it stores anything; and objects one did store (it
    got past the check just before the rotation) are sealed anew by the restarted push."""
    late = make_model(tmp_path / "late", shards=1, shard_size=9_000, seed=12)
    shard = next(late.glob("*.safetensors"))
    stale = Registry.open(home)
    try:
        assert _cli("keys", "rotate", "--to", str(tmp_path / "new.key"), "-q").exit_code == 0
        with pytest.raises(ConflictError, match="nothing was stored"):
            stale.push("org/late", shard)
        with monkeypatch.context() as patch:
            patch.setattr(push_ops, "refuse_retired_keys", lambda ctx: None)
            with pytest.raises(ConflictError, match="retired"):
                stale.push("org/late", shard)  # stored, then refused at the commit
    finally:
        stale.close()
    (home / "keys" / "kek.key").unlink()
    with Registry.open(home) as registry:
        pushed_again = registry.push("org/late", shard)
        assert pushed_again.created and pushed_again.uploaded_bytes == shard.stat().st_size
        registry.pull("org/late@1", tmp_path / "late-out")
        assert (tmp_path / "late-out" / shard.name).read_bytes() == shard.read_bytes()
        assert registry.verify("org/late@1", read_data=True).ok


def test_a_rotation_back_to_a_retired_key_works(
    pushed: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    first = home / "keys" / "kek.key"
    kept = tmp_path / "kek-original.key"
    kept.write_bytes(first.read_bytes())
    kept.chmod(0o600)
    assert _cli("keys", "rotate", "--to", str(tmp_path / "k2.key"), "-q").exit_code == 0
    back = _cli("keys", "rotate", "--to", str(kept), "--json", "-q")
    assert back.exit_code == 0, back.output
    with Registry.open(home) as registry:
        assert registry.push("org/again", make_model(tmp_path / "a", shards=1, shard_size=9_000))
        _loads_everything(registry, pushed, tmp_path / "back")


def test_a_rotation_whose_old_key_file_is_gone_says_so(
    pushed: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    with Registry.open(home) as registry:
        registry.checkpoints["rotate-object"] = lambda: (_ for _ in ()).throw(PowerCutError())
        with pytest.raises(PowerCutError):
            registry.rotate_keys(str(tmp_path / "new.key"))
    with Registry.open(home) as registry:
        old_id = registry.keys.kek_ids[1]
        objects = len(registry.catalog.slotted_objects())
    (home / "keys" / "kek.key").unlink()
    result = _cli("keys", "rotate", "--to", str(tmp_path / "new.key"))
    assert result.exit_code == KeyAccessError.exit_code
    assert "is gone" in result.output and "previous_kek_files" in result.output
    # Lost for good: the operator drops it from config.toml, as the hint says. The rerun
    # still retires it (a process that has it can write no more), and names what is lost.
    config = home / "config.toml"
    config.write_text(
        "\n".join(
            line for line in config.read_text().splitlines() if "previous_kek_files" not in line
        )
        + "\n"
    )
    result = _cli("keys", "rotate", "--to", str(tmp_path / "new.key"), "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["retired"] == [old_id]
    assert report["unrecoverable"] == objects - 1  # the first got its new slot in time
    with Registry.open(home) as registry:
        assert old_id in registry.catalog.retired_keys()
        kept = [
            key
            for key, slots in registry.catalog.slotted_objects().items()
            if [s.kek_id for s in slots] == [old_id]
        ]
        assert len(kept) == objects - 1  # their old slots stay, should the key be found
        # Pushing the same files again repairs them: sealed anew under the new key.
        for ref, source in pushed.items():
            registry.push(ref.split("@")[0], source)
        _loads_everything(registry, pushed, tmp_path / "repaired")
    again = _cli("keys", "rotate", "--to", str(tmp_path / "new.key"))
    assert again.exit_code == 0 and "nothing to rotate" in again.output


def test_a_kms_key_another_region_still_uses_is_not_retired(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        shared = client.create_key()["KeyMetadata"]["Arn"]
        new = client.create_key()["KeyMetadata"]["Arn"]
        Registry.init(
            home,
            store=[
                f"s3://rot-one?region=us-east-1&kms={shared}&name=one",
                f"s3://rot-two?region=us-east-1&kms={shared}&name=two",
            ],
        )
        model = make_model(tmp_path / "m", shards=1, shard_size=20_000, seed=21)
        with Registry.open(home) as registry:
            registry.push("org/shared", model)
        result = _cli("keys", "rotate", "--to", new, "--region", "one", "--json", "-q")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["retired"] == [] and report["still_used"] == [f"aws-kms:{shared}"]
        assert report["regions"] == ["one"] and report["slots_written"] == report["objects"]
        again = _cli("keys", "rotate", "--to", new, "--region", "one")
        assert again.exit_code == 0 and "nothing to rotate" in again.output
        with Registry.open(home) as registry:
            # Region two still wraps with the shared key: its slots stay recorded and usable.
            keks = {
                s.kek_id for slots in registry.catalog.slotted_objects().values() for s in slots
            }
            assert keks == {f"aws-kms:{shared}", f"aws-kms:{new}"}
            assert f"aws-kms:{shared}" not in registry.catalog.retired_keys()
            registry.push("org/later", make_model(tmp_path / "n", shards=1, shard_size=9_000))
            _loads_everything(registry, {"org/shared@1": model}, tmp_path / "after")
