import math

import pytest
import torch

from maskmatch_pl import apply_patch_mask, random_patch_mask


@pytest.mark.parametrize(
    ("height", "width", "patch", "ratio"),
    [(64, 64, 8, 0.7), (50, 37, 16, 0.7), (33, 97, 32, 0.5), (64, 64, 8, 0.0), (64, 64, 8, 1.0), (20, 20, 7, 0.3)],
)
def test_exact_hidden_patch_count_per_image(height, width, patch, ratio):
    visible = random_patch_mask(6, height, width, patch, ratio, generator=torch.Generator().manual_seed(1))
    assert visible.shape == (6, 1, height, width) and visible.dtype == torch.bool
    grid_h, grid_w = math.ceil(height / patch), math.ceil(width / patch)
    expected_hidden = round(ratio * grid_h * grid_w)
    for image in visible[:, 0]:
        # every patch is uniformly visible or hidden: sample its top-left pixel
        patches = image[::patch, ::patch]
        assert patches.shape == (grid_h, grid_w)
        assert int((~patches).sum()) == expected_hidden
        upsampled = patches.repeat_interleave(patch, 0).repeat_interleave(patch, 1)[:height, :width]
        assert torch.equal(upsampled, image)


def test_masks_differ_between_images_and_follow_the_generator():
    first = random_patch_mask(4, 64, 64, 8, 0.7, generator=torch.Generator().manual_seed(0))
    again = random_patch_mask(4, 64, 64, 8, 0.7, generator=torch.Generator().manual_seed(0))
    other = random_patch_mask(4, 64, 64, 8, 0.7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])


def test_apply_patch_mask_zeroes_hidden_pixels_only():
    images = torch.randn(2, 3, 16, 16)
    visible = random_patch_mask(2, 16, 16, 4, 0.5, generator=torch.Generator().manual_seed(3))
    masked = apply_patch_mask(images, visible)
    assert torch.equal(masked[visible.expand_as(images)], images[visible.expand_as(images)])
    assert (masked[~visible.expand_as(images)] == 0).all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="ratio"):
        random_patch_mask(1, 8, 8, 4, 1.5)
    with pytest.raises(ValueError, match="patch_size"):
        random_patch_mask(1, 8, 8, 0, 0.5)
