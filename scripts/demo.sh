#!/usr/bin/env bash
# `make demo`: a registry on the embedded default, used the way a person uses it.
# Generates a small sharded safetensors model, pushes two versions (the second shares all but
# one shard), promotes them to production (and rolls back once), lists, shows, pulls production,
# verifies, and loads the pulled tensors with safetensors/torch.
set -euo pipefail
root=$(pwd)/.demo
rm -rf "$root"
export MODEL_REGISTRY_HOME="$root/home"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

python - <<PY
from pathlib import Path
from registry.testing.models import make_model
make_model(Path("$root/llama-demo"), shards=4, shard_size=8 << 20, seed=1)
PY
echo "generated a 4-shard model (32 MiB of F16 tensors) in $root/llama-demo"

step model-registry init
step model-registry push demo/llama "$root/llama-demo" --message "first training run"
# Fine-tune one shard: the next push uploads only that shard.
python - <<PY
from pathlib import Path
from registry.testing.models import make_model
import shutil
make_model(Path("$root/tuned"), shards=4, shard_size=8 << 20, seed=2)
shutil.copy("$root/tuned/model-00004-of-00004.safetensors", "$root/llama-demo/")
PY
step model-registry push demo/llama "$root/llama-demo" --message "fine-tuned last shard"
step model-registry promote demo/llama@1 production --reason "first release"
step model-registry promote demo/llama@2 production --reason "fine-tune passed evals"
step model-registry rollback demo/llama production --reason "latency regression"
step model-registry rollback demo/llama production --to demo/llama@2 --reason "fixed in serving"
step model-registry history demo/llama production
step model-registry ls
step model-registry ls demo/llama
step model-registry show demo/llama:production
step model-registry pull demo/llama:production "$root/pulled"
step diff -r "$root/llama-demo" "$root/pulled"
echo "byte-identical"
step model-registry verify demo/llama@2 --read-data
step model-registry drill
step model-registry catalog journal
printf '\n\033[1m$ load the pulled shards\033[0m\n'
python - <<PY
from pathlib import Path
from safetensors.torch import load_file
tensors = {}
for shard in sorted(Path("$root/pulled").glob("*.safetensors")):
    tensors.update(load_file(shard))
params = sum(t.numel() for t in tensors.values())
print(f"loaded {len(tensors)} tensors, {params:,} parameters, dtypes {sorted({str(t.dtype) for t in tensors.values()})}")
PY
printf '\n\033[1m$ load production straight from the registry (decrypted and verified in memory)\033[0m\n'
python - <<PY
from registry import loader
state = loader.load("demo/llama:production")
stats = state.stats
print(f"loaded {stats.tensors} tensors of {state.version.ref} ({state.version.digest[:19]}...): "
      f"{stats.bytes / 2**20:.0f} MiB in {stats.seconds:.2f} s, {len(stats.verified_files)} files verified")
PY
echo
echo "demo done: the registry lives in $MODEL_REGISTRY_HOME (keys in $MODEL_REGISTRY_HOME/keys)"
