"""A tiny but real run directory, laid out as `edgekd compress` writes it.

Two untrained timm `test_resnet` networks at 3x32x32 (teacher wider than
student), exported with torch.onnx (dynamic batch, opset 17), the student
also quantized to a QDQ int8 ONNX with ONNX Runtime's static quantizer.
Labels are the teacher's own predictions, so the teacher scores 1.0 and
accuracy numbers can be checked against a direct computation. The same
samples stand for the val and test splits. Preprocessing is the pipeline's own
record (`edgekd.data.Preprocess`). The files are written by stages run through
the real engine (edgekd.pipeline.engine.run_stages), whose records list the
artifacts as the pipeline's do and say which stage wrote what, from what (ship
checks report.json against them). Workstation-side only (imports torch);
shared by tests/bench and tests/ship.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from edgekd.data import Preprocess
from edgekd.artifacts import STUDENT_CHECKPOINT, TEACHER_CHECKPOINT
from edgekd.pipeline.records import TEST_FILE, VAL_FILE, Artifact

SHAPE = (3, 32, 32)
CLASSES = ["ant", "bee", "cat", "dog"]
# as JSON holds it (sidecars, manifests): lists, not tuples
PREPROCESS = json.loads(json.dumps(Preprocess(32, 3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).to_dict()))
N_VAL = 160  # above the 128 golden samples a bundle carries
# stage -> the artifacts its record lists, as `edgekd compress` records them
RECORDED = {
    "teacher": [Artifact("teacher-pytorch", "teacher", "pytorch", "fp32", TEACHER_CHECKPOINT)],
    "export": [Artifact("teacher-fp32", "teacher", "onnxruntime", "fp32", "teacher.onnx", ("host-cpu",)),
               Artifact("student-fp32", "student", "onnxruntime", "fp32", "student.onnx", ("host-cpu",))],
    "quantize": [Artifact("student-int8", "student", "onnxruntime", "int8", "student.int8.onnx", ("host-cpu",))],
}


def _export(model, path: Path, metadata: dict) -> None:
    import onnx
    import torch

    x = torch.zeros(1, *SHAPE)
    with warnings.catch_warnings():  # the legacy exporter is deprecated but fast and dependency-free
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _quantize(src: Path, dst: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns about every bias; restored below
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _sidecar(path: Path, **fields) -> None:
    path.with_name(path.name + ".json").write_text(json.dumps(fields))


def build_fake_run(run: Path) -> Path:
    import timm
    import torch

    from edgekd.models.io import save_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(1)
    run.mkdir(parents=True)
    (run / "data").mkdir()
    models = {
        "teacher": ("test_resnet", {"num_classes": 4}),
        "student": ("test_byobnet", {"num_classes": 4}),
    }
    nets = {role: timm.create_model(arch, **kwargs).eval() for role, (arch, kwargs) in models.items()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_VAL, *SHAPE)).astype(np.float32)
    with torch.inference_mode():
        y = nets["teacher"](torch.from_numpy(x)).argmax(1).numpy().astype(np.int64)

    def data(_):
        for split_file in (VAL_FILE, TEST_FILE):
            np.savez(run / split_file, x=x, y=y, classes=np.array(CLASSES))
        return {"outputs": [VAL_FILE, TEST_FILE]}

    def checkpoints(_):
        for role, (arch, kwargs) in models.items():
            save_checkpoint(run / f"{role}.safetensors", nets[role], arch, kwargs, preprocess=PREPROCESS,
                            classes=CLASSES)
        return {"outputs": [TEACHER_CHECKPOINT, STUDENT_CHECKPOINT], **_listed("teacher")}

    def export(_):
        # Labels travel in the ONNX metadata, preprocessing in the sidecar: ship must find both.
        meta = {"edgekd.classes": json.dumps(CLASSES)}
        for role in models:
            _export(nets[role], run / f"{role}.onnx", meta)
            _sidecar(run / f"{role}.onnx", model=role, precision="fp32", preprocess=PREPROCESS, opset=17)
        return {"outputs": ["teacher.onnx", "teacher.onnx.json", "student.onnx", "student.onnx.json"],
                **_listed("export")}

    def quantize(_):
        _quantize(run / "student.onnx", run / "student.int8.onnx", x[:8])
        _sidecar(run / "student.int8.onnx", model="student", precision="int8", preprocess=PREPROCESS, opset=17)
        return {"outputs": ["student.int8.onnx", "student.int8.onnx.json"], **_listed("quantize")}

    def report(_):
        (run / "report.json").write_text(json.dumps(fake_report(run), indent=1))
        (run / "report.md").write_text("# fake report\n")
        return {"outputs": ["report.json", "report.md"]}

    run_fake_stages(run, [("data", data, []), ("teacher", checkpoints, []),
                          ("export", export, [TEACHER_CHECKPOINT, STUDENT_CHECKPOINT]),
                          ("quantize", quantize, ["student.onnx"]),
                          ("report", report, [".edgekd/export.json", ".edgekd/quantize.json"])])
    return run


def _listed(stage: str) -> dict:
    return {"artifacts": [a.to_dict() for a in RECORDED[stage]]}


def run_fake_stages(run: Path, stages: list, force: bool = False) -> None:
    """(name, run(ctx) -> {"outputs": [...]}, inputs) stages through the real engine, which writes the records
    (force: run them even where the engine would reuse them, as after a change of their code)."""
    from types import SimpleNamespace

    from edgekd.pipeline.engine import Stage, run_stages
    from edgekd.ui import UI

    ctx = SimpleNamespace(run_dir=run, stage_key="", dist=None, config_values=lambda keys: {})
    run_stages([_fake_stage(Stage, name, fn, files) for name, fn, files in stages], ctx, UI(quiet=True), force=force)


def _fake_stage(stage_class, name: str, fn, files: list[str]):
    """A stage that declares as its outputs whatever its function wrote (the engine checks after the run)."""
    written: list[str] = []

    def run(ctx):
        result = fn(ctx)
        written[:] = result["outputs"]
        return result

    return stage_class(name, name, run, lambda ctx: [], lambda ctx: files, lambda ctx: list(written))


def _artifact(name, model, runtime, precision, path, p50, acc, peak, passed) -> dict:
    samples = list(np.random.default_rng(len(name)).gamma(8.0, p50 / 8.0, size=300))
    return {
        "name": name, "model": model, "runtime": runtime, "precision": precision, "path": path,
        "accuracy": acc,
        "latency_ms": {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.6, "mean": p50 * 1.05, "std": p50 * 0.1,
                       "min": p50 * 0.8, "max": p50 * 2.0},
        "throughput_ips": 1000.0 / p50, "peak_rss_mb": peak, "load_s": 0.05, "size_mb": 1.0, "params": 100000,
        "flops": 1000000, "budget": _verdict(passed), "budgets": {"host-cpu": _verdict(passed)},
        "speedup_vs_teacher": 4.0 / p50, "memory_ratio_vs_teacher": peak / 40.0,
        "batch_sweep": {"1": {"latency_ms": {"p50": p50}, "throughput_ips": 1000.0 / p50},
                        "8": {"latency_ms": {"p50": p50 * 5}, "throughput_ips": 8000.0 / (p50 * 5)}},
        "latency_samples_ms": samples,
    }


def _verdict(passed: bool) -> dict:
    checks = {"latency": passed, "memory": True}
    return {"target": "host-cpu", "latency_ms": 5.0, "memory_mb": 1024.0, "max_accuracy_drop": 0.02,
            "measured_on_target": True, "checks": checks, "pass": passed}


def fake_report(run: Path | None = None, host: str = "workstation", device: str | None = None) -> dict:
    """A report.json as the pipeline writes it (numbers invented, shapes real)."""
    from edgekd.report.core import SCHEMA_VERSION

    target = {"name": "host-cpu", "runtime": "onnxruntime", "arch": "x86_64", "threads": 2,
              "precisions": ["fp32", "int8"], "max_opset": 21,
              "budgets": {"latency_ms": 5.0, "memory_mb": 1024.0, "max_accuracy_drop": 0.02, "max_int8_drop": 0.02}}
    return {
        "schema_version": SCHEMA_VERSION, "edgekd_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00",
        "target": target, "targets": [target],
        "dataset": {"source": "fake", "splits": {"train": 0, "val": N_VAL, "test": N_VAL}, "classes": CLASSES},
        "measurement": {"arch": "x86_64", "cores": 2, "session_target": "host-cpu", "threads": 2,
                        "graph_optimization_level": "all", "notes": []},
        "recommended": {"name": "student-int8", "path": "student.int8.onnx", "why": "fastest student passing"},
        "machine": {"hostname": host, "device": device, "cpu": "Test CPU", "cores": 2, "os": "Linux",
                    "versions": {"onnxruntime": "1.32.0"}},
        "artifacts": [
            _artifact("teacher-pytorch", "teacher", "pytorch", "fp32", "teacher.safetensors", 9.0, 0.91, 180.0, False),
            _artifact("teacher-fp32", "teacher", "onnxruntime", "fp32", "teacher.onnx", 4.0, 0.91, 40.0, True),
            _artifact("student-fp32", "student", "onnxruntime", "fp32", "student.onnx", 1.2, 0.89, 12.0, True),
            _artifact("student-int8", "student", "onnxruntime", "int8", "student.int8.onnx", 0.6, 0.885, 9.0, True),
        ],
    }
