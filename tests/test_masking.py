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


def test_masked_view_draws_its_ratio_from_the_range_and_masking_checks_its_settings():
    from maskmatch_pl import PatchMasking, masked_view

    images = torch.randn(1, 3, 40, 40) + 5  # no pixel is 0 before masking
    hidden = [
        (masked_view(images, 4, 0.2, 0.8, generator=torch.Generator().manual_seed(seed)) == 0).all(1).float().mean()
        for seed in range(40)
    ]
    assert 0.2 - 1e-6 <= min(hidden) < 0.35 and 0.65 < max(hidden) <= 0.8 + 1e-6
    fixed = PatchMasking(patch_size=8, ratio=0.5)(images, torch.Generator().manual_seed(0))
    assert (fixed == 0).all(1).float().mean().item() == pytest.approx(round(0.5 * 25) / 25)
    for kwargs, message in [
        ({"ratio": 1.5}, r"masking.ratio must be in \[0, 1\]"),
        ({"ratio": -1}, r"masking.ratio must be in \[0, 1\]"),
        ({"patch_size": 0}, "masking.patch_size must be a whole number of pixels >= 1"),
        ({"ratio": 0.7, "ratio_max": 0.5}, r"experimental.mask_ratio_max must be in \[masking.ratio, 1\]"),
        ({"view": "labeled"}, "masked_view must be 'strong' or 'weak'"),
    ]:
        with pytest.raises(ValueError, match=message):
            PatchMasking(**kwargs)


def test_masking_can_keep_hidden_pixels_out_of_the_loss():
    from maskmatch_pl import PatchMasking, PseudoLabels

    images = torch.randn(2, 3, 16, 16) + 5
    targets = PseudoLabels(torch.ones(2, 16, 16, dtype=torch.long), torch.ones(2, 16, 16), torch.zeros(2, 16, 16))
    masked, same = PatchMasking(4, 0.5).apply(images, targets, torch.Generator().manual_seed(0))
    assert same is targets  # the paper: every pixel keeps its target
    masked_again, visible_only = PatchMasking(4, 0.5, loss_on="visible").apply(
        images, targets, torch.Generator().manual_seed(0)
    )
    assert torch.equal(masked, masked_again)  # the same view either way
    hidden = (masked == 0).all(1)
    assert hidden.float().mean().item() == pytest.approx(0.5)
    assert torch.equal(visible_only.ignore_mask == 255, hidden)
    assert torch.equal(visible_only.pseudo_label, targets.pseudo_label)
