"""Masked-modeling proxy task: random patch masks (MaskMatch, arXiv:2312.08631)."""

from __future__ import annotations

import math

import torch


def random_patch_mask(
    batch_size: int,
    height: int,
    width: int,
    patch_size: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw a random patch mask for each image of a batch.

    The image is cut into a ``ceil(H/p) x ceil(W/p)`` grid of ``patch_size`` patches (the
    last row/column may be cut by the border) and exactly ``round(ratio * n_patches)``
    patches are hidden in every image, chosen uniformly without replacement.

    Returns:
        ``BoolTensor[B, 1, H, W]``, True where the pixel stays visible.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    grid_h, grid_w = math.ceil(height / patch_size), math.ceil(width / patch_size)
    n_patches = grid_h * grid_w
    n_hidden = round(ratio * n_patches)
    gen_device = generator.device if generator is not None else device
    scores = torch.rand(batch_size, n_patches, generator=generator, device=gen_device)
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each patch's score, 0..n-1
    visible = (rank >= n_hidden).view(batch_size, 1, grid_h, grid_w).to(device)
    visible = visible.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return visible[:, :, :height, :width]


def apply_patch_mask(images: torch.Tensor, visible: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Set hidden pixels of normalised ``B x C x H x W`` images to ``fill`` (0 = mean colour)."""
    return images.masked_fill(~visible, fill)
