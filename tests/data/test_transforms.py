import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.config import DataConfig
from edgekd.data import Preprocess, load_data, preprocess_image
from edgekd.data.datasets import ArraySource, SampleDataset, channel_stats
from edgekd.data.splits import three_way_split
from edgekd.data.decode import load_image
from edgekd.data.mixing import make_mixup, mix_batch
from edgekd.data.transforms import (TrainTransformConfig, array_eval_transform, array_train_transform,
                                    eval_transform, train_transform)
from edgekd.errors import ConfigError
from edgekd.schema import parse
from tests.data.imagefolders import smooth_image

PRE_RGB = Preprocess(32, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 0.875, 255.0)
PRE_GREY = Preprocess(24, 1, (0.5,), (0.25,), "bilinear", 1.0, 255.0)


@pytest.mark.parametrize("pre", [PRE_RGB, PRE_GREY], ids=["rgb-bicubic-0.875", "grey-bilinear-1.0"])
def test_eval_transform_is_preprocess_image_exactly(tmp_path, pre):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(50, 37), (37, 50), (32, 32), (301, 97), (20, 26)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(smooth_image(rng, w, h)).save(path)
        ours = eval_transform(pre)(load_image(path, pre.channels))
        assert ours.dtype == torch.float32
        assert np.array_equal(ours.numpy(), preprocess_image(path, pre))


def test_train_transform_is_timms_with_the_eval_normalisation():
    cfg = TrainTransformConfig(auto_augment="rand-m9-mstd0.5", re_prob=0.5, vflip=0.5)
    tf = train_transform(cfg, PRE_RGB)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandomVerticalFlip"]
    assert "RandAugment" in names and "ColorJitter" not in names and names[-1] == "RandomErasing"
    norm = next(t for t in tf.transforms if type(t).__name__ == "Normalize")
    assert torch.allclose(norm.mean, torch.tensor(PRE_RGB.mean))
    img = Image.fromarray(smooth_image(np.random.default_rng(0), 70, 50))
    assert tf(img).shape == (3, 32, 32)


@pytest.mark.parametrize("section, message", [
    ({"auto_augment": "rand-q9"}, "not a timm policy"),
    ({"scale": [0.5, 0.2]}, "scale needs"),
    ({"hflip": 1.5}, "hflip"),
    ({"re_mod": "pixel"}, "did you mean 're_mode'"),
])
def test_bad_settings_are_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        parse(TrainTransformConfig, section, source="data.train_transform")


def test_array_transforms_match_the_in_memory_layer_and_refuse_image_only_keys():
    data = load_data(DataConfig())  # digits: 8x8 -> 32 px, normalised with the training split's statistics
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train_rows, val_rows, _ = three_way_split(bunch.target, 0.2, 0.2, 0)  # the digits rule: val and test carved
    source = lambda rows: ArraySource(bunch.images, bunch.target, pixel_max=16.0, channels=1,  # noqa: E731
                                      input_size=32, rows=rows)
    mean, std = channel_stats(source(train_rows), chunk=500)
    assert np.allclose(mean, data.preprocess.mean, atol=1e-5) and np.allclose(std, data.preprocess.std, atol=1e-5)
    pre = Preprocess(32, 1, data.preprocess.mean, data.preprocess.std, "bilinear", 1.0, 16.0)
    val = SampleDataset(source(val_rows), array_eval_transform(pre))
    for k in (0, 7, len(val_rows) - 1):
        x, y, index = val[k]
        assert np.allclose(x.numpy(), data.val_x[k], atol=1e-5) and y == data.val_y[k] and index == k
    train = SampleDataset(source(train_rows), array_train_transform(TrainTransformConfig(re_prob=1.0), pre))
    assert not torch.equal(train[(3, 0)][0], train[(3, 1)][0]) and train[(3, 0)][0].shape == (1, 32, 32)
    with pytest.raises(ConfigError, match="auto_augment, scale apply to image files"):
        array_train_transform(TrainTransformConfig(scale=(0.5, 1.0), auto_augment="rand-m9"), pre)


def test_mixup_feeds_teacher_and_student_the_same_tensor():
    torch.manual_seed(0)
    teacher, student = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    seen = {}
    teacher.register_forward_hook(lambda m, args, out: seen.__setitem__("teacher", args[0]))
    student.register_forward_hook(lambda m, args, out: seen.__setitem__("student", args[0]))
    cfg = TrainTransformConfig(mixup=0.8, cutmix=1.0, mixup_mode="elem")
    mixup = make_mixup(cfg, num_classes=4, label_smoothing=0.1)
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, -1, 1])
    batch = mix_batch(mixup, images.clone(), labels, seed=1, epoch=2, step=5)
    teacher(batch.inputs), student(batch.inputs)  # what a training step does
    assert seen["teacher"] is seen["student"] is batch.inputs
    assert not torch.equal(batch.inputs, images)
    again = mix_batch(mixup, images.clone(), labels, seed=1, epoch=2, step=5)
    assert torch.equal(again.inputs, batch.inputs) and torch.equal(again.targets, batch.targets)
    # rows 1 and 4 pair with each other (timm flips the batch): label -1 leaves both unlabeled
    assert batch.labeled.tolist() == [True, False, True, True, False, True]
    assert torch.allclose(batch.targets[batch.labeled].sum(1), torch.ones(4)) and batch.targets[1].sum() == 0
    with pytest.raises(ConfigError, match="even batch"):
        mix_batch(mixup, images[:5], labels[:5], seed=1, epoch=0, step=0)
    assert make_mixup(TrainTransformConfig(), 4) is None
