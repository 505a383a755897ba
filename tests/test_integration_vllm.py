"""vLLM's `model-registry` load format (registry/integrations/vllm.py) against a stand-in of the
vLLM interfaces it uses (tests/fake_vllm, same signatures as vllm 0.33.0; the real package needs
a CUDA torch: scripts/check_vllm_plugin.sh runs the plugin against it). The pin is read and a
folder without a complete one refused, exactly the pinned digest loads (after the alias moved,
on every "rank"), the weights reach model.load_weights as an iterator of verified (name, tensor)
pairs, a tampered blob hands over nothing of its file, and a server works with the cache."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import registry.integrations.vllm as plugin
from registry.errors import IntegrityError, InvalidInputError, NotFoundError
from registry.service import Registry
from registry.testing.models import make_model

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).resolve().parent / "fake_vllm"
MiB = 1 << 20


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The stand-in vllm on sys.path, fresh, with the plugin's entry point as the only one."""
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.setattr(plugin, "_registered", None)
    monkeypatch.setattr(plugin, "_class", None)
    point = _entry_point()
    monkeypatch.setattr(
        "importlib.metadata.entry_points",
        lambda group: [point] if group == "vllm.general_plugins" else [],
    )
    import vllm.plugins

    assert vllm.__file__.startswith(str(FAKE))
    vllm.plugins.load_general_plugins()
    yield vllm
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def _entry_point() -> EntryPoint:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    value = project["entry-points"]["vllm.general_plugins"]["model_registry"]
    return EntryPoint("model_registry", value, "vllm.general_plugins")


class Model(torch.nn.Module):
    """A vLLM model's weight-loading side: parameters named like the checkpoint's tensors and a
    load_weights(weights) that consumes an iterable of (name, tensor) and returns the names."""

    def __init__(self, reference: dict[str, torch.Tensor], extra: bool = False) -> None:
        super().__init__()
        self.names = list(reference)
        for index, tensor in enumerate(reference.values()):
            self.register_parameter(f"p{index}", torch.nn.Parameter(torch.zeros_like(tensor)))
        if extra:
            self.register_parameter("not_in_checkpoint", torch.nn.Parameter(torch.zeros(1)))
        self.received: list[str] = []
        self.argument: Any = None

    def load_weights(self, weights: Any) -> set[str]:
        self.argument = weights
        own = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            assert isinstance(name, str) and isinstance(tensor, torch.Tensor)
            self.received.append(name)
            key = f"p{self.names.index(name)}"
            own[key].data.copy_(tensor)
            loaded.add(key)
        return loaded

    def state(self) -> dict[str, torch.Tensor]:
        own = dict(self.named_parameters())
        return {name: own[f"p{i}"].detach() for i, name in enumerate(self.names)}


