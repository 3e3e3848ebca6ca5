"""Evaluation protocols: whole image, centre crop, and sliding window (with optional TTA)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .multiscale import Network, multiscale_probabilities

EvalMode = Literal["original", "center_crop", "sliding_window"]


def center_crop(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size x size`` crop of the last two dims (smaller dims are kept whole)."""
    height, width = tensor.shape[-2:]
    top, left = max(height - size, 0) // 2, max(width - size, 0) // 2
    return tensor[..., top : top + size, left : left + size]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` px every ``stride`` px along ``length`` px, the
    last one flush with the border; a single window at 0 when ``length <= window``."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def sliding_window_probabilities(
    model: Network,
    images: torch.Tensor,
    window: int,
    stride: int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Softmax probabilities summed over overlapping windows (stride defaults to 2/3 of the
    window, the reference protocol for Cityscapes), normalised by the number of windows
    covering each pixel. Returns ``B x C x H x W`` float32."""
    stride = stride or int(window * 2 / 3)
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            crop = images[..., top : top + window, left : left + window]
            probs = multiscale_probabilities(model, crop, scales, flip)
            if total is None:
                total = images.new_zeros(images.shape[0], probs.shape[1], height, width, dtype=torch.float32)
            total[..., top : top + window, left : left + window] += probs
            count[..., top : top + window, left : left + window] += 1
    assert total is not None
    return total / count


def predict_probabilities(
    model: Network,
    images: torch.Tensor,
    mode: EvalMode = "original",
    crop_size: int = 320,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Probabilities for ``images`` under an evaluation protocol (``center_crop`` returns the
    crop's probabilities: crop the labels with :func:`center_crop` too)."""
    if mode == "sliding_window":
        return sliding_window_probabilities(model, images, crop_size, scales=scales, flip=flip)
    if mode == "center_crop":
        images = center_crop(images, crop_size)
    elif mode != "original":
        raise ValueError(f"eval_mode must be 'original', 'center_crop' or 'sliding_window', got {mode!r}")
    return multiscale_probabilities(model, images, scales, flip)


@dataclass(frozen=True)
class EvalProtocol:
    """An evaluation protocol, checked once: ``mode``, window / crop ``crop_size``, test-time
    ``scales`` and ``flip``."""

    mode: EvalMode = "original"
    crop_size: int = 320
    scales: Sequence[float] = field(default=(1.0,))
    flip: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("original", "center_crop", "sliding_window"):
            raise ValueError(f"eval_mode must be 'original', 'center_crop' or 'sliding_window', got {self.mode!r}")
        if self.crop_size < 1:
            raise ValueError(f"eval_crop_size must be >= 1, got {self.crop_size}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"eval_scales must be positive numbers, got {list(self.scales)}")

    def probabilities(self, model: Network, images: torch.Tensor, whole: bool = False) -> torch.Tensor:
        """:func:`predict_probabilities` under this protocol; ``whole`` evaluates a centre-crop
        protocol on the whole image (prediction keeps the input's size)."""
        mode = "original" if whole and self.mode == "center_crop" else self.mode
        return predict_probabilities(model, images, mode, self.crop_size, self.scales, self.flip)

    def region(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of an image or mask that :meth:`probabilities` covers (the centre crop, or all)."""
        return center_crop(tensor, self.crop_size) if self.mode == "center_crop" else tensor

    def __str__(self) -> str:
        return (
            f"eval_mode={self.mode}, crop {self.crop_size}, scales {list(self.scales)}, flip {self.flip}; "
            f"IoU = sum of intersections / sum of unions over the whole set, per image at its own size; mIoU = mean "
            f"over the classes with a union"
        )


def size_groups(batch: dict[str, Any]) -> Iterator[tuple[list[int], int, int]]:
    """The images of a batch grouped by their own size, before padding: ``(indices, height,
    width)`` per group. A batch collated by :func:`~maskmatch_pl.data.datasets.pad_collate` says
    each image's size in ``size`` (``B x 2``); without it every image is taken to be whole.

    Each group is then predicted at its own size, so that padding never reaches what the
    network sees and a prediction does not depend on the batch it came in."""
    images, sizes = batch["image"], batch.get("size")
    if sizes is None:
        yield list(range(len(images))), images.shape[-2], images.shape[-1]
        return
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (height, width) in enumerate(sizes.tolist()):
        groups.setdefault((int(height), int(width)), []).append(index)
    for (height, width), indices in groups.items():
        yield indices, height, width


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``C`` (float64) from a ``C x C`` confusion matrix summed over a whole set:
    intersection / union with intersection = the diagonal and union = row sum + column sum -
    diagonal. A class with union 0 (neither in the truth nor in any prediction of the set) has
    no IoU: NaN, left out of the mean (UniMatch's ``eval`` counts it as 0; here it carries no
    evidence either way)."""
    confusion = confusion.double()
    intersection = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(iou: torch.Tensor) -> torch.Tensor:
    """The mean over the classes that have an IoU (NaN ignored): the mIoU of the set."""
    return iou.nanmean()
