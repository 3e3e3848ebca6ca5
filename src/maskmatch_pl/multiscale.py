"""Multi-scale ensembling of teacher predictions into pseudo-labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Network = Callable[[torch.Tensor], torch.Tensor]
Fusion = Literal["mean", "geometric"]


def check_fusion(rule: str) -> None:
    """Refuse a fusion rule other than ``mean`` or ``geometric``, naming the option."""
    if rule not in ("mean", "geometric"):
        raise ValueError(f"pseudo_label_fusion must be 'mean' or 'geometric', got {rule!r}")


def _rescaled(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``images`` resized bilinearly by ``scale``; a side that would round down to 0 pixels
    keeps 1 (a 1-pixel-tall image at scale 0.75)."""
    height, width = images.shape[-2:]
    if int(height * scale) >= 1 and int(width * scale) >= 1:
        return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def scale_probabilities(
    model: Network, images: torch.Tensor, scales: Sequence[float], flip: bool = False
) -> list[torch.Tensor]:
    """Float32 softmax probabilities at each input scale, resized back to the input.

    For each scale the images are resized bilinearly, the logits are resized back to the
    input resolution, and their float32 softmax is taken (averaged with that of the
    horizontally flipped input when ``flip``).

    Args:
        model: maps ``B x 3 x h x w`` images to ``B x C x h x w`` logits for any ``h, w``.
        images: ``B x 3 x H x W``.
        scales: input scale factors, e.g. ``(0.75, 1.0, 1.25)``.
        flip: also average the prediction of the horizontally flipped input.

    Returns:
        one ``B x C x H x W`` tensor per scale, in the order of ``scales``.
    """
    if len(scales) == 0:
        raise ValueError("scales must name at least one scale")
    size = images.shape[-2:]
    per_scale = []
    for scale in scales:
        scaled = images
        if scale != 1.0:
            scaled = _rescaled(images, scale)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        total = None
        for index, view in enumerate(views):
            logits = model(view)
            if index == 1:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
        per_scale.append(total / len(views))
    return per_scale


def image_scale_probabilities(
    model: Network, images: torch.Tensor, scales: Sequence[float], view_scale: torch.Tensor, flip: bool = False
) -> list[torch.Tensor]:
    """:func:`scale_probabilities` with the scales taken relative to each image's stored size
    rather than to the view: view ``i``, which the data pipeline rescaled by ``view_scale[i]``,
    is predicted at ``scale / view_scale[i]`` for each scale, so that scale 1 sees the objects at
    their stored size whatever the view's random rescale was. Each view has factors of its own,
    so the views are predicted one at a time (use it with eval-mode networks, whose output does
    not depend on the batch).

    Args:
        model, images, scales, flip: as :func:`scale_probabilities`.
        view_scale: ``B`` positive factors, one per view.

    Returns:
        one ``B x C x H x W`` tensor per scale, in the order of ``scales``.
    """
    factors = view_scale.tolist()  # one read of the factors (a device sync): the sizes are Python numbers
    if view_scale.shape != images.shape[:1] or min(factors, default=0) <= 0:
        raise ValueError(f"view_scale must hold one positive factor per image ({images.shape[0]}), got {factors}")
    rows = [
        scale_probabilities(model, image[None], [scale / factor for scale in scales], flip)
        for image, factor in zip(images, factors)
    ]
    return [torch.cat(per_image) for per_image in zip(*rows)]


def multiscale_probabilities(
    model: Network, images: torch.Tensor, scales: Sequence[float], flip: bool = False
) -> torch.Tensor:
    """Softmax probabilities averaged over input scales (and horizontal flips): the mean of
    :func:`scale_probabilities`, ``B x C x H x W`` float32 at the input resolution."""
    return fuse_probabilities(scale_probabilities(model, images, scales, flip), "mean")


def fuse_probabilities(per_scale: Sequence[torch.Tensor], rule: Fusion = "mean") -> torch.Tensor:
    """One float32 ``B x C x H x W`` probability map from several (one per scale; flips are
    averaged within their scale first, by :func:`scale_probabilities`).

    ``"mean"``: the arithmetic mean of the probabilities (softmax averaging, our reading of the abstract's ensembling).
    ``"geometric"``: the normalised geometric mean, ``softmax(mean(log p))``, a product of
    experts. Where the scales agree on a class it keeps their confidence; the arithmetic mean
    lowers it whenever any one scale is less sure, so at the same threshold fewer pixels
    become targets (benchmarks/RESULTS.md, "Multi-scale pseudo-labels"). Like any product of
    experts it lets one scale veto a class: a class that one scale gives (almost) no
    probability loses even if the others prefer it, and the winner can then be confident
    where the scales disagree. Probabilities are floored at 1e-12 before the log.
    """
    if len(per_scale) == 0:
        raise ValueError("fuse_probabilities needs at least one probability map")
    check_fusion(rule)
    maps = torch.stack([p.float() for p in per_scale])
    if rule == "mean":
        return maps.mean(0)
    return maps.clamp_min(1e-12).log().mean(0).softmax(dim=1)  # geometric


def pseudo_labels(probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence (max probability) and pseudo-label (arg max) of ``B x C x H x W`` probabilities."""
    confidence, pseudo_label = probabilities.max(dim=1)
    return confidence, pseudo_label
