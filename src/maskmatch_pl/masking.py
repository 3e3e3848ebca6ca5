"""Masked-modeling proxy task: random patch masks (MaskMatch, arXiv:2312.08631)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .targets import IGNORE_INDEX, PseudoLabels


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


def masked_view(
    images: torch.Tensor,
    patch_size: int,
    ratio: float,
    ratio_max: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MaskMatch's masked-modeling input: ``images`` with ``round(ratio x patches)`` random
    ``patch_size`` patches per image set to 0 (the mean colour after normalisation).

    With ``ratio_max > ratio`` the ratio is drawn once per call from ``U(ratio, ratio_max)``.
    """
    return apply_patch_mask(images, _visible(images, patch_size, ratio, ratio_max, generator))


def _visible(
    images: torch.Tensor, patch_size: int, ratio: float, ratio_max: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    if ratio_max is not None and ratio_max > ratio:
        ratio += (ratio_max - ratio) * torch.rand((), generator=generator).item()
    batch, _, height, width = images.shape
    return random_patch_mask(batch, height, width, patch_size, ratio, generator=generator, device=images.device)


@dataclass(frozen=True)
class PatchMasking:
    """The masked view's settings, checked once: ``ratio`` (or ``U(ratio, ratio_max)``) of the
    ``patch_size`` patches hidden, in a copy of the CutMixed ``strong`` view or of the ``weak`` one;
    the student is asked for the pseudo-labels of ``all`` its pixels (our reading of the abstract: hidden ones
    included) or of the ``visible`` ones only (a diagnostic: occlusion without inpainting). In ``space``
    ``pixel`` the hidden patches are painted the mean colour; in ``token`` (ViTs) the same patches are
    dropped from the encoder's tokens (``SegmentationNetwork.forward_token_masked``)."""

    patch_size: int = 32
    ratio: float = 0.7
    ratio_max: float | None = None
    view: Literal["strong", "weak"] = "strong"
    loss_on: Literal["all", "visible"] = "all"
    space: Literal["pixel", "token"] = "pixel"

    def __post_init__(self) -> None:
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"masking.patch_size must be a whole number of pixels >= 1, got {self.patch_size}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"masking.ratio must be in [0, 1] (the share of patches hidden), got {self.ratio}")
        if self.ratio_max is not None and not self.ratio <= self.ratio_max <= 1.0:
            raise ValueError(
                f"experimental.mask_ratio_max must be in [masking.ratio, 1] = [{self.ratio}, 1], got {self.ratio_max}"
            )
        if self.view not in ("strong", "weak"):
            raise ValueError(f"experimental.masked_view must be 'strong' or 'weak', got {self.view!r}")
        if self.loss_on not in ("all", "visible"):
            raise ValueError(f"experimental.masked_loss_on must be 'all' or 'visible', got {self.loss_on!r}")
        if self.space not in ("pixel", "token"):
            raise ValueError(f"masking.space must be 'pixel' or 'token', got {self.space!r}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """:func:`masked_view` of ``images`` with these settings."""
        return masked_view(images, self.patch_size, self.ratio, self.ratio_max, generator)

    def draw(
        self, images: torch.Tensor, targets: PseudoLabels, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, PseudoLabels]:
        """The pixel mask of the masked view of ``images`` (``B x 1 x H x W`` bool, True where visible)
        and its targets: ``targets`` themselves, or with ``loss_on='visible'`` the hidden pixels marked
        ignored (255) so that no loss reads them."""
        visible = _visible(images, self.patch_size, self.ratio, self.ratio_max, generator)
        if self.loss_on == "visible":
            hidden = ~visible[:, 0]
            targets = targets._replace(ignore_mask=targets.ignore_mask.masked_fill(hidden, IGNORE_INDEX))
        return visible, targets

    def apply(
        self, images: torch.Tensor, targets: PseudoLabels, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, PseudoLabels]:
        """The pixel-space masked view of ``images`` (:meth:`draw`'s hidden patches set to 0) and its targets."""
        visible, targets = self.draw(images, targets, generator)
        return apply_patch_mask(images, visible), targets
