"""Losses: the reference unsupervised consistency loss, the supervised losses, and their
weighted total with its ramp-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .targets import IGNORE_INDEX, PseudoLabels


def consistency_loss(logits: torch.Tensor, targets: PseudoLabels, threshold: float | torch.Tensor) -> torch.Tensor:
    """UniMatch's unsupervised loss.

    Per-pixel cross-entropy of the student ``logits`` (``B x C x H x W``) against
    ``targets.pseudo_label`` (``B x H x W``), kept where ``confidence >= threshold`` (one number,
    or ``C`` class-wise thresholds read at each pixel's pseudo-label) and the
    pixel is not crop padding (``ignore_mask == 255``), summed and divided by the number of
    non-padding pixels.
    """
    ce = F.cross_entropy(logits.float(), targets.pseudo_label.long(), reduction="none")
    # Divide by the non-ignored pixels, not by the confident ones, as the reference does.
    return (ce * targets.confident(threshold)).sum() / targets.valid.sum().clamp_min(1)


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


@dataclass(frozen=True)
class SupervisedLoss:
    """The labeled loss: cross-entropy ignoring 255 (``ce``), or OHEM (``ohem``, Cityscapes)."""

    kind: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 200_000

    def __post_init__(self) -> None:
        if self.kind not in ("ce", "ohem"):
            raise ValueError(f"sup_loss must be 'ce' or 'ohem', got {self.kind!r}")

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the valid pixels; 0 (not NaN) for a batch without any."""
        if self.kind == "ohem":
            return ohem_cross_entropy(logits, target, self.ohem_thresh, self.ohem_min_kept)
        target = target.long()
        ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
        return ce / (target != IGNORE_INDEX).sum().clamp_min(1)


def rampup_factor(step: int, rampup_steps: int) -> float:
    """Linear ramp-up of the unlabeled loss weights: ``min(1, step / rampup_steps)``; 1 when
    ``rampup_steps`` is 0 (the reference: full weight from the first step)."""
    if rampup_steps <= 0:
        return 1.0
    return min(1.0, step / rampup_steps)


# each LossWeights field and the knob that sets it (config.Weights, config.Masking, experimental.Experimental)
_WEIGHT_KNOBS = {
    "sup": "weights.sup",
    "strong": "weights.strong",
    "masked": "masking.weight",
    "fp": "weights.fp",
    "unsup_rampup_steps": "weights.unsup_rampup_steps",
    "masked_rampup_steps": "experimental.masked_rampup_steps",
}


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (0 switches a term off) and their ramp-ups, in optimiser steps.

    ``strong``, ``masked`` and ``fp`` (the unlabeled terms) grow linearly from 0 over
    ``unsup_rampup_steps``; ``masked`` also over ``masked_rampup_steps``.
    """

    sup: float = 0.5
    strong: float = 0.5
    masked: float = 0.5
    fp: float = 0.0
    unsup_rampup_steps: int = 0
    masked_rampup_steps: int = 0

    def __post_init__(self) -> None:
        for name, knob in _WEIGHT_KNOBS.items():
            if getattr(self, name) < 0:
                raise ValueError(f"{knob} must be >= 0, got {getattr(self, name)}")

    @property
    def uses_unlabeled(self) -> bool:
        return self.strong > 0 or self.masked > 0 or self.fp > 0

    def at(self, step: int) -> dict[str, float]:
        """Each term's weight at optimiser ``step``."""
        ramp = rampup_factor(step, self.unsup_rampup_steps)
        return {
            "sup": self.sup,
            "strong": self.strong * ramp,
            "masked": self.masked * ramp * rampup_factor(step, self.masked_rampup_steps),
            "fp": self.fp * ramp,
        }

    def total(self, losses: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        """The weighted sum of the ``losses`` present (keys ``sup``, ``strong``, ``masked``, ``fp``)."""
        weights = self.at(step)
        return sum(weights[name] * value for name, value in losses.items())
