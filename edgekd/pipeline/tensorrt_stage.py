"""Prepare TensorRT-ready ONNX files for Jetson targets, and the on-device commands.

Engines are not portable across TensorRT versions or GPUs, so they are built on
the device. Everything before the build happens here and travels in the ONNX
file: the QDQ placement and calibration for INT8 (explicit quantization, the
only INT8 path that works on TensorRT 8.5 through 11), and the float16
conversion for strongly typed FP16 builds. `edgekd.trt.compat` decides which
variant each (target, precision) needs.
"""

from __future__ import annotations

from edgekd.errors import GateError
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import TEST_FILE, Artifact

# compat's onnx_variant -> the run-directory file that carries it
VARIANT_FILES = {"fp32": "student.onnx", "fp16": "student.fp16.onnx", "qdq": "student.int8.trt.onnx"}


def tensorrt_targets(ctx: RunContext) -> list:
    return [t for t in ctx.targets if t.runtime == "tensorrt"]


def plans(ctx: RunContext) -> list[tuple]:
    """(target, precision, BuildPlan) for every TensorRT build the config asks for."""
    from edgekd.trt.compat import plan_for_target

    return [(t, p, plan_for_target(t, p)) for t in tensorrt_targets(ctx) for p in t.precisions]


def int8_targets(ctx: RunContext) -> list:
    """The Jetson targets that build an INT8 engine: their profiles bound the INT8 file's accuracy drop."""
    return [t for t in tensorrt_targets(ctx) if "int8" in t.precisions]


def _reads(ctx: RunContext) -> list[str]:
    # targets: which builds, and the Jetson profiles' INT8 bound; the PTQ INT8 file follows the user's
    # quantize settings (samples arrive as data/calib.npz). Its types are TensorRT's, never this host's,
    # so no host fact decides it.
    keys = ["targets", "student.quantization", "quantize.method", "quantize.max_int8_drop", "quantize.fallbacks"]
    agreement_gate = tensorrt_targets(ctx) and not ctx.config.data.real_choices  # INT8 gated on agreement
    return keys + (["data.kind", "data.use"] if agreement_gate else [])


def _outputs(ctx: RunContext) -> list[str]:
    variants = {plan.onnx_variant for _, _, plan in plans(ctx)}
    files = {f for v in variants for f in (VARIANT_FILES[v], VARIANT_FILES[v] + ".json")}
    return sorted(files - set(_upstream_files(ctx)))


def run_tensorrt(ctx: RunContext) -> dict:
    from edgekd.pipeline.deploy_stages import failure

    builds = plans(ctx)
    if not builds:
        return {"outputs": [], "builds": [], "summary": "no TensorRT target selected"}
    made: dict[str, dict] = {}
    failures = []
    for _, _, plan in builds:
        if plan.onnx_variant not in made:
            try:
                made[plan.onnx_variant] = _make_variant(ctx, plan.onnx_variant)
            except GateError as exc:  # no such file: its builds are left out, the run still reports
                made[plan.onnx_variant] = {"failed": exc.message, "attempts": exc.details or [], "files": []}
                failures.append(failure(f"TensorRT {plan.onnx_variant} file", exc))
    rows = [_build_row(target, precision, plan, made[plan.onnx_variant], ctx.has_test)
            for target, precision, plan in builds if "failed" not in made[plan.onnx_variant]]
    # files other stages wrote (the FP32 export, the QAT export) are inputs here, not outputs
    outputs = sorted({f for v in made.values() for f in v["files"]} - set(_upstream_files(ctx)))
    return {"outputs": outputs, "builds": rows, "variants": made, "artifacts": _artifacts(rows), "failures": failures,
            "summary": f"{len(rows)} on-device build(s) prepared for {len(tensorrt_targets(ctx))} Jetson target(s)"}


def _artifacts(rows: list[dict]) -> list[dict]:
    """One artifact per (precision, ONNX file) the builds start from, serving the targets that build it."""
    serves: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        serves.setdefault((row["precision"], row["onnx"]), []).append(row["target"])
    precisions = [precision for precision, _ in serves]
    return [Artifact(f"student-{precision}-trt" + ("" if precisions.count(precision) == 1 else f"-{i}"), "student",
                     "tensorrt", precision, onnx, tuple(targets)).to_dict()
            for i, ((precision, onnx), targets) in enumerate(serves.items())]


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
    return {"file": out.name, "files": [out.name], "conversion": stats, **_onnxruntime_check(ctx, out)}


