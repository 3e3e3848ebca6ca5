"""Pseudo-label quality, measured against masks that training never reads.

When the unlabeled images have masks (the demo does; so do VOC and Cityscapes when they are
used as a benchmark), the teacher's pseudo-labels can be scored against them during training:
how often they are right, on all pixels and on the confident ones that reach a loss, how many
pixels of each class are confident, and whether multi-scale fusion beats one scale (the
paper's second claim, measured directly). The masks are only compared with, never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from .targets import IGNORE_INDEX


class PseudoLabelMonitor(nn.Module):
    """Accumulates pseudo-label confusion matrices against true masks between two calls of
    :meth:`compute`.

    For each named set of probabilities (by default ``pseudo``, those the student is trained
    on, fused over the teacher's scales, and ``pseudo_single_scale``, scale 1 alone), two
    confusion matrices are kept: over every valid pixel (true class known, not crop padding)
    and over the confident ones (``confidence >= threshold``). States are torchmetrics
    metrics, so they are summed across DDP processes when computed.
    """

    def __init__(self, num_classes: int, names: Sequence[str] = ("pseudo", "pseudo_single_scale")) -> None:
        super().__init__()
        self.num_classes, self.names = num_classes, list(names)
        self.matrices = nn.ModuleDict(  # keys by position: names may hold dots ("pseudo_scale_0.75")
            {
                f"{index}_{subset}": MulticlassConfusionMatrix(num_classes, validate_args=False)
                for index in range(len(self.names))
                for subset in ("all", "confident")
            }
        )

    def update(
        self,
        name: str,
        probabilities: torch.Tensor,
        target: torch.Tensor,
        threshold: float | torch.Tensor,
        ignore_mask: torch.Tensor | None = None,
    ) -> None:
        """Score ``B x C x H x W`` teacher probabilities against the ``B x H x W`` true mask
        (255 = unknown); pixels where ``ignore_mask == 255`` (crop padding) do not count.
        ``threshold``: one number, or ``C`` class-wise thresholds read at each pseudo-label."""
        confidence, pseudo_label = probabilities.max(dim=1)
        if isinstance(threshold, torch.Tensor) and threshold.dim() == 1:
            threshold = threshold[pseudo_label]
        valid = target != IGNORE_INDEX
        if ignore_mask is not None:
            valid &= ignore_mask != IGNORE_INDEX
        confident = valid & (confidence >= threshold)
        index = self.names.index(name)
        for subset, keep in (("all", valid), ("confident", confident)):
            self.matrices[f"{index}_{subset}"].update(pseudo_label[keep], target[keep])

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Metrics since the last :meth:`reset`, keyed ``<name>/<metric>``: ``acc`` and
        ``mIoU`` (all valid pixels), ``acc_confident`` and ``mIoU_confident`` (confident
        pixels only), ``confident_fraction`` and ``confident_fraction_<class>`` (share of the
        valid pixels of each true class that are confident), ``recall_confident_<class>`` (share
        of them that are confident and pseudo-labelled right), ``acc_confident_<class>`` (share of
        the confident pixels pseudo-labelled ``<class>`` that truly are). mIoU averages the
        classes present."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        metrics: dict[str, torch.Tensor] = {}
        for index, prefix in enumerate(self.names):
            if not self.matrices[f"{index}_all"].update_called:
                continue
            every = self.matrices[f"{index}_all"].compute().double()
            confident = self.matrices[f"{index}_confident"].compute().double()
            for suffix, matrix in (("", every), ("_confident", confident)):
                metrics[f"{prefix}/acc{suffix}"] = matrix.diag().sum() / matrix.sum().clamp_min(1)
                metrics[f"{prefix}/mIoU{suffix}"] = mean_iou(matrix)
            per_class = confident.sum(1) / every.sum(1).clamp_min(1)  # rows: true class
            metrics[f"{prefix}/confident_fraction"] = confident.sum() / every.sum().clamp_min(1)
            precision = confident.diag() / confident.sum(0).clamp_min(1)  # columns: pseudo-label class
            for index, name in enumerate(names):
                if every[index].sum() > 0:
                    metrics[f"{prefix}/confident_fraction_{name}"] = per_class[index]
                    metrics[f"{prefix}/recall_confident_{name}"] = confident[index, index] / every[index].sum()
                if confident[:, index].sum() > 0:
                    metrics[f"{prefix}/acc_confident_{name}"] = precision[index]
        return {key: value.float() for key, value in metrics.items()}

    @property
    def updated(self) -> bool:
        return any(matrix.update_called for matrix in self.matrices.values())

    def reset(self) -> None:
        for matrix in self.matrices.values():
            matrix.reset()


def mean_iou(confusion: torch.Tensor) -> torch.Tensor:
    """Mean IoU over the classes that occur (in truth or prediction) of a confusion matrix
    whose rows are true classes and columns predictions."""
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return (intersection[present] / union[present]).mean() if present.any() else union.new_zeros(())
