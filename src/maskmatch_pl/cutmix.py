"""CutMix for segmentation, as in the UniMatch reference (one box, pasted from a partner)."""

from __future__ import annotations

import math

import torch


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
    """Index of the CutMix partner of each image: the next image of the batch (a cyclic shift)."""
    return torch.roll(torch.arange(batch_size, device=device), shifts=-1)


def paste(target: torch.Tensor, source: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Copy ``source`` into ``target`` inside ``boxes`` (``B x H x W``); works for ``B x H x W``
    maps and ``B x C x H x W`` images alike."""
    mask = boxes if target.dim() == 3 else boxes.unsqueeze(1)
    return torch.where(mask, source, target)
