"""The catalog's reads without SQLAlchemy (`registry.catalog.lite`, what `ls` and `show` read
through): the same answers and the same refusals as `Catalog`, and taken only when the catalog
is found as usual; anything else goes to the full open, which decides as it always did."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from registry.catalog.lite import HEAD_REVISION, LiteCatalog, open_reads
from registry.errors import (
    AmbiguousReferenceError,
    CatalogMismatchError,
    RegistryError,
    StorageError,
)
from registry.refs import parse_reference
from registry.service import Registry
from registry.testing.models import make_model


def _model(tmp_path: Path, seed: int) -> Path:
    return make_model(tmp_path / f"m{seed}", shards=2, shard_size=20_000, seed=seed)


def _outcome(read: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What a read answers, or the error it raises (type, message, hint)."""
    try:
        return read(*args, **kwargs)
    except RegistryError as error:
        return (type(error), error.message, error.hint)


@pytest.fixture
def filled(registry: Registry, tmp_path: Path) -> Registry:
    """Two models; versions live, expired (deleted) and aliased; one cached manifest missing."""
    for seed in (1, 2, 3):
        registry.push("org/llama", _model(tmp_path, seed), message=f"run {seed}")
    registry.push("org/empty-later", _model(tmp_path, 4))
    registry.promote("org/llama@2", "production")
    registry.delete("org/llama@1", reason="bad eval")
    registry.delete("org/empty-later@1", reason="withdrawn")
    with registry.catalog.engine.begin() as connection:
        connection.execute(
            text(
                "DELETE FROM manifest_cache WHERE digest IN "
                "(SELECT digest FROM versions WHERE number = 3)"
            )
        )
    return registry


def _references(registry: Registry) -> list[str]:
    versions = registry.versions("org/llama", expired=True)
    refs = [
        "org/llama",
        "org/llama:production",
        "org/llama:staging",
        "nobody/here",
        "org/empty-later",
    ]
    for version in versions:
        refs += [version.ref, f"org/llama@blake3:{version.digest[7:19]}"]
    return [*refs, "org/llama@9", "org/llama@blake3:000000000000", "org/empty-later@1"]


def test_lite_reads_answer_like_the_catalog(filled: Registry) -> None:
    url = filled.settings.catalog_url
    reads = open_reads(url, registry_id=filled.settings.registry_id)
    assert isinstance(reads, LiteCatalog)
    catalog = filled.catalog
    assert reads.models() == catalog.models()
    for name in ("org/llama", "org/empty-later", "nobody/here"):
        for expired in (False, True):
            assert _outcome(reads.versions, name, expired=expired) == _outcome(
                catalog.versions, name, expired=expired
            )
    for ref in _references(filled):
        reference = parse_reference(ref)
        assert _outcome(reads.resolve, reference) == _outcome(catalog.resolve, reference), ref
    for version in filled.versions("org/llama", expired=True):
        assert reads.cached_manifest(version.digest) == catalog.cached_manifest(version.digest)
    assert any(v.expired_at is not None for v in filled.versions("org/llama", expired=True))
    filled.add_tag("org/llama@2", "eval-passed")
    filled.add_tag("org/llama@2", "candidate")
    filled.add_tag("org/llama@3", "nightly")
    for name, number in (("org/llama", 2), ("org/llama", 3), ("org/llama", 9), ("no/one", 1)):
        tags = reads.version_tags(name, number)
        assert tags == catalog.version_tags(name, number), (name, number)
    assert [t.tag for t in reads.version_tags("org/llama", 2)] == ["candidate", "eval-passed"]


def test_an_ambiguous_digest_prefix_is_refused_alike(filled: Registry) -> None:
    live = filled.versions("org/llama")[-1]
    twin = live.digest[:19] + "f" * (len(live.digest) - 19)
    with filled.catalog.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO versions (model_id, number, digest, manifest_object, message, "
                "created_at, created_by, signed_by, file_count, total_size, tensor_count, "
                "parameter_count, dtypes) SELECT model_id, 99, :twin, manifest_object, message, "
                "created_at, created_by, signed_by, file_count, total_size, tensor_count, "
                "parameter_count, dtypes FROM versions WHERE digest = :digest"
            ),
            {"twin": twin, "digest": live.digest},
        )
    reads = open_reads(filled.settings.catalog_url, registry_id=filled.settings.registry_id)
    assert reads is not None
    reference = parse_reference(f"org/llama@blake3:{live.digest[7:19]}")
    lite_answer = _outcome(reads.resolve, reference)
    assert lite_answer == _outcome(filled.catalog.resolve, reference)
    assert lite_answer[0] is AmbiguousReferenceError


