"""ARM parity of 224-px students: edgekd's Raspberry Pi INT8 files on aarch64 ONNX Runtime (qemu) vs x86.

    sudo python benchmarks/arm_parity_224.py [--work /tmp/edgekd-int8-speed] [--families resnet18 mobilenetv3]

Takes the trained students benchmarks/int8_speed.py left in --work (fp32.onnx per family),
quantizes each with the scheme edgekd gives the rpi4/rpi5 targets (S8 activations, S8
per-channel weights, QDQ; through the same accuracy gate, which times nothing for an ARM file
on x86), and runs scripts/arm_parity.py on the FP32 and INT8 files with --samples Fashion-MNIST
test images, under both emulated boards. Needs root and the chroot from scripts/arm_env.sh.
Emulation is slow (a 224-px student takes seconds per image): a few images prove the files
load and match; emulated timings mean nothing and are not reported.
Writes benchmarks/results/arm_parity_224.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

HOW_MADE = """
Made by `benchmarks/arm_parity_224.py` from the students `benchmarks/int8_speed.py` trained
(width 0.5 / depth 0.5, 3x224x224, Fashion-MNIST): each FP32 student and its INT8 file for the
Raspberry Pi targets (edgekd's aarch64 scheme, S8S8 QDQ, minmax, per-channel, through the accuracy
gate), compared on Fashion-MNIST test images upscaled to 224 px.
"""


def main(argv=None) -> int:
    from int8_speed import FAMILIES, load_fashion, to_input

    from edgekd.quantize import choose_scheme, quantize_with_gate
    from edgekd.runtime.ort import accuracy, make_session, predict

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/edgekd-int8-speed"))
    p.add_argument("--families", nargs="*", default=["resnet18", "mobilenetv3"], choices=list(FAMILIES))
    p.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--out", type=Path, default=HERE / "results" / "arm_parity_224.md")
    args = p.parse_args(argv)
    _, _, test_x, test_y = load_fashion(args.data)
    x = to_input(test_x[: args.samples])
    np.savez(args.work / "arm_inputs.npz", x=x)
    calib = np.load(args.work / "calib.npy", mmap_mode="r")
    gate_x, models = np.load(args.work / "gate_val.npy", mmap_mode="r"), []
    scheme = choose_scheme("onnxruntime", "aarch64", {"asimd"})
    for family in args.families:
        fp32 = args.work / family / "fp32.onnx"
        labels = predict(make_session(fp32), gate_x, 32).argmax(1)  # the FP32 answers: the gate checks agreement
        arm = args.work / family / f"{family}.int8.arm64.onnx"
        quantize_with_gate(fp32, arm, calib, gate_x, labels, reference_accuracy=1.0, max_accuracy_drop=0.05,
                           scheme=scheme)
        print(f"{family}: INT8 agreement with FP32 on the gate images "
              f"{accuracy(predict(make_session(arm), gate_x, 32), labels):.4f}", flush=True)
        named = args.work / family / f"{family}.fp32.onnx"
        named.write_bytes(fp32.read_bytes())
        models += [named, arm]
    cmd = [sys.executable, str(REPO / "scripts/arm_parity.py"), *map(str, models), "--inputs",
           str(args.work / "arm_inputs.npz"), "--key", "x", "--out", str(args.out), "--timeout", "3600"]
    code = subprocess.run(cmd).returncode
    if args.out.is_file():
        with open(args.out, "a") as f:
            f.write(HOW_MADE)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
