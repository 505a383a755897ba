"""Manifest v2 (docs/format.md): every file's chunk root, written by the push and checked by the
loader chunk by chunk in its workers; version 1 manifests still load and verify whole; and the
loader's fast paths (ranges taken in place from a mapping, huge pages or populated pages for the
tensors' memory) change nothing that a load returns or refuses."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
import torch
from safetensors.torch import load_file

from registry import loader
from registry.crypto.sealed import SealedHeader, Sealer
from registry.digest import hash_bytes, hash_file, hash_file_chunks
from registry.errors import IntegrityError
from registry.loader import memory
from registry.manifest import SCHEMA, SCHEMA_V1, SCHEMA_V2, canonical_json, manifest_from_dict
from registry.ops import push as push_module
from registry.service import Registry
from registry.testing.models import make_model

MiB = 1024 * 1024
SHARD = "model-00001-of-00002.safetensors"
OTHER = "model-00002-of-00002.safetensors"


def _root(data: bytes, chunk_size: int) -> str:
    """docs/format.md, written out again here: BLAKE3 in its derive-key context over the two
    sizes and each chunk's digest."""
    pieces = [data[at : at + chunk_size] for at in range(0, len(data), chunk_size)] or [b""]
    hasher = blake3.blake3(derive_key_context="model-registry 2026-12-06 chunk root v1")
    hasher.update(struct.pack(">QQ", chunk_size, len(data)))
    for piece in pieces:
        hasher.update(blake3.blake3(piece).digest())
    return "blake3:" + hasher.hexdigest()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (random weights hold NaNs, which torch.equal calls unequal)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


def _blob(registry: Registry, ref: str, relative: str) -> Path:
    version = registry.resolve(ref)
    digest = next(f.digest for f in version.files if f.path == relative)
    path = registry.settings.home / "store" / "objects" / registry.store.object_name("blob", digest)
    os.chmod(path, 0o644)
    return path


def _reseal(registry: Registry, ref: str, relative: str, plaintext: bytes) -> None:
    """What someone holding the file's data key could do: seal other bytes under its digest.
    Every chunk then authenticates; only the content check can tell."""
    version = registry.resolve(ref)
    entry = next(f for f in version.files if f.path == relative)
    path = _blob(registry, ref, relative)
    sealer = Sealer(
        registry.blob_key(version, entry.digest),
        entry.digest,
        plaintext_size=len(plaintext),
        chunk_size=SealedHeader.unpack(path.read_bytes()).chunk_size,
    )
    header = sealer.header
    forged = bytearray(sealer.header_bytes)
    for index in range(header.chunk_count):
        start = index * header.chunk_size
        forged += sealer.seal_chunk(
            index, plaintext[start : start + header.chunk_plain_size(index)]
        )
    path.write_bytes(bytes(forged))


def _refused(registry: Registry, model: Path, match: str) -> None:
    """The load is refused, and a stream that waits for each file's check (the default) hands
    out nothing of the forged file."""
    told: list[tuple[int, int]] = []
    got: dict[str, Any] = {}
    with pytest.raises(IntegrityError, match=match):
        got = loader.load("org/llama", registry=registry)
    assert got == {}
    handed: list[str] = []

    def consume() -> None:
        for name, _tensor in loader.iter_tensors(
            "org/llama", registry=registry, on_progress=lambda *a: told.append(a)
        ):
            handed.append(name)

    with pytest.raises(IntegrityError, match=match):
        consume()
    assert not set(load_file(str(model / SHARD))) & set(handed)


@pytest.fixture
def pushed(registry: Registry, tmp_path: Path) -> Path:
    model = make_model(tmp_path / "model", shards=2, shard_size=3 * MiB + 12345, seed=41)
    registry.push("org/llama", model)
    return model


