"""Regression tests from a review of the core registry: each docstring says what used to go
wrong (lost key slots, files rewritten mid-push, pulls through links, catalog outages, ...);
docs/design.md and docs/format.md state the behaviour these tests hold the code to.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import pytest

import registry.digest as digest_module
import registry.ops.push as push_module
from registry.blobstore import BLOB, MANIFEST
from registry.catalog.db import create_catalog_engine
from registry.catalog.repository import Catalog
from registry.crypto.keys import create_key_file
from registry.digest import FileDigests, hash_file, hash_file_chunks
from registry.errors import (
    ConflictError,
    IntegrityError,
    KeyAccessError,
    RegistryError,
    StorageError,
)
from registry.ops import pushstart
from registry.service import Registry
from registry.testing.models import write_safetensors

from .conftest import tree

CLOSED_PORT_URL = "postgresql+psycopg://nobody@127.0.0.1:1/none"


def _object(home: Path, name: str) -> Path:
    return home / "store" / "objects" / name


def _small_model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(5000))
    (root / "config.json").write_text('{"v": 1}')
    return root


def _crash(*_args: object, **_kwargs: object) -> None:
    raise KeyboardInterrupt("power cut")


# -- invariant: nothing unverified, no catalog row pointing at unusable objects ------------------


def test_push_after_a_stored_blob_lost_its_key_slot_must_not_commit_an_unreadable_version(
    registry: Registry, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted push leaves blob + key slot unreferenced; if the slot object is then lost,
    the next push sees no slot, generates a NEW data key, stores a new slot, finds the blob
    already stored (dedup by name), skips the upload and commits the version with the new slot.
    The blob was sealed under the old key: the committed version can never be pulled
    (BlobStore._data_key / put_file never check that the slot opens an existing object)."""
    model = _small_model(tmp_path / "m")
    with monkeypatch.context() as patch:
        patch.setattr(registry.catalog, "commit_version", _crash)
        with pytest.raises(KeyboardInterrupt):
            registry.push("m", model)
    digest = hash_file(model / "weights.bin")
    _object(home, registry.store.slot_name(BLOB, digest, registry.keys.kek_id)).unlink()

    try:
        registry.push("m", model)
    except RegistryError:
        return  # refusing the push is a correct outcome
    # Committed: then it must be readable.
    registry.pull("m", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)