def _sqlite_file(registry: Registry) -> Path:
    return Path(registry.settings.catalog_url.removeprefix("sqlite:///"))


def test_anything_unusual_goes_to_the_full_open(registry: Registry, tmp_path: Path) -> None:
    settings = registry.settings
    path = _sqlite_file(registry)
    assert open_reads(settings.catalog_url, registry_id=settings.registry_id) is not None
    # Another registry's catalog, a URL with options, another database, no file.
    assert open_reads(settings.catalog_url, registry_id="mr-someone-else") is None
    assert open_reads(settings.catalog_url + "?timeout=5", registry_id=settings.registry_id) is None
    assert open_reads("postgresql+psycopg://u@h/db", registry_id=settings.registry_id) is None
    assert open_reads(f"sqlite:///{tmp_path / 'none.db'}", registry_id="x") is None
    assert not (tmp_path / "none.db").exists(), "a missing catalog must never be created"
    # Another schema revision (a migration due, or a newer release's catalog).
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0009'")
    assert open_reads(settings.catalog_url, registry_id=settings.registry_id) is None
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (HEAD_REVISION,))
        connection.execute("DELETE FROM catalog_identity")
    assert open_reads(settings.catalog_url, registry_id=settings.registry_id) is None
    # A file that is not a database.
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert open_reads(f"sqlite:///{junk}", registry_id=settings.registry_id) is None


def test_the_full_open_still_refuses_another_registrys_catalog(
    registry: Registry, home: Path
) -> None:
    path = _sqlite_file(registry)
    registry.close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE catalog_identity SET registry_id = 'mr-someone-else'")
    with pytest.raises(CatalogMismatchError, match="mr-someone-else"):
        Registry.open(home)


def test_a_read_that_fails_is_the_catalog_unavailable(registry: Registry) -> None:
    reads = open_reads(registry.settings.catalog_url, registry_id=registry.settings.registry_id)
    assert reads is not None
    with sqlite3.connect(_sqlite_file(registry)) as connection:
        connection.execute("ALTER TABLE models RENAME TO models_gone")
    with pytest.raises(StorageError, match="catalog unavailable: no such table"):
        reads.models()


def test_lite_journal_and_key_slot_reads_answer_like_the_catalog(
    filled: Registry, tmp_path: Path
) -> None:
    # What a load compares and unwraps before its first tensor: the outbox, the marks of the
    # current epoch (also after a new epoch has begun and moved none), a file's key slots.
    reads = open_reads(filled.settings.catalog_url, registry_id=filled.settings.registry_id)
    assert isinstance(reads, LiteCatalog)
    catalog = filled.catalog

    def same() -> None:
        assert reads.journal_epoch() == catalog.journal_epoch()
        assert reads.journal_marks() == catalog.journal_marks()
        head = catalog.journal_head()
        assert head > 0 and reads.journal_head() == head
        for seq in (0, 1, head - 1, head, head + 5):
            assert reads.journal_oldest_after(seq) == catalog.journal_oldest_after(seq)
            for limit in (1, 3, 1000):
                assert reads.journal_after(seq, limit=limit) == catalog.journal_after(
                    seq, limit=limit
                )

    same()
    assert reads.journal_marks(), "the pushes drained: every region has a mark"
    filled.catalog.start_journal_epoch(reason="test", actor="test")
    assert reads.journal_marks() == {}
    same()
    version = filled.resolve("org/llama@2")
    for file in version.files:
        slots = reads.key_slots(file.digest, "blob")
        assert slots and slots == catalog.key_slots(file.digest, "blob")
    assert reads.key_slots(version.digest, "manifest") == catalog.key_slots(
        version.digest, "manifest"
    )
    assert reads.key_slots("blake3:" + "0" * 64, "blob") == []
