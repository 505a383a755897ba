"""The loader: tensors identical to safetensors' own loader for every dtype, shapes 0-d and
empty, a sharded model with an index; tampering detected with no tensor handed out (and a
forged file that authenticates but hashes wrong caught by the fused digest); partial reads that
fetch only the chunks they need; load_into, iter_tensors, aliases; a server as the source, with
a cache that keeps only ciphertext; host memory of a CPU load near the model's size; the CUDA
path where a GPU exists."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

from registry import loader
from registry.crypto.sealed import HEADER_SIZE, TAG_SIZE, SealedHeader, Sealer
from registry.errors import IntegrityError, InvalidInputError, NotFoundError
from registry.service import Registry
from registry.testing.models import make_model

MiB = 1024 * 1024


def _same(a: Any, b: Any) -> bool:
    """Bit-identical (NaN payloads included), same dtype and shape."""
    if isinstance(a, numpy.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().reshape(-1).view(torch.uint8)

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def _reference(model: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    Registry.init(home)
    with Registry.open(home) as opened:
        yield opened


def _blob_path(registry: Registry, ref: str, relative: str) -> Path:
    version = registry.resolve(ref)
    digest = next(f.digest for f in version.files if f.path == relative)
    path = registry.settings.home / "store" / "objects" / registry.store.object_name("blob", digest)
    os.chmod(path, 0o644)
    return path


ALL_DTYPES = [
    torch.bfloat16,
    torch.float16,
    torch.float32,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.complex64,
]


def _every_dtype(path: Path) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    for dtype in ALL_DTYPES:
        raw = torch.randint(
            0, 256, (3 * 5 * 7 * dtype.itemsize,), dtype=torch.uint8, generator=generator
        )
        name = str(dtype).removeprefix("torch.")
        if dtype == torch.bool:
            tensors[name] = (raw % 2).to(torch.bool)[: 3 * 5 * 7].reshape(3, 5, 7)
        else:
            tensors[name] = raw.view(dtype).reshape(3, 5, 7)
        tensors[f"{name}.scalar"] = tensors[name].reshape(-1)[0].clone()  # 0-d
        tensors[f"{name}.empty"] = tensors[name][:0]  # no elements
    save_file(tensors, str(path), metadata={"format": "pt", "note": "every dtype"})
    return tensors


def test_every_dtype_matches_safetensors(registry: Registry, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    _every_dtype(model / "model.safetensors")
    registry.push("org/dtypes", model)
    state = loader.load("org/dtypes", registry=registry)
    reference = load_file(model / "model.safetensors")
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        assert _same(state[name], tensor), name
    assert state.metadata["note"] == "every dtype"
    assert state.stats.verified_files == ("model.safetensors",)
    # numpy, for the dtypes numpy has (safetensors.numpy cannot read the file above).
    from safetensors.numpy import save_file as save_numpy

    arrays = {
        name: tensor.numpy()
        for name, tensor in reference.items()
        if not name.startswith(("bfloat16", "float8"))
    }
    numpy_model = tmp_path / "numpy-model"
    numpy_model.mkdir()
    save_numpy(arrays, str(numpy_model / "model.safetensors"))
    registry.push("org/numpy", numpy_model)
    loaded = loader.load("org/numpy", registry=registry, framework="numpy")
    expected = load_numpy(numpy_model / "model.safetensors")
    assert loaded.keys() == expected.keys() and len(expected) == 3 * 13
    for name, array in loaded.items():
        assert _same(array, expected[name]), name


def test_a_sharded_model_loads_like_its_files(registry: Registry, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", shards=3, shard_size=2_500_000, seed=3)
    assert (model / "model.safetensors.index.json").exists()
    pushed = registry.push("org/llama", model)
    registry.promote(pushed.version.ref, "production")
    state = loader.load("org/llama:production", registry=registry)
    reference = _reference(model)
    assert state.keys() == reference.keys()
    assert all(_same(state[k], v) for k, v in reference.items())
    assert state.version.digest == pushed.version.digest
    stats = state.stats
    assert stats.bytes == sum(p.stat().st_size for p in model.glob("*.safetensors"))
    assert len(stats.verified_files) == 3 and stats.regions == ("primary",)
    assert stats.tensors == len(reference) and stats.time_to_first_tensor is not None
    event = registry.audit_events(subject="org/llama", limit=1)[0]
    assert event.action == "load" and event.details["verified_files"] == 3
    # dtype= converts floating tensors only.
    half = loader.load(
        "org/llama", registry=registry, dtype=torch.float32, tensors=["model.layers.0.weight"]
    )
    assert half["model.layers.0.weight"].dtype == torch.float32
    assert _same(half["model.layers.0.weight"], reference["model.layers.0.weight"].float())


def test_iter_tensors_yields_early_and_in_full(registry: Registry, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", shards=2, shard_size=6_000_000, seed=4)
    registry.push("org/llama", model)
    stream = loader.iter_tensors("org/llama", registry=registry, chunks_per_read=1, early=True)
    seen = dict(stream)
    assert seen.keys() == _reference(model).keys()
    assert stream.stats is not None
    assert stream.stats.time_to_first_tensor is not None
    assert stream.stats.time_to_first_tensor < stream.stats.seconds
    # Stopping early releases everything and still audits what was read.
    partial = loader.iter_tensors("org/llama", registry=registry)
    for _item in partial:
        break
    assert partial.stats is not None and partial.stats.tensors == 1 and not partial.complete
    event = registry.audit_events(subject="org/llama", limit=1)[0]
    assert event.action == "load" and event.details["complete"] is False


def test_tampering_with_any_chunk_hands_out_nothing(registry: Registry, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", shards=2, shard_size=3_600_000, seed=5)
    registry.push("org/llama", model)
    target = "model-00002-of-00002.safetensors"
    path = _blob_path(registry, "org/llama", target)
    original = path.read_bytes()
    header = SealedHeader.unpack(original)
    layout = {  # tensor -> (file, end of its bytes in the file)
        tensor.name: (entry.path, entry.safetensors.data_offset + tensor.end)
        for entry in registry.show("org/llama").manifest.files
        if entry.safetensors is not None
        for tensor in entry.safetensors.tensors
    }
    for index in (0, header.chunk_count // 2, header.chunk_count - 1):
        damaged = bytearray(original)
        damaged[header.chunk_offset(index) + 100] ^= 0x01
        path.write_bytes(bytes(damaged))
        got: dict[str, Any] = {}
        with pytest.raises(IntegrityError, match=f"{target}: chunk {index} failed authentication"):
            got = loader.load("org/llama", registry=registry)
        assert got == {}  # nothing returned
        streamed: list[str] = []

        def consume(into: list[str]) -> None:
            for name, _tensor in loader.iter_tensors("org/llama", registry=registry, early=True):
                into.append(name)

        with pytest.raises(IntegrityError):
            consume(streamed)
        # The stream yielded the intact shard, and of the damaged one only tensors lying wholly
        # before the damaged chunk.
        assert set(layout) - set(streamed) <= {
            n for n, (path, _e) in layout.items() if path == target
        }
        for name in streamed:
            holder, end = layout[name]
            assert holder != target or end <= index * header.chunk_size, (name, index)
    path.write_bytes(original)
    assert len(loader.load("org/llama", registry=registry)) == 8


def test_a_forged_file_that_authenticates_fails_the_digest(
    registry: Registry, tmp_path: Path
) -> None:
    """Someone holding the data key re-seals other bytes under the file's digest: every chunk
    authenticates, so only the BLAKE3 of the whole file fused into the load catches it."""
    model = make_model(tmp_path / "model", shards=1, shard_size=2_000_000, seed=6)
    registry.push("org/llama", model)
    version = registry.resolve("org/llama")
    entry = version.files[[f.path for f in version.files].index("model-00001-of-00001.safetensors")]
    path = _blob_path(registry, "org/llama", entry.path)
    plaintext = bytearray((model / entry.path).read_bytes())
    plaintext[-10] ^= 0xFF  # a weight, not the header
    sealer = Sealer(
        registry.blob_key(version, entry.digest),
        entry.digest,
        plaintext_size=len(plaintext),
        chunk_size=SealedHeader.unpack(path.read_bytes()).chunk_size,
    )
    forged = bytearray(sealer.header_bytes)
    header = sealer.header
    for index in range(header.chunk_count):
        start = index * header.chunk_size
        forged += sealer.seal_chunk(
            index, plaintext[start : start + header.chunk_plain_size(index)]
        )
    path.write_bytes(bytes(forged))
    with pytest.raises(IntegrityError, match="content digest mismatch"):
        loader.load("org/llama", registry=registry)
    # iter_tensors hands out nothing of a file until it is verified whole...
    handed: list[str] = []

    def consume(into: list[str], **options: Any) -> None:
        for name, _tensor in loader.iter_tensors("org/llama", registry=registry, **options):
            into.append(name)

    with pytest.raises(IntegrityError, match="content digest mismatch"):
        consume(handed)
    assert handed == []
    # ...unless asked to yield early, which is what early means: chunks authenticated only.
    with pytest.raises(IntegrityError, match="content digest mismatch"):
        consume(handed, early=True, chunks_per_read=1)
    assert handed
    # A partial read cannot check the whole file: the documented trade-off (AEAD only).
    with loader.open("org/llama", registry=registry) as model_reader:
        model_reader.get_tensor("model.layers.0.weight")
        assert model_reader.stats.authenticated_files == (entry.path,)
        assert model_reader.stats.verified_files == ()


def test_a_damaged_region_is_read_around(home: Path, tmp_path: Path) -> None:
    Registry.init(home, store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")])
    model = make_model(tmp_path / "model", shards=1, shard_size=3_000_000, seed=14)
    with Registry.open(home) as registry:
        registry.push("org/llama", model)
        version = registry.resolve("org/llama")
        digest = next(f.digest for f in version.files if f.path.endswith(".safetensors"))
        preferred = tmp_path / "region-a" / "objects" / registry.store.object_name("blob", digest)
        os.chmod(preferred, 0o644)
        damaged = bytearray(preferred.read_bytes())
        damaged[SealedHeader.unpack(bytes(damaged)).chunk_offset(1) + 5] ^= 1
        preferred.write_bytes(bytes(damaged))
        state = loader.load("org/llama", registry=registry)
        assert all(_same(state[k], v) for k, v in _reference(model).items())
        assert state.stats.retries == 1
        assert set(state.stats.regions) == {"region-1", "region-2"}
        bad = {(p.region, p.state) for p in registry.catalog.placements() if p.digest == digest}
        assert ("region-1", "bad") in bad
        assert registry.audit_events(subject="org/llama", limit=1)[0].details["bad_copies"]


def test_get_slice_reads_only_the_chunks_it_needs(registry: Registry, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    big = torch.arange(2048 * 1024, dtype=torch.float32).reshape(2048, 1024)  # 8 MiB, 4 KiB a row
    save_file({"a.small": torch.ones(3), "lm_head.weight": big}, str(model / "model.safetensors"))
    registry.push("org/tp", model)
    with loader.open("org/tp", registry=registry) as reader:
        assert reader.get_slice("lm_head.weight").get_shape() == [2048, 1024]
        rows = reader.get_slice("lm_head.weight")[300:310]
        assert torch.equal(rows, big[300:310])
        stats = reader.stats
        # The header of the sealed file, then one range holding rows 300..309 (one 1 MiB chunk).
        assert stats.reads == 2
        assert stats.sealed_bytes <= HEADER_SIZE + MiB + 16
        assert torch.equal(reader.get_slice("lm_head.weight")[5], big[5])
        assert torch.equal(reader.get_slice("lm_head.weight")[-1, 3:7], big[-1, 3:7])
        assert torch.equal(reader.get_slice("lm_head.weight")[10:2000:600], big[10:2000:600])
        assert torch.equal(reader.get_slice("lm_head.weight")[..., 2], big[..., 2])
        assert reader.get_slice("lm_head.weight")[7:7].shape == (0, 1024)
        small = reader.get_tensor("a.small")
        assert torch.equal(small, torch.ones(3))
        # A small tensor owns its bytes: it does not keep the chunk it was decrypted in alive.
        assert small.untyped_storage().nbytes() == 12
        reads = reader.stats.reads
        reader.get_tensor("a.small")  # the chunk decrypted last is kept: no read again
        assert reader.stats.reads == reads
        assert set(reader.keys()) == {"a.small", "lm_head.weight"}
        with pytest.raises(NotFoundError):
            reader.get_tensor("nope")
    partial = loader.load("org/tp", registry=registry, tensors=["a.small"])
    assert list(partial) == ["a.small"]
    assert partial.stats.authenticated_files == ("model.safetensors",)
    assert partial.stats.sealed_bytes <= HEADER_SIZE + MiB + 16


def test_load_into_fills_a_module(registry: Registry, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    model = tmp_path / "model"
    model.mkdir()
    save_file(source.state_dict(), str(model / "model.safetensors"))
    registry.push("org/mlp", model)
    target = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    result = loader.load_into(target, "org/mlp", registry=registry)
    assert result.version.ref == "org/mlp@1" and not result.missing_keys
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)
    # A mismatch is found in the manifest, before anything is copied: the module is unchanged.
    for wrong, message in (
        (torch.nn.Sequential(torch.nn.Linear(64, 32)), "does not match the module"),
        (
            torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)),
            "differ in shape",
        ),
    ):
        before = {k: v.clone() for k, v in wrong.state_dict().items()}
        with pytest.raises(InvalidInputError, match=message):
            loader.load_into(wrong, "org/mlp", registry=registry)
        assert all(torch.equal(wrong.state_dict()[k], v) for k, v in before.items())
    smaller = torch.nn.Sequential(torch.nn.Linear(64, 32))
    outcome = loader.load_into(smaller, "org/mlp", registry=registry, strict=False)
    assert outcome.unexpected_keys == ["2.bias", "2.weight"] and not outcome.missing_keys
    assert torch.equal(smaller[0].weight, source[0].weight)


def test_bad_options_are_refused_before_reading(registry: Registry, tmp_path: Path) -> None:
    registry.push("org/llama", make_model(tmp_path / "m", shards=1, shard_size=100_000))
    for kwargs, message in (
        ({"device": "tpu"}, "unknown device"),
        ({"framework": "jax"}, "unknown framework"),
        ({"framework": "numpy", "device": "cuda"}, "numpy"),
        ({"verify": "none"}, "verify must be"),
        ({"workers": 0}, "workers"),
        ({"dtype": "float16"}, "torch.dtype"),
        ({"device": "cudafoo"}, "unknown device"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            loader.load("org/llama", registry=registry, **kwargs)
    with pytest.raises(NotFoundError, match="no tensor 'nope'"):
        loader.load("org/llama", registry=registry, tensors=["nope"])
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            loader.load("org/llama", registry=registry, device="cuda:0")


# -- through a server, with the cache ------------------------------------------------------------


def test_through_a_server_with_a_ciphertext_cache(home: Path, tmp_path: Path) -> None:
    from registry.client import RemoteRegistry
    from tests.test_api_cli import LiveServer

    Registry.init(home)
    model = make_model(tmp_path / "model", shards=2, shard_size=2_000_000, seed=9)
    with Registry.open(home) as local:
        local.push("org/llama", model)
        _record, token = local.create_token("fleet", role="reader", models=["org/*"])
        with LiveServer(local, tmp_path / "staging", part_size=MiB) as server:
            cache = loader.Cache(tmp_path / "cache", max_bytes=100 * MiB)
            with RemoteRegistry(server.url, token) as remote:
                first = loader.load("org/llama", registry=remote, cache=cache)
                reference = _reference(model)
                assert all(_same(first[k], v) for k, v in reference.items())
                assert first.stats.cache_hits == 0 and len(cache.entries()) == 2
                served = _blob_requests(server)
                second = loader.load("org/llama", registry=remote, cache=cache)
                assert second.stats.cache_hits == 2
                assert _blob_requests(server) == served  # nothing downloaded again
                assert all(_same(second[k], v) for k, v in reference.items())
                # The cache holds ciphertext only: no tensor's bytes appear in it.
                needle = reference["model.layers.0.weight"].view(torch.uint8)[:64].numpy().tobytes()
                assert not any(needle in entry.read_bytes() for entry in cache.entries())
                # A damaged entry is dropped and read from the server again.
                entry = cache.entries()[0]
                damaged = bytearray(entry.read_bytes())
                damaged[HEADER_SIZE + 10] ^= 1
                entry.write_bytes(bytes(damaged))
                third = loader.load("org/llama", registry=remote, cache=cache)
                assert all(_same(third[k], v) for k, v in reference.items())
                assert third.stats.retries == 1 and third.stats.cache_hits == 2
                # Only a file downloaded whole by one load is kept: the next load fetches it.
                assert len(cache.entries()) == 1
                assert loader.load("org/llama", registry=remote, cache=cache).stats.cache_hits == 1
                assert loader.load("org/llama", registry=remote, cache=cache).stats.cache_hits == 2
                # Many damaged chunks, read by several workers at once: still read around.
                big = make_model(tmp_path / "big", shards=1, shard_size=6 * MiB, seed=17)
                local.push("org/big", big)
                loader.load("org/big", registry=remote, cache=cache)
                big_entry = next(e for e in cache.entries() if e.stat().st_size > 5 * MiB)
                damaged = bytearray(big_entry.read_bytes())
                header = SealedHeader.unpack(bytes(damaged))
                for index in range(header.chunk_count):
                    damaged[header.chunk_offset(index) + 3] ^= 1
                big_entry.write_bytes(bytes(damaged))
                fourth = loader.load(
                    "org/big", registry=remote, cache=cache, workers=4, chunks_per_read=1
                )
                assert all(_same(fourth[k], v) for k, v in _reference(big).items())
                assert fourth.stats.retries >= 1  # as many as workers had read from it
                assert not list(cache.root.glob(".*.partial"))  # nothing left behind
                # Bounded: a cache smaller than one file keeps nothing.
                tiny = loader.Cache(tmp_path / "tiny", max_bytes=1000)
                loader.load("org/llama", registry=remote, cache=tiny)
                assert tiny.entries() == []
        event = local.audit_events(subject="org/llama", limit=1)[0]
        assert event.action == "key-broker"


def _blob_requests(server: Any) -> float:
    board = server.app.state["registry_state"].metrics
    return sum(
        sample.value
        for metric in board.requests.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["route"] == "/v1/blob"
    )


# -- memory ---------------------------------------------------------------------------------------


PEAK_SCRIPT = """
import json, resource, sys
from registry import loader
from registry.service import Registry
import torch  # imported before the baseline: its own memory is not the loader's
with Registry.open(sys.argv[1]) as registry:
    registry.resolve("org/big")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = loader.load("org/big", registry=registry)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"delta": (after - before) * 1024, "bytes": state.stats.bytes}))
