#!/usr/bin/env python3
"""PyTorch's side of the benchmarks: the same 3-D networks, shapes and thread count as
benches/forward.rs, fp32, eval, inference mode. Prints one JSON object on stdout:
{"torch": version, "threads": n, "sgemm_gflops": measured peak,
 "results": {"forward/resnet18/64x128x128": {"ms": median, "gflop": count}, ...}}

    /opt/torch-venv/bin/python benches/pytorch_reference.py [--threads 2] [--quick]
    /opt/torch-venv/bin/python benches/pytorch_reference.py --train [--quick]

`--train`: one fine-tuning step (train mode, cross-entropy, backward, Adam) on a batch of
2x1x32x96x96, as benches/train.rs; keys `train/<model>/2x1x32x96x96`, and `--memory
--train` the peak resident set of ResNet3d-18 steps.

`--large-train [--checkpoint]`: the peak resident set and the time of a ResNet3d-50 step on a
whole-scan batch, 2x1x128x192x192 (one warm-up step, then the median of two), eager or with
`torch.utils.checkpoint` around each of the four stages (`use_reentrant=False`): one JSON line
as benches/memory.rs's `train-large` prints.

Each forward result also holds `jit_ms` (TorchScript `jit.freeze` + `optimize_for_inference`:
oneDNN, convolution + BatchNorm + ReLU fused, PyTorch's fastest CPU path) and `ort_ms` (ONNX
Runtime on the same network exported to ONNX, 2 intra-op threads), for CPU runs.

On CUDA (`--device cuda`, benches/gpu.sh) every result also holds `peak_gpu_mb`
(`torch.cuda.max_memory_allocated` over one run), and with `--compile` `compile_ms` (the same
network under `torch.compile`; null where it cannot compile).

Pinned: torch 2.15.0 (CPU execution; the CUDA wheel runs fine without a GPU), onnx 1.23.2 and
onnxruntime 1.32.0 for the ONNX Runtime anchor (skipped, with `ort_ms` null, without them).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import make_fixtures as mf  # noqa: E402

assert torch.__version__.split("+")[0] == "2.15.0", f"pinned torch 2.15.0, found {torch.__version__}"

SHAPES = {"64x128x128": (1, 1, 64, 128, 128), "16x64x64": (1, 1, 16, 64, 64)}
# `--shapes all` (the frozen networks' tables): a batch of crops and a whole CT scan too.
MORE_SHAPES = {"4x32x96x96": (4, 1, 32, 96, 96), "192x320x320": (1, 1, 192, 320, 320)}


def pattern(shape):
    n = 1
    for s in shape:
        n *= s
    return torch.sin(torch.arange(n, dtype=torch.float32) * 0.37).reshape(shape)


def timed(fn, runs):
    fn()  # warm-up: allocations, oneDNN primitive creation
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


class Logits(nn.Module):
    """The reference network with its logits as the only output (TorchScript and ONNX want a
    tensor, not the dict of every stage)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["logits"]


def jit_frozen_ms(model, x, runs):
    """TorchScript, frozen and optimised for inference (oneDNN on the CPU)."""
    with torch.no_grad():
        traced = torch.jit.trace(Logits(model).eval(), x)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        return timed(lambda: frozen(x), runs)


def ort_ms(model, x, runs, threads):
    """ONNX Runtime on the network exported to ONNX; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/model.onnx"
        torch.onnx.export(Logits(model).eval(), (x,), path, dynamo=False, opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        feed = {name: x.numpy()}
        return timed(lambda: session.run(None, feed), runs)


def conv_flops(model, x):
    """2 * multiply-adds of every convolution and linear layer."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv3d):
            k = module.weight.shape[1] * module.weight.shape[2:].numel()
            total[0] += 2 * output.numel() * k
        elif isinstance(module, nn.Linear):
            total[0] += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Linear))]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total[0] / 1e9