def _onnxruntime_check(ctx: RunContext, path) -> dict:
    """What ONNX Runtime says of a TensorRT-bound file before it leaves: its accuracy on the real test split;
    without one (data.kind: synthetic) its top-1 agreement with the FP32 student on the held-out synthetic
    images, and no accuracy claimed."""
    from edgekd.pipeline.deploy_stages import AGREEMENT_GATE
    from edgekd.runtime.ort import accuracy, make_session, predict

    if ctx.has_test:
        test_x, test_y = ctx.test_arrays()  # a reported accuracy: on the test split
        return {"accuracy_onnxruntime": accuracy(predict(make_session(path), test_x), test_y)}
    val_x, _ = ctx.val_arrays()
    fp32 = predict(make_session(ctx.run_dir / "student.onnx"), val_x).argmax(1)
    return {"accuracy_onnxruntime": None, "accuracy_unmeasured": "no real labelled data",
            "agreement_onnxruntime": accuracy(predict(make_session(path), val_x), fp32),
            "agreement_measure": f"{AGREEMENT_GATE} on {len(fp32)} held-out synthetic images"}


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
    path = ctx.run_dir / "student.qat.onnx"
    _check_trt_rules(path, remove=False)
    return {"file": path.name, "files": [path.name, path.name + ".json"], "source": "quantization-aware training",
            **_onnxruntime_check(ctx, path)}


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
    whatever this workstation's CPU): the user's quantize settings (method, fallbacks), and as its bound
    `quantize.max_int8_drop`, else the strictest `budgets.max_int8_drop` of the Jetson targets that build INT8."""
    from dataclasses import asdict

    from edgekd.pipeline.deploy_stages import calib_source, gate_measure, max_int8_drop
    from edgekd.quantize.gate import quantize_with_gate
    from edgekd.quantize.schemes import choose_scheme
    from edgekd.runtime.ort import accuracy, make_session, predict

    q = ctx.config.quantize
    out = ctx.run_dir / VARIANT_FILES["qdq"]
    val_x, val_y = ctx.val_arrays()
    fp32 = predict(make_session(ctx.run_dir / "student.onnx"), val_x)
    if not ctx.config.data.real_choices:  # no real labels: INT8 must agree with the FP32 student (as run_quantize)
        val_y = fp32.argmax(1)
    reference = accuracy(fp32, val_y)
    bound = max_int8_drop(ctx, int8_targets(ctx))
    gate = quantize_with_gate(ctx.run_dir / "student.onnx", out, calib_source(ctx), val_x, val_y,
                              reference_accuracy=reference, max_accuracy_drop=bound, method=q.method,
                              per_channel=True, fallbacks=q.fallbacks, target=None,
                              scheme=choose_scheme("tensorrt", "aarch64"), ui=ctx.ui)
    _check_trt_rules(out, remove=True)
    return {"file": out.name, "files": [out.name, out.name + ".json"], "source": "post-training quantization",
            "val_accuracy_onnxruntime": gate.chosen.accuracy, **gate_measure(ctx, len(val_y)),
            "max_int8_drop": bound, "scheme": gate.scheme,
            "attempts": [asdict(a) for a in gate.attempts]}


def _build_row(target, precision: str, plan, variant: dict, scored: bool) -> dict:
    engine = f"student.{target.name}.{precision}.engine"
    build = f"edgekd build {variant['file']} --target {target.name} --precision {precision} --out {engine}"
    # without a real test split (data.kind: synthetic) no test.npz ships: latency and memory only
    bench = f"edgekd bench {engine} --target {target.name}" + (f" --data {TEST_FILE}" if scored else "")
    return {"target": target.name, "tensorrt": plan.tensorrt, "jetpack": target.tensorrt.jetpack,
            "precision": precision, "onnx": variant["file"], "plan": plan.as_dict(), "engine": engine,
            "commands": [build, bench]}


TENSORRT = Stage("tensorrt", "prepare TensorRT-ready ONNX for Jetson targets", run_tensorrt, _reads,
                 lambda ctx: ["student.onnx", ctx.calib_file(), ctx.val_file(), ctx.test_file(), "student.qat.onnx"],
                 _outputs)
