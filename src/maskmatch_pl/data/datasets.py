"""Datasets that read samples and produce the documented batch dicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .sources import Sample
from .transforms import strong_transform, to_tensor, weak_transform

IGNORE_INDEX = 255


class DataFileError(ValueError):
    """An image or mask file cannot be used; the message names the file and the problem."""


class SampleReader:
    """Reads images (RGB uint8) and masks (class indices), and checks them.

    ``mask_mapping`` maps stored mask values to classes (e.g. ``{255: 1}`` for 0/255 binary
    masks); ``binary`` maps every non-zero value to 1. Afterwards every mask value must be a
    class index below ``num_classes`` or 255 (ignore).
    """

    def __init__(self, num_classes: int, mask_mapping: dict[int, int] | None = None, binary: bool = False) -> None:
        self.num_classes = num_classes
        self.lookup = np.arange(256, dtype=np.uint8)
        if binary:
            self.lookup[1:] = 1
        for source, target in (mask_mapping or {}).items():
            if not (0 <= int(source) < 256 and 0 <= int(target) < 256):
                raise ValueError(f"mask_mapping entries must map 0..255 to 0..255, got {source}: {target}")
            self.lookup[int(source)] = int(target)

    def image(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise DataFileError(f"{path}: cannot read the image ({error})") from error

    def mask(self, path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
        try:
            with Image.open(path) as image:
                if image.mode not in ("P", "L", "I", "I;16", "1"):
                    raise DataFileError(
                        f"{path}: a mask must be a single-channel PNG of class indices (mode P or L), "
                        f"got mode {image.mode}"
                    )
                mask = np.asarray(image)
        except (OSError, UnidentifiedImageError) as error:
            raise DataFileError(f"{path}: cannot read the mask ({error})") from error
        if mask.shape != image_shape[:2]:
            raise DataFileError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image_shape[1]}x{image_shape[0]} (width x height)"
            )
        if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
            raise DataFileError(f"{path}: mask values must lie in 0..255")
        mask = self.lookup[mask.astype(np.uint8)]
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise DataFileError(
                f"{path}: mask values {bad[:10].tolist()} are neither a class (0..{self.num_classes - 1}) nor "
                f"{IGNORE_INDEX} (ignore); for 0/255 binary masks set `binary: true` or `mask_mapping: {{255: 1}}`"
            )
        return mask

    def image_size(self, path: Path) -> tuple[int, int]:
        """``(height, width)`` from the file header, without decoding the pixels."""
        try:
            with Image.open(path) as image:
                return image.height, image.width
        except (OSError, UnidentifiedImageError) as error:
            raise DataFileError(f"{path}: cannot read the image ({error})") from error

    def verify(self, sample: Sample) -> None:
        """Check a sample up front: the image header is readable and, if it has a mask, the
        mask has the image's size and only class indices or 255."""
        size = self.image_size(sample.image)
        if sample.mask is not None:
            self.mask(sample.mask, size)

    def pair(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = self.image(sample.image)
        if sample.mask is None:
            raise DataFileError(f"{sample.image}: this sample needs a mask and has none")
        return image, self.mask(sample.mask, image.shape)


class _SeededAugmentation(Dataset):
    """Augmentations seeded per sample from ``(seed, epoch, index)``: the same views for any
    number of workers, and after a resume. ``epoch`` lives in shared memory so that
    persistent workers see :meth:`set_epoch`."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def _seed_for(self, index: int, *transforms: Any) -> None:
        seed = hash((self.seed, int(self._epoch[0]), index)) % (2**32)
        for offset, transform in enumerate(transforms):
            transform.set_random_seed(seed + offset)


class LabeledDataset(_SeededAugmentation):
    """Weak view of labeled samples: ``{"image", "mask"}``; cycled to ``length`` samples."""

    def __init__(
        self,
        samples: Sequence[Sample],
        reader: SampleReader,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.samples, self.reader = list(samples), reader
        self.length = max(length or 0, len(self.samples))
        self.weak = weak_transform(crop_size, scale_range)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.reader.pair(self.samples[index % len(self.samples)])
        self._seed_for(index, self.weak)
        out = self.weak(image=image, mask=mask)
        return {
            "image": to_tensor(out["image"]),
            "mask": torch.from_numpy(out["mask"].astype(np.int64)),
            "index": torch.tensor(index),
        }


class UnlabeledDataset(_SeededAugmentation):
    """Weak and strong views of unlabeled images (no mask is read):
    ``{"image", "strong"[, "strong2"], "ignore_mask"}``, ignore_mask 255 on crop padding."""

    def __init__(
        self,
        samples: Sequence[Sample],
        reader: SampleReader,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        strong_views: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.samples, self.reader, self.strong_views = list(samples), reader, strong_views
        self.weak, self.strong = weak_transform(crop_size, scale_range), strong_transform()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.reader.image(self.samples[index].image)
        self._seed_for(index, self.weak, self.strong)
        out = self.weak(image=image, mask=np.zeros(image.shape[:2], dtype=np.uint8))
        item = {
            "image": to_tensor(out["image"]),
            "ignore_mask": torch.from_numpy(out["mask"].astype(np.int64)),
            "index": torch.tensor(index),
        }
        for view in range(self.strong_views):
            item["strong" if view == 0 else f"strong{view + 1}"] = to_tensor(self.strong(image=out["image"])["image"])
        return item


class EvalDataset(Dataset):
    """Whole images for validation/test (``{"image", "mask", "name"}``) or prediction
    (``{"image", "name", "size"}`` when ``with_masks`` is False)."""

    def __init__(self, samples: Sequence[Sample], reader: SampleReader, with_masks: bool = True) -> None:
        self.samples, self.reader, self.with_masks = list(samples), reader, with_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        if self.with_masks:
            image, mask = self.reader.pair(sample)
            item: dict[str, Any] = {"mask": torch.from_numpy(mask.astype(np.int64))}
        else:
            image, item = self.reader.image(sample.image), {}
        item.update(image=to_tensor(image), name=str(sample.image), size=torch.tensor(image.shape[:2]))
        return item


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate whole images of different sizes: pad images with 0 and masks with 255 on the
    bottom/right to the largest size in the batch (``size`` keeps the originals)."""
    height = max(item["image"].shape[-2] for item in items)
    width = max(item["image"].shape[-1] for item in items)
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ("image", "mask"):
            fill = 0.0 if key == "image" else IGNORE_INDEX
            values = [
                torch.nn.functional.pad(v, (0, width - v.shape[-1], 0, height - v.shape[-2]), value=fill)
                for v in values
            ]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
