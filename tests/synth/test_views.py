import numpy as np
import pytest
from PIL import Image

from edgekd.data import Preprocess, preprocess_image
from edgekd.errors import DataError
from edgekd.synth.views import CropBox, crop_view, eval_view, eval_views, paired_views, sample_crop

TEACHER = Preprocess(32, 3, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), "bilinear", 1.0)  # bigger, RGB
STUDENT = Preprocess(16, 1, (0.45,), (0.22,), "bilinear", 1.0)  # smaller, grey


def smooth_rgb(width=60, height=48) -> np.ndarray:
    """A smooth colour picture (gradients): resampling at any scale changes it little."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * xx / (width - 1)
    g = 255 * yy / (height - 1)
    b = 127.5 * (1 + np.sin(xx / 9.0) * np.cos(yy / 11.0))
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def unit(view: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A normalised view back to [0, 1] pixels."""
    return view * np.asarray(pre.std).reshape(-1, 1, 1) + np.asarray(pre.mean).reshape(-1, 1, 1)


def luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb * np.asarray([0.299, 0.587, 0.114]).reshape(3, 1, 1)).sum(0, keepdims=True)


def pool2(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


@pytest.mark.parametrize("pre", [TEACHER, STUDENT, Preprocess(24, 3, (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875)],
                         ids=["rgb", "grey", "bicubic-crop"])
def test_eval_view_is_the_exported_models_preprocessing(pre, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(smooth_rgb()).save(path)
    expected = preprocess_image(path, pre)
    got = eval_view(np.asarray(Image.open(path)), pre)
    assert got.dtype == np.float32 and got.shape == (pre.channels, pre.input_size, pre.input_size)
    assert np.array_equal(got, expected)


def test_each_model_sees_its_own_size_and_channels_of_the_same_sample():
    t, s = eval_views(smooth_rgb(48, 48), TEACHER, STUDENT)
    assert t.shape == (3, 32, 32) and s.shape == (1, 16, 16)
    # the same picture: the grey student view is the teacher view's luma at half the resolution
    assert np.abs(pool2(luma(unit(t, TEACHER))) - unit(s, STUDENT)).max() < 0.02


def test_paired_views_share_one_crop_box_resized_per_model():
    rng = np.random.default_rng(0)
    image = smooth_rgb()
    flips = set()
    for _ in range(8):
        t, s, box = paired_views(image, TEACHER, STUDENT, rng, scale=(0.3, 1.0))
        flips.add(box.flip)
        assert t.shape == (3, 32, 32) and s.shape == (1, 16, 16)
        assert np.abs(pool2(luma(unit(t, TEACHER))) - unit(s, STUDENT)).max() < 0.03
        # and it is that box: cropping it by hand and resizing gives the student view
        crop = Image.fromarray(image).convert("L").crop((round(box.left), round(box.top), round(box.right),
                                                         round(box.bottom))).resize((16, 16), Image.BILINEAR)
        crop = np.asarray(crop, dtype=np.float32)[None] / 255
        if box.flip:
            crop = crop[:, :, ::-1]
        assert np.abs(crop - unit(s, STUDENT)).max() < 0.06
    assert flips == {True, False}


def test_a_marked_region_lands_at_the_same_place_in_both_views():
    image = np.zeros((40, 40, 3), np.uint8)
    image[10:20, 24:34] = 255  # a white square right of centre, in the upper half
    box = CropBox(4.0, 4.0, 36.0, 36.0)
    t = unit(crop_view(image, box, TEACHER), TEACHER).mean(0)
    s = unit(crop_view(image, box, STUDENT), STUDENT)[0]
    for view in (t, s):
        n = view.shape[0]
        ys, xs = np.nonzero(view > 0.5)
        assert abs(ys.mean() / n - 11 / 32) < 0.05 and abs(xs.mean() / n - 25 / 32) < 0.05
    flipped = unit(crop_view(image, CropBox(4.0, 4.0, 36.0, 36.0, flip=True), STUDENT), STUDENT)[0]
    assert np.array_equal(flipped, s[:, ::-1])


def test_sample_crop_follows_random_resized_crop():
    rng = np.random.default_rng(1)
    for _ in range(200):
        box = sample_crop((60, 40), rng, scale=(0.2, 0.9), ratio=(0.75, 1.33))
        w, h = box.right - box.left, box.bottom - box.top
        assert 0 <= box.left and box.right <= 60 + 1e-9 and 0 <= box.top and box.bottom <= 40 + 1e-9
        assert 0.2 - 1e-9 <= w * h / 2400 <= 0.9 + 1e-9 and 0.75 - 1e-9 <= w / h <= 1.33 + 1e-9
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert sample_crop((60, 40), a) == sample_crop((60, 40), b)
    fallback = sample_crop((100, 10), rng, scale=(0.9, 1.0), ratio=(1.0, 1.0), hflip=0.0)  # no square fits 90%
    assert (fallback.right - fallback.left, fallback.bottom - fallback.top) == (10, 10) and not fallback.flip


def test_bad_samples_are_refused():
    with pytest.raises(DataError, match="uint8"):
        eval_view(np.zeros((8, 8), np.float32), STUDENT)