def _reference(model: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().reshape(-1).view(torch.uint8)

    return a.keys() == b.keys() and all(torch.equal(raw(a[k]), raw(b[k])) for k in a)


def _serve(vllm: Any, folder: Path, model: Model, extra: dict[str, Any] | None = None) -> Model:
    """What vLLM does with `--load-format model-registry`: get_model on the folder."""
    from vllm.config import LoadConfig, ModelConfig, VllmConfig
    from vllm.model_executor.model_loader import get_model

    config = VllmConfig(
        ModelConfig(str(folder)),
        LoadConfig("Model-Registry", model_loader_extra_config=extra or {}),
        build=lambda: model,
    )
    result: Model = get_model(vllm_config=config)
    return result


# -- registration ----------------------------------------------------------------------------------


def test_importing_the_entry_point_imports_neither_vllm_nor_torch() -> None:
    code = (
        "import sys, registry.integrations.vllm as p; assert callable(p.register); "
        "assert not {'vllm', 'torch'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_entry_point_registers_the_load_format(vllm: Any) -> None:
    from vllm.config import LoadConfig
    from vllm.model_executor import model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    assert _entry_point().load() is plugin.register
    cls = model_loader._LOAD_FORMAT_TO_MODEL_LOADER["model-registry"]
    assert issubclass(cls, BaseModelLoader) and cls.__name__ == "RegistryModelLoader"
    assert not cls.__abstractmethods__
    loader = model_loader.get_model_loader(LoadConfig("model-registry"))
    assert type(loader) is cls and loader.load_config.load_format == "model-registry"
    plugin.register()  # vLLM may run it again: nothing changes
    assert model_loader._LOAD_FORMAT_TO_MODEL_LOADER["model-registry"] is cls


# -- the pin ---------------------------------------------------------------------------------------


def test_a_folder_without_a_complete_pin_is_refused(
    vllm: Any, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    reference = _reference(model_dir)
    with pytest.raises(InvalidInputError, match=r"no registry\.json.*model-registry prepare"):
        _serve(vllm, model_dir, Model(reference))  # a plain checkpoint folder
    registry.push("org/llama", model_dir)
    folder = tmp_path / "prepared"
    registry.prepare("org/llama@1", folder)
    pin = json.loads((folder / "registry.json").read_text())
    (folder / "registry.json").write_text(json.dumps({**pin, "complete": False}))
    with pytest.raises(InvalidInputError, match=r"was being prepared.*prepare` again"):
        _serve(vllm, folder, Model(reference))
    (folder / "registry.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="not a pin written by"):
        _serve(vllm, folder, Model(reference))
    (folder / "registry.json").write_text(json.dumps(pin))
    model = _serve(vllm, folder, Model(reference))
    assert _same(model.state(), reference)


def test_the_pinned_digest_loads_on_every_rank_after_the_alias_moved(
    vllm: Any, registry: Registry, tmp_path: Path
) -> None:
    first = make_model(tmp_path / "v1", shards=3, shard_size=300_000, seed=7)
    second = make_model(tmp_path / "v2", shards=3, shard_size=300_000, seed=8)
    registry.push("org/llama", first)
    registry.promote("org/llama@1", "production")
    folder = tmp_path / "prepared"
    prepared = registry.prepare("org/llama:production", folder)
    assert not list(folder.glob("*.safetensors"))
    registry.push("org/llama", second)
    registry.promote("org/llama@2", "production")  # after prepare: the folder keeps @1
    reference = _reference(first)
    ranks = [_serve(vllm, folder, Model(reference)) for _ in range(2)]  # one loader per rank
    for rank in ranks:
        assert _same(rank.state(), reference)
        assert rank.received == list(reference)  # file order, each tensor once
        assert not isinstance(rank.argument, list | tuple | dict)  # streamed, not collected
        assert iter(rank.argument) is rank.argument
    assert registry.resolve("org/llama:production").number == 2
    assert prepared.pin.pinned_ref == f"org/llama@{registry.resolve('org/llama@1').digest}"


def test_a_version_gone_from_the_registry_is_an_error_not_another_version(
    vllm: Any, registry: Registry, tmp_path: Path
) -> None:
    first = make_model(tmp_path / "v1", shards=1, shard_size=100_000, seed=3)
    registry.push("org/llama", first)
    folder = tmp_path / "prepared"
    registry.prepare("org/llama@1", folder)
    registry.push("org/llama", make_model(tmp_path / "v2", shards=1, shard_size=100_000, seed=4))
    registry.delete("org/llama@1", reason="withdrawn")
    model = Model(_reference(first))
    with pytest.raises(NotFoundError, match=r"pins org/llama@1 .*prepare it again"):
        _serve(vllm, folder, model)
    assert model.received == []
    from vllm.config import LoadConfig, ModelConfig
    from vllm.model_executor.model_loader import get_model_loader

    loader = get_model_loader(LoadConfig("model-registry"))
    with pytest.raises(NotFoundError, match="prepare it again"):
        loader.download_model(ModelConfig(str(folder)))


def test_a_folder_file_changed_after_prepare_is_refused(
    vllm: Any, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("org/llama", model_dir)
    folder = tmp_path / "prepared"
    registry.prepare("org/llama@1", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 512}))
    model = Model(_reference(model_dir))
    with pytest.raises(IntegrityError, match=r"config\.json is not the file org/llama@1 has"):
        _serve(vllm, folder, model)
    assert model.received == []


# -- what reaches model.load_weights ---------------------------------------------------------------


def test_nothing_of_a_tampered_blob_is_handed_over(
    vllm: Any, registry: Registry, tmp_path: Path
) -> None:
    # Shards of several 4 MiB reads, damaged in the last: the tensors in its first reads
    # authenticate, but none is handed over before the whole file verified.
    model_dir = make_model(tmp_path / "model", shards=2, shard_size=9 * MiB, seed=5)
    registry.push("org/llama", model_dir)
    folder = tmp_path / "prepared"
    registry.prepare("org/llama@1", folder)
    version = registry.resolve("org/llama@1")
    shard = "model-00002-of-00002.safetensors"
    digest = next(f.digest for f in version.files if f.path == shard)
    blob = registry.settings.home / "store" / "objects" / registry.store.object_name("blob", digest)
    blob.chmod(0o644)
    damaged = bytearray(blob.read_bytes())
    damaged[-100] ^= 1
    blob.write_bytes(bytes(damaged))
    model = Model(_reference(model_dir))
    with pytest.raises(IntegrityError):
        _serve(vllm, folder, model)
    first = list(load_file(model_dir / "model-00001-of-00002.safetensors"))
    assert model.received == first  # the file before it, verified; nothing of the damaged one


def test_a_parameter_the_version_lacks_is_reported(
    vllm: Any, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("org/llama", model_dir)
    folder = tmp_path / "prepared"
    registry.prepare("org/llama@1", folder)
    with pytest.raises(ValueError, match=r"not initialized from checkpoint.*not_in_checkpoint"):
        _serve(vllm, folder, Model(_reference(model_dir), extra=True))


def test_extra_config_is_checked_before_the_registry_is_asked(
    vllm: Any, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("org/llama", model_dir)
    folder = tmp_path / "prepared"
    registry.prepare("org/llama@1", folder)
    reference = _reference(model_dir)
    for extra, message in (
        ({"bogus": 1}, "takes workers, cache, cache_dir, device; not bogus"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"cache": "yes"}, "cache must be true or false"),
        ({"cache": False, "cache_dir": "/x"}, "choose one"),
        ({"device": "tpu"}, 'device must be "cpu" or "cuda"'),
    ):
        model = Model(reference)
        with pytest.raises(InvalidInputError, match=message):
            _serve(vllm, folder, model, extra)
        assert model.received == []
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            _serve(vllm, folder, Model(reference), {"device": "cuda"})
    model = _serve(vllm, folder, Model(reference), {"workers": 2, "cache": False})
    assert _same(model.state(), reference)


# -- through a server ------------------------------------------------------------------------------


def test_through_a_server_with_the_ciphertext_cache(
    vllm: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.client import RemoteRegistry
    from registry.loader import Cache
    from tests.test_api_cli import LiveServer
    from tests.test_loader import _blob_requests

    Registry.init(home)
    first = make_model(tmp_path / "v1", shards=2, shard_size=2 * MiB, seed=9)
    second = make_model(tmp_path / "v2", shards=2, shard_size=2 * MiB, seed=10)
    with Registry.open(home) as local:
        local.push("org/llama", first)
        local.promote("org/llama@1", "production")
        _record, token = local.create_token("fleet", role="reader", models=["org/*"])
        with LiveServer(local, tmp_path / "staging", part_size=MiB) as server:
            folder = tmp_path / "prepared"
            with RemoteRegistry(server.url, token) as remote:
                remote.prepare("org/llama:production", folder)  # the pin, through the API
            local.push("org/llama", second)
            local.promote("org/llama@2", "production")
            # The serving node: a URL and a reader's token, no home, no keys.
            monkeypatch.setenv("MODEL_REGISTRY_URL", server.url)
            monkeypatch.setenv("MODEL_REGISTRY_TOKEN", token)
            monkeypatch.setenv("MODEL_REGISTRY_HOME", str(tmp_path / "no-home"))
            cache = tmp_path / "cache"
            reference = _reference(first)
            extra = {"cache_dir": str(cache)}
            rank0 = _serve(vllm, folder, Model(reference), extra)
            cached = Cache(cache).entries()
            assert len(cached) == 2  # both shards, ciphertext
            served = _blob_requests(server)
            rank1 = _serve(vllm, folder, Model(reference), extra)
            assert _blob_requests(server) == served  # the second rank read the cache only
            needle = reference["model.layers.0.weight"].view(torch.uint8)[:64].numpy().tobytes()
            assert not any(needle in entry.read_bytes() for entry in cached)
    for rank in (rank0, rank1):
        assert _same(rank.state(), reference)
    assert not (tmp_path / "no-home").exists()
