#!/usr/bin/env bash
# The vLLM plugin (registry/integrations/vllm.py) against the real vLLM package, on a machine
# without a GPU: run by hand, not part of `make test` (vLLM's wheel brings a CUDA build of torch
# and several GB, so it lives in a throwaway virtualenv of its own, never in .venv).
#
# It checks that installing model-registry beside vLLM makes vLLM discover the
# `vllm.general_plugins` entry point and register the `model-registry` load format; that the
# loader subclasses vLLM's real BaseModelLoader, implements its abstract methods with their
# signatures, and is what vLLM's get_model_loader returns; then, on vLLM's CPU platform
# (VLLM_TARGET_DEVICE=cpu, gloo, one rank), that vLLM builds a tiny Llama from a prepared folder
# and loads its weights through the plugin (the real BaseModelLoader.load_model and the model's
# own load_weights) identical to vLLM's safetensors loader on the plaintext checkpoint, after
# the alias moved to another version; and that a folder without a pin, and unknown extra
# config, are refused. Generation needs a GPU: scripts/gpu_check.sh does that.
#
# Usage: bash scripts/check_vllm_plugin.sh
#   VLLM_VENV  the throwaway virtualenv (default /tmp/vllm-venv; made when missing)
#   VLLM_SPEC  what pip installs there (default vllm==0.33.0, the version the plugin was
#              written against)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
venv=${VLLM_VENV:-/tmp/vllm-venv}
spec=${VLLM_SPEC:-vllm==0.33.0}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
    echo "check_vllm_plugin: installing $spec into $venv (several GB, minutes)"
    python3.11 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "$spec"
fi
# model-registry itself, editable, without letting pip touch vLLM's torch: its light
# dependencies that vLLM does not already bring, then the package with --no-deps.
"$venv/bin/pip" install -q sqlalchemy alembic 'psycopg[binary]' boto3 litestar 2>&1 |
    grep -v "is ignored" || true
"$venv/bin/pip" install -q -e "$repo" --no-deps 2>&1 | grep -iE "^error" || true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MODEL_REGISTRY_HOME="$work/home" MODEL_REGISTRY_ACTOR=check@example
export VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 VLLM_LOGGING_LEVEL=WARNING
unset MODEL_REGISTRY_URL MODEL_REGISTRY_TOKEN
"$venv/bin/python" - "$work" <<'PY' 2> >(grep -vE "^W[0-9]{4} |deprecated|vllm._C" >&2)
import inspect
import json
import socket
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import torch

work = Path(sys.argv[1])
cli = str(Path(sys.executable).with_name("model-registry"))
checks: list[str] = []


def ok(what: str) -> None:
    checks.append(what)
    print(f"  ok  {what}", flush=True)


print(f"vllm {version('vllm')}, torch {torch.__version__}, transformers {version('transformers')}")

# 1. Discovery: the entry point, and vLLM's own plugin loading registering the load format.
points = [p for p in entry_points(group="vllm.general_plugins") if p.name == "model_registry"]
assert [p.value for p in points] == ["registry.integrations.vllm:register"], points
ok("entry point vllm.general_plugins: model_registry = registry.integrations.vllm:register")
import vllm.model_executor.model_loader as loaders  # noqa: E402
from vllm.config.load import LoadConfig  # noqa: E402
from vllm.model_executor.model_loader.base_loader import BaseModelLoader  # noqa: E402
from vllm.plugins import load_general_plugins  # noqa: E402

assert "model-registry" not in loaders._LOAD_FORMAT_TO_MODEL_LOADER
load_general_plugins()
cls = loaders._LOAD_FORMAT_TO_MODEL_LOADER.get("model-registry")
assert cls is not None and cls.__module__ == "registry.integrations.vllm", cls
ok("vllm.plugins.load_general_plugins() registers load format 'model-registry' -> " + repr(cls))

# 2. The class against the real base class.
assert issubclass(cls, BaseModelLoader) and not inspect.isabstract(cls), cls.__abstractmethods__
for name in sorted(BaseModelLoader.__abstractmethods__):
    ours, theirs = inspect.signature(getattr(cls, name)), inspect.signature(
        getattr(BaseModelLoader, name)
    )
    assert list(ours.parameters) == list(theirs.parameters), (name, ours, theirs)
