"""Prove exported .onnx files give the same outputs on aarch64 onnxruntime as here.

Runs each model on this machine's x86 onnxruntime and on the aarch64
onnxruntime wheel inside the arm64 chroot that scripts/arm_env.sh builds
(qemu-user emulation), with the session settings of each Raspberry Pi target
profile, and compares the outputs. The emulated CPU is the target's own
(`cpu:` in edgekd/builtin/targets/rpi4.yaml, rpi5.yaml -> QEMU_CPU), so onnxruntime sees the
instruction set of the board (e.g. SDOT on the Pi 5's Cortex-A76, none on the
Pi 4's A72) and picks the kernels it would pick there.

    sudo python scripts/arm_parity.py student.onnx student_int8.onnx --inputs inputs.npz \
        [--key x] [--target rpi4 rpi5] [--out results.md]

Exit status: 0 all models match, 5 some model is outside its tolerance, other
non-zero codes as edgekd's (6: the chroot or a runtime is missing). Torch-free:
numpy, onnx and onnxruntime on the host. No latency is reported: emulated
timings say nothing about a board.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import edgekd  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgekd.errors import ConfigError, DataError, EdgekdError, GateError, ModelError, RuntimeBackendError
from edgekd.runtime.ort import session_settings
from edgekd.targets import TargetProfile, load_target

RUNNER = Path(__file__).resolve().parent / "arm_runner.py"
DEFAULT_ROOT = "/opt/edgekd-arm64"
VENV_PYTHON = "/opt/venv/bin/python"  # inside the chroot
CLEAN_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

# FP32: same graph, same ORT release, different SIMD kernels (AVX-512 vs NEON) and
# so a different order of float additions: differences of a few ulp of the
# largest partial sums, ~1e-6 on logits of order 10. 1e-4 leaves room for deeper
# nets and still catches any real kernel bug.
ATOL_FP32 = 1e-4
# INT8 (QDQ): run unfused (graph optimization "basic") the QDQ graph is float math
# and x86 and ARM agree bit for bit. Fused ("extended"/"all", what ships), ORT
# rewrites it into integer kernels (QLinearConv, ...) whose int32 accumulation is
# exact but whose requantization to int8 rounds differently per platform and
# kernel (x86 VNNI u8s8 vs ARM NEON/SDOT s8s8); a one-step flip in an early layer
# grows through the net. Measured on a resnet10t QDQ model: each side lands up to
# 3-4 output steps from the unfused result (and ~6 from FP32), so the two sides
# can be up to twice that apart. Hence the default is relative to the model's own
# output quantization step (the scale of the DequantizeLinear producing the first
# output): ATOL_INT8_STEPS steps, about 3% of a symmetric int8 output's range; a
# graph with a float output gets ATOL_INT8_FRACTION of the host logits' range.
ATOL_INT8_STEPS = 8
ATOL_INT8_FRACTION = 0.03

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
              "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


@dataclass
class Comparison:
    """Host (x86) outputs against aarch64 outputs for one model and target."""

    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float | None  # None when the first output is not (N, classes)
    top1_flips: int
    atol: float
    passed: bool
    note: str = ""


def compare(ref: list[np.ndarray], out: list[np.ndarray], atol: float) -> Comparison:
    """Max/mean abs difference over all outputs; top-1 agreement on the first.

    A NaN on one side only counts as an infinite difference; NaN on both sides at
    the same place counts as equal (the model itself produces it).
    """
    if len(ref) != len(out) or any(a.shape != b.shape for a, b in zip(ref, out)):
        shapes = lambda xs: [x.shape for x in xs]  # noqa: E731
        return Comparison(0, np.inf, np.inf, None, 0, atol, False,
                          f"output shapes differ: host {shapes(ref)} vs aarch64 {shapes(out)}")
    diffs = [_abs_diff(a, b) for a, b in zip(ref, out)]
    max_abs = max(float(d.max()) if d.size else 0.0 for d in diffs)
    total = sum(d.size for d in diffs)
    mean_abs = float(sum(d.sum() for d in diffs) / total) if total else 0.0
    agreement, flips = top1(ref[0], out[0])
    samples = len(ref[0]) if ref[0].ndim else 1
    return Comparison(samples, max_abs, mean_abs, agreement, flips, atol, bool(max_abs <= atol))


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a64 - b64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    diff[both_nan] = 0.0
    diff[np.isnan(diff)] = np.inf  # NaN on one side only
    return diff


def top1(ref: np.ndarray, out: np.ndarray) -> tuple[float | None, int]:
    """Fraction of samples whose argmax over the last axis agrees, and how many do not."""
    if ref.ndim < 2 or ref.shape[-1] < 2:
        return None, 0
    a = ref.reshape(-1, ref.shape[-1]).argmax(axis=1)
    b = out.reshape(-1, out.shape[-1]).argmax(axis=1)
    return float((a == b).mean()), int((a != b).sum())


def model_facts(path: Path) -> dict:
    """Precision (fp32 | int8), the output step of an int8 graph, external data files."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ConfigError(f"Model {str(path)!r} does not exist.", "Check the path.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        raise ModelError(f"{path.name} is not a readable ONNX file.", "Re-export the model.") from None
    graph = model.graph
    ops = {n.op_type for n in graph.node}
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer):
        raise ConfigError(
            f"{path.name} holds float16 weights.",
            "ONNX Runtime CPU targets (Raspberry Pi) run fp32 and int8 models; "
            "fp16 ONNX files are prepared for TensorRT targets only.",
        )
    external = sorted({e.value for i in graph.initializer for e in i.external_data if e.key == "location"})
    return {
        "precision": "int8" if ops & _QUANT_OPS else "fp32",
        "output_step": _output_step(graph),
        "external_data": external,
    }


