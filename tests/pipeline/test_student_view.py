"""A student with its own input (student.input_size / student.channels, issue #16 item 3): the config's rules,
the data stage's second view of the same samples, the teacher reaching the student by row, and `edgekd compress`
end to end with a 16-px RGB teacher and an 8-px grey student. Digits and a few dozen 12-px images: CI size."""

import copy
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgekd import BUILTIN_DIR
from edgekd.config import CompressConfig, student_data_config
from edgekd.distill.losses import build_objective
from edgekd.errors import ConfigError
from edgekd.models.io import build, read_checkpoint
from edgekd.pipeline import train_stages
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.train_stages import run_data, run_teacher
from edgekd.schema import parse
from edgekd.ui import UI

TRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.01, "warmup_epochs": 0}


def _config(data=None, student=None, **sections) -> CompressConfig:
    raw = {"data": {"kind": "digits", "input_size": 16, "channels": 3, **(data or {})},
           "teacher": {"model": "test_resnet", "train": {**TRAIN, "epochs": 0}},
           "student": {k: v for k, v in {"width": 0.5, "input_size": 8, "channels": 1, **(student or {})}.items()
                       if v is not None},  # None: the key left out
           "quantize": {"calibration": str(BUILTIN_DIR / "calib" / "digits.yaml")}, **sections}
    return parse(CompressConfig, raw, "test")


def _ctx(tmp_path, **kwargs) -> RunContext:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return RunContext(_config(**kwargs), tmp_path, ui=UI(quiet=True), stage_key="k")


# ---------------------------------------------------------------- config


def test_the_student_view_exists_only_when_its_input_differs():
    assert student_data_config(_config(student={"input_size": None, "channels": None})) is None
    assert student_data_config(_config(student={"input_size": 16, "channels": 3})) is None  # the teacher's own
    view = student_data_config(_config(data={"mean": [0.3] * 3, "std": [0.4] * 3}))
    assert (view.input_size, view.channels, view.mean, view.std) == (8, 1, None, None)  # per-channel values go
    same_channels = student_data_config(_config(data={"mean": [0.3] * 3, "std": [0.4] * 3}, student={"channels": 3}))
    assert (same_channels.input_size, same_channels.mean) == (8, (0.3,) * 3)  # kept where they still fit


@pytest.mark.parametrize("sections, named, fix", [
    ({"distill": {"train": {**TRAIN, "augment": {"mixup": 0.2, "re_prob": 0.5}}}}, "random erasing",
     "re_prob: 0"),
    ({"distill": {"recipe": "function_matching", "train": {"augment": {"mixup_mode": "elem"}}}},
     "mixup_mode 'elem'", "use mixup_mode: batch"),
    ({"distill": {"losses": [{"kind": "kd"}, {"kind": "fitnets"}]}}, "feature losses", "use logit losses"),
    ({"distill": {"scheme": "online"}}, "online peers", "distil one student"),
    ({"student": {"quantization": "qat"}}, "student.quantization: qat", "quantization: none"),
    ({"student": {"init": "teacher"}}, "student.init 'teacher'", "student.init: random"),
])
def test_what_needs_one_input_for_both_models_is_refused_with_the_fix(sections, named, fix):
    sections = copy.deepcopy(sections)
    student = {k: v for k, v in {"width": 0.5, **sections.pop("student", {})}.items() if v is not None}
    raw = {"data": {"kind": "digits", "input_size": 16, "channels": 3, **sections.pop("data", {})},
           "teacher": {"model": "test_resnet"}, "student": {"input_size": 8, "channels": 1, **student}, **sections}
    with pytest.raises(ConfigError) as err:
        parse(CompressConfig, raw, "test")
    text = str(err.value)
    assert "student.input_size 8, student.channels 1 gives the student its own view" in text
    assert named in text and fix in text and "or remove student.input_size and student.channels" in text


