#!/usr/bin/env python3
"""Runs PyTorch and resnet3d side by side on this machine and prints the table.

    /opt/torch-venv/bin/python benches/compare.py [--backend flex] [--quick]
    /opt/torch-venv/bin/python benches/compare.py --mode train [--quick]
    /opt/torch-venv/bin/python benches/compare.py --all [--quick]   # every table below, one run
    /opt/torch-venv/bin/python benches/compare.py --all --quick --rounds 3  # each side 3 times, alternated

With `--rounds N` each table times PyTorch's side and ours N times, alternated: times are the
median over the rounds, and each benchmark prints every round's ratio to PyTorch's fastest
path. One round times all of PyTorch's side, then all of ours minutes later: on a host whose
speed drifts (a shared 2-core VM moved our side by up to 1.7x between two runs) that drift
lands on one side of the ratio.

1. benches/pytorch_reference.py (PyTorch, 2 threads, fp32, eval, inference mode);
2. `cargo bench --features bench --bench forward -- <backend>/` (criterion, release build);
3. a table: PyTorch ms, ours ms, ratio (PyTorch time / ours: >= 1 means we are as fast),
   GFLOP/s of ours, and its share of the sgemm peak PyTorch measured in step 1 (GFLOP/s count
   a direct convolution's multiply-adds; the Winograd products of the 3x3x3 convolutions do
   fewer, so the frozen network and the flex model can pass 100% of the peak);
4. the peak resident set of one ResNet3d-50 forward on 1x1x64x128x128, each side in a
   process of its own (`pytorch_reference.py --memory`, `cargo bench --bench memory`).

The frozen backends' tables also hold a batch of crops (4x1x32x96x96) and a whole CT scan
(1x1x192x320x320).

`--backend frozen_bf16`: `ResNet3d::freeze_bf16` (bf16 products where the CPU has AVX512_BF16)
against PyTorch's networks in bfloat16 (eager and TorchScript-frozen).

Backends: `frozen` (FrozenResNet3d: BatchNorm folded, channels-last, AVX-512 or gemm on the
CPU), `flex` and `ndarray` (the Burn model).

`--mode train`: one fine-tuning step (train mode, cross-entropy, backward, Adam) on a batch of
2x1x32x96x96, PyTorch eager (`pytorch_reference.py --train`) against `benches/train.rs` on
`Device::flex().autodiff()`; GFLOP/s counts the forward's multiply-adds three times.

Forward tables also show PyTorch's TorchScript-frozen (`jit.freeze` + `optimize_for_inference`)
and ONNX Runtime times, and the ratio against the fastest of PyTorch's three paths ("vs best").
Criterion's results are read from `$CARGO_TARGET_DIR` (default `target/`).
"""

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def criterion_results(target):
    """{ "<group>/<function>[/<value>]": median ms } from criterion's JSON files."""
    out = {}
    for bench in (target / "criterion").rglob("new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        key = meta["full_id"]
        out[key] = est["median"]["point_estimate"] / 1e6
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="flex")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mode", choices=["forward", "train"], default="forward")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU comparison: PyTorch on CUDA, ours on wgpu (--backend wgpu); no memory step")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time PyTorch's side and ours this many times, alternated, and report the median of "
                             "each side and every round's ratio: on a host whose speed drifts, one round puts the "
                             "drift on one side")
    parser.add_argument("--all", action="store_true",
                        help="every CPU table in one go: frozen, flex, train, and frozen_bf16 where the CPU has "
                             "AVX512_BF16")
    args = parser.parse_args()
    if args.all:
        runs = [("forward", "frozen"), ("forward", "flex"), ("train", "flex")]
        if "avx512_bf16" in Path("/proc/cpuinfo").read_text():
            runs.append(("forward", "frozen_bf16"))
        for mode, backend in runs:
            print(f"\n=== compare.py --mode {mode} --backend {backend}{' --quick' if args.quick else ''}", flush=True)
            args.mode, args.backend = mode, backend
            table(args)
    else:
        table(args)


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def merge_rounds(rounds, backend):
    """The rounds' PyTorch sides and ours merged: each time the median over the rounds; and per
    benchmark, each round's ratio of PyTorch's fastest path to ours."""
    side = copy.deepcopy(rounds[0][0])
    ours = {}
    per_round = {}
    for key, ref in side["results"].items():
        refs = [r[0]["results"].get(key, {}) for r in rounds]
        for field in ("ms", "jit_ms", "ort_ms", "compile_ms"):
            values = [x[field] for x in refs if x.get(field) is not None]
            if values:
                ref[field] = median(values)
        mine = [r[1][f"{backend}/{key}"] for r in rounds if f"{backend}/{key}" in r[1]]
        if mine:
            ours[f"{backend}/{key}"] = median(mine)
        ratios = []
        for x, r in zip(refs, rounds):
            m = r[1].get(f"{backend}/{key}")
            times = [x.get(f) for f in ("ms", "jit_ms", "ort_ms") if x.get(f) is not None]
            if m and times:
                ratios.append(min(times) / m)
        per_round[key] = ratios
    side["sgemm_gflops"] = median([r[0]["sgemm_gflops"] for r in rounds])
    return side, ours, per_round