def test_a_push_writes_a_chunk_root_for_every_file(registry: Registry, pushed: Path) -> None:
    details = registry.show("org/llama")
    stored = details.manifest.to_dict()
    assert stored["schema"] == SCHEMA
    for entry in details.manifest.files:
        data = (pushed / entry.path).read_bytes()
        assert entry.chunks is not None
        assert entry.chunks.size == registry.settings.chunk_size
        assert entry.chunks.root == _root(data, entry.chunks.size), entry.path
    # The version id covers the roots: the same files with other roots are another manifest.
    without = details.manifest.without_chunk_roots()
    assert without.digest != details.version.digest
    assert without.to_dict()["schema"] == SCHEMA_V1


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 17 * MiB + 3])
def test_hash_file_chunks_agrees_with_the_format(tmp_path: Path, size: int) -> None:
    path = tmp_path / "file"
    data = os.urandom(size)
    path.write_bytes(data)
    found = hash_file_chunks(path, chunk_size=MiB)
    assert found.digest == hash_file(path) == "blake3:" + blake3.blake3(data).hexdigest()
    assert found.chunk_root == _root(data, MiB)
    assert hash_file_chunks(path, chunk_size=64 * 1024).chunk_root == _root(data, 64 * 1024)


def _chunks(data: bytes) -> list[bytes]:
    return [data[at : at + MiB] for at in range(0, len(data), MiB)]


@pytest.mark.parametrize(
    ("what", "forge"),
    [
        ("one chunk edited", lambda data, other: data[:-10] + bytes(10)),
        (
            "two chunks swapped",
            lambda data, other: b"".join([_chunks(data)[1], _chunks(data)[0], *_chunks(data)[2:]]),
        ),
        (
            "a chunk spliced from another file",
            lambda data, other: b"".join([_chunks(data)[0], _chunks(other)[1], *_chunks(data)[2:]]),
        ),
        (
            "a chunk repeated",
            lambda data, other: b"".join([_chunks(data)[0]] * 2 + _chunks(data)[2:]),
        ),
    ],
)
def test_content_resealed_with_the_right_key_fails_the_chunk_root(
    registry: Registry, pushed: Path, what: str, forge: Callable[[bytes, bytes], bytes]
) -> None:
    original = (pushed / SHARD).read_bytes()
    forged = forge(original, (pushed / OTHER).read_bytes())
    assert len(forged) == len(original) and forged != original, what
    path = _blob(registry, "org/llama", SHARD)
    kept = path.read_bytes()
    _reseal(registry, "org/llama", SHARD, forged)
    _refused(registry, pushed, "content digest mismatch")
    path.write_bytes(kept)
    state = loader.load("org/llama", registry=registry)
    assert state.stats.verified_files == tuple(sorted((SHARD, OTHER)))


def test_truncated_content_is_refused_before_anything_is_read(
    registry: Registry, pushed: Path
) -> None:
    original = (pushed / SHARD).read_bytes()
    _reseal(registry, "org/llama", SHARD, original[:-MiB])  # one chunk fewer, resealed
    _refused(registry, pushed, "header says")
    path = _blob(registry, "org/llama", SHARD)
    _reseal(registry, "org/llama", SHARD, original)
    sealed = path.read_bytes()
    header = SealedHeader.unpack(sealed)
    path.write_bytes(sealed[: header.chunk_offset(header.chunk_count - 1)])  # last chunk cut
    _refused(registry, pushed, "truncated")


def test_an_older_version_1_manifest_loads_and_is_verified_whole(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path / "model", shards=2, shard_size=2 * MiB, seed=42)
    real = push_module.manifests.build_manifest

    def as_before(name: str, files: Any, provenance: Any = None) -> Any:
        # What a push wrote before manifest v2: no chunk roots (nor v3's SHA-256).
        return real(name, [dataclasses.replace(f, chunks=None, sha256=None) for f in files])

    with monkeypatch.context() as patched:
        patched.setattr(push_module.manifests, "build_manifest", as_before)
        first = registry.push("org/llama", model)
    details = registry.show("org/llama")
    assert details.manifest.to_dict()["schema"] == SCHEMA_V1
    assert all(entry.chunks is None for entry in details.manifest.files)
    state = loader.load("org/llama", registry=registry)
    reference = {**load_file(str(model / SHARD)), **load_file(str(model / OTHER))}
    assert all(_same(state[k], v) for k, v in reference.items())
    assert set(state.stats.verified_files) == {SHARD, OTHER}
    # Pushing the same files again, now, is that version, not a new one with chunk roots.
    again = registry.push("org/llama", model)
    assert not again.created and again.version.digest == first.version.digest
    original = (model / SHARD).read_bytes()
    _reseal(registry, "org/llama", SHARD, original[:-10] + bytes(10))
    _refused(registry, model, "content digest mismatch")


