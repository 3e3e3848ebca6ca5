"""Scores for locality, next to mIoU: boundary IoU and small-object IoU over a whole set.

MaskMatch's claim (arXiv:2312.08631, its abstract) is about "the local regions": boundaries and small
things, which mIoU weighs by their (small) pixel count. Two scores look at them alone, each
summed over the whole set like mIoU (intersections and unions added over images, then divided;
NaN for a class with no union, left out of the mean):

- **boundary IoU** (the trimap IoU of Kohli et al., CVPR 2008, used for DeepLab's boundary
  evaluation): the per-class IoU over the pixels within ``boundary_width`` px (Chebyshev
  distance) of a class edge of the ground truth, i.e. whose ``(2w+1) x (2w+1)`` window holds a
  labeled pixel of another class. Ignored pixels (255) are never scored and make no edge.
- **small-object IoU**: per class, over the ground-truth connected components of that class
  (8-connected) smaller than ``small_object_share`` of the image's pixels: intersection = the
  component pixels predicted as the class; union = the component pixels plus the pixels
  predicted as the class within ``boundary_width`` px of such a component (false positives near
  the small thing count, the rest of the image does not).

Component labelling is scipy's (``scipy.ndimage.label``); it runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchmetrics import Metric

from .evaluation import iou_from_confusion

IGNORE_INDEX = 255


def boundary_band(target: torch.Tensor, width: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Bool ``B x H x W``: the labeled pixels of ``target`` (``B x H x W`` long class indices)
    whose ``(2 width + 1)``-square window holds a labeled pixel of another class."""
    if width < 1:
        raise ValueError(f"boundary_width must be >= 1, got {width}")
    valid = target != ignore_index
    classes_near = torch.zeros(target.shape, dtype=torch.int32, device=target.device)
    for value in target[valid].unique().tolist():
        present = (target == value).float().unsqueeze(1)
        classes_near += F.max_pool2d(present, 2 * width + 1, stride=1, padding=width)[:, 0].int()
    return valid & (classes_near >= 2)


def small_object_counts(
    prediction: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    share: float,
    margin: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ``(intersection, union)`` pixel counts (``int64 [num_classes]``) of the small
    objects of one image (``H x W`` class maps; the module docstring has the definition)."""
    intersection = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    valid = target != ignore_index
    max_area = share * target.size
    connectivity = np.ones((3, 3), dtype=bool)
    for value in np.unique(target[valid]):
        components, count = ndimage.label(target == value, structure=connectivity)
        areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
        small_ids = np.flatnonzero(areas < max_area) + 1
        if small_ids.size == 0:
            continue
        small = np.isin(components, small_ids)
        near = ndimage.binary_dilation(small, structure=connectivity, iterations=margin)
        predicted = (prediction == value) & valid
        intersection[value] += int((small & predicted).sum())
        union[value] += int((small | (predicted & near)).sum())
    return intersection, union


def check_locality_options(boundary_width: int, small_object_share: float) -> None:
    """Raise ``ValueError`` naming the knob (``evaluation.*``) when a locality option is out of range."""
    if boundary_width < 1:
        raise ValueError(f"evaluation.boundary_width must be >= 1 pixel, got {boundary_width}")
    if not 0 < small_object_share <= 1:
        raise ValueError(f"evaluation.small_object_share must be in (0, 1], got {small_object_share}")


class LocalityScores(Metric):
    """Boundary IoU and small-object IoU of a set (module docstring), synced under DDP.

    Args:
        num_classes: classes ``0 .. num_classes - 1``; ``ignore_index`` (255) is never scored.
        boundary_width: the band's half-width in pixels, and the margin around small objects (>= 1).
        small_object_share: a component is small below this share of its image's pixels (in (0, 1]).

    ``update(prediction, target)`` takes ``B x H x W`` class maps of one image size; ``compute()``
    returns ``{"boundary": C, "small_object": C}`` per-class IoU (float64, NaN without a union).
    Raises ``ValueError`` for a width below 1 or a share outside (0, 1].
    """

    full_state_update = False

    def __init__(
        self, num_classes: int, boundary_width: int = 3, small_object_share: float = 0.01, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        check_locality_options(boundary_width, small_object_share)
        self.num_classes, self.boundary_width, self.small_object_share = num_classes, boundary_width, small_object_share
        self.add_state("boundary_confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), "sum")
        self.add_state("small_intersection", torch.zeros(num_classes, dtype=torch.long), "sum")
        self.add_state("small_union", torch.zeros(num_classes, dtype=torch.long), "sum")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        band = boundary_band(target, self.boundary_width)
        pairs = target[band] * self.num_classes + prediction[band]
        self.boundary_confusion += torch.bincount(pairs, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        for predicted, truth in zip(prediction.cpu().numpy(), target.cpu().numpy()):
            intersection, union = small_object_counts(
                predicted, truth, self.num_classes, self.small_object_share, self.boundary_width
            )
            self.small_intersection += torch.from_numpy(intersection).to(self.small_intersection.device)
            self.small_union += torch.from_numpy(union).to(self.small_union.device)

    def compute(self) -> dict[str, torch.Tensor]:
        small = self.small_intersection.double() / self.small_union.clamp(min=1).double()
        nan = torch.full_like(small, float("nan"))
        return {
            "boundary": iou_from_confusion(self.boundary_confusion),
            "small_object": torch.where(self.small_union > 0, small, nan),
        }
