"""CutMix for segmentation, as in the UniMatch reference (one box, pasted from a partner)."""

from __future__ import annotations

import math
from typing import TypeVar

import torch

from .targets import PseudoLabels

Pasteable = TypeVar("Pasteable", torch.Tensor, PseudoLabels)


def check_cutmix_prob(p: float) -> None:
    """Raise ``ValueError`` naming the knob (``views.cutmix_prob``) unless ``0 <= p <= 1``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"views.cutmix_prob must be in [0, 1], got {p}")


def cutmix_boxes(
    batch_size: int,
    height: int,
    width: int,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One random box per image, drawn as UniMatch's ``obtain_cutmix_box``.

    With probability ``p`` an image gets a box of ``U(area) * H * W`` pixels and aspect ratio
    ``U(aspect_ratio)`` placed uniformly where it fits (rejection sampling); otherwise none.

    Returns:
        ``BoolTensor[B, H, W]``, True inside the box.
    """
    boxes = torch.zeros(batch_size, height, width, dtype=torch.bool)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    for index in range(batch_size):
        if torch.rand((), generator=generator).item() >= p:
            continue
        size = uniform(*area) * height * width
        while True:
            ratio = uniform(*aspect_ratio)
            box_w, box_h = int(math.sqrt(size / ratio)), int(math.sqrt(size * ratio))
            x = int(torch.randint(0, width, (), generator=generator))
            y = int(torch.randint(0, height, (), generator=generator))
            if x + box_w <= width and y + box_h <= height:
                break
        boxes[index, y : y + box_h, x : x + box_w] = True
    return boxes.to(device)


def partner_indices(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Index of the CutMix partner of each image: the next image of the batch (a cyclic shift).

    The reference draws its partner from a second pass over the unlabeled loader (in its DDP
    setting, a second view of the same image); the maintainer reports that mixing within the
    batch performs the same (UniMatch issue #34), and it needs no second loader or teacher pass."""
    return torch.roll(torch.arange(batch_size, device=device), shifts=-1)


def paste(target: Pasteable, source: Pasteable, boxes: torch.Tensor) -> Pasteable:
    """Copy ``source`` into ``target`` inside ``boxes`` (``B x H x W``): ``B x C x H x W``
    images, ``B x H x W`` maps, or all three maps of :class:`PseudoLabels` alike."""
    if isinstance(target, PseudoLabels):
        return PseudoLabels(*(paste(t, s, boxes) for t, s in zip(target, source)))
    mask = boxes if target.dim() == 3 else boxes.unsqueeze(1)
    return torch.where(mask, source, target)


def cutmix(
    view: torch.Tensor, targets: PseudoLabels, p: float = 0.5, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, PseudoLabels]:
    """CutMix a ``B x 3 x H x W`` view with its targets: with probability ``p`` an image gets a
    box (:func:`cutmix_boxes`) filled from its partner (:func:`partner_indices`), in the view
    and in the pseudo-label, confidence and ignore maps alike."""
    batch, _, height, width = view.shape
    boxes = cutmix_boxes(batch, height, width, p, generator=generator, device=view.device)
    partner = partner_indices(batch, view.device)
    shuffled = PseudoLabels(*(t[partner] for t in targets))
    return paste(view, view[partner], boxes), paste(targets, shuffled, boxes)
