"""webdataset shards listed as tar members (edgekd.data.tarlist): the same samples, labels and bytes as the
ImageFolder they were written from, read by offset; globs and pipe: URLs; what a rewritten shard changes."""

import os

import numpy as np
import pytest

from edgekd.data.identity import split_identities
from edgekd.data.listing import list_imagefolder
from edgekd.data.splits import imagefolder_splits
from edgekd.data.tarlist import list_shards
from edgekd.errors import DataError
from tests.data.imagefolders import write_folder, write_shards


@pytest.fixture()
def shards(tmp_path):
    folder = write_folder(tmp_path / "images", per_class=5)
    return folder, write_shards(folder, tmp_path / "shards", per_shard=4)


def test_shards_list_the_folders_samples_labels_and_bytes_without_decoding(shards, tmp_path):
    folder, out = shards
    tars, files = list_shards(str(out), tmp_path / "cache").folders["all"], list_imagefolder(folder).folders["all"]
    assert list_shards(str(out), tmp_path / "cache").classes == ("cat", "dog", "fox")  # from classes.txt
    np.testing.assert_array_equal(tars.labels, files.labels)
    assert all(tars.path(i) == files.path(i).read_bytes() for i in range(len(files)))
    part = tars.subset(np.array([7, 2]))
    assert part.relpath(0) == "shard-0001.tar/dog_002.jpg" and part.path(1) == files.path(2).read_bytes()
    globbed = list_shards(str(out / "shard-000[0-3].tar"), tmp_path / "cache").folders["all"]
    assert len(globbed) == 15 and globbed.relpath(14) == tars.relpath(14)


def test_a_pipe_url_is_copied_once_into_the_cache_and_listed_from_the_copies(shards, tmp_path):
    _, out = shards
    spec = f"pipe:cat {out}/shard-{{0000..0003}}.tar"
    piped = list_shards(spec, tmp_path / "cache").folders["all"]
    local = list_shards(str(out), tmp_path / "cache").folders["all"]
    assert [piped.path(i) for i in range(len(piped))] == [local.path(i) for i in range(len(local))]
    copies = sorted((tmp_path / "cache").glob("shards-*/*.tar"))
    assert len(copies) == 4
    stamps = [p.stat().st_mtime_ns for p in copies]
    list_shards(spec, tmp_path / "cache")  # listed again: the copies are reused, not fetched again
    assert [p.stat().st_mtime_ns for p in copies] == stamps


def test_a_rewritten_shard_changes_only_the_identity_of_the_split_holding_it(tmp_path):
    write_folder(tmp_path / "split" / "train", per_class=4)  # a split layout: train/ and val/ shard folders
    write_folder(tmp_path / "split" / "val", per_class=2, seed=1)
    out = write_shards(tmp_path / "split", tmp_path / "shards", per_shard=4)

    def identities():
        listing = list_shards(str(out), tmp_path / "cache")
        return split_identities(imagefolder_splits(listing, 0.2, 0.25, 0), {})

    before = identities()
    os.utime(out / "val" / "shard-0000.tar", ns=(1, 1))
    after = identities()
    assert after["val"] != before["val"] and after["train"] == before["train"]


def test_a_sample_without_a_class_index_is_named(tmp_path):
    import webdataset as wds

    (tmp_path / "bad").mkdir()
    with wds.TarWriter(str(tmp_path / "bad" / "s.tar")) as sink:
        sink.write({"__key__": "a", "jpg": b"x", "cls": b"0"})
        sink.write({"__key__": "b", "jpg": b"x"})
    with pytest.raises(DataError, match="Sample 'b' .* has no class index"):
        list_shards(str(tmp_path / "bad"), tmp_path / "cache")
    with pytest.raises(DataError, match="names no tar shards"):
        list_shards(str(tmp_path / "nothing-*.tar"), tmp_path / "cache")