"""


def test_a_cpu_load_peaks_near_the_model_size(home: Path, tmp_path: Path) -> None:
    Registry.init(home)
    model = make_model(tmp_path / "model", shards=2, shard_size=100 * MiB, seed=10)
    with Registry.open(home) as registry:
        registry.push("org/big", model)
    answer = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(home)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MODEL_REGISTRY_HOME": str(home)},
    )
    figures = json.loads(answer.stdout)
    size = figures["bytes"]
    assert size >= 190 * MiB
    # The tensors themselves, plus read buffers and thread stacks: no second copy of the model.
    assert figures["delta"] < size * 1.15 + 48 * MiB, figures


# -- CUDA ------------------------------------------------------------------------------------------


def gpu(test: Any) -> Any:
    """Marked `gpu`, and skipped cleanly where torch sees no CUDA device."""
    needs = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.gpu(needs(test))


@gpu
def test_cuda_load_matches_and_bounds_staging(registry: Registry, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", shards=2, shard_size=64 * MiB, seed=11)
    registry.push("org/llama", model)
    staging = 64 * MiB
    state = loader.load("org/llama", registry=registry, device="cuda:0", staging_bytes=staging)
    reference = _reference(model)
    for name, tensor in reference.items():
        assert state[name].device.type == "cuda"
        assert _same(state[name].cpu(), tensor), name
    assert state.stats.staging_bytes <= staging
    assert len(state.stats.verified_files) == 2


@gpu
def test_cuda_load_of_a_tampered_file_fails(registry: Registry, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", shards=1, shard_size=8 * MiB, seed=12)
    registry.push("org/llama", model)
    path = _blob_path(registry, "org/llama", "model-00001-of-00001.safetensors")
    damaged = bytearray(path.read_bytes())
    damaged[-40] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError):
        loader.load("org/llama", registry=registry, device="cuda:0")


def test_an_s3_store_is_read_through_the_cache(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        store = f"s3://models/registry?region=us-east-1&endpoint=http://{host}:{port}"
        Registry.init(home, store=store)
        model = make_model(tmp_path / "model", shards=2, shard_size=1_500_000, seed=15)
        cache = loader.Cache(tmp_path / "cache", max_bytes=64 * MiB)
        with Registry.open(home) as registry:
            registry.push("org/llama", model)
            first = loader.load("org/llama", registry=registry, cache=cache)
            second = loader.load("org/llama", registry=registry, cache=cache)
            uncached = loader.load("org/llama", registry=registry, cache=False)
        reference = _reference(model)
        for state in (first, second, uncached):
            assert all(_same(state[k], v) for k, v in reference.items())
        assert first.stats.cache_hits == 0 and first.stats.regions == ("primary",)
        assert second.stats.cache_hits == 2 and second.stats.regions == ("cache",)
        assert uncached.stats.cache_hits == 0 and len(cache.entries()) == 2
    finally:
        server.stop()


def test_a_failed_open_leaves_no_download_behind(home: Path, tmp_path: Path) -> None:
    from registry.client import RemoteRegistry
    from tests.test_api_cli import LiveServer

    Registry.init(home)
    model = make_model(tmp_path / "model", shards=1, shard_size=500_000, seed=16)
    with Registry.open(home) as local:
        local.push("org/llama", model)
        _record, token = local.create_token("fleet", role="reader", models=["org/*"])
        blob = _blob_path(local, "org/llama", "model-00001-of-00001.safetensors")
        damaged = bytearray(blob.read_bytes())
        damaged[40] ^= 1  # the sealed header: the key commitment fails
        blob.write_bytes(bytes(damaged))
        cache = loader.Cache(tmp_path / "cache", max_bytes=100 * MiB)
        with (
            LiveServer(local, tmp_path / "staging", part_size=MiB) as server,
            RemoteRegistry(server.url, token) as remote,
        ):
            for _ in range(3):
                with pytest.raises(IntegrityError):
                    loader.load("org/llama", registry=remote, cache=cache)
    assert not list(cache.root.glob(".*.partial")) and cache.entries() == []


def test_the_staging_ring_path_without_a_gpu(registry: Registry, tmp_path: Path) -> None:
    """The GPU path's engine (a bounded ring of staging slots, hashed in order, delivered, slots
    reclaimed only after their delivery finished) run with plain host buffers for slots."""
    from collections import deque

    from registry.loader.engine import Counters, Pipeline, SealedFile, StagingRing
    from registry.replication import ReadReport

    model = make_model(tmp_path / "model", shards=1, shard_size=9 * MiB, seed=18)
    registry.push("org/llama", model)
    version = registry.resolve("org/llama")
    entry = next(f for f in version.files if f.path.endswith(".safetensors"))
    plaintext = (model / entry.path).read_bytes()

    def run(slot_count: int) -> tuple[bytes, list[int]]:
        buffers = [memoryview(bytearray(2 * MiB)) for _ in range(slot_count)]
        in_flight: deque[int] = deque()
        ring = StagingRing(buffers, 2 * MiB, reclaim=lambda: ring.release(in_flight.popleft()))
        destination = bytearray(entry.size)
        order: list[int] = []

        def deliver(offset: int, data: memoryview, slot: int) -> None:
            destination[offset : offset + len(data)] = data  # the "asynchronous copy"
            order.append(offset)
            in_flight.append(slot)

        sealed = SealedFile(
            registry.blob_reader(entry.digest, ReadReport(), what=entry.path),
            registry.blob_key(version, entry.digest),
            entry.digest,
            entry.size,
            what=entry.path,
            counters=Counters(),
        )
        with Pipeline(workers=3, chunks_per_read=1) as pipeline:
            pipeline.decrypt_through(sealed, ring, deliver, verify=True)
        while in_flight:
            ring.release(in_flight.popleft())
        assert len(ring._free) == slot_count  # every slot came back
        return bytes(destination), order

    for slots in (2, 3, 8):
        restored, order = run(slots)
        assert restored == plaintext
        assert order == sorted(order) and order[0] == 0  # delivered in file order


# -- nothing sized from a sealed header before a chunk authenticated it ----------------------------


class _ReadLog:
    """A file's reader that records every read (offset, bytes asked for), whether the range
    is read into a buffer or taken in place from a mapping."""

    def __init__(self, inner: Any, reads: list[tuple[int, int]]) -> None:
        self.inner, self.reads = inner, reads

    def read_into(self, offset: int, buffer: memoryview, /) -> int:
        self.reads.append((offset, len(buffer)))
        return int(self.inner.read_into(offset, buffer))

    def view(self, offset: int, length: int, /) -> memoryview | None:
        found: memoryview | None = self.inner.view(offset, length)
        if found is not None:
            self.reads.append((offset, length))
        return found

    def damaged(self, offset: int, error: IntegrityError, /) -> bool:
        return bool(self.inner.damaged(offset, error))

    def regions_used(self) -> list[str]:
        return list(self.inner.regions_used())


@pytest.fixture
def read_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every read a local load makes of its files' sealed bytes."""
    from registry.loader import sources

    reads: list[tuple[int, int]] = []
    real = sources.LocalSource.reader

    def logged(self: Any, resolved: Any, entry: Any) -> Any:
        return _ReadLog(real(self, resolved, entry), reads)

    monkeypatch.setattr(sources.LocalSource, "reader", logged)
    return reads


