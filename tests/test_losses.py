import numpy as np
import pytest
import torch

from maskmatch_pl import PseudoLabels, consistency_loss, ohem_cross_entropy
from maskmatch_pl.losses import LossWeights, SupervisedLoss


def reference_unsupervised_loss(logits, pseudo_label, confidence, ignore_mask, threshold):
    """METHOD.md, read from scratch with numpy loops: per-pixel CE against the pseudo-label,
    times [conf >= tau and not ignored], summed, divided by the count of non-ignored pixels."""
    logits, pseudo_label = logits.double().numpy(), pseudo_label.numpy()
    confidence, ignore_mask = confidence.numpy(), ignore_mask.numpy()
    total, not_ignored = 0.0, 0
    batch, _, height, width = logits.shape
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                if ignore_mask[b, y, x] == 255:
                    continue
                not_ignored += 1
                if confidence[b, y, x] >= threshold:
                    z = logits[b, :, y, x]
                    log_softmax = z - z.max() - np.log(np.exp(z - z.max()).sum())
                    total += -log_softmax[pseudo_label[b, y, x]]
    return total / not_ignored


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.95])
def test_consistency_loss_matches_the_reference_formula(threshold):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, generator=generator) * 3
    pseudo_label = torch.randint(0, 4, (2, 6, 5), generator=generator)
    confidence = torch.rand(2, 6, 5, generator=generator)
    confidence[0, 0, :3] = threshold  # ties count as confident (>=)
    ignore_mask = torch.where(torch.rand(2, 6, 5, generator=generator) < 0.3, 255, 0)
    got = consistency_loss(logits, PseudoLabels(pseudo_label, confidence, ignore_mask), threshold)
    expected = reference_unsupervised_loss(logits, pseudo_label, confidence, ignore_mask, threshold)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_consistency_loss_divides_by_non_ignored_not_by_confident_pixels():
    logits = torch.zeros(1, 2, 1, 4)  # CE = log 2 everywhere
    confidence = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    ignore_mask = torch.tensor([[[0, 0, 255, 255]]])
    loss = consistency_loss(logits, PseudoLabels(torch.zeros(1, 1, 4, dtype=torch.long), confidence, ignore_mask), 0.5)
    assert loss.item() == pytest.approx(np.log(2) / 2)


def reference_ohem(pred, target, thresh, min_kept, ignore=255):
    """UniMatch's ProbOhemCrossEntropy2d, transcribed."""
    b, c, h, w = pred.size()
    target = target.view(-1).clone()
    valid_mask = target.ne(ignore)
    target = target * valid_mask.long()
    num_valid = valid_mask.sum()
    prob = torch.softmax(pred, dim=1).transpose(0, 1).reshape(c, -1)
    if min_kept > num_valid:
        pass
    elif num_valid > 0:
        prob = prob.masked_fill_(~valid_mask, 1)
        mask_prob = prob[target, torch.arange(len(target), dtype=torch.long)]
        threshold = thresh
        if min_kept > 0:
            _, index = mask_prob.sort()
            threshold_index = index[min(len(index), min_kept) - 1]
            if mask_prob[threshold_index] > thresh:
                threshold = mask_prob[threshold_index]
            kept_mask = mask_prob.le(threshold)
            target = target * kept_mask.long()
            valid_mask = valid_mask * kept_mask
    target = target.masked_fill_(~valid_mask, ignore).view(b, h, w)
    return torch.nn.functional.cross_entropy(pred, target, ignore_index=ignore)


@pytest.mark.parametrize(("thresh", "min_kept"), [(0.7, 10), (0.7, 1000), (0.3, 50), (0.9, 0)])
def test_ohem_matches_the_reference(thresh, min_kept):
    generator = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 5, 8, 9, generator=generator) * 2
    target = torch.randint(0, 5, (2, 8, 9), generator=generator)
    target[0, :2] = 255
    torch.testing.assert_close(
        ohem_cross_entropy(pred, target, thresh, min_kept), reference_ohem(pred, target, thresh, min_kept)
    )


def test_supervised_loss_is_mean_ce_and_zero_without_valid_pixels():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 5, generator=generator)
    target = torch.randint(0, 3, (2, 4, 5), generator=generator)
    target[0, 0] = 255
    expected = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(SupervisedLoss()(logits, target), expected)
    nothing = SupervisedLoss()(logits.requires_grad_(), torch.full((2, 4, 5), 255))
    assert nothing.item() == 0.0  # not NaN: a batch whose pixels are all ignored teaches nothing
    nothing.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="sup_loss must be 'ce' or 'ohem'"):
        SupervisedLoss("dice")


def test_loss_weights_ramp_up_and_sum_what_is_present():
    weights = LossWeights(sup=0.5, strong=0.4, masked=0.6, fp=0.2, unsup_rampup_steps=100, masked_rampup_steps=50)
    assert weights.at(0) == {"sup": 0.5, "strong": 0.0, "masked": 0.0, "fp": 0.0}
    assert weights.at(25) == pytest.approx({"sup": 0.5, "strong": 0.1, "masked": 0.6 * 0.25 * 0.5, "fp": 0.05})
    assert weights.at(200) == pytest.approx({"sup": 0.5, "strong": 0.4, "masked": 0.6, "fp": 0.2})
    losses = {"sup": torch.tensor(2.0), "masked": torch.tensor(3.0)}
    assert weights.total(losses, 200).item() == pytest.approx(0.5 * 2 + 0.6 * 3)
    assert not LossWeights(strong=0, masked=0).uses_unlabeled
    with pytest.raises(ValueError, match="weights.strong must be >= 0, got -1"):
        LossWeights(strong=-1)
    with pytest.raises(ValueError, match="masked_rampup_steps must be >= 0, got -2"):
        LossWeights(masked_rampup_steps=-2)
