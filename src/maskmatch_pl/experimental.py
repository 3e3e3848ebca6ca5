"""Options kept to reproduce measured results, not recommended: each was a diagnostic or a variant
whose measured effect was zero or negative (``benchmarks/RESULTS.md``, "The sweep").

``MaskMatchModule(experimental=Experimental(...))``, or ``model.experimental:`` in a config. The
defaults are the method's behaviour; setting any of them changes what the step computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .multiscale import Fusion
from .teacher import ScaleReference


@dataclass(frozen=True)
class Experimental:
    """Research knobs of the step.

    Args:
        pseudo_label_fusion: mean (softmax averaging, our reading of the abstract's ensembling) or geometric
            (softmax of the mean log-probability).
        pseudo_label_scale_reference: view (scales relative to the weak view, the reference) or image (its stored size).
        mask_ratio_max: if set, the masked view's ratio is drawn per step from U(masking.ratio, mask_ratio_max).
        masked_view: strong (mask a copy of the CutMixed strong view, our reading) or weak.
        masked_loss_on: all (our reading of the abstract: hidden pixels predicted from context) or visible
            (occlusion only).
        masked_norm: batch (the masked view's own BatchNorm statistics) or running (the running ones).
        masked_rampup_steps: the masked weight alone grows linearly from 0 over this many optimiser steps.
    """

    pseudo_label_fusion: Fusion = "mean"
    pseudo_label_scale_reference: ScaleReference = "view"
    mask_ratio_max: float | None = None
    masked_view: Literal["strong", "weak"] = "strong"
    masked_loss_on: Literal["all", "visible"] = "all"
    masked_norm: Literal["batch", "running"] = "batch"
    masked_rampup_steps: int = 0
