import numpy as np
import pytest
from PIL import Image

from edgekd.data.decode import ALPHA_BACKGROUND, BAD_IMAGE_ERRORS, load_image
from edgekd.data.listing import list_imagefolder
from edgekd.data.passes import check_images
from edgekd.errors import DataError
from tests.data.imagefolders import smooth_image, write_folder


def _save(tmp_path, img: Image.Image, name: str):
    path = tmp_path / name
    img.save(path)
    return path


def _grey(value: int, mode: str = "L") -> Image.Image:
    return Image.new(mode, (6, 4), value)


# (image, file name, expected RGB pixel): each mode converted by the documented rule
CASES = {
    "L": (_grey(100), "l.png", (100, 100, 100)),
    "LA transparent": (Image.new("LA", (6, 4), (10, 0)), "la.png", ALPHA_BACKGROUND),
    "RGBA half": (Image.new("RGBA", (6, 4), (0, 0, 200, 128)), "rgba.png", (127, 127, 228)),
    "P": (Image.new("RGB", (6, 4), (30, 60, 90)).quantize(4), "p.png", (30, 60, 90)),
    "P transparent": (None, "pt.png", ALPHA_BACKGROUND),
    "CMYK": (Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "cmyk.tif", (255, 0, 0)),
    "I;16": (Image.fromarray(np.full((4, 6), 32896, np.uint16)), "i16.png", (128, 128, 128)),
    "I": (Image.fromarray(np.full((4, 6), 65535, np.int32), mode="I"), "i32.tif", (255, 255, 255)),
    "F unit": (Image.fromarray(np.full((4, 6), 0.5, np.float32), mode="F"), "f.tif", (128, 128, 128)),
    "F 0..255": (Image.fromarray(np.full((4, 6), 200.0, np.float32), mode="F"), "f255.tif", (200, 200, 200)),
    "1": (Image.new("1", (6, 4), 1), "one.png", (255, 255, 255)),
}


def _paletted_with_transparency() -> Image.Image:
    img = Image.new("P", (6, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    return img


@pytest.mark.parametrize("case", CASES)
def test_every_mode_becomes_rgb_and_grey(tmp_path, case):
    img, name, rgb = CASES[case]
    img = _paletted_with_transparency() if img is None else img
    path = _save(tmp_path, img, name)
    out = load_image(path, channels=3)
    assert out.mode == "RGB" and out.size == (6, 4)
    assert np.abs(np.asarray(out, dtype=int)[1, 1] - rgb).max() <= 1
    grey = load_image(path, channels=1)
    assert grey.mode == "L"
    expected_l = (rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114) / 1000
    assert abs(int(np.asarray(grey)[1, 1]) - expected_l) <= 1


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = np.asarray(load_image(tmp_path / "rot.jpg", 3))
    assert out.shape == (40, 20, 3)  # portrait after transpose
    assert out[5, 10].mean() > 200 and out[35, 10].mean() < 50  # the white half is now on top


def test_draft_mode_decodes_large_jpegs_near_the_target_size(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(smooth_image(rng, 1600, 1200)).save(tmp_path / "big.jpg", quality=90)
    full = load_image(tmp_path / "big.jpg", 3)
    drafted = load_image(tmp_path / "big.jpg", 3, short_side=256)
    assert full.size == (1600, 1200) and drafted.size == (400, 300)  # 1/4 keeps the short side >= 256
    assert load_image(tmp_path / "big.jpg", 3, short_side=1000).size == (1600, 1200)
    # same picture: full decode + resize vs draft + resize agree to within a couple of grey levels
    a = np.asarray(full.resize((341, 256), Image.BILINEAR), dtype=float)
    b = np.asarray(drafted.resize((341, 256), Image.BILINEAR), dtype=float)
    assert np.abs(a - b).mean() < 2.0


def test_truncated_and_fake_images_are_bad_images(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(smooth_image(rng, 64, 64)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("this is not a picture")
    for name in ("cut.jpg", "text.png"):
        with pytest.raises(BAD_IMAGE_ERRORS):
            load_image(tmp_path / name, 3, short_side=16)


def _folder_with_bad_files(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=3)
    data = (root / "cat" / "000.jpg").read_bytes()
    (root / "cat" / "001.jpg").write_bytes(data[: len(data) // 3])
    (root / "dog" / "002.png").write_text("not an image")
    return list_imagefolder(root).folders["all"]


def test_on_bad_image_error_lists_every_bad_file(tmp_path):
    files = _folder_with_bad_files(tmp_path)
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*cat/001.jpg.*dog/002.png.*on_bad_image: skip"):
        check_images(files, 3, 32, "error", workers=0)


def test_on_bad_image_skip_drops_and_counts_them(tmp_path):
    files = _folder_with_bad_files(tmp_path)
    good, bad = check_images(files, 3, 32, "skip", workers=2)
    assert [b.path for b in bad] == ["cat/001.jpg", "dog/002.png"]
    assert len(good) == len(files) - 2 and "cat/001.jpg" not in [good.relpath(i) for i in range(len(good))]
