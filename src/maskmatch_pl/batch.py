"""The batch format, checked at the door.

Every batch is a ``dict``:

- labeled (train): ``image`` float ``B x 3 x H x W`` (normalised), ``mask`` integer ``B x H x W``
  with class indices ``0..C-1`` and 255 for ignored pixels; optional ``index`` (``B``, the
  position in the (cycled) sample list, for bookkeeping; the method never reads it);
- unlabeled (train): ``image`` the weak view, ``strong`` the strong view of the same crop
  (``strong2`` a second one for UniMatch), both float ``B x 3 x H x W``; optional
  ``ignore_mask`` integer ``B x H x W``, 255 on crop padding and 0 elsewhere; optional
  ``monitor_mask`` integer ``B x H x W``, the weak view's true mask, only scored against
  (pseudo-label quality), never trained on; optional ``view_scale`` float ``B``, the factor by
  which the weak view rescaled the stored image (read by ``pseudo_label_scale_reference='image'``);
- val/test: ``image`` and ``mask`` as labeled; predict: ``image``, optional ``name`` (list of
  str) and ``size`` (``B x 2`` original height, width, to crop padded batches back).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .targets import IGNORE_INDEX


def strong_keys(views: int) -> tuple[str, ...]:
    """The unlabeled batch's keys of ``views`` strong views: ``strong``, ``strong2``, ..."""
    return tuple("strong" if view == 0 else f"strong{view + 1}" for view in range(views))


class BatchFormatError(ValueError):
    """A batch does not follow the documented dict format."""


def _image(batch: Mapping[str, Any], key: str, where: str) -> torch.Tensor:
    value = batch.get(key)
    if not isinstance(value, torch.Tensor):
        raise BatchFormatError(f"{where} batch: '{key}' must be a tensor, got {type(value).__name__}")
    if value.dim() != 4 or value.shape[1] != 3 or not value.is_floating_point():
        raise BatchFormatError(
            f"{where} batch: '{key}' must be a float tensor of shape B x 3 x H x W, "
            f"got {value.dtype} of shape {tuple(value.shape)}"
        )
    return value


def _label_map(batch: Mapping[str, Any], key: str, like: torch.Tensor, where: str) -> torch.Tensor:
    value = batch.get(key)
    if not isinstance(value, torch.Tensor):
        raise BatchFormatError(f"{where} batch: '{key}' must be a tensor, got {type(value).__name__}")
    expected = (like.shape[0], *like.shape[2:])
    if value.is_floating_point() or value.dtype == torch.bool or tuple(value.shape) != expected:
        raise BatchFormatError(
            f"{where} batch: '{key}' must be an integer tensor of shape B x H x W = {expected}, "
            f"got {value.dtype} of shape {tuple(value.shape)}"
        )
    return value


def check_batch(
    batch: Any,
    where: str,
    images: Iterable[str] = ("image",),
    label_maps: Iterable[str] = (),
    num_classes: int | None = None,
    check_values: bool = False,
) -> None:
    """Raise :class:`BatchFormatError` naming the key and the problem if ``batch`` is not a dict
    with the given image and label-map keys; with ``check_values``, also check that ``mask``
    holds only class indices below ``num_classes`` or 255 (this reads the tensor: a sync)."""
    if not isinstance(batch, Mapping):
        raise BatchFormatError(f"{where} batch must be a dict with an 'image' key, got {type(batch).__name__}")
    keys = list(images)
    first = _image(batch, keys[0], where)
    for key in keys[1:]:
        if _image(batch, key, where).shape != first.shape:
            raise BatchFormatError(f"{where} batch: '{key}' and '{keys[0]}' must have the same shape")
    for key in label_maps:
        value = _label_map(batch, key, first, where)
        if check_values and key == "mask" and num_classes is not None:
            bad = value[(value < 0) | ((value >= num_classes) & (value != IGNORE_INDEX))]
            if bad.numel():
                raise BatchFormatError(
                    f"{where} batch: 'mask' holds {sorted(bad.unique().tolist())[:10]}, but values must be "
                    f"class indices 0..{num_classes - 1} or {IGNORE_INDEX} (ignore)"
                )
