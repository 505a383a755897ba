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
