#!/usr/bin/env bash
# Everything the GPU part of the speed issue asks, as one prepared script for a GPU machine:
#   1. the build with --features wgpu, and the wgpu tests (the PyTorch comparisons of
#      tests/it/wgpu.rs) on the real GPU;
#   2. inference (1x1x64x128x128 and 1x1x16x64x64, ResNet3d-18/-50): PyTorch CUDA eager and
#      torch.compile against this crate on wgpu (benches/compare.py --gpu);
#   3. the fine-tuning step (2x1x32x96x96) the same way (compare.py --gpu --mode train);
#   4. peak GPU memory: PyTorch's allocator peak (in the tables), and ours as the largest
#      `memory.used` nvidia-smi reports (every 100 ms) while our benchmarks run, above the
#      idle reading before them;
#   5. the CPU table for reference.
# Needs the pinned torch (CUDA wheel) in a venv (PYTHON, default /opt/torch-venv/bin/python),
# a Vulkan driver for the GPU, and cargo. Steps whose tools are missing are reported and
# skipped, so that whatever the machine has is measured.
#
#   bash benches/gpu.sh            # the tables to stdout
#   QUICK=1 bash benches/gpu.sh    # fewer PyTorch runs
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/opt/torch-venv/bin/python}
quick=()
[[ -n "${QUICK:-}" ]] && quick=(--quick)
failed=0
step() { echo; echo "=== $*"; "$@" || { echo "=== failed: $*"; failed=1; }; }

have_smi=0
if command -v nvidia-smi >/dev/null 2>&1; then
    have_smi=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi
command -v vulkaninfo >/dev/null 2>&1 && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" || true

step cargo build --release --features wgpu -p resnet3d-cli
step cargo test --features wgpu --test it wgpu

# Our peak GPU memory while `cmd` runs: the largest nvidia-smi reading above the idle one.
gpu_peak() {
    if [[ $have_smi == 0 ]]; then "$@"; return; fi
    local idle log pid
    idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    log=$(mktemp)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
    pid=$!
    "$@"
    local rc=$?
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "ours: peak GPU memory $(sort -n "$log" | tail -1) MiB (idle $idle MiB) during: $*"
    rm -f "$log"
    return $rc
}

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    step gpu_peak "$PYTHON" benches/compare.py --gpu --backend wgpu "${quick[@]}"
    step gpu_peak "$PYTHON" benches/compare.py --gpu --backend wgpu --mode train "${quick[@]}"
else
    echo "=== PyTorch with CUDA is missing ($PYTHON): our wgpu side alone"
    step gpu_peak cargo bench --features bench,wgpu --bench forward -- "wgpu/forward"
    step gpu_peak cargo bench --features wgpu --bench train -- "wgpu/"
fi
step "$PYTHON" benches/compare.py --backend frozen "${quick[@]}"
exit $failed
