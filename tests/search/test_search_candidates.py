import json

import numpy as np
import onnx
import pytest

from edgekd.errors import DataError, ModelError
from edgekd.models.io import build
from edgekd.models.stats import count_flops, count_params
from edgekd.search.candidates import (
    Candidate,
    describe_architectures,
    expand_grid,
    prepare_candidates,
    resize_samples,
)
from edgekd.search.config import SearchConfig
from edgekd.search.preview import format_preview, preview
from edgekd.search.profile import METADATA_KEY
from edgekd.targets import load_target
from tests.search.conftest import GRID, TEACHER, prepare


def test_prepared_candidates_are_real_onnx_files_with_their_facts(prepared):
    assert [p.name for p in prepared] == ["resnet18-w0.25-d0.5-32px-fp32", "resnet18-w0.25-d0.5-32px-int8",
                                          "resnet18-w0.5-d0.5-32px-fp32", "resnet18-w0.5-d0.5-32px-int8"]
    small = prepared[0].architecture
    assert prepared[1].architecture == small  # one architecture, two precisions
    assert small.arch == "resnet18" and small.kwargs["channels"] == [16, 32, 64, 128]
    model = build(small.arch, small.kwargs)
    assert small.params == count_params(model) and small.flops == count_flops(model, (3, 32, 32))
    assert prepared[2].architecture.flops > small.flops and prepared[2].architecture.arch_id != small.arch_id
    fp32, int8 = onnx.load(str(prepared[0].path)), onnx.load(str(prepared[1].path))
    meta = {p.key: json.loads(p.value) for p in fp32.metadata_props}
    assert meta[METADATA_KEY] == {"arch_name": "resnet18-w0.25-d0.5-32px", "arch_id": small.arch_id, "input_size": 32}
    assert [d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 32, 32]
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert not any(n.op_type == "QuantizeLinear" for n in fp32.graph.node)


def test_a_second_prepare_reuses_the_files(tmp_path):
    one = SearchConfig(widths=[0.25], depths=[0.5], input_sizes=[32])
    first = prepare(tmp_path, one, precisions=("fp32",))
    stamp = first[0].path.stat().st_mtime_ns
    again = prepare(tmp_path, one, precisions=("fp32",))
    assert again == first and again[0].path.stat().st_mtime_ns == stamp  # nothing re-exported
    first[0].path.write_bytes(first[0].path.read_bytes() + b"x")  # a damaged file is made again
    prepare(tmp_path, one, precisions=("fp32",))
    assert first[0].path.stat().st_mtime_ns != stamp
    onnx.checker.check_model(str(first[0].path))


def test_int8_needs_calibration_samples(tmp_path):
    candidates = expand_grid(GRID, "resnet18", ["fp32", "int8"], 32)
    with pytest.raises(DataError, match="need calibration samples"):
        prepare_candidates(candidates, folder=tmp_path, calib_x=None, opset=17, exporter="torchscript", **TEACHER)
    assert not list(tmp_path.iterdir())  # refused before any export


def test_calibration_samples_follow_each_input_size():
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert resize_samples(x, 3, 16).shape == (2, 3, 16, 16)
    assert resize_samples(x, 3, 48).dtype == np.float32
    assert resize_samples(x, 3, 32) is not None
    constant = np.ones((1, 3, 32, 32), np.float32)
    np.testing.assert_allclose(resize_samples(constant, 3, 20), 1.0, atol=1e-6)
    with pytest.raises(DataError, match=r"\(N, 1, H, W\)"):
        resize_samples(x, 1, 16)


def test_unknown_models_and_underivable_teachers_are_model_errors():
    bad = [Candidate("resnet1O-32px-fp32", "resnet1O", None, None, 32, "fp32")]
    with pytest.raises(ModelError, match="not a timm model name"):
        describe_architectures(bad, **TEACHER)
    with pytest.raises(ModelError, match="candidate vgg11-w0.5-d0.5-32px: Cannot derive a student"):
        describe_architectures([Candidate("vgg11-w0.5-d0.5-32px-fp32", "vgg11", 0.5, 0.5, 32, "fp32")],
                               "vgg11", TEACHER["teacher_kwargs"])


def test_preview_counts_candidates_and_measurements_per_target():
    search = SearchConfig(widths=[0.25], depths=[0.5], models=["test_efficientnet"], input_sizes=[32, 48],
                          precisions=["int8"], proxy_epochs=0)
    p = preview(search, [load_target("host-cpu")], default_input_size=32, **TEACHER)
    assert [a["arch_name"] for a in p["architectures"]] == ["resnet18-w0.25-d0.5-32px", "test_efficientnet-32px",
                                                           "resnet18-w0.25-d0.5-48px", "test_efficientnet-48px"]
    assert p["architectures"][2]["flops"] > p["architectures"][0]["flops"]
    assert p["targets"] == [{"target": "host-cpu", "backend": "host", "where": "this machine", "precisions": ["int8"],
                             "measurements": 4, "runtime": None}]
    text = format_preview(p)
    assert "4 candidates, 4 measurements" in text and "ranked by FLOPs" in text
    assert "host-cpu: 4 measurements (int8) on this machine" in text
