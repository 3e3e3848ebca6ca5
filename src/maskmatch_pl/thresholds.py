"""Confidence thresholds of the pseudo-labels: one fixed tau (FixMatch / UniMatch), tau lowered for the
classes the teacher under-predicts (``prior_lowered``, the default), or class-wise self-adaptive
thresholds (FreeMatch) for teachers that are unsure of some classes.

With a fixed tau, a class the teacher is never sure of (a rare, small or look-alike class) never
reaches the unlabeled loss, and training on the others pushes it further out: the collapse to
background that users report on small-foreground data. FreeMatch lowers the threshold of each
class in proportion to how much probability the teacher gives it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .health import class_counts
from .targets import IGNORE_INDEX

ThresholdKind = Literal["fixed", "freematch", "freematch_prior", "prior_lowered"]
THRESHOLD_KINDS: tuple[str, ...] = ThresholdKind.__args__
PRIOR_KINDS = ("freematch_prior", "prior_lowered")  # the kinds that follow the labeled class shares


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the DDP processes (itself without DDP), as FreeMatch gathers its batch statistics."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def check_threshold_options(kind: str, tau: float, momentum: float) -> None:
    """Raise ``ValueError`` naming the knob (``pseudo_labels.*``) when a threshold option is out of range."""
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"pseudo_labels.threshold_rule must be one of {', '.join(THRESHOLD_KINDS)}; got {kind!r}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"pseudo_labels.threshold must be in [0, 1], got {tau}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"pseudo_labels.threshold_momentum must be in [0, 1), got {momentum}")


class PseudoLabelThreshold(nn.Module):
    """The confidence a pseudo-label pixel needs to reach the unlabeled losses.

    ``fixed``: ``tau`` for every class (the reference). ``freematch``: self-adaptive thresholding
    of FreeMatch (Wang et al., ICLR 2023, arXiv:2205.07246, eqs. 4-6), over pixels instead of
    images: a global threshold ``tau_t = m * tau_{t-1} + (1 - m) * mean(max_c p)`` and a class
    distribution ``p_t(c) = m * p_{t-1}(c) + (1 - m) * mean(p(c))``, both over the valid pixels of
    the weak views (of every DDP process) and started at ``1 / C``; the threshold of class ``c`` is
    ``p_t(c) / max_c' p_t(c') * tau_t`` (MaxNorm). Over pixels, ``p_t(c)`` is mostly how common a
    class is, so rare classes (small foreground) get thresholds near 0: every pixel whose arg max
    they are is kept. ``freematch_prior`` (ours) divides ``p_t(c)`` by the labeled class share
    ``pi_t(c)`` (the same EMA over the labeled masks) before MaxNorm, as distribution alignment
    (ReMixMatch, Berthelot et al., ICLR 2020) normalises predictions by the labeled prior: a class
    predicted at its labeled rate keeps ``tau_t``, one the teacher under-predicts gets a lower
    threshold. ``prior_lowered`` (ours) keeps ``tau`` and only ever lowers it: class ``c`` gets
    ``tau * min(1, p_t(c) / pi_t(c))``, so a class the teacher predicts at or above its labeled
    share keeps ``tau`` (the fixed rule where the teacher is good) and one it under-predicts gets
    a threshold lowered in proportion (the prior rule's remedy where a class vanishes). ``tau`` is
    used by ``fixed`` and ``prior_lowered``. FreeMatch's momentum is 0.999 over about a
    million steps; the default here, 0.99, follows runs of a few thousand steps. The state steps
    once per training batch (micro-batch) and is saved in checkpoints (adaptive kinds only).

    Args:
        kind: ``fixed``, ``freematch``, ``freematch_prior`` or ``prior_lowered``.
        tau: the fixed threshold (the upper bound of ``prior_lowered``), in [0, 1].
        num_classes: number of classes ``C``.
        momentum: EMA momentum ``m`` of the adaptive kinds, in [0, 1).

    Raises:
        ValueError: an unknown ``kind``, or ``tau`` / ``momentum`` out of range.
    """

    def __init__(self, kind: ThresholdKind = "fixed", tau: float = 0.95, num_classes: int = 2, momentum: float = 0.99):
        super().__init__()
        check_threshold_options(kind, tau, momentum)
        self.kind, self.tau, self.momentum = kind, tau, momentum
        adaptive = kind != "fixed"  # only adaptive state is checkpointed: fixed-tau checkpoints stay as they were
        start = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("global_threshold", torch.tensor(1.0 / num_classes), persistent=adaptive)
        self.register_buffer("class_distribution", start.clone(), persistent=adaptive)
        self.register_buffer("labeled_distribution", start.clone(), persistent=kind in PRIOR_KINDS)

    @torch.no_grad()
    def update(
        self,
        probabilities: torch.Tensor,
        valid: torch.Tensor | None = None,
        labeled_mask: torch.Tensor | None = None,
    ) -> float | torch.Tensor:
        """Follow one batch of teacher ``probabilities`` (``B x C x H x W``; ``valid`` ``B x H x W``
        bool, default all; ``labeled_mask`` ``B' x H' x W'`` class indices, 255 ignored, needed by
        ``freematch_prior`` and ``prior_lowered``) and return the thresholds to use on it: a float
        (``fixed``) or a ``C`` tensor, one per class."""
        if self.kind == "fixed":
            return self.tau
        probabilities = probabilities.float()
        if valid is None:
            valid = torch.ones_like(probabilities[:, 0], dtype=torch.bool)
        weight = valid[:, None].float()
        sums = torch.cat(
            [
                (probabilities.amax(1, keepdim=True) * weight).sum().view(1),
                (probabilities * weight).sum((0, 2, 3)),
                weight.sum().view(1),
            ]
        )
        sums = _all_reduce_sum(sums)
        # an empty batch leaves the state as it is (momentum 1), decided on the device: no sync per step
        count = sums[-1]
        m = torch.where(count > 0, self.momentum, 1.0)
        self.global_threshold.mul_(m).add_((1 - m) * sums[0] / count.clamp_min(1))
        self.class_distribution.mul_(m).add_((1 - m) * sums[1:-1] / count.clamp_min(1))
        if self.kind in PRIOR_KINDS:
            if labeled_mask is None:
                raise ValueError(f"pseudo_labels.threshold_rule {self.kind!r} needs the labeled masks of the step")
            counts = class_counts(labeled_mask, labeled_mask != IGNORE_INDEX, len(self.labeled_distribution))
            counts = _all_reduce_sum(counts.to(self.labeled_distribution.dtype))
            total = counts.sum()
            m = torch.where(total > 0, self.momentum, 1.0)
            self.labeled_distribution.mul_(m).add_((1 - m) * counts / total.clamp_min(1))
        return self.thresholds()

    def thresholds(self) -> float | torch.Tensor:
        """The current thresholds: ``tau``, or ``C`` class-wise ones."""
        if self.kind == "fixed":
            return self.tau
        distribution = self.class_distribution
        if self.kind in PRIOR_KINDS:
            distribution = distribution / self.labeled_distribution.clamp_min(1e-6)
        if self.kind == "prior_lowered":
            return self.tau * distribution.clamp(max=1.0)
        return distribution / distribution.max() * self.global_threshold
