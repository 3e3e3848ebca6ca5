import copy

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


def test_cutmix_pastes_the_partner_into_the_view_and_all_three_target_maps():
    from maskmatch_pl import PseudoLabels, cutmix

    batch = 4
    view = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, 16, 16).clone()
    targets = PseudoLabels(
        torch.arange(batch).view(batch, 1, 1).expand(batch, 16, 16).clone(),
        torch.arange(batch, dtype=torch.float32).view(batch, 1, 1).expand(batch, 16, 16) / 10,
        torch.tensor([0, 255, 0, 0], dtype=torch.uint8).view(batch, 1, 1).expand(batch, 16, 16).clone(),
    )
    mixed, mixed_targets = cutmix(view, targets, p=1.0, generator=torch.Generator().manual_seed(0))
    for index in range(batch):
        partner = (index + 1) % batch
        box = mixed[index, 0] != index  # where the partner's pixels went
        assert box.any() and (mixed[index, 0][box] == partner).all()
        assert (mixed_targets.pseudo_label[index][box] == partner).all()
        assert (mixed_targets.pseudo_label[index][~box] == index).all()
        assert torch.allclose(mixed_targets.confidence[index][box], torch.tensor(partner / 10))
        assert (mixed_targets.ignore_mask[index][box] == targets.ignore_mask[partner, 0, 0]).all()
    unmixed, same = cutmix(view, targets, p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unmixed, view) and all(torch.equal(a, b) for a, b in zip(same, targets))


class Doubler(nn.Module):
    """Logits that depend on BatchNorm mode: train-mode batch statistics vs running ones."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.head(self.norm(x))


def test_shared_teacher_predicts_in_eval_mode_and_gives_the_student_back_in_train_mode():
    from maskmatch_pl import Teacher, multiscale_probabilities

    student = Doubler().train()
    teacher = Teacher(student, "shared", scales=(0.5, 1.0))
    images = torch.randn(2, 3, 8, 8) * 3 + 1
    probs = teacher.probabilities(images)
    assert student.training  # given back as it was
    with torch.no_grad():
        expected = multiscale_probabilities(student.eval(), images, (0.5, 1.0))
        in_train_mode = multiscale_probabilities(copy.deepcopy(student).train(), images, (0.5, 1.0))
    student.train()
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs, in_train_mode, atol=1e-3)  # the mode matters for this network
    targets = teacher.pseudo_labels(images)
    assert torch.equal(targets.pseudo_label, probs.argmax(1)) and (targets.ignore_mask == 0).all()
    assert not list(teacher.parameters())  # a shared teacher registers no weights of its own


def test_ema_teacher_follows_once_per_step_and_stays_in_eval_mode():
    from maskmatch_pl import Teacher

    student = Doubler()
    teacher = Teacher(student, "ema", momentum=0.9)
    teacher.train()
    assert not teacher.ema.training and not any(p.requires_grad for p in teacher.ema.parameters())
    with torch.no_grad():
        student.head.weight.add_(1.0)
    before = teacher.ema.head.weight.clone()
    teacher.update(student, step=2)  # momentum of step 1: min(1 - 1/2, 0.9) = 0.5
    torch.testing.assert_close(teacher.ema.head.weight, 0.5 * before + 0.5 * student.head.weight)
    after = teacher.ema.head.weight.clone()
    teacher.update(student, step=2)  # the same optimiser step again: no second update
    torch.testing.assert_close(teacher.ema.head.weight, after)
    with pytest.raises(ValueError, match="teacher must be 'shared' or 'ema'"):
        Teacher(student, "frozen")
    with pytest.raises(ValueError, match="pseudo-label scales must be positive"):
        Teacher(student, scales=())
