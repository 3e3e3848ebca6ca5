"""Colour palettes for class maps: the VOC colour map, Cityscapes' colours, and colouring a mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

Palette = Sequence[tuple[int, int, int]]

CITYSCAPES_PALETTE = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (bit-interleaved), entry 255 is the ignore colour."""
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def full_palette(palette: Palette) -> list[tuple[int, int, int]]:
    """``palette`` completed to 256 entries with the VOC colour map: what :func:`colorize` draws."""
    return [tuple(colour) for colour in (list(palette) + voc_palette(256)[len(palette) :])[:256]]


def ignore_colour(palette: Palette) -> tuple[int, int, int]:
    """The colour of the ignore index 255: the palette's own entry 255 if it has one, else the
    VOC colour map's (224, 224, 192), a pale beige."""
    return full_palette(palette)[255]


def colorize(mask: np.ndarray, palette: Palette) -> Image.Image:
    """A class-index mask as a palette (mode ``P``) image; 255 gets :func:`ignore_colour`."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette([value for colour in full_palette(palette) for value in colour])
    return image


def colour_map(mask: np.ndarray | torch.Tensor, palette: Palette) -> np.ndarray:
    """``H x W`` class indices (255 = ignore; an array or a tensor) as ``H x W x 3`` uint8 colours."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(colorize(mask, palette).convert("RGB"))