def _output_step(graph) -> float | None:
    """Scale of the DequantizeLinear that produces the first graph output, if any."""
    from onnx import numpy_helper

    out_name = graph.output[0].name
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get(out_name)
    # Walk back through shape-only ops (Flatten/Reshape/Identity) to the DequantizeLinear.
    while node is not None and node.op_type in ("Flatten", "Reshape", "Identity", "Squeeze"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear":
        return None
    inits = {i.name: i for i in graph.initializer}
    scale = inits.get(node.input[1])
    if scale is None:
        return None
    values = numpy_helper.to_array(scale)
    return float(values.max()) if values.size else None


def int8_tolerance(facts: dict, host_out: np.ndarray) -> tuple[float, str]:
    """Default INT8 tolerance for one model, and how it was derived (for the report)."""
    if facts["output_step"]:
        step = facts["output_step"]
        return ATOL_INT8_STEPS * step, f"{ATOL_INT8_STEPS} output steps ({step:.3g})"
    span = float(np.ptp(host_out)) if host_out.size else 0.0
    return ATOL_INT8_FRACTION * span, f"{ATOL_INT8_FRACTION:.0%} of the logit range ({span:.3g})"


# ----------------------------------------------------------------------------- running


def chroot_problem(root: str | Path) -> str | None:
    """Why the aarch64 chroot cannot be used here, or None if it can."""
    root = Path(root)
    if not sys.platform.startswith("linux"):
        return "the qemu-user chroot needs a Linux host"
    if not (root / VENV_PYTHON.lstrip("/")).exists():
        return f"no aarch64 venv at {root}{VENV_PYTHON} (build it: sudo bash scripts/arm_env.sh)"
    handler = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not handler.is_file() or "enabled" not in handler.read_text():
        return "the qemu-aarch64 binfmt handler is not enabled (re-run scripts/arm_env.sh)"
    if os.geteuid() != 0:
        return "chroot needs root (run as root or with sudo)"
    if shutil.which("chroot") is None:
        return "no `chroot` command on PATH"
    return None


def run_host(model: Path, x_path: Path, settings: dict, workdir: Path) -> tuple[list[np.ndarray], dict]:
    cmd = [sys.executable, str(RUNNER), str(model), str(x_path),
           str(workdir / "host_out.npz"), str(workdir / "host_info.json"), json.dumps(settings)]
    _check_run(cmd, "x86 onnxruntime", model, timeout=None)
    return _read_results(workdir / "host_out.npz", workdir / "host_info.json")


def run_arm(model: Path, x_path: Path, settings: dict, root: Path, cpu: str | None,
            external: list[str], timeout: float) -> tuple[list[np.ndarray], dict]:
    """Copy runner, model and inputs into <root>/tmp, run them under qemu, read back."""
    box = Path(tempfile.mkdtemp(prefix="edgekd-parity-", dir=root / "tmp"))
    inside = Path("/tmp") / box.name  # the same folder as the chroot sees it
    try:
        shutil.copy(RUNNER, box / RUNNER.name)
        shutil.copy(model, box / "model.onnx")
        for rel in external:  # external data is found relative to the model file
            (box / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(model.parent / rel, box / rel)
        shutil.copy(x_path, box / "inputs.npy")
        # A clean environment: QEMU_CPU picks the emulated core (qemu reads it when the
        # kernel hands it the aarch64 python); nothing of the host's PYTHON*/PIP* leaks in.
        env = ["env", "-i", CLEAN_PATH, "HOME=/root"] + ([f"QEMU_CPU={cpu}"] if cpu else [])
        cmd = env + [shutil.which("chroot"), str(root), VENV_PYTHON, str(inside / RUNNER.name),
                     str(inside / "model.onnx"), str(inside / "inputs.npy"), str(inside / "out.npz"),
                     str(inside / "info.json"), json.dumps(settings)]
        _check_run(cmd, f"aarch64 onnxruntime (QEMU_CPU={cpu or 'default'})", model, timeout)
        return _read_results(box / "out.npz", box / "info.json")
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _check_run(cmd: list[str], side: str, model: Path, timeout: float | None) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeBackendError(
            f"{side} did not finish {model.name} within {timeout:.0f} s.",
            "Emulation is slow: pass fewer samples (--max-samples) or a larger --timeout.",
        ) from None
    if proc.returncode != 0:
        # stderr also holds cpuinfo's harmless complaints about the missing /sys: show the tail.
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeBackendError(
            f"{side} failed on {model.name} (exit {proc.returncode}):\n{tail}",
            "If the model loads on the host but not in the chroot, its opset or an operator "
            "is not supported by the aarch64 onnxruntime; re-run scripts/arm_env.sh if the "
            "chroot itself is broken.",
        )


def _read_results(out_path: Path, info_path: Path) -> tuple[list[np.ndarray], dict]:
    with np.load(out_path) as z:
        outs = [z[f"arr_{i}"] for i in range(len(z.files))]
    return outs, json.loads(info_path.read_text())


# ----------------------------------------------------------------------------- inputs, targets


def load_inputs(path: Path, key: str | None, max_samples: int | None) -> tuple[np.ndarray, str]:
    if not path.is_file():
        raise DataError(f"Inputs file {str(path)!r} does not exist.", "Give an .npz written by np.savez.")
    with np.load(path) as z:
        keys = list(z.files)
        if key is None:
            key = keys[0] if len(keys) == 1 else ("x" if "x" in keys else None)
        if key not in keys:
            raise DataError(f"{path.name} has no array {key!r}.",
                            f"Pick one with --key; it holds: {', '.join(keys)}.")
        x = z[key]
    return (x[:max_samples] if max_samples else x), key


def arm_target(name: str) -> TargetProfile:
    target = load_target(name)
    if target.runtime != "onnxruntime" or target.arch != "aarch64":
        raise ConfigError(
            f"Target {target.name!r} is {target.runtime} on {target.arch}.",
            "ARM parity checks onnxruntime on aarch64 targets (rpi4, rpi5 or your own profile).",
        )
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- report


def render_markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# ARM parity: x86 onnxruntime vs aarch64 onnxruntime (qemu-user)",
        "",
        f"- host: {header['host']}",
        f"- aarch64: {header['arm']} (chroot `{header['root']}`, qemu-user)",
        f"- inputs: `{header['inputs']}` key `{header['key']}`, {header['shape']} {header['dtype']}",
        "- session: the target profile's threads and graph optimization level, on both sides",
        "- pass: max abs difference over all outputs <= tolerance. FP32 tolerance is absolute; "
        "the INT8 default is a few steps of the model's output quantization (see "
        "scripts/arm_parity.py for why).",
        "- unfused QDQ (int8 only, diagnostic): the same comparison with graph optimization "
        "`basic`, where QDQ runs as float math; 0 there means the fused-run difference is "
        "integer-kernel rounding, not a broken artifact.",
        "- no latency: emulated timings say nothing about a board.",
        "",
        "| model | sha256 | precision | target | emulated CPU | samples | max abs diff "
        "| mean abs diff | top-1 agreement | tolerance | result | unfused QDQ max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c: Comparison = r["cmp"]
        agree = "n/a" if c.top1_agreement is None else f"{c.top1_agreement:.2%} ({c.top1_flips} differ)"
        result = "PASS" if c.passed else "**FAIL**" + (f": {c.note}" if c.note else "")
        unfused = "-" if r["unfused"] is None else f"{r['unfused']:.3g}"
        lines.append(
            f"| {r['model']} | `{r['sha'][:12]}` | {r['precision']} | {r['target']} | {r['cpu']} "
            f"| {c.samples} | {_diff_cell(c.max_abs_diff, r['step'])} | {c.mean_abs_diff:.3g} | {agree} "
            f"| {c.atol:.3g} ({r['atol_why']}) | {result} | {unfused} |"
        )
    return "\n".join(lines) + "\n"


def _diff_cell(diff: float, step: float | None) -> str:
    """An int8 difference also in output quantization steps, the unit it moves in."""
    return f"{diff:.3g}" if not step else f"{diff:.3g} ({diff / step:.1f} steps)"


def _cpu_cell(cpu: str | None, info: dict) -> str:
    flags = info.get("cpu_features") or {}
    have = [name for name, on in flags.items() if on] or ["plain NEON"]
    return f"{cpu or 'qemu default'} ({', '.join(have)})"


def _host_cpu() -> str:
    """CPU model and whether it has AVX-512 VNNI (ORT's fastest x86 int8 path)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():  # first CPU's "key\t: value" lines
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", platform.machine())
    vnni = "avx512_vnni" in fields.get("flags", "").split()
    return f"{name}, AVX-512 VNNI {'yes' if vnni else 'no'}"


def _side(info: dict) -> str:
    return (f"{info['machine']}, onnxruntime {info['onnxruntime']}, numpy {info['numpy']}, "
            f"python {info['python']}")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="ONNX files (fp32 or int8 QDQ)")
    p.add_argument("--inputs", required=True, type=Path, help=".npz holding the input batch (N, C, H, W)")
    p.add_argument("--key", default=None, help="array in --inputs (default: the only one, else 'x')")
    p.add_argument("--target", nargs="+", default=["rpi4", "rpi5"],
                   help="aarch64 onnxruntime target profiles to emulate (default: rpi4 rpi5)")
    p.add_argument("--atol-fp32", type=float, default=ATOL_FP32, help=f"default {ATOL_FP32}")
    p.add_argument("--atol-int8", type=float, default=None,
                   help=f"absolute; default {ATOL_INT8_STEPS} output quantization steps of each model")
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N inputs")
    p.add_argument("--arm-root", default=os.environ.get("EDGEKD_ARM_ROOT", DEFAULT_ROOT),
                   help=f"chroot built by scripts/arm_env.sh (default $EDGEKD_ARM_ROOT or {DEFAULT_ROOT})")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per emulated run")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    return p.parse_args(argv)


def check_request(args: argparse.Namespace) -> tuple[list[TargetProfile], dict[Path, dict]]:
    """Tolerances, targets and models checked (cheap) before anything runs."""
    for flag in ("atol_fp32", "atol_int8"):
        value = getattr(args, flag)
        if value is not None and not value >= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} is {value}.", "A tolerance is >= 0.")
    targets = [arm_target(t) for t in args.target]
    return targets, {model: model_facts(model) for model in args.models}


def require_chroot(root: str | Path) -> None:
    problem = chroot_problem(root)
    if problem:
        raise RuntimeBackendError(f"The aarch64 chroot cannot be used: {problem}.",
                                  "Build it with: sudo bash scripts/arm_env.sh")


def parity_rows(args: argparse.Namespace, targets: list[TargetProfile], facts_of: dict[Path, dict],
                x_path: Path, work: Path) -> tuple[list[dict], dict, dict]:
    rows, infos = [], ({}, {})
    for model in args.models:
        facts = facts_of[model]
        for target in targets:
            settings = session_settings(target) | {"batch_size": 64}
            ref, out, infos = run_pair(args, model, facts, target, settings, x_path, work)
            atol, why = _tolerance(args, facts, ref[0])
            row = {"model": model.name, "sha": sha256(model), "precision": facts["precision"],
                   "target": target.name, "cpu": _cpu_cell(target.cpu, infos[1]),
                   "cmp": compare(ref, out, atol), "atol_why": why, "unfused": None,
                   "step": facts["output_step"]}
            if facts["precision"] == "int8":
                # Diagnostic: the same graph with QDQ left unfused (float math). Equal
                # here but not fused means kernel rounding, not a broken artifact.
                basic = settings | {"graph_optimization_level": "basic"}
                ref_b, out_b, _ = run_pair(args, model, facts, target, basic, x_path, work)
                row["unfused"] = compare(ref_b, out_b, atol).max_abs_diff
            rows.append(row)
            print(_row_line(row), flush=True)
    return rows, infos[0], infos[1]


def run_pair(args: argparse.Namespace, model: Path, facts: dict, target: TargetProfile,
             settings: dict, x_path: Path, work: Path) -> tuple[list, list, tuple[dict, dict]]:
    """Outputs of `model` on x86 and on emulated aarch64, and both sides' info."""
    ref, host_info = run_host(model, x_path, settings, work)
    out, arm_info = run_arm(model, x_path, settings, Path(args.arm_root), target.cpu,
                            facts["external_data"], args.timeout)
    if arm_info["machine"] != "aarch64":
        raise RuntimeBackendError(
            f"The chroot ran on {arm_info['machine']!r}, not aarch64.",
            "The binfmt handler is not qemu-aarch64: re-run scripts/arm_env.sh.",
        )
    return ref, out, (host_info, arm_info)


def _tolerance(args: argparse.Namespace, facts: dict, host_first: np.ndarray) -> tuple[float, str]:
    if facts["precision"] == "fp32":
        return args.atol_fp32, "fp32, absolute"
    if args.atol_int8 is not None:
        return args.atol_int8, "int8, absolute, --atol-int8"
    return int8_tolerance(facts, host_first)


def _row_line(r: dict) -> str:
    c = r["cmp"]
    verdict = "PASS" if c.passed else "FAIL"
    agree = "n/a" if c.top1_agreement is None else f"{c.top1_agreement:.2%}"
    return (f"{verdict} {r['model']} [{r['precision']}] on {r['target']} {r['cpu']}: "
            f"max |diff| {c.max_abs_diff:.3g} (tol {c.atol:.3g}), top-1 agreement {agree} {c.note}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        targets, facts_of = check_request(args)
        x, key = load_inputs(args.inputs, args.key, args.max_samples)
        require_chroot(args.arm_root)
        with tempfile.TemporaryDirectory(prefix="edgekd-parity-") as tmp:
            work = Path(tmp)
            np.save(work / "inputs.npy", x)
            rows, host_info, arm_info = parity_rows(args, targets, facts_of, work / "inputs.npy", work)
    except EdgekdError as err:
        print(f"error: {err.message}\nhint: {err.hint}" if err.hint else f"error: {err}", file=sys.stderr)
        return err.exit_code
    header = {"host": _side(host_info) + f", {_host_cpu()}",
              "arm": _side(arm_info), "root": args.arm_root, "inputs": args.inputs.name,
              "key": key, "shape": tuple(x.shape), "dtype": str(x.dtype)}
    table = render_markdown(rows, header)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        print(f"wrote {args.out}")
    else:
        print(table)
    failed = [r for r in rows if not r["cmp"].passed]
    return GateError.exit_code if failed else 0


if __name__ == "__main__":
    sys.exit(main())
