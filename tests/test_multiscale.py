import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskmatch_pl import (
    Teacher,
    fuse_probabilities,
    image_scale_probabilities,
    multiscale_probabilities,
    pseudo_labels,
    scale_probabilities,
)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1)).eval()


def test_scale_fusion_equals_a_manual_loop():
    model, images = _model(), torch.randn(2, 3, 24, 20)
    expected = torch.zeros(2, 5, 24, 20)
    for scale in (0.75, 1.0, 1.25):
        scaled = (
            F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False) if scale != 1 else images
        )
        for flip in (False, True):
            view = scaled.flip(-1) if flip else scaled
            logits = model(view)
            logits = logits.flip(-1) if flip else logits
            logits = F.interpolate(logits, size=(24, 20), mode="bilinear", align_corners=False)
            expected += logits.softmax(1) / 6
    with torch.no_grad():
        got = multiscale_probabilities(model, images, (0.75, 1.0, 1.25), flip=True)
        expected = expected.detach()
    assert got.shape == (2, 5, 24, 20) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 24, 20))


def test_single_scale_is_the_plain_softmax():
    model, images = _model(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(multiscale_probabilities(model, images, [1.0]), model(images).softmax(1))


def test_pseudo_labels_are_max_and_argmax():
    probs = torch.tensor([[[[0.2]], [[0.7]], [[0.1]]]])
    confidence, label = pseudo_labels(probs)
    assert label.item() == 1 and abs(confidence.item() - 0.7) < 1e-6


def test_fusion_rules_by_hand():
    # two scales, three classes, one pixel: both scales pick class 0, one of them less sure
    sure = torch.tensor([0.9, 0.05, 0.05]).view(1, 3, 1, 1)
    unsure = torch.tensor([0.6, 0.2, 0.2]).view(1, 3, 1, 1)
    mean = fuse_probabilities([sure, unsure], "mean")
    torch.testing.assert_close(mean.flatten(), torch.tensor([0.75, 0.125, 0.125]))
    geometric = fuse_probabilities([sure, unsure], "geometric")
    unnormalised = torch.tensor([(0.9 * 0.6) ** 0.5, (0.05 * 0.2) ** 0.5, (0.05 * 0.2) ** 0.5])
    torch.testing.assert_close(geometric.flatten(), unnormalised / unnormalised.sum())
    # the product of experts keeps more of the agreeing scales' confidence than the average does
    assert geometric[0, 0].item() > 0.78 > mean[0, 0].item()
    # one map: both rules give it back
    for rule in ("mean", "geometric"):
        torch.testing.assert_close(fuse_probabilities([sure], rule), sure)


def test_fusion_rule_is_checked_and_reaches_the_teacher():
    with pytest.raises(ValueError, match="'median'"):
        fuse_probabilities([torch.ones(1, 2, 1, 1) / 2], "median")
    with pytest.raises(ValueError, match="'median'"):
        Teacher(_model(), scales=(1.0,), fusion="median")
    model, images = _model(), torch.randn(2, 3, 16, 16)
    teacher = Teacher(model, scales=(0.75, 1.0, 1.25), fusion="geometric")
    with torch.no_grad():
        per_scale = scale_probabilities(model, images, (0.75, 1.0, 1.25))
        got = teacher.probabilities(images)
    torch.testing.assert_close(got, fuse_probabilities(per_scale, "geometric"))
    assert not torch.allclose(got, torch.stack(per_scale).mean(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fusion_of_saturated_and_half_precision_maps_is_finite_float32(dtype):
    saturated = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).to(dtype)
    unsure = torch.tensor([0.9, 0.1, 0.0]).view(1, 3, 1, 1).to(dtype)
    for rule in ("mean", "geometric"):
        fused = fuse_probabilities([saturated, unsure], rule)
        assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
        torch.testing.assert_close(fused.sum(1), torch.ones(1, 1, 1), atol=2e-3, rtol=0)  # inputs rounded
    # a product of experts: the scale that rules class 0 out vetoes it, though the other prefers it
    assert fuse_probabilities([saturated, unsure], "geometric").argmax(1).item() == 1
    assert fuse_probabilities([saturated, unsure], "mean").max(1).values.item() == pytest.approx(0.55, abs=1e-2)


def test_image_relative_scales_predict_each_view_at_scale_over_its_rescale():
    model, images = _model(), torch.randn(3, 3, 16, 16)
    view_scale = torch.tensor([0.5, 1.0, 1.25])
    with torch.no_grad():
        got = image_scale_probabilities(model, images, (1.0, 1.5), view_scale, flip=True)
        for index, factor in enumerate(view_scale.tolist()):  # one view at a time, at 1 / s and 1.5 / s
            expected = scale_probabilities(model, images[index : index + 1], (1.0 / factor, 1.5 / factor), flip=True)
            for scale, probs in enumerate(expected):
                torch.testing.assert_close(got[scale][index : index + 1], probs)
        # views the pipeline did not rescale get the view-relative prediction
        plain = scale_probabilities(model, images, (1.0, 1.5))
        ones = image_scale_probabilities(model, images, (1.0, 1.5), torch.ones(3))
    for a, b in zip(ones, plain):
        torch.testing.assert_close(a, b)
    assert got[0].shape == (3, 5, 16, 16) and not torch.allclose(got[0][0], plain[0][0], atol=1e-3)
    with pytest.raises(ValueError, match="one positive factor per image"):
        image_scale_probabilities(model, images, (1.0,), torch.tensor([1.0, 0.0, 1.0]))


def test_the_teacher_reads_view_scale_when_its_scales_are_image_relative():
    model, images, view_scale = _model(), torch.randn(2, 3, 16, 16), torch.tensor([0.8, 1.25])
    teacher = Teacher(model, scales=(1.0, 1.25), fusion="geometric", reference="image")
    with torch.no_grad():
        expected = fuse_probabilities(image_scale_probabilities(model, images, (1.0, 1.25), view_scale), "geometric")
        torch.testing.assert_close(teacher.probabilities(images, view_scale), expected)
    with pytest.raises(ValueError, match="view_scale"):
        teacher.probabilities(images)
    with pytest.raises(ValueError, match="'view' or 'image'"):
        Teacher(model, reference="crop")
