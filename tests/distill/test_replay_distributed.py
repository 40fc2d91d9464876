"""The K-view teacher replay cache under torchrun (2 gloo processes on the CPU): each rank runs the
teacher on its own shard of every view, rank 0 writes the one file, every rank replays it exactly
(a padded sample with mixup/cutmix included), and a later run reuses it without the teacher."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.distill.test_distributed import torchrun

sys.path.insert(0, str(Path(__file__).parent))
import replay_worker as w  # noqa: E402

sys.path.remove(str(Path(__file__).parent))
WORKER = Path(w.__file__)
# fp16 storage: relative rounding 2^-11 on logits of magnitude ~1
FP16_ATOL = 2e-3


def _ranks(out: Path, refuse: int) -> list[dict]:
    return [json.loads((out / f"rank{r}-{refuse}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("mixing, top_k", [(0, 0), (1, w.CLASSES)], ids=["views", "mixup+top-k=classes"])
def test_two_ranks_build_the_cache_once_and_replay_it_exactly(tmp_path, mixing, top_k):
    torchrun([WORKER, tmp_path, mixing, top_k, 0])
    built = _ranks(tmp_path, 0)
    per_rank = -(-w.SAMPLES // 2)  # 14 (even: with mixup no sample is dropped), rank 1's last is padding
    # each rank ran the teacher once per view on its own shard, never while training
    assert [r["teacher_samples"] for r in built] == [w.VIEWS * per_rank] * 2
    assert all(r["max_error"] <= FP16_ATOL for r in built)  # every replayed row, the padded one too
    epoch0 = [i for r in built for step in r["seen"][: len(r["seen"]) // w.EPOCHS] for i in step]
    assert len(epoch0) == w.SAMPLES + 1 and set(epoch0) == set(range(w.SAMPLES))  # one sample twice: the padding
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == ["replay.json", "replay.npy"]  # one file, written by rank 0, no partial left
    stored = np.load(tmp_path / "cache" / "replay.npy")
    assert stored.shape[:2] == (w.VIEWS, w.SAMPLES + (2 if mixing else 0))
    if mixing:  # the padded sample's second mixed row has a row of its own: samples + rank (rank 1 only pads)
        extra = stored[:, w.SAMPLES:]
        values = extra["values"] if top_k else extra
        assert np.all(values[:, 0] == 0) and np.all(values[:, 1] != 0)

    torchrun([WORKER, tmp_path, mixing, top_k, 1])  # the teacher refuses to run: the file is replayed
    again = _ranks(tmp_path, 1)
    assert all(r["max_error"] <= FP16_ATOL for r in again) and [r["steps"] for r in again] == \
        [r["steps"] for r in built]