def peak_memory():
    """Peak resident set of one ResNet3d-50 forward on 1x1x64x128x128, in MB, and that
    before the model was built (torch imported): run in a process of its own."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kind, layers = mf.LAYOUTS[50]
    cfg = dict(mf.DEFAULT_CFG, block=kind, layers=layers, width=64, in_channels=1, num_classes=2)
    model = mf.ResNet3dRef(cfg).eval()
    with torch.inference_mode():
        model(pattern(SHAPES["64x128x128"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": "pytorch", "peak_mb": peak, "before_model_mb": before}))


TRAIN_BATCH = (2, 1, 32, 96, 96)


def train_step_fn(depth, dev):
    """A step of Adam on a fresh ResNet3d-`depth` in train mode, as benches/train.rs does."""
    kind, layers = mf.LAYOUTS[depth]
    cfg = dict(mf.DEFAULT_CFG, block=kind, layers=layers, width=64, in_channels=1, num_classes=2)
    model = mf.ResNet3dRef(cfg).train().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = pattern(TRAIN_BATCH).to(dev)
    y = torch.tensor([0, 1], device=dev)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x)["logits"], y)
        loss.backward()
        opt.step()
        return loss

    return model, step


def cuda_peak_mb(dev, fn):
    """Peak GPU memory PyTorch's allocator held while `fn` ran, in MB (None on the CPU)."""
    if dev.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def compiled_ms(make, runs):
    """The time of `make()`'s step under `torch.compile`, or None where it cannot compile here
    (no compiler, no Triton on the machine)."""
    try:
        return timed(make(), runs)
    except Exception as err:  # noqa: BLE001 (any backend failure: report and go on)
        print(f"torch.compile unavailable: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def train(args, dev, sync, runs):
    results = {}
    for depth in [18, 50]:
        model, step = train_step_fn(depth, dev)

        def synced():
            step()
            sync()

        ms = timed(synced, runs)
        entry = {"ms": ms, "peak_gpu_mb": cuda_peak_mb(dev, synced)}
        if args.compile:
            def make():
                m, _ = train_step_fn(depth, dev)
                opt = torch.optim.Adam(m.parameters(), lr=1e-4)
                fwd = torch.compile(m)
                x, y = pattern(TRAIN_BATCH).to(dev), torch.tensor([0, 1], device=dev)

                def step_compiled():
                    opt.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(fwd(x)["logits"], y).backward()
                    opt.step()
                    sync()

                return step_compiled

            entry["compile_ms"] = compiled_ms(make, runs)
        # Forward 1x, backward 2x the forward's multiply-adds (input and weight gradients).
        model.eval()
        entry["gflop"] = 3 * conv_flops(model, pattern(TRAIN_BATCH).to(dev))
        results[f"train/resnet{depth}/2x1x32x96x96"] = entry
    return results


def train_peak_memory():
    """Peak resident set of ResNet3d-18 train steps, in MB (own process)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _, step = train_step_fn(18, torch.device("cpu"))
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": "pytorch", "peak_mb": peak, "before_model_mb": before}))


LARGE_BATCH = (2, 1, 128, 192, 192)


def large_train(checkpoint):
    """Peak resident set (MB) and time (s) of ResNet3d-50 steps on LARGE_BATCH (own process)."""
    import resource

    from torch.utils.checkpoint import checkpoint as recompute

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kind, layers = mf.LAYOUTS[50]
    cfg = dict(mf.DEFAULT_CFG, block=kind, layers=layers, width=64, in_channels=1, num_classes=2)
    model = mf.ResNet3dRef(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = pattern(LARGE_BATCH)
    y = torch.tensor([0, 1])
    loss_fn = nn.CrossEntropyLoss()

    def stage(blocks):
        def run(h):
            for blk in blocks:
                h = model.block(blk, h)
            return h

        return run

    def logits(x):
        h = model.pool(F.relu(model.bn1(model.conv1(x))))
        for blocks in model.stages:
            h = recompute(stage(blocks), h, use_reentrant=False) if checkpoint else stage(blocks)(h)
        return model.fc(h.mean((2, 3, 4)))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(logits(x), y)
        loss.backward()
        opt.step()

    step()
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": "pytorch-checkpoint" if checkpoint else "pytorch", "batch": list(LARGE_BATCH),
                      "peak_mb": peak, "before_model_mb": before, "step_s": statistics.median(seconds),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--memory", action="store_true", help="only the peak memory of a ResNet3d-50 forward")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU comparison (benches/gpu.sh)")
    parser.add_argument("--train", action="store_true", help="the fine-tuning step instead of inference")
    parser.add_argument("--compile", action="store_true",
                        help="also time the network under torch.compile (`compile_ms`; null where it cannot compile)")
    parser.add_argument("--large-train", action="store_true",
                        help="peak memory and time of a ResNet3d-50 step on 2x1x128x192x192")
    parser.add_argument("--checkpoint", action="store_true",
                        help="with --large-train: torch.utils.checkpoint around each stage")
    parser.add_argument("--shapes", choices=["two", "all"], default="two",
                        help="all: the batched and whole-scan inputs too (benches/forward.rs's frozen groups)")
    parser.add_argument("--bf16", action="store_true",
                        help="the networks in bfloat16 (eager and TorchScript-frozen; no ONNX Runtime), for "
                             "FrozenResNet3d's bf16 inference")
    args = parser.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    if args.large_train:
        large_train(args.checkpoint)
        return
    if args.memory:
        train_peak_memory() if args.train else peak_memory()
        return
    runs = 3 if args.quick else 10
    results = {}

    a = torch.randn(4096, 4096, device=dev)
    b = torch.randn(4096, 4096, device=dev)

    def synced(fn):
        def run():
            out = fn()
            sync()
            return out

        return run

    sgemm_ms = timed(synced(lambda: torch.mm(a, b)), runs)
    sgemm = 2 * 4096**3 / (sgemm_ms / 1e3) / 1e9
    if args.train:
        print(json.dumps({"torch": torch.__version__, "device": str(dev), "threads": args.threads,
                          "sgemm_gflops": sgemm, "results": train(args, dev, sync, runs)}))
        return

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    for depth in [18, 50]:
        kind, layers = mf.LAYOUTS[depth]
        cfg = dict(mf.DEFAULT_CFG, block=kind, layers=layers, width=64, in_channels=1, num_classes=2)
        model = mf.ResNet3dRef(cfg).eval().to(dev)
        shapes = {**SHAPES, **MORE_SHAPES} if args.shapes == "all" else SHAPES
        for size, shape in shapes.items():
            x = pattern(shape).to(dev)
            entry = {"gflop": conv_flops(model, x)}
            model_t, x_t = model.to(dtype), x.to(dtype)
            with torch.inference_mode():
                entry["ms"] = timed(synced(lambda: model_t(x_t)), runs)
                entry["peak_gpu_mb"] = cuda_peak_mb(dev, lambda: model_t(x_t))
            if args.compile:
                def make():
                    compiled = torch.compile(model_t)

                    def run():
                        with torch.inference_mode():
                            compiled(x_t)
                        sync()

                    return run

                entry["compile_ms"] = compiled_ms(make, runs)
            if dev.type == "cpu":
                entry["jit_ms"] = jit_frozen_ms(model_t, x_t, runs)
                entry["ort_ms"] = None if args.bf16 else ort_ms(model, x, runs, args.threads)
            model = model.float()
            results[f"forward/resnet{depth}/{size}"] = entry

    conv = nn.Conv3d(64, 64, 3, 1, 1, bias=False).eval().to(dev).to(dtype)
    x = pattern((1, 64, 16, 56, 56)).to(dev).to(dtype)
    with torch.inference_mode():
        ms = timed(synced(lambda: conv(x)), runs)
    results["layer/conv3d_64x64x3x3x3_16x56x56"] = {"ms": ms, "gflop": 2 * 64 * 16 * 56 * 56 * 64 * 27 / 1e9}
    pool = nn.MaxPool3d(3, 2, 1)
    x = pattern((1, 64, 32, 56, 56)).to(dev).to(dtype)
    with torch.inference_mode():
        ms = timed(synced(lambda: pool(x)), runs)
    results["layer/maxpool3d_3x3x3s2_64x32x56x56"] = {"ms": ms, "gflop": 0.0}

    print(json.dumps({"torch": torch.__version__, "device": str(dev), "threads": args.threads, "sgemm_gflops": sgemm,
                      "dtype": str(dtype), "results": results}))


if __name__ == "__main__":
    main()