def _nothing_escapes(registry: Registry, match: str) -> None:
    """A load and a streamed load yielding each tensor as soon as it authenticates (early) are
    both refused, with no tensor and no byte of progress handed out."""
    told: list[tuple[int, int]] = []
    got: dict[str, Any] = {}
    with pytest.raises(IntegrityError, match=match):
        got = loader.load("org/llama", registry=registry, on_progress=lambda *a: told.append(a))
    assert got == {} and told == []
    streamed: list[str] = []

    def consume() -> None:
        for name, _tensor in loader.iter_tensors(
            "org/llama", registry=registry, early=True, on_progress=lambda *a: told.append(a)
        ):
            streamed.append(name)

    with pytest.raises(IntegrityError, match=match):
        consume()
    assert streamed == [] and told == []


@pytest.mark.parametrize(
    ("forged_chunk_size", "what"),
    [(16 * MiB, "chunks as large as the format allows"), (64, "millions of tiny chunks")],
)
def test_a_forged_chunk_size_is_refused_before_anything_is_sized_from_it(
    registry: Registry,
    tmp_path: Path,
    read_log: list[tuple[int, int]],
    forged_chunk_size: int,
    what: str,
) -> None:
    """docs/format.md: a reader authenticates chunk 0 (and with it the whole header) before it
    sizes anything from the header. A header edited to another chunk size passes every check a
    header alone allows (format, key commitment, the manifest's plaintext size); the load must
    then read chunk 0 on its own, in one chunk's buffer, and stop there: no read buffers of
    several (16 MiB) chunks per worker, no bookkeeping for 393,216 chunks, nothing handed out."""
    import tracemalloc

    model = make_model(tmp_path / "model", shards=1, shard_size=24 * MiB, seed=19)
    registry.push("org/llama", model)
    path = _blob_path(registry, "org/llama", "model-00001-of-00001.safetensors")
    forged = bytearray(path.read_bytes())
    struct.pack_into(">I", forged, 8, forged_chunk_size)
    path.write_bytes(bytes(forged))
    claimed = SealedHeader.unpack(bytes(forged))
    assert claimed.chunk_size == forged_chunk_size  # a valid header, but for the AEAD
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
            loader.load("org/llama", registry=registry, workers=4, chunks_per_read=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    chunk_zero = (HEADER_SIZE, min(forged_chunk_size, claimed.plaintext_size) + TAG_SIZE)
    assert read_log == [(0, HEADER_SIZE), chunk_zero], what
    assert peak < 20 * MiB, f"{what}: {peak / MiB:.1f} MiB allocated before refusing"
    _nothing_escapes(registry, "chunk 0 failed authentication")


def test_a_damaged_chunk_0_stops_every_read_after_one_chunk(
    registry: Registry, tmp_path: Path, read_log: list[tuple[int, int]]
) -> None:
    """Chunk 0 is authenticated on its own before the workers start: a damaged chunk 0 costs one
    chunk's read, whether the file is loaded whole or a tensor spanning many chunks is read on
    its own (`open`), and nothing of the file comes out."""
    model = make_model(tmp_path / "model", shards=1, shard_size=24 * MiB, seed=20)
    registry.push("org/llama", model)
    path = _blob_path(registry, "org/llama", "model-00001-of-00001.safetensors")
    damaged = bytearray(path.read_bytes())
    damaged[HEADER_SIZE + 1000] ^= 0x01
    path.write_bytes(bytes(damaged))
    one_chunk = [(0, HEADER_SIZE), (HEADER_SIZE, MiB + TAG_SIZE)]
    with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
        loader.load("org/llama", registry=registry, workers=4, chunks_per_read=4)
    assert read_log == one_chunk
    read_log.clear()
    with loader.open("org/llama", registry=registry, workers=4) as reader:
        first = min(reader._job.tensors.values(), key=lambda located: located.tensor.begin).tensor
        assert first.nbytes > 2 * MiB  # spans several chunks, starting in chunk 0
        with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
            reader.get_tensor(first.name)
    assert read_log == one_chunk
    _nothing_escapes(registry, "chunk 0 failed authentication")


# -- LoadOptions -----------------------------------------------------------------------------------


def test_load_options_and_keywords(registry: Registry, tmp_path: Path) -> None:
    import dataclasses

    model = make_model(tmp_path / "model", shards=2, shard_size=600_000, seed=21)
    registry.push("org/llama", model)
    reference = _reference(model)
    options = loader.LoadOptions(framework="numpy", workers=2, chunks_per_read=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.workers = 3  # type: ignore[misc]
    # options= alone, keywords alone, and keywords replacing fields of options=.
    by_options = loader.load("org/llama", registry=registry, options=options)
    by_keywords = loader.load(
        "org/llama", registry=registry, framework="numpy", workers=2, chunks_per_read=1
    )
    for state in (by_options, by_keywords):
        assert state.stats.framework == "numpy"
        assert all(state[k].tobytes() == v.numpy().tobytes() for k, v in reference.items())
    assert by_options.stats.reads == by_keywords.stats.reads
    as_torch = loader.load("org/llama", registry=registry, options=options, framework="pt")
    as_torch_options = dataclasses.replace(options, framework="pt")
    assert as_torch.stats.framework == "pt" and options.framework == "numpy"
    assert all(_same(as_torch[k], v) for k, v in reference.items())
    name = next(iter(reference))
    assert dict(loader.iter_tensors("org/llama", registry=registry, options=options)).keys() == (
        reference.keys()
    )
    with loader.open("org/llama", registry=registry, options=options) as reader:
        assert reader.get_tensor(name).tobytes() == reference[name].numpy().tobytes()
        assert reader.stats.framework == "numpy"
    # Checked when used, before the registry is contacted; unknown keywords as before.
    with pytest.raises(InvalidInputError, match="unknown device"):
        loader.load("org/llama", registry=registry, options=loader.LoadOptions(device="tpu"))
    with pytest.raises(InvalidInputError, match="unknown device"):
        loader.load("org/llama", registry=registry, options=as_torch_options, device="tpu")
    for call, keyword in ((loader.load, "nope"), (loader.open, "verify")):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'"):
            call("org/llama", registry=registry, **{keyword: 1})
    with pytest.raises(TypeError, match="LoadOptions"):
        loader.load("org/llama", registry=registry, options={"device": "cpu"})  # type: ignore[arg-type]


def test_the_staging_ring_gets_every_slot_back_when_chunk_0_fails(
    registry: Registry, tmp_path: Path
) -> None:
    """The GPU path's engine with a damaged chunk 0: chunk 0 is opened on its own into the first
    run's slot, nothing is delivered, and that slot comes back."""
    from collections import deque

    from registry.loader.engine import Counters, Pipeline, SealedFile, StagingRing

    model = make_model(tmp_path / "model", shards=1, shard_size=5 * MiB, seed=22)
    registry.push("org/llama", model)
    version = registry.resolve("org/llama")
    entry = next(f for f in version.files if f.path.endswith(".safetensors"))
    sealed_bytes = bytearray(_blob_path(registry, "org/llama", entry.path).read_bytes())
    sealed_bytes[HEADER_SIZE + 7] ^= 0x80

    class Memory:
        def __init__(self) -> None:
            self.reads: list[tuple[int, int]] = []

        def read_into(self, offset: int, buffer: memoryview, /) -> int:
            self.reads.append((offset, len(buffer)))
            data = sealed_bytes[offset : offset + len(buffer)]
            buffer[: len(data)] = data
            return len(data)

        def damaged(self, offset: int, error: IntegrityError, /) -> bool:
            return False

    memory = Memory()
    in_flight: deque[int] = deque()
    ring = StagingRing(
        [memoryview(bytearray(2 * MiB)) for _ in range(3)],
        2 * MiB,
        reclaim=lambda: ring.release(in_flight.popleft()),
    )
    delivered: list[int] = []
    sealed = SealedFile(
        memory,
        registry.blob_key(version, entry.digest),
        entry.digest,
        entry.size,
        what=entry.path,
        counters=Counters(),
    )
    with (
        Pipeline(workers=3, chunks_per_read=1) as pipeline,
        pytest.raises(IntegrityError, match="chunk 0 failed authentication"),
    ):
        pipeline.decrypt_through(
            sealed, ring, lambda offset, data, slot: delivered.append(offset), verify=True
        )
    assert delivered == [] and len(ring._free) == 3
    assert memory.reads == [(0, HEADER_SIZE), (HEADER_SIZE, MiB + TAG_SIZE)]


def test_a_load_audits_the_key_unwraps_it_took_while_others_load(
    registry: Registry, tmp_path: Path
) -> None:
    """Every load records the data keys it unwrapped, counted per call: two loads sharing one
    handle at once each audit their own, and the handle's other users are not charged."""
    model = make_model(tmp_path / "model", shards=3, shard_size=1_000_000, seed=5)
    registry.push("org/llama", model)
    with ThreadPoolExecutor(2) as pool:
        loads = [pool.submit(loader.load, "org/llama", registry=registry) for _ in range(2)]
        assert all(len(done.result()) for done in loads)
    events = [e for e in registry.audit_events(subject="org/llama") if e.action == "load"]
    assert [e.details["key_unwraps"] for e in events] == [3, 3]  # one per shard
    partial = loader.load("org/llama", registry=registry, tensors=["model.layers.0.weight"])
    assert len(partial) == 1
    event = registry.audit_events(subject="org/llama", limit=1)[0]
    assert event.action == "load" and event.details["key_unwraps"] == 1


def test_the_first_tensor_waits_for_no_sqlalchemy_and_the_load_is_still_audited(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the first tensor a load reads the SQLite catalog through its reads alone; the
    # catalog through SQLAlchemy (for the audit entry) opens after it, on a thread of its own.
    model = make_model(tmp_path / "m", shards=3, shard_size=200_000, seed=3)
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/m", model)
    opened_at_first_tensor: list[bool] = []
    original = Registry.prepare_load_record

    def prepare(self: Registry) -> None:
        opened_at_first_tensor.append(self._context.home.opened_catalog.value is not None)
        original(self)

    monkeypatch.setattr(Registry, "prepare_load_record", prepare)
    with Registry.open(home) as registry:
        first = None
        for name, tensor in loader.iter_tensors("org/m", registry=registry):
            if first is None:
                first = name
                assert opened_at_first_tensor == [False], "SQLAlchemy opened before it"
            assert tensor.numel() > 0
        assert first is not None
        loads = [e for e in registry.audit_events(subject="org/m") if e.action == "load"]
        assert len(loads) == 1 and loads[0].details["version"] == 1
    assert opened_at_first_tensor == [False]
