"""Losses: the reference unsupervised consistency loss and the supervised losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def consistency_loss(
    logits: torch.Tensor,
    pseudo_label: torch.Tensor,
    confidence: torch.Tensor,
    ignore_mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """UniMatch's unsupervised loss.

    Per-pixel cross-entropy of the student ``logits`` (``B x C x H x W``) against the
    ``pseudo_label`` (``B x H x W``), kept where ``confidence >= threshold`` and the pixel is
    not ignored (``ignore_mask == 255`` marks crop padding), summed and divided by the
    number of non-ignored pixels.
    """
    ce = F.cross_entropy(logits.float(), pseudo_label.long(), reduction="none")
    valid = ignore_mask != IGNORE_INDEX
    kept = (confidence >= threshold) & valid
    # Divide by the non-ignored pixels, not by the confident ones, as the reference does.
    return (ce * kept).sum() / valid.sum().clamp_min(1)


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 200_000
) -> torch.Tensor:
    """Online hard example mining CE (UniMatch's ``ProbOhemCrossEntropy2d`` for Cityscapes).

    Keeps pixels whose probability of the true class is at most ``thresh``; if fewer than
    ``min_kept`` are that hard, the threshold is raised to the ``min_kept``-th smallest
    probability. Ignored pixels (255) never count; with ``min_kept`` 0 or above the number
    of valid pixels, no pixel is dropped (the reference's behaviour).
    """
    target = target.long()
    valid = target != IGNORE_INDEX
    ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    n_valid = int(valid.sum())
    if 0 < min_kept <= n_valid:  # as the reference: no mining when min_kept is 0 or too large
        with torch.no_grad():
            true_class = target.masked_fill(~valid, 0).unsqueeze(1)
            prob = logits.float().softmax(1).gather(1, true_class).squeeze(1)
            threshold = torch.maximum(prob[valid].kthvalue(min_kept).values, torch.tensor(thresh, device=prob.device))
            valid = valid & (prob <= threshold)
    return (ce * valid).sum() / valid.sum().clamp_min(1)


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", **ohem: float) -> torch.Tensor:
    """Cross-entropy with ignore index 255 (``kind='ce'``) or OHEM (``kind='ohem'``)."""
    if kind == "ohem":
        return ohem_cross_entropy(logits, target, **ohem)  # type: ignore[arg-type]
    return F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE_INDEX)


def rampup_factor(step: int, rampup_steps: int) -> float:
    """Linear ramp-up of the unlabeled loss weights: ``min(1, step / rampup_steps)``; 1 when
    ``rampup_steps`` is 0 (the reference: full weight from the first step)."""
    if rampup_steps <= 0:
        return 1.0
    return min(1.0, step / rampup_steps)
