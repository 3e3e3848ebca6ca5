import pytest
import torch
from torch import nn

from maskmatch_pl import predict_probabilities, sliding_window_probabilities
from maskmatch_pl.evaluation import center_crop, window_starts


class PositionalModel(nn.Module):
    """Logits that depend on the content and on the position inside the window, so that a
    wrong window placement gives different numbers."""

    def forward(self, x):
        height, width = x.shape[-2:]
        ramp = torch.linspace(0, 1, width).view(1, 1, 1, width) + torch.linspace(0, 2, height).view(1, 1, height, 1)
        return torch.cat([x[:, :1] * 3, x[:, 1:2] - ramp, ramp * x[:, 2:3], -x.sum(1, keepdim=True)], 1)


def brute_force_sliding_window(model, images, window, stride):
    batch, _, height, width = images.shape
    total = torch.zeros(batch, 4, height, width)
    count = torch.zeros(height, width)
    tops = list(range(0, max(height - window, 0) + 1, stride))
    lefts = list(range(0, max(width - window, 0) + 1, stride))
    if tops[-1] + window < height:
        tops.append(height - window)
    if lefts[-1] + window < width:
        lefts.append(width - window)
    for top in tops:
        for left in lefts:
            logits = model(images[:, :, top : top + window, left : left + window])
            total[:, :, top : top + window, left : left + window] += logits.softmax(1)
            count[top : top + window, left : left + window] += 1
    assert (count > 0).all()
    return total, count


@pytest.mark.parametrize(("height", "width", "window"), [(50, 71, 24), (24, 24, 24), (30, 100, 32), (16, 20, 32)])
def test_sliding_window_matches_brute_force(height, width, window):
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    model = PositionalModel()
    got = sliding_window_probabilities(model, images, window)
    total, count = brute_force_sliding_window(model, images, window, int(window * 2 / 3))
    torch.testing.assert_close(got, total / count)
    assert torch.equal(got.argmax(1), total.argmax(1))  # summed softmax, as the reference


def test_window_starts_end_flush_with_the_border():
    assert window_starts(100, 32, 21) == [0, 21, 42, 63, 68]
    assert window_starts(32, 32, 21) == [0]
    assert window_starts(10, 32, 21) == [0]


def test_original_and_center_crop_modes():
    images = torch.randn(1, 3, 40, 50)
    model = PositionalModel()
    torch.testing.assert_close(predict_probabilities(model, images, "original"), model(images).softmax(1))
    cropped = predict_probabilities(model, images, "center_crop", crop_size=32)
    torch.testing.assert_close(cropped, model(images[:, :, 4:36, 9:41]).softmax(1))
    assert torch.equal(
        center_crop(torch.arange(40 * 50).view(40, 50), 32), torch.arange(40 * 50).view(40, 50)[4:36, 9:41]
    )
    with pytest.raises(ValueError, match="eval_mode"):
        predict_probabilities(model, images, "bogus")
