"""`edgekd compress` with `student: {quantization: qat}`: the QAT row, the TensorRT variant, checkpoints."""

import json
from pathlib import Path

import pytest

pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt (the [qat] extra) is not installed")

from edgekd.models.io import load_model
from edgekd.pipeline.compress import compress
from edgekd.ui import UI

REPO = Path(__file__).resolve().parents[2]

TINY_QAT = f"""
version: 1
name: tiny-qat
data: {{kind: digits, input_size: 16}}
teacher:
  model: test_resnet
  train: {{epochs: 3, batch_size: 64, lr: 0.01}}
student: {{width: 0.5, depth: 1.0, quantization: qat}}
distill:
  train: {{epochs: 3, batch_size: 64, lr: 0.01}}
  qat: {{epochs: 1, batch_size: 64, lr: 0.001, warmup_epochs: 0}}
quantize:
  max_int8_drop: 0.3
targets: [host-cpu, jetson-orin-nano]
bench: {{warmup_s: 0.02, min_iterations: 3, min_seconds: 0.02, batch_sizes: [1], rounds: 1}}
"""


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compress-qat")
    config = folder / "tiny.yaml"
    config.write_text(TINY_QAT)
    result = compress(config, out=folder / "run", ui=UI(quiet=True))
    return config, result.run_dir


def test_report_has_a_measured_qat_row(run):
    report = json.loads((run[1] / "report.json").read_text())
    rows = {a["name"]: a for a in report["artifacts"]}
    assert list(rows) == ["teacher-pytorch", "teacher-fp32", "student-fp32", "student-int8", "student-qat-int8"]
    row = rows["student-qat-int8"]
    assert (row["runtime"], row["precision"], row["path"]) == ("onnxruntime", "int8", "student.qat.onnx")
    assert row["latency_ms"]["p50"] > 0 and row["accuracy"] > 0.8  # 10 classes: chance is 0.1
    # the measured ONNX Runtime accuracy is the fake-quantized PyTorch model's (parity: top-1 agreement >= 0.98)
    assert abs(row["accuracy"] - report["qat"]["val_accuracy"]) <= 0.02
    assert report["qat"]["export"]["parity"]["passed"]
    assert any("Quantization-aware" in note for note in report["notes"])


def test_qat_file_is_the_tensorrt_int8_variant(run):
    report = json.loads((run[1] / "report.json").read_text())
    builds = {b["precision"]: b for b in report["tensorrt"]["builds"]}
    assert builds["int8"]["onnx"] == "student.qat.onnx"
    assert builds["int8"]["commands"][0].startswith("edgekd build student.qat.onnx --target jetson-orin-nano")
    assert not (run[1] / "student.int8.trt.onnx").exists()  # no post-training TensorRT file when QAT provides it
    sidecar = json.loads((run[1] / "student.qat.onnx.json").read_text())
    assert sidecar["opset"] == 20 and sidecar["parity"]["precision"] == "int8"


def test_checkpoints_load_float_and_quantized(run):
    from edgekd.quantize.qat import quantizers

    float_student = load_model(run[1] / "student.safetensors")
    assert not quantizers(float_student)
    assert any(m.__class__.__name__ == "BatchNorm2d" for m in float_student.modules())
    qat_student = load_model(run[1] / "student.qat.safetensors")
    assert quantizers(qat_student)


def test_rerun_reuses_the_qat_stage(run):
    config, run_dir = run
    before = (run_dir / ".edgekd" / "qat.json").read_text()
    result = compress(config, out=run_dir, ui=UI(quiet=True))
    assert (run_dir / ".edgekd" / "qat.json").read_text() == before
    assert "student-qat-int8" in result.summary()


TORCHRUN_QAT = """
version: 1
name: qat-ddp
data: {kind: digits, input_size: 16}
teacher:
  model: test_resnet
  train: {epochs: 3, batch_size: 32, lr: 0.01}
student: {width: 0.5, depth: 1.0, quantization: qat}
distill:
  train: {epochs: 3, batch_size: 32, lr: 0.01}
  qat: {epochs: 1, batch_size: 32, lr: 0.001, warmup_epochs: 0}
quantize: {enabled: false}
targets: [host-cpu]
bench: {warmup_s: 0.02, min_iterations: 3, min_seconds: 0.02, batch_sizes: [1], rounds: 1}
"""


def test_qat_trains_under_torchrun(tmp_path):
    # modelopt's quantizers inside DistributedDataParallel (2 gloo processes on the CPU)
    import os
    import subprocess
    import sys

    from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt

    config = tmp_path / "qat.yaml"
    config.write_text(TORCHRUN_QAT)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(29700 + os.getpid() % 1000), "-m", "edgekd", "compress", str(config),
                           "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    run_dir = tmp_path / "run"
    assert check_qdq_for_tensorrt(run_dir / "student.qat.onnx") == []
    assert len((run_dir / "student-qat.metrics.jsonl").read_text().splitlines()) == 1  # rank 0 alone writes
    rows = {a["name"]: a for a in json.loads((run_dir / "report.json").read_text())["artifacts"]}
    assert rows["student-qat-int8"]["accuracy"] > 0.8  # measured 0.97 (test_resnet teacher 0.98)
    assert quantizers_of(run_dir / "student.qat.safetensors")


def quantizers_of(path):
    from edgekd.quantize.qat import quantizers

    return quantizers(load_model(path))
