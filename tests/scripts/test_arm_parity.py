"""scripts/arm_parity.py: the comparison logic everywhere, the real aarch64 run where the chroot is.

The models here are built with onnx.helper (a 4-channel conv net, 8x8 input) so
the tests need no torch and the emulated runs stay short.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    """scripts/ is not a package: import the file by path. Registered in sys.modules
    first (dataclasses look their module up there); later imports of it reuse it."""
    if "arm_parity" in sys.modules:
        return sys.modules["arm_parity"]
    spec = importlib.util.spec_from_file_location("arm_parity", REPO / "scripts" / "arm_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["arm_parity"] = module
    spec.loader.exec_module(module)
    return module


ap = _load_script()
ARM_ROOT = os.environ.get("EDGEKD_ARM_ROOT", ap.DEFAULT_ROOT)
_WHY_NOT = ap.chroot_problem(ARM_ROOT)


# ---------------------------------------------------------------------------- tiny models


def make_fp32(path: Path) -> None:
    """x (N,1,8,8) -> Conv 4x3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> (N,10)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_int8(fp32: Path, path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.random.default_rng(1).standard_normal((4, 1, 1, 8, 8)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": c} for c in calib)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


@pytest.fixture
def models(tmp_path):
    fp32, int8 = tmp_path / "tiny_fp32.onnx", tmp_path / "tiny_int8.onnx"
    make_fp32(fp32)
    make_int8(fp32, int8)
    x = np.random.default_rng(2).standard_normal((16, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x)
    return fp32, int8, tmp_path / "inputs.npz"


# ---------------------------------------------------------------------------- comparison logic


def test_identical_outputs_pass_with_full_agreement():
    ref = [np.arange(30, dtype=np.float32).reshape(3, 10)]
    c = ap.compare(ref, [r.copy() for r in ref], atol=0.0)
    assert (c.max_abs_diff, c.mean_abs_diff, c.top1_agreement, c.top1_flips, c.passed) == (0, 0, 1.0, 0, True)
    assert c.samples == 3


def test_tolerance_is_inclusive_and_exceeding_it_fails():
    ref = np.zeros((4, 10), np.float32)
    ref[:, 3] = 1.0
    out = ref.copy()
    out[0, 5] += 0.25  # exactly representable: the diff is 0.25 on the dot
    assert ap.compare([ref], [out], atol=0.25).passed
    failed = ap.compare([ref], [out], atol=0.2499)
    assert not failed.passed
    assert failed.max_abs_diff == pytest.approx(0.25, abs=0)
    assert failed.mean_abs_diff == pytest.approx(0.25 / 40)
    assert failed.top1_agreement == 1.0  # 0.25 does not overtake the 1.0 logit


def test_top1_flip_is_counted():
    ref = np.array([[0.0, 1.0, 0.9], [2.0, 0.0, 0.0]], np.float32)
    out = np.array([[0.0, 0.9, 1.0], [2.0, 0.0, 0.0]], np.float32)  # sample 0 flips 1 -> 2
    c = ap.compare([ref], [out], atol=0.1 + 1e-6)
    assert (c.top1_agreement, c.top1_flips, c.passed) == (0.5, 1, True)


def test_nan_on_one_side_fails_and_on_both_sides_is_equal():
    ref = np.array([[np.nan, 1.0]], np.float32)
    assert ap.compare([ref], [ref.copy()], atol=0.0).passed
    one_sided = ap.compare([ref], [np.array([[0.0, 1.0]], np.float32)], atol=1e9)
    assert one_sided.max_abs_diff == np.inf and not one_sided.passed


def test_shape_mismatch_fails_with_a_note():
    c = ap.compare([np.zeros((2, 10))], [np.zeros((2, 9))], atol=1.0)
    assert not c.passed and "shapes differ" in c.note


def test_top1_is_none_for_a_vector_output():
    c = ap.compare([np.ones(5)], [np.ones(5)], atol=0.0)
    assert c.top1_agreement is None and c.passed


def test_int8_tolerance_is_in_output_steps_or_a_fraction_of_the_range():
    atol, why = ap.int8_tolerance({"output_step": 0.01}, np.zeros((2, 10)))
    assert atol == pytest.approx(ap.ATOL_INT8_STEPS * 0.01) and "steps" in why
    logits = np.array([[-2.0, 3.0]])
    atol, why = ap.int8_tolerance({"output_step": None}, logits)
    assert atol == pytest.approx(ap.ATOL_INT8_FRACTION * 5.0) and "range" in why


def test_model_facts_tell_precision_and_output_step(models):
    fp32, int8, _ = models
    f = ap.model_facts(fp32)
    assert (f["precision"], f["output_step"], f["external_data"]) == ("fp32", None, [])
    q = ap.model_facts(int8)
    assert q["precision"] == "int8"
    # quantize_static puts a QuantizeLinear/DequantizeLinear pair on the logits:
    # its scale is symmetric int8, i.e. max |calibrated logit| / 127.
    assert q["output_step"] is not None and 0 < q["output_step"] < 1


def test_missing_chroot_is_a_runtime_error_with_a_hint(models, tmp_path, capsys):
    fp32, _, inputs = models
    code = ap.main([str(fp32), "--inputs", str(inputs), "--arm-root", str(tmp_path / "absent")])
    assert code == 6  # RuntimeBackendError
    assert "arm_env.sh" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (["--atol-int8", "-1"], 2, "tolerance"),  # ConfigError
        (["--target", "jetson-orin-nano"], 2, "onnxruntime on aarch64"),  # not an ORT/ARM board
        (["--key", "nope"], 3, "--key"),  # DataError
    ],
)
def test_bad_requests_fail_early_with_a_hint(models, tmp_path, capsys, extra, code, says):
    """Checked before the chroot is even looked for (the root here does not exist)."""
    fp32, _, inputs = models
    root = str(tmp_path / "absent")
    assert ap.main([str(fp32), "--inputs", str(inputs), "--arm-root", root, *extra]) == code
    assert says in capsys.readouterr().err


def test_unreadable_model_is_a_model_error(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf \xff\xff\xff")
    np.savez(tmp_path / "inputs.npz", x=np.zeros((1, 1, 8, 8), np.float32))
    code = ap.main([str(bad), "--inputs", str(tmp_path / "inputs.npz"), "--arm-root", str(tmp_path)])
    assert code == 4  # ModelError, before any run
    assert "Re-export" in capsys.readouterr().err


# ---------------------------------------------------------------------------- real aarch64 run

@pytest.mark.arm
@pytest.mark.skipif(_WHY_NOT is not None, reason=f"aarch64 chroot unusable: {_WHY_NOT}")
def test_parity_on_emulated_aarch64(models, tmp_path, capsys):
    fp32, int8, inputs = models
    out = tmp_path / "parity.md"
    code = ap.main([str(fp32), str(int8), "--inputs", str(inputs), "--target", "rpi5",
                    "--arm-root", ARM_ROOT, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    table = out.read_text()
    assert "aarch64, onnxruntime" in table  # platform.machine() inside the chroot
    assert table.count("| PASS |") == 2 and "FAIL" not in table
    assert "cortex-a76 (asimddp" in table  # the Pi 5 core, with SDOT, was emulated
    # FP32 on a 4-channel net: only the order of float additions differs.
    fp32_row = next(line for line in table.splitlines() if line.startswith("| tiny_fp32"))
    assert float(fp32_row.split("|")[7].split()[0]) <= 1e-5


@pytest.mark.arm
@pytest.mark.skipif(_WHY_NOT is not None, reason=f"aarch64 chroot unusable: {_WHY_NOT}")
def test_a_difference_beyond_tolerance_fails_the_gate(models, tmp_path):
    """x86 (AVX-512) and ARM (NEON) FP32 kernels sum in a different order: the outputs
    differ in the last bits (4.8e-7 seen on this net), so a zero tolerance must fail with
    exit 5. This also shows the aarch64 numbers come from a different implementation."""
    fp32, _, inputs = models
    out = tmp_path / "parity.md"
    code = ap.main([str(fp32), "--inputs", str(inputs), "--target", "rpi4", "--atol-fp32", "0",
                    "--arm-root", ARM_ROOT, "--out", str(out)])
    assert code == 5  # GateError
    assert "**FAIL**" in out.read_text()


def test_parity_script_imports_without_torch():
    """It runs on the workstation but belongs to the device side: numpy, onnx, onnxruntime."""
    import subprocess

    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('arm_parity', {str(REPO / 'scripts/arm_parity.py')!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['arm_parity'] = m; spec.loader.exec_module(m); "
        "print('torch' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"
