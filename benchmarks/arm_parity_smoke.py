"""Smoke test of scripts/arm_parity.py on a model made here: FP32 and INT8 QDQ.

Builds a timm resnet10t (1x32x32 input, 10 classes, fixed random weights: no
download), exports it with torch.onnx.export, quantizes it with edgekd's
quantizer for the Raspberry Pi targets (edgekd.quantize.schemes, aarch64: S8
activations, S8 per-channel weights, QDQ) calibrated on 8 fixed random inputs,
then runs the parity check on 64 other fixed inputs and writes
benchmarks/results/arm_parity_smoke.md. Needs root and the chroot from
scripts/arm_env.sh; ~2 minutes, most of it emulation.

    sudo python benchmarks/arm_parity_smoke.py [--workdir /tmp/edgekd-arm-smoke]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHAPE = (1, 32, 32)  # C, H, W
CLASSES = 10
HOW_MADE = """
Made by `benchmarks/arm_parity_smoke.py`: timm `resnet10t` (in_chans=1, 10 classes,
random weights from seed 0) exported with `torch.onnx.export` (opset 17), and its INT8
QDQ version from edgekd's quantizer with the aarch64 scheme the Pi targets get (S8S8:
int8 activations with calibrated zero points, symmetric per-channel int8 weights; see
docs/arm.md) calibrated on 8 fixed random inputs; compared on 64 other fixed
random inputs. Random weights make small logits and many near-ties, a harder case for
top-1 agreement than a trained model. Re-run: `sudo python benchmarks/arm_parity_smoke.py`.
"""


def build_fp32(path: Path) -> None:
    import timm
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = timm.create_model("resnet10t", in_chans=SHAPE[0], num_classes=CLASSES).eval()
    example = torch.randn(1, *SHAPE)
    torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      dynamo=False)


def build_int8(fp32: Path, int8: Path, calib: np.ndarray) -> None:
    """edgekd's INT8 file for the Raspberry Pi targets (rpi4 and rpi5 get the same S8S8 scheme)."""
    sys.path.insert(0, str(REPO))
    from edgekd.quantize import choose_scheme, quantize_int8

    quantize_int8(fp32, int8, calib, batch_size=1, scheme=choose_scheme("onnxruntime", "aarch64", {"asimd"}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/edgekd-arm-smoke"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/arm_parity_smoke.md")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((8, *SHAPE), dtype=np.float32)
    x = rng.standard_normal((64, *SHAPE), dtype=np.float32)
    np.savez(args.workdir / "inputs.npz", x=x)
    fp32, int8 = args.workdir / "resnet10t_fp32.onnx", args.workdir / "resnet10t_int8.onnx"
    build_fp32(fp32)
    build_int8(fp32, int8, calib)
    cmd = [sys.executable, str(REPO / "scripts/arm_parity.py"), str(fp32), str(int8),
           "--inputs", str(args.workdir / "inputs.npz"), "--out", str(args.out)]
    code = subprocess.run(cmd).returncode
    if args.out.is_file():  # say how the table was made, for whoever re-runs it
        with open(args.out, "a") as f:
            f.write(HOW_MADE)
    return code


if __name__ == "__main__":
    sys.exit(main())