def test_validate_shows_both_inputs(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    config = tmp_path / "cross.yaml"
    config.write_text(CROSS)
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "student input 1×8×8 (its own view of each sample); teacher input 3×16×16." in result.output


def test_pruning_the_teacher_into_a_student_of_another_size_but_the_same_channels_is_allowed():
    config = _config(student={"init": "teacher", "channels": 3})
    assert student_data_config(config).channels == 3


# ---------------------------------------------------------------- data stage: two views, row for row


def test_the_data_stage_writes_the_students_view_and_the_teachers_row_for_row(tmp_path):
    ctx = _ctx(tmp_path)
    result = run_data(ctx)
    assert {"data/teacher/val.npz", "data/teacher/test.npz", "data/calib.npz"} <= set(result["outputs"])
    for split in ("val", "test"):
        with np.load(tmp_path / f"data/{split}.npz") as s, np.load(tmp_path / f"data/teacher/{split}.npz") as t:
            assert s["x"].shape[1:] == (1, 8, 8) and t["x"].shape[1:] == (3, 16, 16)
            np.testing.assert_array_equal(s["y"], t["y"])
            assert _matching_rows(t["x"], s["x"]) > 0.95  # row i of one is row i of the other, not just its class
    with np.load(tmp_path / "data/calib.npz") as calib:
        assert calib["x"].shape[1:] == (1, 8, 8)
        pool = ctx.data.train.stack(calib["indices"])  # the teacher's view of the calibration rows
        assert _matching_rows(pool, calib["x"]) > 0.95
    summary = json.loads((tmp_path / "data/summary.json").read_text())
    assert summary["preprocess"]["input_size"] == 16 and summary["student_view"]["preprocess"]["channels"] == 1
    assert "teacher sees 16 px x3, student 8 px x1" in result["summary"]


def _matching_rows(teacher_x: np.ndarray, student_x: np.ndarray) -> float:
    """Share of rows i whose closest teacher row (grey, shrunk to the student's size, correlated) is row i."""
    t = torch.from_numpy(teacher_x).mean(1, keepdim=True)
    t = F.interpolate(t, size=student_x.shape[-2:], mode="bilinear", antialias=True).flatten(1)
    s = torch.from_numpy(student_x).flatten(1)
    t, s = [(v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True) for v in (t, s)]
    best = (s @ t.T).argmax(1)
    return float((best == torch.arange(len(s))).float().mean())


def test_a_grey_student_of_the_same_size_sees_exactly_the_teachers_pixels(tmp_path):
    ctx = _ctx(tmp_path, student={"input_size": 16})
    run_data(ctx)
    t_pre, s_pre = ctx.data.preprocess, ctx.student_data.preprocess
    with np.load(tmp_path / "data/test.npz") as s, np.load(tmp_path / "data/teacher/test.npz") as t:
        teacher_unit = t["x"][:, 0] * t_pre.std[0] + t_pre.mean[0]  # digits are grey: every RGB channel alike
        np.testing.assert_allclose(s["x"][:, 0] * s_pre.std[0] + s_pre.mean[0], teacher_unit, atol=1e-5)


def test_an_image_folder_gives_both_views_of_the_same_files(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "images" / f"c{c}").mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, (12 + i % 3, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"c{c}" / f"{i}.png")
    ctx = _ctx(tmp_path / "run", data={"kind": "imagefolder", "path": str(tmp_path / "images"), "workers": 0})
    run_data(ctx)
    with np.load(tmp_path / "run/data/val.npz") as s, np.load(tmp_path / "run/data/teacher/val.npz") as t:
        assert s["x"].shape[1:] == (1, 8, 8) and t["x"].shape[1:] == (3, 16, 16)
        np.testing.assert_array_equal(s["y"], t["y"])
        assert _matching_rows(t["x"], s["x"]) == 1.0  # random pictures: only the same file correlates
    for split in ("train", "val", "test"):  # one listing, one split: the same files in the same order
        mine, theirs = ctx.student_data.files[split], ctx.data.files[split]
        np.testing.assert_array_equal(mine.blob, theirs.blob)
        np.testing.assert_array_equal(mine.offsets, theirs.offsets)


# ---------------------------------------------------------------- the teacher's outputs reach the student by row


def test_the_live_teacher_reads_its_own_view_and_agrees_with_the_cached_logits(tmp_path):
    ctx = _ctx(tmp_path)
    run_data(ctx)
    run_teacher(ctx)
    teacher = read_model(ctx)
    arch, kwargs = train_stages._student_arch(ctx)
    assert kwargs["in_chans"] == 1
    student = build(arch, kwargs)
    objective = build_objective(ctx.config.distill.losses, student=student, teacher=teacher, input_shape=(1, 8, 8))
    split = train_stages._student_split(ctx)
    idx = torch.arange(0, len(split.rows), 7)
    student_batch = torch.from_numpy(ctx.student_data.train.stack(split.rows[idx.numpy()]))
    cached, note = train_stages._teacher_source(ctx, teacher, objective, rows=split.rows)
    assert note.startswith("on: logits computed once")
    live_ctx = _ctx(tmp_path, distill={"teacher_cache": False})
    live, why = train_stages._teacher_source(live_ctx, teacher, objective, rows=split.rows)
    assert why == "off in config"
    expected = teacher(torch.from_numpy(ctx.data.train.stack(split.rows[idx.numpy()]))).detach()
    torch.testing.assert_close(live(idx, student_batch), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached(idx, student_batch), expected, atol=1e-4, rtol=1e-4)


def test_the_whole_test_split_is_scored_on_each_models_own_view(tmp_path, monkeypatch):
    from edgekd.distill.trainer import split_accuracy
    from edgekd.pipeline.full_test import score_full_test, test_file_is_subset
    from edgekd.pipeline.records import Artifact

    monkeypatch.setattr(train_stages, "TEST_FILE_MAX_SAMPLES", 20)  # data/test.npz a subset: the split is streamed
    ctx = _ctx(tmp_path)
    run_data(ctx)
    run_teacher(ctx)
    arch, kwargs = train_stages._student_arch(ctx)
    torch.manual_seed(0)
    student = build(arch, kwargs).eval()
    train_stages._save(ctx, "student.safetensors", student, arch, kwargs, {}, {}, data=ctx.student_data)
    assert test_file_is_subset(ctx)
    scores = score_full_test(ctx, [Artifact("teacher-pytorch", "teacher", "pytorch", "fp32", "teacher.safetensors"),
                                   Artifact("student-pytorch", "student", "pytorch", "fp32", "student.safetensors")])
    assert scores["teacher-pytorch"] == pytest.approx(split_accuracy(read_model(ctx), ctx.data.test))
    assert scores["student-pytorch"] == pytest.approx(split_accuracy(student, ctx.student_data.test))


def read_model(ctx):
    from edgekd.models.io import load_model

    return load_model(ctx.run_dir / "teacher.safetensors").eval()


# ---------------------------------------------------------------- compress end to end

CROSS = """
version: 1
name: cross
data: {kind: digits, input_size: 16, channels: 3}
teacher:
  model: test_resnet
  train: {epochs: 2, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student: {width: 0.5, depth: 1.0, input_size: 8, channels: 1}
distill:
  train: {epochs: 2, batch_size: 128, lr: 0.01, warmup_epochs: 0}
quantize:
  max_int8_drop: 0.5
targets: [host-cpu]
bench: {warmup_s: 0.01, min_iterations: 2, min_seconds: 0.01, batch_sizes: [1], rounds: 1}
"""


def _input_dims(path) -> list:
    return [d.dim_value or d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]


def test_compress_distils_a_16px_rgb_teacher_into_an_8px_grey_student_and_ships_it(tmp_path):
    from edgekd.pipeline.compress import compress
    from edgekd.runtime.ort import accuracy, make_session, predict
    from edgekd.ship import ship
    from edgekd.ship.verify import verify_bundle
    from edgekd.targets import load_target

    config = tmp_path / "cross.yaml"
    config.write_text(CROSS)
    run_dir = compress(config, out=tmp_path / "run", ui=UI(quiet=True)).run_dir
    shapes = {name: _input_dims(run_dir / name) for name in ("teacher.onnx", "student.onnx", "student.int8.x86.onnx")}
    assert shapes == {"teacher.onnx": ["batch", 3, 16, 16], "student.onnx": ["batch", 1, 8, 8],
                      "student.int8.x86.onnx": ["batch", 1, 8, 8]}
    meta = {p.key: p.value for p in onnx.load(run_dir / "student.onnx").metadata_props}
    assert json.loads(meta["preprocess"])["input_size"] == 8 and json.loads(meta["preprocess"])["channels"] == 1
    assert read_checkpoint(run_dir / "student.safetensors")["preprocess"]["channels"] == 1
    for name in ("val", "test", "calib"):
        with np.load(run_dir / f"data/{name}.npz") as npz:
            assert npz["x"].shape[1:] == (1, 8, 8), name
    student_record = json.loads((run_dir / ".edgekd/student.json").read_text())["result"]
    assert student_record["teacher_cache"].startswith("on:")  # the teacher's logits of its own view, by row
    report = json.loads((run_dir / "report.json").read_text())
    rows = {a["name"]: a for a in report["artifacts"]}
    # every row scored on its own view: the teacher's ONNX on data/teacher/test.npz, the student's on data/test.npz
    with np.load(run_dir / "data/teacher/test.npz") as t:
        teacher_acc = accuracy(predict(make_session(run_dir / "teacher.onnx"), t["x"]), t["y"])
    with np.load(run_dir / "data/test.npz") as s:
        student_acc = accuracy(predict(make_session(run_dir / "student.onnx"), s["x"]), s["y"])
    assert rows["teacher-fp32"]["accuracy"] == pytest.approx(teacher_acc, abs=1e-9)
    assert rows["student-fp32"]["accuracy"] == pytest.approx(student_acc, abs=1e-9)
    assert student_acc > 0.3  # learned from the teacher through another input, well above 0.1 chance
    md = (run_dir / "report.md").read_text()
    assert "input teacher 3×16×16, student 1×8×8" in md
    assert "student 1×8×8" in (run_dir / "report.html").read_text()
    ship(run_dir, load_target("host-cpu"), str(tmp_path / "bundle"))  # the student's files, at its input
    assert np.load(tmp_path / "bundle/golden/inputs.npy").shape[1:] == (1, 8, 8)
    checked = verify_bundle(tmp_path / "bundle")
    assert {m.name for m in checked.models} == {"student-fp32", "student-int8-x86"} and checked.golden_skipped is None


# ---------------------------------------------------------------- the budget search at the student's own input


def test_the_search_takes_other_input_sizes_unless_a_student_view_could_not_train_there():
    search = {"widths": [0.5], "depths": [1.0]}
    assert _config(student={"width": None, "search": {**search, "input_sizes": [8]}}).student.search.input_sizes == [8]
    # 16 px: a grey 16-px view of the teacher's RGB samples (data/student-16px/), as student.input_size 16 would be
    assert _config(student={"width": None, "search": {**search, "input_sizes": [8, 16]}}).student.search.input_sizes == [8, 16]
    with pytest.raises(ConfigError, match=r"includes 16 px: at that size .*feature losses.* or remove 16 from "
                                          r"student.search.input_sizes"):
        _config(student={"width": None, "search": {**search, "input_sizes": [8, 16]}},
                distill={"losses": [{"kind": "kd"}, {"kind": "fitnets"}]})


SEARCHED = """
version: 1
name: cross-search
data: {kind: digits, input_size: 16, channels: 3}
teacher:
  model: test_resnet
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student:
  input_size: 8
  channels: 1
  search: {widths: [0.5, 1.0], depths: [1.0], precisions: [fp32], proxy_epochs: 1, proxy_fraction: 0.5}
distill:
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
export: {exporter: torchscript, opset: 17}
quantize: {enabled: false}
targets: [TARGET]
bench: {warmup_s: 0.01, min_iterations: 2, min_seconds: 0.01, batch_sizes: [1], rounds: 1}
"""


def test_the_budget_search_measures_and_distils_candidates_at_the_students_input(tmp_path, monkeypatch):
    from edgekd.bench.measure import BenchSettings
    from edgekd.pipeline import search_stage
    from edgekd.pipeline.compress import compress
    from edgekd.search import MeasureOptions

    quick = BenchSettings(warmup_s=0.02, min_iterations=3, min_seconds=0.02, batch_sizes=(1,), rounds=1)
    monkeypatch.setattr(search_stage, "measure_options", lambda ctx: MeasureOptions(settings=quick, log=ctx.ui.info))
    target = tmp_path / "budget-cpu.yaml"
    target.write_text("name: budget-cpu\nruntime: onnxruntime\narch: x86_64\nthreads: 1\nprecisions: [fp32]\n"
                      "max_opset: 21\nbudgets: {latency_ms: 50, max_accuracy_drop: 1.0, max_int8_drop: 0.5}\n")
    config = tmp_path / "search.yaml"
    config.write_text(SEARCHED.replace("TARGET", str(target)))
    run_dir = compress(config, out=tmp_path / "run", ui=UI(quiet=True)).run_dir
    section = json.loads((run_dir / "report.json").read_text())["search"]
    assert {c["name"] for c in section["candidates"]} == {"test_resnet-w0.5-d1-8px-fp32", "test_resnet-w1-d1-8px-fp32"}
    for candidate in (run_dir / "cache/search/candidates").glob("*.onnx"):  # measured at the student's input
        assert _input_dims(candidate)[1:] == [1, 8, 8], candidate.name
    choice = json.loads((run_dir / search_stage.CHOICE_FILE).read_text())
    proxy = read_checkpoint(run_dir / choice["proxy"]["checkpoint"])  # proxies trained on the student's view
    assert proxy["arch_kwargs"]["in_chans"] == 1 and proxy["preprocess"]["input_size"] == 8
    student = read_checkpoint(run_dir / "student.safetensors")
    assert student["arch_kwargs"]["in_chans"] == 1 and student["metrics"]["init"].startswith("the search's proxy run")
    assert _input_dims(run_dir / "student.onnx")[1:] == [1, 8, 8]
