"""The registry's use cases through the Python API: round trips, dedup, crash safety, manifests,
catalog concurrency (SQLite and PostgreSQL), schema checks, keys."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from registry.blobstore import MANIFEST
from registry.catalog.db import create_catalog_engine
from registry.crypto.keys import create_key_file
from registry.crypto.sealed import DEFAULT_CHUNK_SIZE, Sealer
from registry.digest import hash_bytes
from registry.errors import (
    ConfigurationError,
    DestinationExistsError,
    IntegrityError,
    InvalidInputError,
    InvalidModelError,
    KeyAccessError,
    NotFoundError,
    SchemaVersionError,
    SignatureError,
)
from registry.service import Registry
from registry.testing.models import make_model, random_file, write_safetensors
from tests.conftest import store_bytes, tree

CHUNK = DEFAULT_CHUNK_SIZE
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17]


def test_round_trip_of_files_of_many_sizes(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "files"
    source.mkdir()
    for size in SIZES:
        random_file(source / f"blob-{size}.bin", size)
    (source / "nested" / "deeper").mkdir(parents=True)
    random_file(source / "nested" / "deeper" / "tokenizer.model", 5000)

    result = registry.push("org/files", source, message="sizes")
    assert result.created and result.version.number == 1
    assert result.uploaded_bytes == sum(SIZES) + 5000

    pulled = registry.pull("org/files@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(source)
    assert set(pulled.files) == set(tree(source))


def test_round_trip_of_sharded_safetensors_model(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    result = registry.push("llama", model_dir)
    assert result.version.tensor_count == 12
    assert result.version.dtypes == ("F16",)
    registry.pull("llama", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model_dir)
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    for shard in sorted(model_dir.glob("*.safetensors")):
        original = safetensors_numpy.load_file(shard)
        pulled = safetensors_numpy.load_file(tmp_path / "out" / shard.name)
        assert original.keys() == pulled.keys()
        # Random F16 bytes hold NaNs, so compare the bytes, not the values.
        assert all(original[k].tobytes() == pulled[k].tobytes() for k in original)


def test_single_safetensors_file_push(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "adapter.safetensors"
    write_safetensors(path, {"lora.a": ("F32", [2, 2], bytes(16))})
    version = registry.push("adapter", path).version
    assert [f.path for f in version.files] == ["adapter.safetensors"]
    assert version.parameter_count == 4


def test_identical_content_reports_existing_version(registry: Registry, model_dir: Path) -> None:
    first = registry.push("llama", model_dir)
    again = registry.push("llama", model_dir, message="again")
    assert not again.created
    assert again.version.number == first.version.number == 1
    assert again.version.digest == first.version.digest
    assert len(registry.versions("llama")) == 1


def test_version_numbers_increase_and_digest_references_resolve(
    registry: Registry, model_dir: Path
) -> None:
    v1 = registry.push("llama", model_dir).version
    (model_dir / "config.json").write_text('{"changed": true}')
    v2 = registry.push("llama", model_dir).version
    assert (v1.number, v2.number) == (1, 2)
    assert registry.resolve("llama").number == 2
    assert registry.resolve("llama@1").digest == v1.digest
    assert registry.resolve(f"llama@{v2.digest[:19]}").number == 2
    with pytest.raises(NotFoundError):
        registry.resolve("llama@3")
    with pytest.raises(NotFoundError):
        registry.resolve("nobody")
    with pytest.raises(NotFoundError):
        registry.resolve("llama:production")


def test_dedup_stores_only_the_changed_shard(
    registry: Registry, home: Path, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("llama", model_dir)
    before = store_bytes(home)
    other = make_model(tmp_path / "other", shards=3, shard_size=300_000, seed=99)
    changed = model_dir / "model-00002-of-00003.safetensors"
    shutil.copy(other / changed.name, changed)

    result = registry.push("llama", model_dir)
    assert result.uploaded_bytes == changed.stat().st_size
    grown = store_bytes(home) - before
    # The new shard's ciphertext, plus a manifest and two key slots: a few KiB at most.
    assert changed.stat().st_size < grown < changed.stat().st_size + 16 * 1024
    # Dedup works across models too.
    before = store_bytes(home)
    again = registry.push("llama-copy", model_dir)
    assert again.uploaded_bytes == 0
    assert store_bytes(home) - before < 16 * 1024


def test_store_names_reveal_nothing(registry: Registry, home: Path, model_dir: Path) -> None:
    result = registry.push("llama", model_dir)
    names = "\n".join(str(p.relative_to(home)) for p in (home / "store").rglob("*"))
    for entry in result.version.files:
        assert entry.digest.removeprefix("blake3:") not in names
        assert entry.path not in names
    assert "llama" not in names
    plaintext = (model_dir / "config.json").read_bytes()
    for stored in (home / "store").rglob("*"):
        if stored.is_file():
            assert plaintext not in stored.read_bytes()


def test_stored_objects_are_read_only(registry: Registry, home: Path, model_dir: Path) -> None:
    registry.push("llama", model_dir)
    for stored in (home / "store" / "objects" / "blobs").rglob("*"):
        if stored.is_file():
            assert stored.stat().st_mode & 0o222 == 0


def test_crash_before_catalog_commit_leaves_no_version_and_rerun_reuses_blobs(
    registry: Registry, home: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(registry.catalog, "commit_version", crash)
        with pytest.raises(KeyboardInterrupt):
            registry.push("llama", model_dir)
    with pytest.raises(NotFoundError):
        registry.versions("llama")
    stored = store_bytes(home)
    assert stored > sum(p.stat().st_size for p in model_dir.iterdir())

    result = registry.push("llama", model_dir)
    assert result.created and result.version.number == 1
    assert result.uploaded_bytes == 0
    assert store_bytes(home) == stored


def test_crash_between_key_slot_and_data_is_recovered(
    registry: Registry, model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    original = registry.store.driver.put_if_absent
    calls = {"blobs": 0}

    def flaky(name: str, chunks: object) -> bool:
        if name.startswith("blobs/"):
            calls["blobs"] += 1
            if calls["blobs"] == 2:
                raise OSError("disk vanished")
        return original(name, chunks)  # type: ignore[arg-type]

    monkeypatch.setattr(registry.store.driver, "put_if_absent", flaky)
    with pytest.raises(OSError, match="disk vanished"):
        registry.push("llama", model_dir)
    monkeypatch.setattr(registry.store.driver, "put_if_absent", original)
    registry.push("llama", model_dir)
    registry.pull("llama", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model_dir)


def test_hostile_model_is_refused_before_anything_is_stored(
    registry: Registry, home: Path, model_dir: Path
) -> None:
    before = store_bytes(home)
    shard = model_dir / "model-00003-of-00003.safetensors"
    shard.write_bytes((2**63).to_bytes(8, "little") + shard.read_bytes()[8:])
    with pytest.raises(InvalidModelError, match=r"model-00003-of-00003\.safetensors"):
        registry.push("llama", model_dir)
    assert store_bytes(home) == before
    with pytest.raises(NotFoundError):
        registry.versions("llama")


def test_index_with_path_traversal_is_refused(
    registry: Registry, home: Path, model_dir: Path
) -> None:
    before = store_bytes(home)
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(InvalidModelError, match=r"model\.safetensors\.index\.json"):
        registry.push("llama", model_dir)
    assert store_bytes(home) == before


@pytest.mark.parametrize("name", ["", "UPPER", "../x", "a/b/c", "x" * 129, "a b"])
def test_invalid_model_names_are_refused(
    registry: Registry, home: Path, model_dir: Path, name: str
) -> None:
    before = store_bytes(home)
    with pytest.raises(InvalidInputError):
        registry.push(name, model_dir)
    assert store_bytes(home) == before


def test_empty_directory_and_missing_path_are_refused(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no files"):
        registry.push("x", tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="does not exist"):
        registry.push("x", tmp_path / "missing")


def test_pull_refuses_to_overwrite_without_force(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("llama", model_dir)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "config.json").write_text("mine")
    with pytest.raises(DestinationExistsError, match=r"config\.json"):
        registry.pull("llama", dest)
    assert tree(dest) == {"config.json": b"mine"}
    registry.pull("llama", dest, force=True)
    assert tree(dest) == tree(model_dir)


def test_pull_refuses_to_write_through_a_symlink_out_of_dest(
    registry: Registry, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file.txt").write_text("x")
    registry.push("nested", source)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(InvalidInputError, match="outside"):
        registry.pull("nested", dest, force=True)
    assert list(outside.iterdir()) == []


def test_edited_manifest_resealed_with_valid_key_is_refused(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    """An attacker with the data key (but not the signing key) rewrites the manifest."""
    version = registry.push("llama", model_dir).version
    store = registry.store
    slot = registry.catalog.key_slot(version.digest, MANIFEST, registry.keys.kek_id)
    assert slot is not None
    data_key = registry.keys.unwrap(
        slot, context=store.context(MANIFEST, version.digest), what="test"
    )
    envelope = json.loads(store.read_bytes(MANIFEST, version.digest, slot, what="test"))
    envelope["manifest"]["files"][0]["size"] += 0  # unchanged content, signature dropped:
    envelope["signatures"] = []
    forged = json.dumps(envelope).encode()

    name = store.object_name(MANIFEST, version.digest)
    path = Path(registry.settings.store_path, "objects", name)
    os.chmod(path, 0o644)
    sealer = Sealer(data_key, version.digest, plaintext_size=len(forged), chunk_size=CHUNK)
    path.write_bytes(sealer.header_bytes + bytes(sealer.seal_chunk(0, forged)))

    with pytest.raises(SignatureError, match="not signed"):
        registry.pull("llama", tmp_path / "out")
    assert not (tmp_path / "out").exists() or tree(tmp_path / "out") == {}
    report = registry.verify("llama")
    assert not report.ok and report.problems[0].path == "manifest"

    # Signed by somebody else's key: refused too.
    envelope["signatures"] = [
        {"algorithm": "ed25519", "key_id": "0123456789abcdef", "signature": "AAAA"}
    ]
    forged = json.dumps(envelope).encode()
    sealer = Sealer(data_key, version.digest, plaintext_size=len(forged), chunk_size=CHUNK)
    path.write_bytes(sealer.header_bytes + bytes(sealer.seal_chunk(0, forged)))
    with pytest.raises(SignatureError, match="untrusted"):
        registry.pull("llama", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_show_reads_the_catalogs_manifest_copy_and_checks_it_like_the_stored_one(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    """`show` needs no store (the push cached the signed manifest in the catalog), and a copy
    edited in the catalog is refused exactly like an edited stored one."""
    version = registry.push("llama", model_dir).version
    shutil.rmtree(Path(registry.settings.store_path))  # no store at all
    details = registry.show("llama")
    assert details.manifest.digest == version.digest and details.signer == "local"

    envelope = json.loads(registry.catalog.cached_manifest(version.digest) or b"{}")
    envelope["signatures"] = []
    with registry.catalog.engine.begin() as connection:
        connection.execute(
            text("UPDATE manifest_cache SET envelope = :e WHERE digest = :d"),
            {"e": json.dumps(envelope).encode(), "d": version.digest},
        )
    with pytest.raises(SignatureError, match="not signed"):
        registry.show("llama")


def test_manifest_pointing_at_other_content_is_refused(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    """Even a correctly signed manifest must hash to the version digest in the catalog."""
    v1 = registry.push("llama", model_dir).version
    (model_dir / "config.json").write_text("{}")
    v2 = registry.push("llama", model_dir).version
    store_root = Path(registry.settings.store_path, "objects")
    # Point v1's manifest object at v2's bytes: its AEAD binds v2's digest, so it fails.
    first = store_root / registry.store.object_name(MANIFEST, v1.digest)
    second = store_root / registry.store.object_name(MANIFEST, v2.digest)
    os.chmod(first, 0o644)
    first.write_bytes(second.read_bytes())
    with pytest.raises(IntegrityError):
        registry.pull("llama@1", tmp_path / "out")


def test_verify_reports_each_bad_file_by_name(
    registry: Registry, model_dir: Path, home: Path
) -> None:
    version = registry.push("llama", model_dir).version
    assert registry.verify("llama", read_data=True).ok
    broken = {}
    for entry in version.files:
        if entry.path in ("config.json", "model-00002-of-00003.safetensors"):
            name = registry.store.object_name("blob", entry.digest)
            path = home / "store" / "objects" / name
            os.chmod(path, 0o644)
            data = bytearray(path.read_bytes())
            data[-5] ^= 0x40
            path.write_bytes(data)
            broken[entry.path] = path
    presence = registry.verify("llama")
    assert presence.ok  # sizes intact: only reading the data reveals the damage
    report = registry.verify("llama", read_data=True)
    assert {p.path for p in report.problems} == set(broken)
    # A missing object is found without reading data.
    next(iter(broken.values())).unlink()
    assert not registry.verify("llama").ok
    events = registry.audit_events(subject="llama")
    assert [e.action for e in events][:3] == ["verify", "verify", "verify"]
    assert events[1].details["ok"] is False


def test_pull_is_audited(registry: Registry, model_dir: Path, tmp_path: Path) -> None:
    registry.push("llama", model_dir)
    registry.pull("llama", tmp_path / "out")
    pull, push = registry.audit_events(subject="llama")[:2]
    assert (pull.action, push.action) == ("pull", "push")
    assert pull.actor == "tester@example"
    assert pull.details["key_unwraps"] == 1 + len(list(model_dir.iterdir()))


# -- init, configuration and keys ------------------------------------------------------------


def test_init_is_idempotent_and_keys_live_apart(home: Path) -> None:
    first = Registry.init(home)
    second = Registry.init(home)
    assert first.created and not second.created
    assert first.registry_id == second.registry_id
    keys = home / "keys"
    for name in ("kek.key", "naming.key", "signing.key"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600
    assert not (home / "store").is_relative_to(keys)
    assert not any(p.name.endswith(".key") for p in (home / "store").rglob("*"))
    with pytest.raises(InvalidInputError, match="apart"):
        Registry.init(home.parent / "other", key_dir=home.parent / "other" / "store" / "keys")


def test_missing_key_file_is_a_clear_error(
    registry: Registry, home: Path, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("llama", model_dir)
    (home / "keys" / "kek.key").unlink()
    # Reads of the catalog need no key (tests/test_keyless_reads.py); the first unwrap does.
    with (
        Registry.open(home) as reopened,
        pytest.raises(KeyAccessError, match="does not exist") as raised,
    ):
        reopened.pull("llama", tmp_path / "out")
    assert "backup" in raised.value.hint
    assert not (tmp_path / "out").exists()


def test_wrong_key_file_is_a_clear_error_and_writes_nothing(
    registry: Registry, home: Path, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("llama", model_dir)
    (home / "keys" / "kek.key").unlink()
    create_key_file(home / "keys" / "kek.key")
    with Registry.open(home) as reopened, pytest.raises(KeyAccessError, match="wrong key file"):
        reopened.pull("llama", tmp_path / "out")
    assert not (tmp_path / "out").exists() or tree(tmp_path / "out") == {}


def test_uninitialised_home_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no registry"):
        Registry.open(tmp_path / "nothing")


def test_catalog_with_newer_schema_is_refused(registry: Registry, home: Path) -> None:
    with registry.catalog.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaVersionError, match="9999"):
        Registry.open(home)


def test_trusting_a_ci_signer(
    registry: Registry, home: Path, model_dir: Path, tmp_path: Path
) -> None:
    """A CI runner with its own signing key pushes; readers trust its public key."""
    ci_home = tmp_path / "ci-home"
    shutil.copytree(home, ci_home)
    config = (
        (ci_home / "config.toml").read_text().replace(str(home / "keys"), str(ci_home / "keys"))
    )
    (ci_home / "config.toml").write_text(config)
    with Registry.open(ci_home) as ci:
        ci_public = ci.new_signing_key()
        ci.push("llama", model_dir)
    with pytest.raises(SignatureError, match="untrusted"):
        registry.show("llama")
    registry.trust_signer("ci", ci_public)
    assert registry.show("llama").signer == "ci"
    registry.untrust_signer("ci")
    with pytest.raises(SignatureError):
        registry.show("llama")


# -- catalog on SQLite and PostgreSQL ----------------------------------------------------------


def test_migrations_create_and_upgrade_on_both_backends(
    home: Path, catalog_url: str | None
) -> None:
    result = Registry.init(home, catalog_url=catalog_url)
    engine = create_catalog_engine(result.catalog_url)
    with engine.connect() as connection:
        tables = {
            "models",
            "versions",
            "version_files",
            "blobs",
            "key_slots",
            "audit_events",
        }
        for table in tables:
            connection.execute(text(f"SELECT count(*) FROM {table}"))
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()


def test_concurrent_pushes_get_distinct_numbers(
    home: Path, catalog_url: str | None, tmp_path: Path
) -> None:
    Registry.init(home, catalog_url=catalog_url)
    models = [make_model(tmp_path / f"m{i}", shards=1, shard_size=20_000, seed=i) for i in range(6)]
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(models))

    def push(path: Path) -> None:
        try:
            with Registry.open(home) as opened:
                barrier.wait()
                results.append(opened.push("race", path).version.number)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=push, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(results) == list(range(1, len(models) + 1))
    with Registry.open(home) as opened:
        versions = opened.versions("race")
        assert [v.number for v in versions] == list(range(1, len(models) + 1))
        assert len({v.digest for v in versions}) == len(models)
        for version in versions:
            assert opened.verify(version.ref, read_data=True).ok


def test_concurrent_identical_pushes_make_one_version(
    home: Path, catalog_url: str | None, model_dir: Path
) -> None:
    Registry.init(home, catalog_url=catalog_url)
    created: list[bool] = []
    barrier = threading.Barrier(4)

    def push() -> None:
        with Registry.open(home) as opened:
            barrier.wait()
            created.append(opened.push("same", model_dir).created)

    threads = [threading.Thread(target=push) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert created.count(True) == 1 and len(created) == 4
    with Registry.open(home) as opened:
        assert [v.number for v in opened.versions("same")] == [1]


def test_content_hash_of_manifest_is_the_version_id(registry: Registry, model_dir: Path) -> None:
    version = registry.push("llama", model_dir).version
    manifest = registry.show("llama").manifest
    assert hash_bytes(manifest.canonical()) == version.digest
    assert (
        manifest.canonical()
        == json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    )


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    from registry.catalog.db import HEAD_REVISION, head_revision

    assert head_revision() == HEAD_REVISION


def test_verify_notices_a_key_slot_missing_from_the_store(
    registry: Registry, model_dir: Path, home: Path
) -> None:
    version = registry.push("llama", model_dir).version
    entry = version.files[0]
    slot = (
        home
        / "store"
        / "objects"
        / registry.store.slot_name("blob", entry.digest, registry.keys.kek_id)
    )
    slot.unlink()
    report = registry.verify("llama")
    assert [p.path for p in report.problems] == [entry.path]
    assert "key slot" in report.problems[0].problem
