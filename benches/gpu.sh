#!/usr/bin/env bash
# The benchmarks on a GPU machine: PyTorch on CUDA next to this crate on wgpu (same networks,
# shapes and table as benches/compare.py), then the CPU table for reference. Needs the pinned
# torch in a venv (PYTHON, default /opt/torch-venv/bin/python) and a Vulkan driver.
#
#   bash benches/gpu.sh            # writes the tables to stdout
#   QUICK=1 bash benches/gpu.sh    # fewer PyTorch runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/opt/torch-venv/bin/python}
quick=()
[[ -n "${QUICK:-}" ]] && quick=(--quick)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PYTHON" benches/compare.py --gpu --backend wgpu "${quick[@]}"
"$PYTHON" benches/compare.py --backend frozen "${quick[@]}"