def test_repush_after_key_slot_loss_must_not_leave_a_wrong_slot_that_verify_accepts(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    """verify reports a key slot missing from the store; the natural repair (push the content
    again, e.g. as the next version) writes a slot for a freshly generated data key that does NOT
    open the stored blob, and verify --read-data then reports the version OK. The store can no
    longer rebuild the catalog (design invariant 6) and nothing says so."""
    model = _small_model(tmp_path / "m")
    version = registry.push("m", model).version
    entry = next(f for f in version.files if f.path == "weights.bin")
    _object(home, registry.store.slot_name(BLOB, entry.digest, registry.keys.kek_id)).unlink()
    assert not registry.verify("m@1").ok

    (model / "config.json").write_text('{"v": 2}')
    registry.push("m", model)

    report = registry.verify("m@1", read_data=True)
    store_slot = registry.store.read_slot(BLOB, entry.digest, what=entry.path)
    assert store_slot is not None
    try:
        for _chunk in registry.store.open(
            BLOB, entry.digest, store_slot, size=entry.size, what=entry.path
        ):
            pass
        store_slot_opens_blob = True
    except IntegrityError:
        store_slot_opens_blob = False
    assert store_slot_opens_blob or not report.ok


def test_verify_notices_the_manifest_key_slot_missing_from_the_store(
    registry: Registry, home: Path, model_dir: Path
) -> None:
    """verify only checks the store's copy of BLOB key slots; the manifest is opened with the
    catalog's slot, so a manifest slot missing from the store (what a catalog rebuild needs)
    goes unnoticed, even with --read-data."""
    version = registry.push("llama", model_dir).version
    name = registry.store.slot_name(MANIFEST, version.digest, registry.keys.kek_id)
    _object(home, name).unlink()
    assert not registry.verify("llama", read_data=True).ok


def test_verify_notices_a_store_key_slot_that_does_not_open_its_blob(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    """verify checks only that the store's key slot object exists and parses; a slot replaced by
    another (well-formed) slot passes, although it cannot unwrap this blob's data key."""
    version = registry.push("m", _small_model(tmp_path / "m")).version
    entry = version.files[0]
    blob_slot = _object(home, registry.store.slot_name(BLOB, entry.digest, registry.keys.kek_id))
    other = _object(home, registry.store.slot_name(MANIFEST, version.digest, registry.keys.kek_id))
    data = other.read_bytes()
    blob_slot.unlink()
    blob_slot.write_bytes(data)
    assert not registry.verify("m", read_data=True).ok


def test_push_rejects_a_safetensors_file_rewritten_between_header_check_and_hashing(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collect() parses the safetensors header (and index files) from one read, push hashes the
    file in a second read, and seal_file only checks the digest of the second. A file rewritten
    in between (same size) is stored with a manifest whose tensor index describes the OLD bytes,
    and verify --read-data calls the version OK."""
    model = tmp_path / "m"
    model.mkdir()
    shard = model / "model.safetensors"
    write_safetensors(shard, {"alpha": ("F32", [4], b"\1" * 16)})
    real = hash_file_chunks

    def rewrite_then_hash(path: Path, **kwargs: Any) -> FileDigests:
        write_safetensors(Path(path), {"omega": ("F32", [2, 2], b"\2" * 16)})
        return real(path, **kwargs)

    # Wherever the hashing pass runs: begun early (ops.pushstart) or in the push itself.
    monkeypatch.setattr(push_module, "hash_file_chunks", rewrite_then_hash)
    monkeypatch.setattr(pushstart, "hash_file_chunks", rewrite_then_hash)
    try:
        registry.push("m", model)
    except RegistryError:
        return
    monkeypatch.setattr(push_module, "hash_file_chunks", real)
    monkeypatch.setattr(pushstart, "hash_file_chunks", real)
    names = [t.name for t in registry.show("m").manifest.files[0].safetensors.tensors]  # type: ignore[union-attr]
    assert names == ["omega"], f"manifest lists {names} for a file that holds 'omega'"


def test_push_refuses_when_its_own_signer_is_not_trusted(
    registry: Registry, tmp_path: Path
) -> None:
    """After `keys untrust local`, push still signs with the untrusted key and commits the
    version; every later show/pull/verify of it fails with SignatureError."""
    registry.untrust_signer("local")
    model = _small_model(tmp_path / "m")
    try:
        registry.push("m", model)
    except RegistryError:
        return
    registry.pull("m", tmp_path / "out")


def test_repush_uploads_what_is_missing(registry: Registry, home: Path, tmp_path: Path) -> None:
    """design direction, invariant 3: re-running a push uploads only what is missing. When the
    version exists, push returns early (find_version) without checking or re-uploading a lost
    object, so verify keeps failing and there is no way to repair from the source files."""
    model = _small_model(tmp_path / "m")
    version = registry.push("m", model).version
    entry = version.files[0]
    _object(home, registry.store.object_name(BLOB, entry.digest)).unlink()
    registry.push("m", model)
    assert registry.verify("m").ok


# -- pull: destination left as it was, errors as RegistryError ---------------------------------


def test_pull_with_a_file_where_a_directory_is_needed_changes_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    """_targets treats DEST/sub/b.json as absent when DEST/sub is a FILE (Path.exists swallows
    ENOTDIR), so the pull decrypts everything, moves a.json into place, then fails in
    final.parent.mkdir with a raw FileExistsError ("unexpected error ... a bug" in the CLI),
    leaving the destination half-updated (design.md invariant 2: "untouched")."""
    model = tmp_path / "m"
    (model / "sub").mkdir(parents=True)
    (model / "a.json").write_text("A")
    (model / "sub" / "b.json").write_text("B")
    registry.push("m", model)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "sub").write_text("a file, not a directory")
    before = tree(dest)
    with pytest.raises(RegistryError):
        registry.pull("m", dest, force=True)
    assert tree(dest) == before


def test_pull_on_a_full_disk_is_a_storage_error(
    registry: Registry, tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pull translates no OSError: ENOSPC (or EACCES on DEST, ENAMETOOLONG, EMFILE) from the
    pwrite in the decryption threads reaches the CLI as 'unexpected error ... this is a bug'."""
    registry.push("llama", model_dir)

    def full(_fd: int, _offset: int, _data: memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # Pulls write through registry.materialize (local and REST API pulls alike).
    monkeypatch.setattr("registry.materialize._write_at", full)
    with pytest.raises(StorageError):
        registry.pull("llama", tmp_path / "out")


# -- push: bad model directories -----------------------------------------------------------------


def test_push_does_not_silently_skip_an_unreadable_subdirectory(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """manifest._walk uses os.walk without onerror, which IGNORES directories it cannot list
    (EACCES): a model whose tokenizer/ is unreadable is pushed, successfully, without it.
    (Simulated through os.scandir because the suite may run as root.)"""
    model = _small_model(tmp_path / "m")
    (model / "tokenizer").mkdir()
    (model / "tokenizer" / "vocab.json").write_text("{}")
    real = os.scandir
    hidden = str(model / "tokenizer")

    def scandir(path: str = ".") -> object:
        if os.fspath(path) == hidden:
            raise PermissionError(errno.EACCES, "Permission denied", hidden)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        result = registry.push("m", model)
    except RegistryError:
        return
    paths = [f.path for f in result.version.files]
    assert "tokenizer/vocab.json" in paths, f"pushed {paths}: tokenizer/ silently left out"


def test_push_of_an_unreadable_file_is_a_registry_error(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable file (EACCES) in the model raises a raw PermissionError from hash_file (or
    read_header / read_bytes for safetensors and index files) instead of InvalidModelError."""
    model = _small_model(tmp_path / "m")
    locked = str(model / "weights.bin")

    def guarded_open(path: object, *args: object, **kwargs: object) -> object:
        if os.fspath(path) == locked:  # type: ignore[call-overload]
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(digest_module, "open", guarded_open, raising=False)
    with pytest.raises(RegistryError):
        registry.push("m", model)


# -- references, configuration, catalog ----------------------------------------------------------


def test_huge_version_number_is_a_clean_error(registry: Registry, tmp_path: Path) -> None:
    """parse_reference accepts any digit string; the SQLite driver raises OverflowError (and
    PostgreSQL DataError for > 2**31-1) when it is bound, and 5000 digits hit Python's
    int-conversion limit (ValueError)."""
    registry.push("m", _small_model(tmp_path / "m"))
    for ref in ("m@99999999999999999999", "m@" + "9" * 5000):
        with pytest.raises(RegistryError):
            registry.resolve(ref)


def test_negative_workers_in_config_is_a_configuration_error(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    """`workers = -1` in config.toml is accepted by load_settings and then crashes the push with
    a raw ValueError from ThreadPoolExecutor (after hashing, after storing a key slot)."""
    config = home / "config.toml"
    text = config.read_text()
    config.write_text(text.replace("\n[catalog]", "workers = -1\n\n[catalog]", 1))
    model = _small_model(tmp_path / "m")
    with pytest.raises(RegistryError), Registry.open(home) as opened:
        opened.push("m", model)


def test_failed_init_can_be_rerun_with_corrected_options(tmp_path: Path) -> None:
    """init writes config.toml BEFORE it opens the catalog and claims the store; when either
    fails (a typo in --catalog-url, a store owned by another registry), the home is left
    'initialised' with the bad setting and every re-run with corrected options is refused with
    'already initialised; options apply only to a new registry'."""
    home = tmp_path / "home"
    with pytest.raises(StorageError):
        Registry.init(home, catalog_url=CLOSED_PORT_URL)
    Registry.init(home, catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}")


def test_catalog_read_with_database_down_is_a_storage_error() -> None:
    """Catalog reads translate no OperationalError: with PostgreSQL down after the registry was
    opened, resolve/ls/show/pull raise a raw sqlalchemy OperationalError."""
    catalog = Catalog(create_catalog_engine(CLOSED_PORT_URL))
    try:
        with pytest.raises(StorageError):
            catalog.models()
    finally:
        catalog.close()


def test_catalog_write_with_database_down_is_not_called_a_concurrent_change() -> None:
    """Catalog._retrying retries every OperationalError (connection refused, 'database or disk
    is full', read-only database) ten times and then raises ConflictError 'too many concurrent
    changes' with the hint 'run the same command again'."""
    catalog = Catalog(create_catalog_engine(CLOSED_PORT_URL))
    try:
        with pytest.raises(RegistryError) as raised:
            catalog.audit("tester", "check", "subject", {})
        assert not isinstance(raised.value, ConflictError), raised.value
    finally:
        catalog.close()


@pytest.mark.postgres
def test_over_long_actor_is_refused_cleanly_on_postgres(
    home: Path, postgres_url: str, tmp_path: Path
) -> None:
    """MODEL_REGISTRY_ACTOR is unchecked; created_by is VARCHAR(256). SQLite stores any length,
    PostgreSQL raises a raw DataError at commit, after every blob was uploaded."""
    Registry.init(home, catalog_url=postgres_url)
    model = _small_model(tmp_path / "m")
    with (
        Registry.open(home, actor="ci-bot:" + "x" * 300) as opened,
        contextlib.suppress(RegistryError),
    ):
        opened.push("m", model)


def test_a_wrong_naming_key_file_is_refused_on_open(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    """The store keeps the naming key wrapped by the KEK (registry/naming-key/<k>), but open()
    never compares it with the configured naming.key. With another naming key file configured,
    every version is reported as 'stored object ... is missing' (IntegrityError: "damaged or
    tampered") and push re-uploads everything under names no other client will find. Design
    invariant 7: wrong keys get a clear error."""
    registry.push("m", _small_model(tmp_path / "m"))
    other = tmp_path / "other-naming.key"
    create_key_file(other, label="naming key")
    config = home / "config.toml"
    text = config.read_text()
    current = str(registry.settings.naming_key_file)
    config.write_text(text.replace(f'"{current}"', f'"{other}"'))
    # Opening asks nothing of the stores (catalog-only commands never wait on one); the first
    # command that uses a store checks its claim and refuses, before anything is read or
    # written under names derived from the wrong key.
    with Registry.open(home) as reopened:
        assert [m.name for m in reopened.models()] == ["m"]
        with pytest.raises(KeyAccessError):
            reopened.pull("m", tmp_path / "out")
        assert not (tmp_path / "out").exists()
        with pytest.raises(KeyAccessError):
            reopened.push("n", _small_model(tmp_path / "n"))
    with Registry.open(home) as reopened:
        assert [m.name for m in reopened.models()] == ["m"]


def test_pull_through_a_directory_symlink_inside_dest_does_not_mix_up_files(
    registry: Registry, tmp_path: Path
) -> None:
    """_targets only checks that each target resolves inside DEST. With DEST/a -> b (a symlink
    to a directory inside DEST), 'a/x.json' and 'b/x.json' resolve to the same file: the pull,
    without --force, renames one over the other and reports success, and a/x.json then holds
    b/x.json's bytes."""
    model = tmp_path / "m"
    (model / "a").mkdir(parents=True)
    (model / "b").mkdir()
    (model / "a" / "x.json").write_text("AAAA")
    (model / "b" / "x.json").write_text("BBBB")
    registry.push("m", model)
    dest = tmp_path / "out"
    (dest / "b").mkdir(parents=True)
    os.symlink("b", dest / "a")
    try:
        registry.pull("m", dest)
    except RegistryError:
        return
    assert (dest / "a" / "x.json").read_text() == "AAAA"
    assert (dest / "b" / "x.json").read_text() == "BBBB"
