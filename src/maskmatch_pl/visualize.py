"""Panels of image / ground truth / prediction / teacher pseudo-label for loggers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data.transforms import denormalise
from .prediction import colorize


def colour_map(mask: torch.Tensor, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """``H x W`` class indices (255 = ignore) as ``H x W x 3`` uint8 colours."""
    return np.asarray(colorize(mask.cpu().numpy(), palette).convert("RGB"))


def panel(images: torch.Tensor, rows: Sequence[torch.Tensor], palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """One row per image: the (denormalised) image, then each ``B x H x W`` label map of
    ``rows`` in colour. Returns ``uint8 [B*H, (1+len(rows))*W, 3]``."""
    lines = []
    for index, image in enumerate(images):
        tiles = [denormalise(image)] + [colour_map(row[index], palette) for row in rows]
        lines.append(np.concatenate(tiles, axis=1))
    return np.concatenate(lines, axis=0)