ok(
    "subclasses vllm's BaseModelLoader, no abstract method left; "
    + ", ".join(
        f"{n}{inspect.signature(getattr(cls, n))}" for n in sorted(BaseModelLoader.__abstractmethods__)
    )
    + " match the base's parameters"
)
instance = loaders.get_model_loader(LoadConfig(load_format="model-registry"))
assert type(instance) is cls and instance.load_config.load_format == "model-registry"
ok("get_model_loader(LoadConfig(load_format='model-registry')) returns it")

# 3. A tiny Llama: two versions pushed, the first prepared through the alias, the alias moved.
import transformers  # noqa: E402


def checkpoint(seed: int) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    folder = work / f"plain-{seed}"
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def run(*args: str) -> None:
    subprocess.run([cli, *args], check=True, stdout=subprocess.DEVNULL)


v1, v2 = checkpoint(1), checkpoint(2)
run("init")
run("push", "check/tiny", str(v1))
run("promote", "check/tiny@1", "production")
run("prepare", "check/tiny:production", str(work / "prepared"))
run("push", "check/tiny", str(v2))
run("promote", "check/tiny@2", "production")
pin = json.loads((work / "prepared" / "registry.json").read_text())
assert pin["ref"] == "check/tiny@1" and not list((work / "prepared").glob("*.safetensors"))
ok("prepare check/tiny:production pinned check/tiny@1 (no weight file in the folder); "
   "the alias then moved to @2")

from vllm.config import set_current_vllm_config  # noqa: E402
from vllm.distributed import init_distributed_environment, initialize_model_parallel  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402


def config(model: Path, load_format: str, extra: dict | None = None):
    return EngineArgs(
        model=str(model), load_format=load_format, enforce_eager=True, dtype="float32",
        skip_tokenizer_init=True, max_model_len=128, model_loader_extra_config=extra or {},
    ).create_engine_config()


ours = config(work / "prepared", "model-registry", {"workers": 2})
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
with set_current_vllm_config(ours):
    init_distributed_environment(
        world_size=1, rank=0, local_rank=0, backend="gloo",
        distributed_init_method=f"tcp://127.0.0.1:{port}",
    )
    initialize_model_parallel(1, 1)
    loaders.get_model_loader(ours.load_config).download_model(ours.model_config)
    streamed = loaders.get_model(vllm_config=ours)
ok("download_model(model_config) accepts the prepared folder (pin, folder files, registry)")
reference = {}
for seed, folder in ((1, v1), (2, v2)):
    plain = config(folder, "safetensors")
    with set_current_vllm_config(plain):
        reference[seed] = loaders.get_model(vllm_config=plain).state_dict()
state = streamed.state_dict()
assert state.keys() == reference[1].keys() and len(state) > 10
assert all(torch.equal(state[k], reference[1][k]) for k in state)
assert not all(torch.equal(state[k], reference[2][k]) for k in state)
ok(f"vllm built {type(streamed).__name__} on the CPU and get_model() loaded it through the "
   f"plugin: {len(state)} tensors identical to vllm's safetensors loader on check/tiny@1 "
   "(the pinned version), not @2 (the alias's)")

# 4. Refusals, through vLLM's own calls.
def refused(cfg, *expected: str) -> str:
    try:
        with set_current_vllm_config(cfg):
            loaders.get_model(vllm_config=cfg)
    except Exception as error:  # noqa: BLE001
        message = str(error)
        assert all(e in message for e in expected), message
        return message.splitlines()[0]
    raise AssertionError("loaded")


shown = refused(config(v1, "model-registry"), "registry.json", "model-registry prepare")
ok(f"a folder without a pin is refused: {shown[:110]}...")
shown = refused(config(work / "prepared", "model-registry", {"bogus": 1}), "bogus")
ok(f"unknown --model-loader-extra-config keys are refused: {shown[:100]}")
print(f"check_vllm_plugin: PASS ({len(checks)} checks against the real vllm {version('vllm')}, "
      "CPU only: generation is scripts/gpu_check.sh's)")
PY
