"""The data, teacher and student stages on an ImageFolder read per sample (issue #13): what re-runs when an
image changes, what the uint8 cache gives, what bad images do. A few dozen 12-px images: CI size."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from edgekd import BUILTIN_DIR
from edgekd.config import CompressConfig
from edgekd.errors import DataError
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import read_record, run_stages
from edgekd.pipeline.measure_stages import _dataset_notes
from edgekd.pipeline.train_stages import (DATA, STUDENT, TEACHER, _replay_teacher, _student_split, run_data,
                                          teacher_files)
from edgekd.schema import parse
from edgekd.ui import UI

TRAIN = {"epochs": 1, "batch_size": 16, "lr": 0.01, "warmup_epochs": 0}


def _folder(root, per_class=12):
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):  # mixed sizes; the class sets the brightness
            pixels = np.clip(rng.normal(50 + 70 * c, 25, (14 + i % 4, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


def _ctx(tmp_path, images, distill=None, **data) -> RunContext:
    config = {"data": {"kind": "imagefolder", "path": str(images), "input_size": 8, "channels": 3, "workers": 0,
                       **data},
              "teacher": {"model": "test_resnet", "train": TRAIN}, "student": {"width": 0.5},
              "distill": distill or {"train": TRAIN}, "targets": ["host-cpu"],
              "quantize": {"calibration": str(BUILTIN_DIR / "calib" / "digits.yaml")}}
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(parse(CompressConfig, config, "test"), run_dir, ui=UI(quiet=True))


def _keys(ctx) -> dict[str, str]:
    return {name: read_record(ctx.run_dir, name)["key"] for name in ("data", "teacher", "student")}


def test_moving_one_image_reruns_what_reads_it_and_never_reuses_stale_teacher_logits(tmp_path):
    images = _folder(tmp_path / "images")
    run_stages([DATA, TEACHER, STUDENT], _ctx(tmp_path, images), UI(quiet=True))
    first = _keys(_ctx(tmp_path, images))
    again = _ctx(tmp_path, images)
    run_stages([DATA, TEACHER, STUDENT], again, UI(quiet=True))
    assert _keys(again) == first  # nothing changed: every stage reused

    shutil.move(images / "c0" / "3.png", images / "c1" / "moved.png")  # a relabelled image
    moved = _ctx(tmp_path, images)
    run_stages([DATA, TEACHER, STUDENT], moved, UI(quiet=True))
    assert all(_keys(moved)[name] != first[name] for name in first)
    summary = json.loads((moved.run_dir / "data" / "summary.json").read_text())
    counts = summary["per_class"]["splits"].values()
    assert [sum(split["per_class"][c] for split in counts) for c in ("c0", "c1", "c2")] == [11, 13, 12]
    # the logit cache is named after the teacher and the dataset: the new data got logits of its own
    assert len(list((moved.run_dir / "cache").glob("teacher_logits.*.npy"))) == 2
    rows = [json.loads(line) for line in (moved.run_dir / "student.metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0 <= rows[0]["data_wait"] <= 1  # one training's rows, with its data-wait share


def test_a_rewritten_image_changes_the_key_though_the_config_did_not(tmp_path):
    images = _folder(tmp_path / "images")
    before = DATA.facts(_ctx(tmp_path, images))
    path = images / "c2" / "5.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(path)
    os.utime(path, ns=(1, 1))  # a new size and mtime
    assert DATA.facts(_ctx(tmp_path, images)) != before


def test_the_uint8_cache_gives_the_pixels_of_the_files_and_is_shared_by_later_runs(tmp_path):
    images = _folder(tmp_path / "images")
    plain = _ctx(tmp_path / "plain", images)
    run_data(plain)
    shared = tmp_path / "shared-cache"
    cached = _ctx(tmp_path / "cached", images, cache="uint8", cache_dir=str(shared))
    result = run_data(cached)
    for name in ("val.npz", "test.npz", "calib.npz"):
        with np.load(plain.run_dir / "data" / name) as a, np.load(cached.run_dir / "data" / name) as b:
            np.testing.assert_array_equal(a["x"], b["x"])  # bit-exact: the same draft decode and resize
            np.testing.assert_array_equal(a["y"], b["y"])
    assert {s["records"] for s in result["dataset"]["cache"].values()} >= {len(cached.data.val)}
    stores = sorted(p.name for p in shared.iterdir() if p.is_dir())
    assert len(stores) == 3  # one per split, named by its files' identity
    written = {name: (shared / name / "images.u8").stat().st_mtime_ns for name in stores}
    later = _ctx(tmp_path / "later", images, cache="uint8", cache_dir=str(shared)).data
    assert len(later.train) == len(cached.data.train) and later.train.stack([0]).shape == (1, 3, 8, 8)
    assert {name: (shared / name / "images.u8").stat().st_mtime_ns for name in stores} == written  # opened, not rebuilt


def test_bad_images_are_all_named_before_training_or_skipped_and_counted(tmp_path):
    images = _folder(tmp_path / "images")
    (images / "c0" / "broken.png").write_bytes(b"\x89PNG not really")
    (images / "c2" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as err:
        run_data(_ctx(tmp_path / "error", images))
    assert "c0/broken.png" in str(err.value) and "c2/empty.jpg" in str(err.value)
    skip = _ctx(tmp_path / "skip", images, on_bad_image="skip")
    summary = run_data(skip)["dataset"]
    assert summary["skipped_images"] == ["c0/broken.png", "c2/empty.jpg"]
    assert "2 unreadable image(s) left out (data.on_bad_image: skip): c0/broken.png, c2/empty.jpg." in \
        _dataset_notes(summary, [])  # the report says so
    later = _ctx(tmp_path / "skip", images, on_bad_image="skip")  # a later stage leaves out the same files
    assert sum(len(getattr(later.data, s)) for s in ("train", "val", "test")) == 36


def _count_artifact_calls(monkeypatch) -> list[int]:
    """Images per call of every ONNX session made and PyTorch model loaded from now on (the list fills)."""
    from edgekd.models import io as model_io
    from edgekd.runtime import ort as ort_runtime

    calls, make_session, load_model = [], ort_runtime.make_session, model_io.load_model

    class CountedSession:
        def __init__(self, session):
            self.session = session

        def get_inputs(self):
            return self.session.get_inputs()

        def run(self, outputs, feeds):
            calls.append(len(next(iter(feeds.values()))))
            return self.session.run(outputs, feeds)

    def counted_model(path):
        model = load_model(path)
        model.register_forward_pre_hook(lambda _module, args: calls.append(len(args[0])))
        return model

    monkeypatch.setattr(ort_runtime, "make_session", lambda *a, **k: CountedSession(make_session(*a, **k)))
    monkeypatch.setattr(model_io, "load_model", counted_model)
    return calls


def test_the_whole_test_split_is_scored_streaming_when_the_test_file_is_a_capped_subset(tmp_path, monkeypatch):
    import torch

    from edgekd.export import export_onnx
    from edgekd.models.io import build, load_model, save_checkpoint
    from edgekd.pipeline import full_test, train_stages
    from edgekd.pipeline.full_test import score_full_test, test_file_is_subset
    from edgekd.pipeline.measure_stages import _dataset_notes as notes
    from edgekd.pipeline.records import Artifact
    from edgekd.runtime.ort import make_session, predict

    monkeypatch.setattr(train_stages, "TEST_FILE_MAX_SAMPLES", 4)
    ctx = _ctx(tmp_path, _folder(tmp_path / "images"), test_fraction=0.34)
    run_data(ctx)
    assert test_file_is_subset(ctx)
    with np.load(ctx.run_dir / "data" / "test.npz") as npz:
        assert len(npz["y"]) == 4
    with torch.random.fork_rng():  # an untrained model: its predictions differ per image, which is all this needs
        torch.manual_seed(0)
        model = build("test_resnet", {"num_classes": 3, "in_chans": 3}).eval()
    save_checkpoint(ctx.run_dir / "model.safetensors", model, "test_resnet", {"num_classes": 3, "in_chans": 3})
    export_onnx(model, ctx.run_dir / "model.onnx", input_shape=(1, 3, 8, 8), opset=18, dynamic_batch=True)
    artifacts = [Artifact("model-pytorch", "student", "pytorch", "fp32", "model.safetensors"),
                 Artifact("model-fp32", "student", "onnxruntime", "fp32", "model.onnx")]
    calls = _count_artifact_calls(monkeypatch)
    monkeypatch.setattr(full_test, "SCORE_RUN_BATCH", 5)
    scores = score_full_test(ctx, artifacts)

    test = ctx.data.test  # 12 images at 8 px: small enough to stack for the reference
    assert len(test) == 12 and calls == [5, 5, 2] * len(artifacts)  # one decode batch; calls of 5 each
    x, y = test.stack(np.arange(len(test))), test.labels
    for a in artifacts:
        if a.runtime == "pytorch":
            with torch.inference_mode():
                logits = load_model(ctx.run_dir / a.path)(torch.from_numpy(x)).numpy()
        else:
            logits = predict(make_session(ctx.run_dir / a.path), x)
        assert scores[a.name] == pytest.approx(float((logits.argmax(1) == y).mean()), abs=1e-9)
    summary = json.loads((ctx.run_dir / "data" / "summary.json").read_text())
    rows = [{"name": name, "accuracy_full_test": value} for name, value in scores.items()]
    said = " ".join(notes(summary, rows))
    assert f"On the whole test split ({len(test)} samples" in said and "`data/test.npz` 4 of" in said
    assert "`data/calib.npz`" in said
    with np.load(ctx.run_dir / "data" / "val.npz") as npz:  # in class order: parity takes every class, not the head
        val_x, val_y = npz["x"], npz["y"]
    parity = ctx.parity_inputs(3)
    rows = [int(np.flatnonzero((val_x == row).all(axis=(1, 2, 3)))[0]) for row in parity]
    assert sorted(val_y[rows]) == [0, 1, 2]
def test_function_matching_with_timm_views_replays_the_teacher_and_a_changed_image_rebuilds_the_cache(tmp_path):
    """data.augment timm + distill.recipe function_matching + replay_views: the views (timm's transform, then
    train.augment's, then mixup) are drawn in the workers and the teacher's logits of 2 views per image are
    stored once; another schedule reuses them, a rewritten image names another cache."""
    images = _folder(tmp_path / "images", per_class=6)

    def run(epochs: int) -> dict:
        ctx = _ctx(tmp_path, images, augment="timm", distill={
            "recipe": "function_matching", "replay_views": 2, "train": {**TRAIN, "epochs": epochs}})
        run_stages([DATA, TEACHER, STUDENT], ctx, UI(quiet=True))
        return read_record(ctx.run_dir, "student")["result"]

    def caches() -> set[str]:
        return {p.name for p in (tmp_path / "run" / "cache").glob("teacher_replay.*.npy")}

    first = run(epochs=1)
    assert first["teacher_outputs"]["mode"] == "replay" and not first["teacher_outputs"]["reused"]
    assert first["teacher_cache"].startswith("replay: teacher logits of 2 fixed views per image, fp16 (2, ")
    assert first["teacher_outputs"]["disk_bytes"] > 0 and len(caches()) == 1
    longer = run(epochs=2)  # the student re-runs; the views and the teacher did not change
    assert longer["teacher_outputs"]["reused"] and longer["teacher_outputs"]["file"] == first["teacher_outputs"]["file"]

    def cache_name() -> str:  # the file the student stage would replay from, for the files as they are now
        ctx = _ctx(tmp_path, images, augment="timm", distill={"recipe": "function_matching", "replay_views": 2,
                                                              "train": TRAIN})
        return _replay_teacher(ctx, None, teacher_files(ctx.config), _student_split(ctx).rows, ctx.config.distill.train,
                               ctx.config.seed).path.name

    assert cache_name() == first["teacher_outputs"]["file"]
    with Image.open(images / "c2" / "4.png") as img:  # one image rewritten: the dataset identity changes
        pixels = 255 - np.asarray(img)
    Image.fromarray(pixels).save(images / "c2" / "4.png")
    assert cache_name() != first["teacher_outputs"]["file"]  # the old logits are never replayed for it


def test_top_k_replay_names_its_own_cache_and_states_its_disk_size(tmp_path):
    """distill.replay_topk: the cache holds the top k logits per view; k is part of its name (a full cache
    keeps the name it had), and the student's record says what it holds and what it costs on disk."""
    images = _folder(tmp_path / "images", per_class=6)

    def ctx_of(top_k: int) -> RunContext:
        return _ctx(tmp_path, images, augment="timm", distill={"recipe": "function_matching", "replay_views": 2,
                                                               "replay_topk": top_k, "train": TRAIN})

    def cache_name(top_k: int) -> str:
        ctx = ctx_of(top_k)
        return _replay_teacher(ctx, None, teacher_files(ctx.config), _student_split(ctx).rows, ctx.config.distill.train,
                               ctx.config.seed).path.name

    ctx = ctx_of(2)
    run_stages([DATA, TEACHER, STUDENT], ctx, UI(quiet=True))
    assert len({cache_name(0), cache_name(2), cache_name(3)}) == 3
    result = read_record(ctx.run_dir, "student")["result"]
    outputs = result["teacher_outputs"]
    assert outputs["storage"] == "top-2" and outputs["file"] == cache_name(2) and outputs["disk_bytes"] > 0
    assert result["teacher_cache"].startswith("replay: teacher logits of 2 fixed views per image, top-2 of 3 classes")
    assert f"{outputs['disk_mb']:.1f} MB on disk" in result["teacher_cache"]
