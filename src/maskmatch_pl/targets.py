"""The unlabeled targets: a pseudo-label, its confidence and the ignore mask, kept together.

CutMix must paste all three the same way and the consistency loss reads all three, so they
travel as one :class:`PseudoLabels`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = 255  # the ignore value of every mask and label map in this package (VOC's)


class PseudoLabels(NamedTuple):
    """Targets of the unlabeled images, each ``B x H x W``.

    Attributes:
        pseudo_label: class index per pixel (the teacher's arg max).
        confidence: the teacher's probability of that class, float32.
        ignore_mask: 255 where the pixel is crop padding (never a target), else 0.
    """

    pseudo_label: torch.Tensor
    confidence: torch.Tensor
    ignore_mask: torch.Tensor

    @classmethod
    def from_probabilities(cls, probabilities: torch.Tensor, ignore_mask: torch.Tensor | None = None) -> PseudoLabels:
        """Arg max and max of ``B x C x H x W`` probabilities; no ignore mask means none ignored."""
        confidence, pseudo_label = probabilities.max(dim=1)
        if ignore_mask is None:
            ignore_mask = torch.zeros_like(pseudo_label, dtype=torch.uint8)
        return cls(pseudo_label, confidence, ignore_mask)

    @property
    def valid(self) -> torch.Tensor:
        """Pixels that are not crop padding."""
        return self.ignore_mask != IGNORE_INDEX

    def confident(self, threshold: float | torch.Tensor) -> torch.Tensor:
        """Pixels that reach a loss: not padding and ``confidence >= threshold`` (the reference's ``>=``);
        a ``C`` tensor of class-wise thresholds is read at each pixel's pseudo-label."""
        if isinstance(threshold, torch.Tensor) and threshold.dim() == 1:
            threshold = threshold[self.pseudo_label]
        return self.valid & (self.confidence >= threshold)

    def confident_fraction(self, threshold: float | torch.Tensor) -> torch.Tensor:
        """Share of the non-padding pixels that are confident."""
        return self.confident(threshold).sum() / self.valid.sum().clamp_min(1)
