"""Quantization-aware students with NVIDIA Model Optimizer: a tiny ResNet on digits at 16x16, for real.

Float-trained 3 epochs (on digits' 60% training split), BN folded, INT8 fake quantizers inserted and calibrated,
1 QAT epoch, exported to QDQ ONNX, checked against the fake-quantized model in
ONNX Runtime and against TensorRT's explicit-quantization rules.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt (the [qat] extra) is not installed")

from edgekd.config import DataConfig, TrainConfig
from edgekd.distill.losses import cross_entropy
from edgekd.distill.trainer import evaluate, train
from edgekd.errors import ConfigError
from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt
from edgekd.quantize import qat

ARCH, KWARGS = "resnet18", {"num_classes": 10, "in_chans": 1, "layers": [1, 1, 1, 1],
                            "channels": [16, 32, 64, 128], "stem_width": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from edgekd.data import load_data
    from edgekd.models.io import build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("qat")
    data = load_data(DataConfig(kind="digits", input_size=16), ARCH)
    train_xy = (torch.from_numpy(data.train_x), torch.from_numpy(data.train_y))
    val_xy = (torch.from_numpy(data.val_x), torch.from_numpy(data.val_y))
    torch.manual_seed(0)
    model = build(ARCH, KWARGS)
    fit = train(model, train_xy, val_xy, TrainConfig(epochs=3, batch_size=128, lr=5e-3), cross_entropy(),
                work / "float", key="float")
    model.load_state_dict(fit.best_state)
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    calibrated_samples = []  # progress: every calibration sample counted once
    setup = qat.prepare_qat(model, data.train_x[:256], progress=calibrated_samples.append)
    assert sum(calibrated_samples) == 256
    calibrated = evaluate(model, *val_xy)
    fit = train(model, train_xy, val_xy, TrainConfig(epochs=1, batch_size=128, lr=3e-4, warmup_epochs=0),
                cross_entropy(), work / "qat", key="qat")
    model.load_state_dict(fit.best_state)
    model.eval()
    exported = qat.export_qat_onnx(model, work / "student.qat.onnx", input_shape=(1, 1, 16, 16), opset=17,
                                   metadata={"input_size": 16}, verify_with=data.val_x)
    torch.set_num_threads(threads)
    return {"model": model, "setup": setup, "data": data, "exported": exported, "work": work,
            "calibrated": calibrated, "qat_accuracy": fit.best_accuracy, "float_state": float_state}


def test_batchnorm_is_folded_and_quantizers_have_tensorrt_form(trained):
    model, setup = trained["model"], trained["setup"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert setup.folded_batchnorms == 13 and setup.fold_max_abs_diff < 1e-4
    assert setup.weight_quantizers == 14  # 13 convs + fc
    for name, q in qat.quantizers(model):
        assert q.num_bits == 8 and not q.unsigned and q.amax is not None, name
        axis = q.axis[0] if isinstance(q.axis, tuple) else q.axis
        assert axis == (0 if name.endswith("weight_quantizer") else None), name


def test_qat_training_keeps_the_calibrated_accuracy(trained):
    # One QAT epoch at a tenth of the learning rate must not lose what calibration gave (best epoch kept).
    assert trained["qat_accuracy"] >= trained["calibrated"] - 0.02
    assert trained["qat_accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_export_passes_tensorrt_rules_with_int8_weights(trained):
    path = trained["work"] / "student.qat.onnx"
    assert check_qdq_for_tensorrt(path) == []
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    weights = {t.name: t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dq_of_weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert len(dq_of_weights) == trained["exported"].weights_folded == 14
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in {t.name for t in proto.graph.initializer}
                   for n in proto.graph.node)


def test_parity_against_the_fake_quantized_model(trained):
    parity = trained["exported"].parity
    assert parity["passed"] and parity["samples"] == len(trained["data"].val_x)
    assert parity["max_abs_diff"] <= qat.QAT_PARITY_ATOL  # 1.5, measured 0.17-0.51 (see QAT_PARITY_ATOL)
    assert parity["top1_agreement"] >= qat.QAT_PARITY_MIN_TOP1


def test_runs_in_onnxruntime_with_the_fake_quant_accuracy(trained):
    from edgekd.runtime.ort import accuracy, make_session, predict

    data = trained["data"]
    ort_accuracy = accuracy(predict(make_session(trained["work"] / "student.qat.onnx"), data.val_x), data.val_y)
    torch_accuracy = evaluate(trained["model"], torch.from_numpy(data.val_x), torch.from_numpy(data.val_y))
    assert abs(ort_accuracy - torch_accuracy) <= 0.01  # top-1 agreement >= 0.98 bounds it; measured 0


def test_folding_weight_quantizers_changes_no_output(trained, tmp_path):
    # Same graph before and after folding, ORT optimizations off: bit-identical logits.
    import onnxruntime as ort

    from edgekd.export.onnx_export import export_onnx

    raw = tmp_path / "raw.onnx"
    export_onnx(trained["model"], raw, input_shape=(1, 1, 16, 16), opset=17, exporter="torchscript",
                dynamic_batch=True, simplify=False, prepare=False)
    folded = tmp_path / "folded.onnx"
    assert qat.fold_weight_quantizers(raw, folded) == 14
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = trained["data"].val_x[:64]
    outs = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for p in (raw, folded)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert folded.stat().st_size < raw.stat().st_size / 2  # int8 weights instead of float32


def test_qat_checkpoint_rebuilds_through_load_model(trained, tmp_path):
    from edgekd.models.io import load_model, save_checkpoint

    pre = {"input_size": 16, "channels": 1}
    save_checkpoint(tmp_path / "student.qat.safetensors", trained["model"], ARCH, KWARGS, preprocess=pre,
                    **qat.qat_checkpoint_extra(trained["model"], trained["setup"]))
    rebuilt = load_model(tmp_path / "student.qat.safetensors")
    assert len(qat.quantizers(rebuilt)) == len(qat.quantizers(trained["model"]))
    x = torch.from_numpy(trained["data"].val_x[:32])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained["model"](x), rtol=0, atol=0)
    # the float checkpoint format is unchanged and still loads as a plain network
    from edgekd.models.io import build

    float_model = build(ARCH, KWARGS)
    float_model.load_state_dict(trained["float_state"])
    save_checkpoint(tmp_path / "student.safetensors", float_model, ARCH, KWARGS, preprocess=pre)
    assert not qat.quantizers(load_model(tmp_path / "student.safetensors"))


def test_opset_choice_and_limits():
    assert qat.qat_opset(None, 21)[0] == 20  # host-cpu allows 21; modelopt's TorchScript export stops at 20
    assert qat.qat_opset(None, 17) == (17, "strictest target's max_opset")
    assert qat.qat_opset(18, 21) == (18, "export.opset")
    with pytest.raises(ConfigError):
        qat.qat_opset(21, 21)
    with pytest.raises(ConfigError):
        qat.qat_opset(12, 21)


def test_config_rejects_an_opset_qat_cannot_export(tmp_path):
    from edgekd.config import load_config

    path = tmp_path / "m.yaml"
    path.write_text("student: {quantization: qat}\nexport: {opset: 21}\nquantize: {enabled: false}\n")
    with pytest.raises(ConfigError, match="opset 21"):
        load_config(path)
    path.write_text("student: {quantization: qat}\nquantize: {enabled: false}\n")
    assert load_config(path).student.quantization == "qat"
