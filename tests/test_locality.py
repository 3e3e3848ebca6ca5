"""Boundary IoU and small-object IoU against values computed by hand on tiny masks."""

import numpy as np
import pytest
import torch

from maskmatch_pl.locality import LocalityScores, boundary_band, small_object_counts


def two_halves() -> tuple[torch.Tensor, torch.Tensor]:
    """4 x 6: class 0 in columns 0-2, class 1 in 3-5; the prediction moves the edge one column right."""
    target = torch.zeros(1, 4, 6, dtype=torch.long)
    target[..., 3:] = 1
    prediction = torch.zeros_like(target)
    prediction[..., 4:] = 1
    return prediction, target


def test_the_band_is_the_pixels_within_width_of_another_labeled_class():
    _, target = two_halves()
    assert torch.equal(boundary_band(target, 1)[0].nonzero()[:, 1].unique(), torch.tensor([2, 3]))
    assert torch.equal(boundary_band(target, 2)[0].nonzero()[:, 1].unique(), torch.tensor([1, 2, 3, 4]))
    target[0, :, 2] = 255  # an ignored column: never scored, and it makes no edge
    assert not boundary_band(target, 1).any()
    assert torch.equal(boundary_band(target, 2)[0].nonzero()[:, 1].unique(), torch.tensor([1, 3]))
    assert not boundary_band(torch.zeros(1, 5, 5, dtype=torch.long), 2).any()
    with pytest.raises(ValueError, match="boundary_width"):
        boundary_band(target, 0)


def test_boundary_iou_by_hand():
    prediction, target = two_halves()
    metric = LocalityScores(2, boundary_width=1)
    metric.update(prediction, target)
    boundary = metric.compute()["boundary"]
    # band: columns 2 (class 0) and 3 (class 1), 4 pixels each; all 8 predicted as class 0
    # class 0: intersection 4, union 4 + 8 - 4 = 8; class 1: intersection 0, union 4
    assert torch.allclose(boundary, torch.tensor([0.5, 0.0], dtype=torch.float64))
    metric.update(target, target)  # a perfect image adds 4 + 4 correct band pixels
    # class 0: 8 / (8 + 12 - 8); class 1: 4 / (8 + 4 - 4)
    assert torch.allclose(metric.compute()["boundary"], torch.tensor([8 / 12, 4 / 8], dtype=torch.float64))


def small_object_scene() -> tuple[np.ndarray, np.ndarray]:
    """10 x 10 of class 0 with a 2 x 2 (small at share 0.05: < 5 px) and a 3 x 3 (large) block of class 1
    and a diagonal pair of class 2 pixels (one 8-connected component of 2 px)."""
    target = np.zeros((10, 10), dtype=np.int64)
    target[2:4, 2:4] = 1
    target[6:9, 6:9] = 1
    target[0, 0] = target[1, 1] = 2
    prediction = target.copy()
    prediction[2:4, 3] = 0  # half the small block missed
    prediction[4, 4] = 1  # a false positive touching it diagonally: within 1 px
    prediction[2, 5] = 1  # 2 px away: outside the margin
    prediction[0, 9] = 1  # far away
    return prediction, target


def test_small_object_iou_by_hand():
    prediction, target = small_object_scene()
    intersection, union = small_object_counts(prediction, target, 3, share=0.05, margin=1)
    # class 1: the 2 x 2 block only (the 3 x 3 one is 9 px >= 5); 2 of its pixels hit, union = 4 + (4, 4)
    assert intersection.tolist() == [0, 2, 2] and union.tolist() == [0, 5, 2]
    intersection, union = small_object_counts(prediction, target, 3, share=0.05, margin=2)
    assert union[1] == 6  # (2, 5) is within 2 px now
    # at share 0.02 (< 2 px) the diagonal pair is one 2-px component, not two small 1-px ones
    intersection, union = small_object_counts(prediction, target, 3, share=0.02, margin=1)
    assert union[2] == 0
    ignored = target.copy()
    ignored[2, 2] = 255  # ignored pixels are neither object nor prediction
    intersection, union = small_object_counts(prediction, ignored, 3, share=0.05, margin=1)
    assert intersection[1] == 1 and union[1] == 4


def test_scores_sum_over_the_set_and_leave_classes_without_small_objects_out():
    prediction, target = (torch.from_numpy(x)[None] for x in small_object_scene())
    metric = LocalityScores(4, boundary_width=1, small_object_share=0.05)
    metric.update(prediction, target)
    metric.update(target, target)  # a perfect copy: class 1 adds 4 / 4
    small = metric.compute()["small_object"]
    assert torch.allclose(small[1:3], torch.tensor([6 / 9, 1.0], dtype=torch.float64))
    assert small[0].isnan() and small[3].isnan()  # class 0 has no small component; class 3 is absent
    batched = LocalityScores(4, boundary_width=1, small_object_share=0.05)
    batched.update(torch.cat([prediction, target]), torch.cat([target, target]))
    for key, value in batched.compute().items():
        assert torch.allclose(value, metric.compute()[key], equal_nan=True), key


@pytest.mark.parametrize("kwargs", [{"boundary_width": 0}, {"small_object_share": 0.0}, {"small_object_share": 1.5}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LocalityScores(3, **kwargs)
