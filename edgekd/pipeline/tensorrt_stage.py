"""Prepare TensorRT-ready ONNX files for Jetson targets, and the on-device commands.

Engines are not portable across TensorRT versions or GPUs, so they are built on
the device. Everything before the build happens here and travels in the ONNX
file: the QDQ placement and calibration for INT8 (explicit quantization, the
only INT8 path that works on TensorRT 8.5 through 11), and the float16
conversion for strongly typed FP16 builds. `edgekd.trt.compat` decides which
variant each (target, precision) needs.
"""

from __future__ import annotations

from edgekd.config import config_dict
from edgekd.errors import GateError
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage

# compat's onnx_variant -> the run-directory file that carries it
VARIANT_FILES = {"fp32": "student.onnx", "fp16": "student.fp16.onnx", "qdq": "student.int8.trt.onnx"}


def tensorrt_targets(ctx: RunContext) -> list:
    return [t for t in ctx.targets if t.runtime == "tensorrt"]


def plans(ctx: RunContext) -> list[tuple]:
    """(target, precision, BuildPlan) for every TensorRT build the config asks for."""
    from edgekd.trt.compat import plan_for_target

    return [(t, p, plan_for_target(t, p)) for t in tensorrt_targets(ctx) for p in t.precisions]


def int8_targets(ctx: RunContext) -> list:
    """The Jetson targets that build an INT8 engine: their budgets bound the INT8 file's accuracy drop."""
    return [t for t in tensorrt_targets(ctx) if "int8" in t.precisions]


def _params(ctx: RunContext) -> dict:
    # everything that decides the PTQ file: the user's quantize settings, the Jetson profiles'
    # bound and the TensorRT scheme (never a host CPU workaround, so no host facts)
    from edgekd.pipeline.deploy_stages import int8_bound
    from edgekd.quantize.schemes import choose_scheme

    jetsons = int8_targets(ctx)
    return {"targets": [t.model_dump(mode="json") for t in tensorrt_targets(ctx)],
            "quantize": config_dict(ctx.config.quantize), "student_quantization": ctx.config.student.quantization,
            "int8": {"scheme": choose_scheme("tensorrt", "aarch64").as_dict(),
                     "bound": int8_bound(ctx, jetsons)} if jetsons else None}


def run_tensorrt(ctx: RunContext) -> dict:
    builds = plans(ctx)
    if not builds:
        return {"outputs": [], "builds": [], "summary": "no TensorRT target selected"}
    made: dict[str, dict] = {}
    for _, _, plan in builds:
        if plan.onnx_variant not in made:
            made[plan.onnx_variant] = _make_variant(ctx, plan.onnx_variant)
    rows = [_build_row(target, precision, plan, made[plan.onnx_variant]) for target, precision, plan in builds]
    # files other stages wrote (the FP32 export, the QAT export) are inputs here, not outputs
    outputs = sorted({f for v in made.values() for f in v["files"]} - set(_upstream_files(ctx)))
    return {"outputs": outputs, "builds": rows, "variants": made,
            "summary": f"{len(rows)} on-device build(s) prepared for {len(tensorrt_targets(ctx))} Jetson target(s)"}


def _make_variant(ctx: RunContext, variant: str) -> dict:
    if variant == "fp32":
        return {"file": "student.onnx", "files": ["student.onnx"]}
    if variant == "fp16":
        return _fp16_variant(ctx)
    return _qdq_variant(ctx)


def _fp16_variant(ctx: RunContext) -> dict:
    """float16 weights and activations, float32 inputs/outputs; checked against FP32 in ONNX Runtime."""
    from edgekd.onnxtools.fp16 import convert
    from edgekd.runtime.ort import accuracy, make_session, predict

    out = ctx.run_dir / VARIANT_FILES["fp16"]
    _, stats = convert(ctx.run_dir / "student.onnx", out)
    val_x, val_y = ctx.val_arrays()
    acc = accuracy(predict(make_session(out), val_x), val_y)
    return {"file": out.name, "files": [out.name], "conversion": stats, "accuracy_onnxruntime": acc}


