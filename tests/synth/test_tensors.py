import numpy as np
import torch

from edgekd.synth.tensors import from_uint8, to_uint8


def test_uint8_conversion_round_trips_within_half_a_grey_level():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = torch.rand(4, 3, 6, 6)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pixels = to_uint8(normalised, mean, std)
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 3, 6, 6)
    assert np.abs(pixels.astype(float) - x.numpy() * 255).max() <= 0.5 + 1e-4
    back = from_uint8(pixels, mean, std) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6
    assert to_uint8(torch.full((1, 3, 1, 1), 99.0), mean, std).max() == 255  # out of range: clipped
