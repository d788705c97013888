#!/usr/bin/env python3
"""Writes the full-width checkpoints the benchmarks read (not committed: about 100 MB each).

    /opt/torch-venv/bin/python benches/make_bench_data.py [OUT_DIR]    # default target/bench-data

Pinned: torch 2.15.0. The networks are torchvision's ResNet-18 and -50 layouts (the fixture
script's ResNet2d at width 64, 1000 classes) with seeded random weights and BatchNorm
statistics; written as .pth and as ONNX (the default dynamo exporter: BatchNorm fused,
weights in an external .onnx.data file).
"""

import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import make_fixtures as mf  # noqa: E402

assert torch.__version__.split("+")[0] == "2.15.0", f"pinned torch 2.15.0, found {torch.__version__}"
mf.NUM_CLASSES = 1000


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "bench-data"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(50)
    for depth in [18, 50]:
        net = mf.ResNet2d(depth, 64)
        mf.randomise_batch_norm(net, gen)
        net.eval()
        torch.save(net.state_dict(), out / f"resnet{depth}.pth")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(out / f"resnet{depth}.onnx"), dynamo=True)
    for f in sorted(out.iterdir()):
        print(f"{f}: {f.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
