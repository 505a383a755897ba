#!/usr/bin/env bash
# The GPU checks of the loader, as one script for a machine with a CUDA device (issue 6):
# the tests marked `gpu`, then the load benchmark on the device (it prints the pinned
# host-to-device copy bandwidth beside the loaders). Needs a CUDA build of torch in .venv.
# Usage: bash scripts/gpu_check.sh [SIZE_MIB]   (figures go to docs/benchmarks.md by hand)
set -euo pipefail
size=${1:-4096}
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0))"
.venv/bin/pytest -p no:cacheprovider -m gpu -v tests/test_loader.py
.venv/bin/python bench/load.py --device cuda:0 --size-mib "$size" --repeat 2