def test_a_file_sealed_at_another_chunk_size_than_its_root_is_verified_whole(
    registry: Registry, pushed: Path, home: Path
) -> None:
    """After `store.chunk_size` changed, the blob of a file pushed before (sealed at 1 MiB
    chunks) is reused by a push whose roots are taken at 256 KiB: the loader cannot check that
    root chunk by chunk, so it hashes the file whole against its digest."""
    config = home / "config.toml"
    config.write_text(config.read_text().replace("chunk_size = 1048576", "chunk_size = 262144"))
    with Registry.open(home) as quarter:
        quarter.push("org/other", pushed)
    details = registry.show("org/other")
    assert {entry.chunks.size for entry in details.manifest.files if entry.chunks} == {256 * 1024}
    state = loader.load("org/other", registry=registry)
    assert set(state.stats.verified_files) == {SHARD, OTHER}
    original = (pushed / SHARD).read_bytes()
    _reseal(registry, "org/other", SHARD, original[:-10] + bytes(10))
    with pytest.raises(IntegrityError, match="content digest mismatch"):
        loader.load("org/other", registry=registry)


def _manifest_json(registry: Registry) -> dict[str, Any]:
    return json.loads(json.dumps(registry.show("org/llama").manifest.to_dict()))


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("a v2 file without its root", lambda m: m["files"][0].pop("chunks")),
        ("a root in a v1 manifest", lambda m: m.__setitem__("schema", SCHEMA_V1)),
        ("a malformed root", lambda m: m["files"][0]["chunks"].__setitem__("root", "blake3:00")),
        ("a chunk size of 0", lambda m: m["files"][0]["chunks"].__setitem__("size", 0)),
        ("an unknown field", lambda m: m["files"][0]["chunks"].__setitem__("tree", [])),
        ("another schema", lambda m: m.__setitem__("schema", "model-registry/manifest/v4")),
        ("a v3 file without its SHA-256", lambda m: m["files"][0].pop("sha256")),
        ("a v2 manifest with SHA-256", lambda m: m.__setitem__("schema", SCHEMA_V2)),
        ("a malformed SHA-256", lambda m: m["files"][0].__setitem__("sha256", "ab" * 31)),
    ],
)
def test_malformed_chunk_roots_are_refused(
    registry: Registry, pushed: Path, what: str, edit: Callable[[dict[str, Any]], Any]
) -> None:
    data = _manifest_json(registry)
    edit(data)
    with pytest.raises(IntegrityError):
        manifest_from_dict(data, expected_digest=hash_bytes(canonical_json(data)), what=what)


