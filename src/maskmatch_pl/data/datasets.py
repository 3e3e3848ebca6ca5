"""Datasets that read samples and produce the documented batch dicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..batch import strong_keys
from ..targets import IGNORE_INDEX
from .sources import Sample
from .transforms import strong_transform, to_tensor, view_scale, weak_transform


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

    def verify(self, sample: Sample, decode: bool = True) -> np.ndarray | None:
        """Check a sample up front: the image decodes (``decode``; else its header is readable)
        and, if it has a mask, the mask has the image's size and only class indices or 255.
        Returns the mask's values (after mapping), or None without a mask."""
        size = self.image(sample.image).shape if decode else self.image_size(sample.image)
        return np.unique(self.mask(sample.mask, size)) if sample.mask is not None else None

    def pair(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = self.image(sample.image)
        if sample.mask is None:
            raise DataFileError(f"{sample.image}: this sample needs a mask and has none")
        return image, self.mask(sample.mask, image.shape)


def verify_samples(reader: SampleReader, samples: Sequence[Sample], decode: bool, what: str) -> set[int]:
    """:meth:`SampleReader.verify` every sample (a progress bar for large sets); the union of
    their mask values."""
    from tqdm.auto import tqdm

    values: set[int] = set()
    for sample in tqdm(samples, desc=f"checking {what}", disable=len(samples) < 2000, leave=False):
        found = reader.verify(sample, decode)
        if found is not None:
            values.update(found.tolist())
    return values


def check_labeled_values(values: set[int], num_classes: int, class_names: Sequence[str], source: Any) -> None:
    """Refuse labeled masks with nothing to learn (all 255, or only 0 and 255: binary masks read
    as background + ignore); warn about classes that no labeled mask holds."""
    if values <= {IGNORE_INDEX}:
        raise DataFileError(f"{source}: every labeled mask is all {IGNORE_INDEX} (ignore): no pixel to learn from")
    if values == {0, IGNORE_INDEX}:
        raise DataFileError(
            f"{source}: the labeled masks hold only 0 and 255, and 255 means 'ignore': the foreground would "
            f"never be learned. For binary masks (255 = foreground) set `data.binary: true` or "
            f"`data.mask_mapping: {{255: 1}}`"
        )
    absent = [name for index, name in enumerate(class_names) if index not in values]
    if absent:
        rank_zero_warn(
            f"{source}: classes {absent} occur in no labeled mask (num_classes is {num_classes}); the model "
            f"can only learn them from pseudo-labels, if at all. Is num_classes right?"
        )


class _SeededAugmentation(Dataset):
    """Augmentations seeded per sample from ``(seed, stream, epoch, index)``: the same views for
    any number of workers, and after a resume. ``epoch`` lives in shared memory so that
    persistent workers see :meth:`set_epoch`. ``stream`` tells the labeled and the unlabeled
    set apart: their samplers walk the same positions, and without it the k-th labeled and
    unlabeled image of a batch would get the same scale, crop and flip."""

    stream = 0

    def __init__(
        self,
        samples: Sequence[Sample],
        reader: SampleReader,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
    ) -> None:
        self.samples, self.reader, self.seed = list(samples), reader, seed
        self.weak = weak_transform(crop_size, scale_range)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def _seed_for(self, index: int, *transforms: Any) -> None:
        seed = hash((self.seed, self.stream, int(self._epoch[0]), index)) % (2**32)
        for offset, transform in enumerate(transforms):
            transform.set_random_seed(seed + offset)


class LabeledDataset(_SeededAugmentation):
    """Weak view of labeled samples: ``{"image", "mask"}``; cycled to ``length`` samples.
    Takes the arguments of :class:`_SeededAugmentation` (samples, reader, crop_size,
    scale_range, seed) and ``length``."""

    def __init__(self, *args: Any, length: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.length = max(length or 0, len(self.samples))

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
    ``{"image", "strong"[, "strong2"], "ignore_mask", "view_scale"}``, ignore_mask 255 on crop
    padding, view_scale the factor by which the weak view rescaled the stored image.

    With ``monitor_masks`` the true mask is read too and cropped with the weak view into
    ``monitor_mask``, for measuring pseudo-label quality only; the views are the same either way.
    Takes the arguments of :class:`_SeededAugmentation` (samples, reader, crop_size,
    scale_range, seed), ``strong_views`` and ``monitor_masks``.
    """

    stream = 1

    def __init__(self, *args: Any, strong_views: int = 1, monitor_masks: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strong, self.strong_views, self.monitor_masks = strong_transform(), strong_views, monitor_masks
        if monitor_masks and (missing := next((s for s in self.samples if s.mask is None), None)):
            raise DataFileError(
                f"{missing.image}: unlabeled_masks_for_monitoring needs a mask for every unlabeled image "
                f"(a split file with '<image> <mask>' lines, or an images/ + masks/ folder); this one has none"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        self._seed_for(index, self.weak, self.strong)
        if self.monitor_masks:  # the true mask rides along the same geometry; nothing trains on it
            image, truth = self.reader.pair(sample)
            out = self.weak(image=image, masks=[np.zeros(image.shape[:2], dtype=np.uint8), truth])
            padding, truth = out["masks"]
        else:
            image = self.reader.image(sample.image)
            out = self.weak(image=image, mask=np.zeros(image.shape[:2], dtype=np.uint8))
            padding = out["mask"]
        item = {
            "image": to_tensor(out["image"]),
            "ignore_mask": torch.from_numpy(padding.astype(np.int64)),
            "view_scale": torch.tensor(view_scale(out, image.shape), dtype=torch.float32),
            "index": torch.tensor(index),
        }
        if self.monitor_masks:
            item["monitor_mask"] = torch.from_numpy(truth.astype(np.int64))
        for key in strong_keys(self.strong_views):
            item[key] = to_tensor(self.strong(image=out["image"])["image"])
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
