"""The uint8 store's writer: checkpoints, resume after a crash, refusals (the format itself: test_u8cache)."""

import json

import numpy as np
import pytest

from edgekd.data.u8store import U8Store, U8Writer
from edgekd.errors import DataError

SHAPE = (3, 4, 5)


def _records(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rng.integers(-1, 10, n)


def _append(writer, images, labels):
    for image, label in zip(images, labels):
        writer.append(image, int(label))


def test_a_crash_after_a_checkpoint_resumes_from_it(tmp_path):
    path = tmp_path / "s"
    (a, la), (b, lb), (c, lc) = _records(3, 0), _records(2, 1), _records(4, 2)
    writer = U8Writer(path, SHAPE, key="k")
    _append(writer, a, la)
    writer.checkpoint(batches=1, note="first")
    _append(writer, b, lb)  # appended, never checkpointed: lost in the crash
    assert writer.labels().tolist() == [*la, *lb]  # what was appended so far, flushed
    writer.close()
    assert not path.exists()  # only `<name>.partial` until finished

    reopened = U8Writer(path, SHAPE, key="k")
    assert reopened.records == 3 and reopened.resumed["batches"] == 1 and reopened.resumed["note"] == "first"
    assert reopened.labels().tolist() == la.tolist()
    _append(reopened, c, lc)
    store = reopened.finish(source="test")
    assert store.index["source"] == "test" and len(store) == 7 and store.labels.tolist() == [*la, *lc]
    assert np.array_equal(np.stack([store.read(i) for i in range(7)]), np.concatenate([a, c]))
    assert sorted(p.name for p in path.iterdir()) == ["images.u8", "index.json", "labels.npy"]


def test_another_key_or_a_damaged_partial_starts_over(tmp_path):
    path = tmp_path / "s"
    writer = U8Writer(path, SHAPE, key="k")
    _append(writer, *_records(3, 0))
    writer.checkpoint()
    writer.close()
    other = U8Writer(path, SHAPE, key="other")
    assert other.records == 0 and other.resumed == {}
    _append(other, *_records(3, 0))
    other.checkpoint()
    other.close()
    with open(other.partial / "images.u8", "r+b") as fh:  # fewer bytes than the checkpoint records
        fh.truncate(SHAPE[0] * SHAPE[1] * SHAPE[2] * 2)
    again = U8Writer(path, SHAPE, key="other")  # not padded with zeros: rewritten from the start
    assert again.records == 0 and (again.partial / "images.u8").stat().st_size == 0
    again.close()


def test_reading_an_interrupted_store_says_so(tmp_path):
    path = tmp_path / "s"
    writer = U8Writer(path, SHAPE)
    _append(writer, *_records(2, 0))
    writer.checkpoint()
    writer.close()
    with pytest.raises(DataError, match="no index.json") as info:
        U8Store(path)
    assert "interrupted" in info.value.hint
    with pytest.raises(DataError) as info:
        U8Store(tmp_path / "elsewhere")
    assert "interrupted" not in info.value.hint
    assert json.loads((writer.partial / "state.json").read_text())["records"] == 2
