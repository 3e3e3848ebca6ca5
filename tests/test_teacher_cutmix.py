import pytest
import torch
from torch import nn

from maskmatch_pl import cutmix_boxes, ema_momentum, ema_update, partner_indices, paste


def test_ema_momentum_warm_up():
    assert ema_momentum(0, 0.996) == 0.0
    assert ema_momentum(1, 0.996) == 0.5
    assert ema_momentum(9, 0.996) == pytest.approx(0.9)
    assert ema_momentum(10_000, 0.996) == 0.996


def test_ema_update_arithmetic_on_parameters_and_buffers():
    torch.manual_seed(0)
    student, teacher = (
        nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)),
        nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)),
    )
    student[1].running_mean.fill_(2.0)
    student[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    after, source = teacher.state_dict(), student.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * source[name])
    assert after["1.num_batches_tracked"].item() == 7


def test_cutmix_boxes_follow_the_reference_ranges():
    generator = torch.Generator().manual_seed(0)
    boxes = cutmix_boxes(400, 40, 60, p=0.5, generator=generator)
    areas = boxes.flatten(1).sum(1).float() / (40 * 60)
    with_box = areas > 0
    assert 0.4 < with_box.float().mean() < 0.6
    assert areas[with_box].max() <= 0.4 + 1e-6 and areas[with_box].min() >= 0.01  # int() floors the sides
    for box in boxes[with_box][:20]:  # each is one solid rectangle
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert not cutmix_boxes(8, 16, 16, p=0.0, generator=generator).any()
    assert cutmix_boxes(8, 16, 16, p=1.0, generator=generator).flatten(1).any(1).all()


def test_paste_mixes_images_and_maps_alike():
    images, labels = (
        torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 4),
        torch.arange(3).view(3, 1, 1).expand(3, 4, 4),
    )
    boxes = torch.zeros(3, 4, 4, dtype=torch.bool)
    boxes[:, :2, :2] = True
    partner = partner_indices(3)
    assert partner.tolist() == [1, 2, 0]
    mixed, mixed_labels = paste(images, images[partner], boxes), paste(labels, labels[partner], boxes)
    assert mixed[0, :, 0, 0].tolist() == [1.0, 1.0] and mixed[0, :, 3, 3].tolist() == [0.0, 0.0]
    assert mixed_labels[2, 0, 0] == 0 and mixed_labels[2, 3, 3] == 2