def test_ranges_are_taken_in_place_only_when_the_load_hashes_them(
    registry: Registry, pushed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapped range could change under AES-GCM after it authenticated; only a load that
    hashes the plaintext it produced (verify='full') takes ranges in place."""
    from registry.loader import sources

    taken: list[str] = []
    real = sources.LocalSource.reader

    def logged(self: Any, resolved: Any, entry: Any) -> Any:
        inner = real(self, resolved, entry)
        original = inner.view

        def view(offset: int, length: int) -> Any:
            found = original(offset, length)
            taken.append("view" if found is not None else "none")
            return found

        inner.view = view
        return inner

    monkeypatch.setattr(sources.LocalSource, "reader", logged)
    full = loader.load("org/llama", registry=registry)
    assert "view" in taken and "none" not in taken
    taken.clear()
    aead = loader.load("org/llama", registry=registry, verify="aead")
    assert taken == []
    assert all(_same(full[k], aead[k]) for k in full)


@pytest.mark.parametrize("free_blocks", [0, 10_000])
def test_host_memory_on_huge_pages_or_not_loads_the_same_tensors(
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    free_blocks: int,
) -> None:
    """Huge pages only while the kernel has free 2 MiB blocks for twice the file; either way
    the tensors are the same. (Shards of 5 MiB: at least one whole 2 MiB page lies inside.)"""
    model = make_model(tmp_path / "model", shards=2, shard_size=5 * MiB, seed=43)
    registry.push("org/llama", model)
    info = tmp_path / "buddyinfo"
    small = " ".join(["100"] * 9)
    info.write_text(
        f"Node 0, zone      DMA {' '.join(['0'] * 11)}\n"
        f"Node 0, zone   Normal {small} {free_blocks} 0\n"
    )
    monkeypatch.setattr(memory, "_BUDDYINFO", info)
    assert memory.free_huge_bytes() == free_blocks * 2 * MiB
    chosen: list[bool] = []
    real = memory.HostMemory.__init__

    def record(self: Any, size: int, **options: Any) -> None:
        real(self, size, **options)
        chosen.append(self.huge)

    monkeypatch.setattr(memory.HostMemory, "__init__", record)
    state = loader.load("org/llama", registry=registry)
    reference = {**load_file(str(model / SHARD)), **load_file(str(model / OTHER))}
    assert state.keys() == reference.keys()
    assert all(_same(state[k], v) for k, v in reference.items())
    assert len(chosen) == 2
    if free_blocks == 0:
        assert chosen == [False, False]
    elif sys.platform.startswith("linux"):
        assert chosen == [True, True]


def test_the_next_file_is_opened_while_the_last_ranges_of_one_are_read(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline does not drain at a file boundary: the second file's header is read (and
    its chunk 0 authenticated) while the first file's last range is still being read. The
    first file's last read waits for that; without the overlap it would wait in vain."""
    from registry.loader import sources

    model = make_model(tmp_path / "model", shards=2, shard_size=6 * MiB, seed=44)
    registry.push("org/llama", model)
    second_opened = threading.Event()
    waited: list[bool] = []
    real = sources.LocalSource.reader

    def reader(self: Any, resolved: Any, entry: Any) -> Any:
        inner = real(self, resolved, entry)
        first = entry.path == SHARD
        read_into, view = inner.read_into, inner.view

        def gate(offset: int, length: int) -> None:
            if not first and offset == 0:
                second_opened.set()
            if first and offset + length > entry.size:  # the tail range (one byte past the end)
                waited.append(second_opened.wait(timeout=30))

        def gated_read_into(offset: int, buffer: memoryview) -> int:
            gate(offset, len(buffer))
            return int(read_into(offset, buffer))

        def gated_view(offset: int, length: int) -> Any:
            gate(offset, length)
            return view(offset, length)

        inner.read_into, inner.view = gated_read_into, gated_view
        return inner

    monkeypatch.setattr(sources.LocalSource, "reader", reader)
    state = loader.load("org/llama", registry=registry, workers=2, chunks_per_read=1)
    reference = {**load_file(str(model / SHARD)), **load_file(str(model / OTHER))}
    assert all(_same(state[k], v) for k, v in reference.items())
    assert waited == [True]


def test_a_load_copies_its_audit_entry_to_the_journal_after_reading(
    registry: Registry, pushed: Path
) -> None:
    """A load compares the stores' journal before its first byte but writes to the stores only
    once it has its tensors: then its audit entry (and any entry it found waiting) is in every
    region's journal, with no other command run after it."""
    loader.load("org/llama", registry=registry)
    assert [state.behind for state in registry.journal_status(check=False)] == [0]
    assert registry.audit_events(subject="org/llama", limit=1)[0].action == "load"
