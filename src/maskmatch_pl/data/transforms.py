"""Weak and strong views as the UniMatch reference, built with albumentations."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations calls home on import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def weak_transform(crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0)) -> A.Compose:
    """Random rescale by ``U(scale_range)``, pad (image 0, mask 255) and random crop to
    ``crop_size``, horizontal flip p=0.5. Its outputs carry ``applied_transforms``, from which
    :func:`view_scale` reads the rescale factor."""
    low, high = scale_range
    return A.Compose(
        [
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
            A.PadIfNeeded(
                crop_size, crop_size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=255
            ),
            A.RandomCrop(crop_size, crop_size),
            A.HorizontalFlip(p=0.5),
        ],
        save_applied_params=True,
    )


def view_scale(out: dict, image_shape: tuple[int, ...]) -> float:
    """The factor by which :func:`weak_transform` resized the image into the view ``out`` (its
    output): the rescaled height over ``image_shape``'s height, before padding and cropping."""
    for name, params in out["applied_transforms"]:
        if name == "PadIfNeeded":  # the shape it received is the rescaled image's
            return params["shape"][0] / image_shape[0]
    raise KeyError("the weak transform's output has no PadIfNeeded step to read the rescaled size from")


def strong_transform() -> A.Compose:
    """ColorJitter(0.5, 0.5, 0.5, 0.25) p=0.8, grayscale p=0.2, Gaussian blur sigma U(0.1, 2)
    p=0.5, applied to the weak crop (CutMix happens in the training step)."""
    return A.Compose(
        [
            A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25, p=0.8),
            A.ToGray(num_output_channels=3, p=0.2),
            A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=0.5),
        ]
    )


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB to a normalised float ``3 x H x W`` tensor (ImageNet mean/std)."""
    normalised = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def denormalise(image: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: ``3 x H x W`` tensor to ``H x W x 3`` uint8."""
    array = image.detach().float().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (array.clip(0, 1) * 255).round().astype(np.uint8)
