#!/usr/bin/env bash
# The GPU checks of the loader, as the one script to run on a machine with a CUDA device
# (issues 6 and 16): the tests marked `gpu`, then bench/load.py on cuda:0, which prints the
# pinned host-to-device copy bandwidth beside each loader and the decrypt+hash limit of the
# machine's cores, measured in the same run. Needs a CUDA build of torch in the virtualenv
# (`make install` puts the CPU build there: install torch==2.13.0 from the CUDA index first).
#
# Usage: bash scripts/gpu_check.sh [SIZE_MIB] [SCALING]
#   SIZE_MIB  model size (default 4096)
#   SCALING   also a CPU load comparison on that many cores, e.g. 1,4,16 (bench/load.py
#             --scaling): the measured check of the 16-core model that a 2-core machine prints
# Then vLLM end to end: a tiny Llama served through the model-registry load format against
# vLLM's safetensors loader (VLLM_VENV, VLLM_SPEC, VLLM_CHECK=0 to skip; see that step).
# Figures go to docs/benchmarks.md by hand. PYTHON=... picks another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-4096}
scaling=${2:-}
python=${PYTHON:-.venv/bin/python}
if ! command -v "$python" >/dev/null; then
    echo "gpu_check: no $python here (make install, or PYTHON=/path/to/python)" >&2
    exit 2
fi
if ! "$python" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(
        f"gpu_check: torch {torch.__version__} sees no CUDA device (CUDA build: "
        f"{torch.version.cuda or 'no'}): run this on a machine with a GPU and a CUDA build of "
        "torch in the virtualenv"
    )
print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
then
    exit 2
fi
nproc
free -g | head -2
"$python" -m pytest -p no:cacheprovider -m gpu -v tests/test_loader.py
"$python" bench/load.py --device cuda:0 --size-mib "$size" --repeat 2
if [ -n "$scaling" ]; then
    "$python" bench/load.py --device cpu --size-mib "$size" --repeat 2 --scaling "$scaling"
fi

# vLLM end to end (issue 17): a tiny Llama (random weights) pushed to a throwaway home and
# prepared, then served by vLLM's offline LLM twice, greedy, on the same prompts: through the
# plugin (--load-format model-registry on the prepared folder) and through vLLM's own safetensors
# loader on the plaintext checkpoint. The generated tokens must be identical. vLLM lives in a
# virtualenv of its own (VLLM_VENV, default /tmp/vllm-gpu-venv; made with VLLM_SPEC, default
# vllm==0.33.0, when missing: that needs the package index). VLLM_CHECK=0 skips this step.
if [ "${VLLM_CHECK:-1}" = 0 ]; then
    echo "vllm end to end: SKIP (VLLM_CHECK=0)"
    exit 0
fi
vllm_venv=${VLLM_VENV:-/tmp/vllm-gpu-venv}
if ! "$vllm_venv/bin/python" -c "import vllm" 2>/dev/null; then
    echo "vllm end to end: installing ${VLLM_SPEC:-vllm==0.33.0} into $vllm_venv (minutes)"
    if ! { python3.11 -m venv "$vllm_venv" && "$vllm_venv/bin/pip" install -q --upgrade pip &&
        "$vllm_venv/bin/pip" install -q "${VLLM_SPEC:-vllm==0.33.0}"; }; then
        echo "vllm end to end: SKIP (could not install vllm into $vllm_venv: offline? set VLLM_VENV)"
        exit 0
    fi
fi
"$vllm_venv/bin/pip" install -q sqlalchemy alembic 'psycopg[binary]' boto3 litestar 2>&1 |
    grep -v "is ignored" || true
"$vllm_venv/bin/pip" install -q -e . --no-deps 2>&1 | grep -iE "^error" || true
vllm_work=$(mktemp -d)
trap 'rm -rf "$vllm_work"' EXIT
cat >"$vllm_work/e2e.py" <<'PY'
"""build DIR | generate FORMAT FOLDER OUT.json: one vLLM engine per process."""
import json
import sys


def build(folder):
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, torch_dtype="bfloat16",
    )
    torch.manual_seed(17)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)


def generate(load_format, folder, out):
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=folder, load_format=load_format, skip_tokenizer_init=True, enforce_eager=True,
        dtype="bfloat16", max_model_len=256, gpu_memory_utilization=0.3, seed=0,
    )
    prompts = [
        {"prompt_token_ids": [1 + (7 * i + 3 * j) % 1000 for j in range(12)]} for i in range(4)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=24, detokenize=False)
    tokens = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]
    with open(out, "w") as handle:
        json.dump(tokens, handle)


if __name__ == "__main__":  # vLLM starts its engine core with spawn
    if sys.argv[1] == "build":
        build(sys.argv[2])
    else:
        generate(*sys.argv[2:5])
PY
(
    export MODEL_REGISTRY_HOME="$vllm_work/home" MODEL_REGISTRY_ACTOR=gpu-check@example
    unset MODEL_REGISTRY_URL MODEL_REGISTRY_TOKEN
    py="$vllm_work/e2e.py"
    mr="$vllm_venv/bin/model-registry"
    "$vllm_venv/bin/python" "$py" build "$vllm_work/plain"
    "$mr" init >/dev/null
    "$mr" push gpu/tiny "$vllm_work/plain" >/dev/null
    "$mr" promote gpu/tiny@1 production >/dev/null
    "$mr" prepare gpu/tiny:production "$vllm_work/prepared"
    "$vllm_venv/bin/python" "$py" generate model-registry "$vllm_work/prepared" "$vllm_work/ours.json"
    "$vllm_venv/bin/python" "$py" generate safetensors "$vllm_work/plain" "$vllm_work/theirs.json"
) >"$vllm_work/log" 2>&1 || true
grep -E "^prepared|model-registry: load" "$vllm_work/log" || true
if [ -s "$vllm_work/ours.json" ] && cmp -s "$vllm_work/ours.json" "$vllm_work/theirs.json"; then
    echo "vllm end to end: PASS (4 prompts, 24 greedy tokens each: --load-format model-registry" \
        "on the prepared folder = vLLM's safetensors loader on the checkpoint)"
else
    echo "vllm end to end: FAIL"
    echo "  model-registry: $(cat "$vllm_work/ours.json" 2>/dev/null || echo 'no output')"
    echo "  safetensors:    $(cat "$vllm_work/theirs.json" 2>/dev/null || echo 'no output')"
    tail -n 40 "$vllm_work/log"
    exit 1
fi