def table(args):
    """One comparison: PyTorch's side, ours, the table, then the memory step."""
    train = args.mode == "train"
    ref_cmd = [sys.executable, str(ROOT / "benches" / "pytorch_reference.py")] + (["--quick"] if args.quick else [])
    if args.gpu:
        ref_cmd += ["--device", "cuda", "--compile"]
    if train:
        ref_cmd += ["--train"]
    if args.backend == "frozen_bf16":
        ref_cmd += ["--bf16"]
    if args.backend in ("frozen", "frozen_bf16") and not train:
        ref_cmd += ["--shapes", "all"]
    features = ["--features", "bench,wgpu" if args.backend == "wgpu" else "bench"]
    bench = "train" if train else "forward"
    # Each round: PyTorch's side, then ours (criterion's results are read after each run).
    rounds = []
    for r in range(max(1, args.rounds)):
        if args.rounds > 1:
            print(f"--- round {r + 1} of {args.rounds}", flush=True)
        side = json.loads(subprocess.run(ref_cmd, check=True, capture_output=True, text=True).stdout)
        subprocess.run(["cargo", "bench", *features, "--bench", bench, "--", f"{args.backend}/"], check=True, cwd=ROOT)
        rounds.append((side, criterion_results(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")))))
    torch_side, ours, per_round = merge_rounds(rounds, args.backend)

    peak = torch_side["sgemm_gflops"]
    print(f"\nPyTorch {torch_side['torch']} on {torch_side.get('device', 'cpu')}, {torch_side['threads']} threads; "
          f"sgemm peak {peak:.0f} GFLOP/s; ours: {args.backend}; PyTorch in {torch_side.get('dtype', 'torch.float32')}")
    print(f"{'benchmark':<44} {'PyTorch ms':>10} {'ours ms':>9} {'ratio':>6} {'GFLOP/s':>8} {'of peak':>7}"
          f" {'jit ms':>8} {'ORT ms':>8} {'vs best':>7}")
    for key, ref in torch_side["results"].items():
        mine = ours.get(f"{args.backend}/{key}")
        if mine is None:
            print(f"{key:<44} {ref['ms']:>10.1f} {'-':>9}")
            continue
        gflops = ref["gflop"] / (mine / 1e3) if ref["gflop"] else 0.0
        share = f"{100 * gflops / peak:.0f}%" if ref["gflop"] else "-"
        # The anchors: TorchScript frozen + optimize_for_inference, ONNX Runtime; the ratio
        # against the fastest PyTorch-side path of the three.
        jit, ort = ref.get("jit_ms"), ref.get("ort_ms")
        best = min(t for t in (ref["ms"], jit, ort) if t is not None)
        fmt = lambda t: f"{t:>8.1f}" if t is not None else f"{'-':>8}"
        print(f"{key:<44} {ref['ms']:>10.1f} {mine:>9.1f} {ref['ms'] / mine:>6.2f} {gflops:>8.1f} {share:>7}"
              f" {fmt(jit)} {fmt(ort)} {best / mine:>7.2f}")
        if len(rounds) > 1:
            print(f"{'':<44} vs best per round: {' '.join(f'{v:.2f}' for v in per_round.get(key, []))}")
        if args.gpu:
            compiled = ref.get("compile_ms")
            print(f"{'':<44} torch.compile ms {fmt(compiled)}; PyTorch peak GPU memory "
                  f"{fmt(ref.get('peak_gpu_mb'))} MB")

    if args.gpu:
        return
    memory = [json.loads(subprocess.run(ref_cmd[:2] + ["--memory"] + (["--train"] if train else []), check=True,
                                        capture_output=True, text=True).stdout)]
    for mode in (["train"] if train else ["frozen", "flex"]):
        out = subprocess.run(["cargo", "bench", "--features", "bench", "--bench", "memory", "--", mode], check=True, cwd=ROOT,
                             capture_output=True, text=True).stdout
        memory.append(json.loads(out.strip().splitlines()[-1]))
    what = "ResNet3d-18 train steps on 2x1x32x96x96" if train else "ResNet3d-50 forward on 1x1x64x128x128"
    print(f"\npeak resident set, {what} (MB; in brackets: above the process before the model)")
    for m in memory:
        print(f"  {m['mode']:<8} {m['peak_mb']:>8.0f} ({m['peak_mb'] - m['before_model_mb']:.0f})")


if __name__ == "__main__":
    main()
