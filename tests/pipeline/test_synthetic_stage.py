"""data.synthetic in `edgekd compress`: the synthetic stage (generate, cache, resume) and the student
trained on the transfer store mixed per batch; the load-time refusals."""

import json

import pytest
import yaml

from edgekd.config import load_config
from edgekd.errors import ConfigError, ModelError
from edgekd.pipeline.compress import compress, preflight
from edgekd.pipeline.engine import read_record
from edgekd.ui import UI

TINY = {
    "version": 1, "name": "syn",
    "data": {"kind": "digits", "input_size": 8, "train_fraction": 0.15,
             "synthetic": {"method": "dafl", "count": 48, "seed": 0, "batch_size": 16, "rounds": 3,
                           "generator_width": 8, "z_dim": 8}},
    "teacher": {"model": "test_resnet", "train": {"epochs": 1, "batch_size": 128, "lr": 0.01, "warmup_epochs": 0}},
    "student": {"width": 0.5, "depth": 1.0},
    "distill": {"synthetic_fraction": 0.5, "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "warmup_epochs": 0}},
    "quantize": {"enabled": False},  # INT8 from a store-trained student is the ordinary path: test_compress
    "targets": ["host-cpu"],
    "bench": {"warmup_s": 0.0, "min_iterations": 2, "min_seconds": 0.0, "batch_sizes": [1], "rounds": 1},
}


def _write(tmp_path, edit=None, name="syn.yaml"):
    data = json.loads(json.dumps(TINY))
    if edit:
        edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


class _Interrupting(UI):
    """Stops the run (as Ctrl-C would) once the first batch of transfer images is on disk."""

    def __init__(self):
        super().__init__(quiet=True)

    def progress(self, description, total, unit=None):
        if "transfer images" not in description:
            return super().progress(description, total, unit)
        from contextlib import contextmanager

        @contextmanager
        def bar():
            def advance(n=1, **_):
                raise KeyboardInterrupt

            yield advance

        return bar()


def test_an_interrupted_generation_resumes_in_the_stage_and_the_student_learns_from_both(tmp_path):
    config = _write(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        compress(config, out=tmp_path / "run", ui=_Interrupting())
    partial = list((tmp_path / "run" / "synthetic").glob("dafl-*.partial"))
    assert len(partial) == 1 and read_record(tmp_path / "run", "synthetic") is None

    result = compress(config, out=tmp_path / "run", ui=UI(quiet=True))
    made = result.records["synthetic"]["result"]["transfer_set"]
    assert made["resumed_from"] == 16 and made["count"] == 48 and sum(made["label_counts"]) == 48
    assert (result.run_dir / made["path"] / "index.json").is_file() and not partial[0].exists()
    trained = result.records["student"]["result"]["synthetic"]
    assert trained == {"method": "dafl", "images": 48, "fraction_per_batch": 0.5,
                       "real_samples": result.records["student"]["result"]["student_data"]["samples"]}
    assert result.records["student"]["result"]["teacher_cache"].startswith("off: synthetic")
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["synthetic"]["method"] == "dafl" and report["synthetic"]["resumed_from"] == 16
    assert "resumed an interrupted generation (16 images were on disk)" in (result.run_dir / "report.md").read_text()
    assert {a["name"] for a in report["artifacts"]} >= {"student-fp32"}

    # the same config again: the set is the stage's output, reused as it is; a new count makes a new set
    again = compress(config, out=tmp_path / "run", ui=UI(quiet=True))
    assert again.records["synthetic"]["finished"] == result.records["synthetic"]["finished"]


def test_deepinversion_is_refused_for_a_teacher_without_batchnorm_before_anything_runs(tmp_path):
    def vit(data):
        data["teacher"]["model"] = "test_vit"
        data["data"]["synthetic"] = {"method": "deepinversion", "count": 8}

    with pytest.raises(ModelError) as err:
        preflight(_write(tmp_path, vit))
    assert "BatchNorm" in err.value.message and "dafl" in err.value.hint
    assert not (tmp_path / "runs").exists()

    def vit_dafl(data):
        data["teacher"]["model"] = "test_vit"

    preflight(_write(tmp_path, vit_dafl, "ok.yaml"))  # the adversarial method needs only the outputs


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["data"]["synthetic"].update(iterations=5), "unknown key 'iterations'"),
    (lambda d: d["data"].pop("synthetic"), "no data.synthetic section"),
    (lambda d: d["student"].update(quantization="qat"), "qat fine-tunes on the real training split"),
    (lambda d: d["distill"].update(losses=[{"kind": "ce"}]), "every distill loss is teacher-free"),
    (lambda d: d["distill"].update(synthetic_fraction=0), "synthetic_fraction"),
    (lambda d: d["distill"].update(replay_views=2), "replay_views"),
])
def test_bad_synthetic_configs_are_refused_at_load(tmp_path, edit, words):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, edit))
    assert words in str(err.value.message)


def test_the_student_reads_each_stored_image_as_the_exact_teacher_input(tmp_path):
    """The store's eval view: no resize (crop_pct 1, even for a 0.875 timm teacher), 0..255 pixels
    (whatever the real data's pixel_max), the store's mean/std: from_uint8 of the record, bit for bit."""
    import numpy as np
    import torch

    from edgekd.data import Preprocess
    from edgekd.data.datasets import SampleDataset, U8Source
    from edgekd.data.transforms import eval_transform
    from edgekd.data.u8store import U8Writer
    from edgekd.pipeline.synthetic_train import store_preprocess
    from edgekd.synth.tensors import from_uint8

    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    writer = U8Writer(tmp_path / "store", (3, 12, 12))
    for image in pixels:
        writer.append(image, 1)
    store = writer.finish(mean=list(mean), std=list(std))
    teacher_pre = Preprocess(12, 3, (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875, 16.0)
    dataset = SampleDataset(U8Source(store), eval_transform(store_preprocess(store.index, teacher_pre)))
    got = torch.stack([dataset[i][0] for i in range(3)])
    torch.testing.assert_close(got, from_uint8(pixels, mean, std), rtol=0, atol=1e-6)
