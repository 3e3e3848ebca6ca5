"""Confidence thresholds of the pseudo-labels: one fixed tau (FixMatch / UniMatch), or class-wise
self-adaptive thresholds (FreeMatch) for teachers that are unsure of some classes.

With a fixed tau, a class the teacher is never sure of (a rare, small or look-alike class) never
reaches the unlabeled loss, and training on the others pushes it further out: the collapse to
background that users report on small-foreground data. FreeMatch lowers the threshold of each
class in proportion to how much probability the teacher gives it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ThresholdKind = Literal["fixed", "freematch"]


class PseudoLabelThreshold(nn.Module):
    """The confidence a pseudo-label pixel needs to reach the unlabeled losses.

    ``fixed``: ``tau`` for every class (the reference). ``freematch``: self-adaptive thresholding
    of FreeMatch (Wang et al., ICLR 2023, arXiv:2205.07246, eqs. 4-6), over pixels instead of
    images: a global threshold ``tau_t = m * tau_{t-1} + (1 - m) * mean(max_c p)`` and a class
    distribution ``p_t(c) = m * p_{t-1}(c) + (1 - m) * mean(p(c))``, both over the valid pixels of
    the weak views and started at ``1 / C``; the threshold of class ``c`` is
    ``p_t(c) / max_c' p_t(c') * tau_t`` (MaxNorm). ``tau`` is not used by ``freematch``.
    FreeMatch's momentum is 0.999 over about a million steps; the default here, 0.99, follows
    runs of a few thousand steps. The state is saved in checkpoints.

    Args:
        kind: ``fixed`` or ``freematch``.
        tau: the fixed threshold, in [0, 1].
        num_classes: number of classes (``freematch``).
        momentum: EMA momentum ``m`` of ``freematch``, in [0, 1).
    """

    def __init__(self, kind: ThresholdKind = "fixed", tau: float = 0.95, num_classes: int = 2, momentum: float = 0.99):
        super().__init__()
        if kind not in ("fixed", "freematch"):
            raise ValueError(f"pseudo_label_threshold must be 'fixed' or 'freematch', got {kind!r}")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"conf_threshold must be in [0, 1], got {tau}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"threshold_momentum must be in [0, 1), got {momentum}")
        self.kind, self.tau, self.momentum = kind, tau, momentum
        adaptive = kind == "freematch"  # only adaptive state is checkpointed: fixed-tau checkpoints stay as they were
        self.register_buffer("global_threshold", torch.tensor(1.0 / num_classes), persistent=adaptive)
        self.register_buffer("class_distribution", torch.full((num_classes,), 1.0 / num_classes), persistent=adaptive)

    @torch.no_grad()
    def update(self, probabilities: torch.Tensor, valid: torch.Tensor | None = None) -> float | torch.Tensor:
        """Follow one batch of teacher ``probabilities`` (``B x C x H x W``; ``valid`` ``B x H x W``
        bool, default all) and return the thresholds to use on it: a float (``fixed``) or a ``C``
        tensor, one per class (``freematch``). Under DDP each process follows its own batches."""
        if self.kind == "fixed":
            return self.tau
        per_pixel = probabilities.float().permute(0, 2, 3, 1).reshape(-1, probabilities.shape[1])
        if valid is not None:
            per_pixel = per_pixel[valid.reshape(-1)]
        if len(per_pixel):
            m = self.momentum
            self.global_threshold.mul_(m).add_((1 - m) * per_pixel.max(1).values.mean())
            self.class_distribution.mul_(m).add_((1 - m) * per_pixel.mean(0))
        return self.thresholds()

    def thresholds(self) -> float | torch.Tensor:
        """The current thresholds: ``tau``, or ``C`` class-wise ones."""
        if self.kind == "fixed":
            return self.tau
        return self.class_distribution / self.class_distribution.max() * self.global_threshold