def _upstream_files(ctx: RunContext) -> list[str]:
    qat = ["student.qat.onnx", "student.qat.onnx.json"] if ctx.config.student.quantization == "qat" else []
    return ["student.onnx", "student.onnx.json", *qat]


def _qdq_variant(ctx: RunContext) -> dict:
    """TensorRT's explicit-quantization form: the QAT export when the student is QAT, else PTQ of the FP32 file."""
    if ctx.config.student.quantization == "qat":
        return _qat_variant(ctx)
    return _ptq_variant(ctx)


def _qat_variant(ctx: RunContext) -> dict:
    """student.qat.onnx already is TensorRT's form (checked when exported); checked again, as every QDQ file here."""
    from edgekd.runtime.ort import accuracy, make_session, predict

    path = ctx.run_dir / "student.qat.onnx"
    _check_trt_rules(path, remove=False)
    val_x, val_y = ctx.val_arrays()
    return {"file": path.name, "files": [path.name, path.name + ".json"], "source": "quantization-aware training",
            "accuracy_onnxruntime": accuracy(predict(make_session(path), val_x), val_y)}


def _check_trt_rules(path, remove: bool) -> None:
    from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt

    violations = check_qdq_for_tensorrt(path)
    if violations:
        if remove:
            path.unlink()
        raise GateError(f"{path.name} breaks TensorRT's explicit-quantization rules: {'; '.join(violations[:5])}.",
                        "This is a bug in edgekd's quantizer settings; please report it with the model.")


def _ptq_variant(ctx: RunContext) -> dict:
    """Post-training, TensorRT's scheme (symmetric S8, no int32 bias, dedicated QDQ pairs, 8-bit weights
    whatever this workstation's CPU): the user's quantize settings (method, fallbacks, max_accuracy_drop),
    else the Jetson profiles' accuracy bound."""
    from dataclasses import asdict

    from edgekd.pipeline.deploy_stages import calib_source, int8_bound
    from edgekd.quantize.gate import quantize_with_gate
    from edgekd.quantize.schemes import choose_scheme
    from edgekd.runtime.ort import accuracy, make_session, predict

    q = ctx.config.quantize
    out = ctx.run_dir / VARIANT_FILES["qdq"]
    val_x, val_y = ctx.val_arrays()
    reference = accuracy(predict(make_session(ctx.run_dir / "student.onnx"), val_x), val_y)
    bound = int8_bound(ctx, int8_targets(ctx))
    gate = quantize_with_gate(ctx.run_dir / "student.onnx", out, calib_source(ctx), val_x, val_y,
                              reference_accuracy=reference, max_accuracy_drop=bound, method=q.method,
                              per_channel=True, fallbacks=q.fallbacks, target=None,
                              scheme=choose_scheme("tensorrt", "aarch64"))
    _check_trt_rules(out, remove=True)
    return {"file": out.name, "files": [out.name, out.name + ".json"], "source": "post-training quantization",
            "accuracy_onnxruntime": gate.chosen.accuracy, "max_accuracy_drop": bound, "scheme": gate.scheme,
            "attempts": [asdict(a) for a in gate.attempts]}


def _build_row(target, precision: str, plan, variant: dict) -> dict:
    engine = f"student.{target.name}.{precision}.engine"
    build = f"edgekd build {variant['file']} --target {target.name} --precision {precision} --out {engine}"
    bench = f"edgekd bench {engine} --target {target.name} --data data/val.npz"
    return {"target": target.name, "tensorrt": plan.tensorrt, "jetpack": target.tensorrt.jetpack,
            "precision": precision, "onnx": variant["file"], "plan": plan.as_dict(), "engine": engine,
            "commands": [build, bench]}


TENSORRT = Stage("tensorrt", "prepare TensorRT-ready ONNX for Jetson targets", run_tensorrt, _params,
                 lambda ctx: ["student.onnx", "data/calib.npz", "data/val.npz", "student.qat.onnx"])
