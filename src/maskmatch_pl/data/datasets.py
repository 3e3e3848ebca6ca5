"""Datasets that read samples and produce the documented batch dicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..batch import strong_keys
from ..targets import IGNORE_INDEX
from .sources import Sample
from .transforms import strong_transform, to_tensor, view_scale, weak_transform


class DataFileError(ValueError):
    """An image or mask file cannot be used; the message names the file and the problem."""


LOSSY_FORMATS = ("JPEG", "MPO")  # Pillow's format names of lossy files (WebP: see _lossy)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # one channel of 16 bits (Pillow reads "I" for some)
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF Orientation values that swap width and height
EXIF_ORIENTATION = 0x0112


def _webp_bitstream(path: Path) -> bytes:
    """The fourcc of a WebP file's first image chunk (``VP8 `` lossy, ``VP8L`` lossless), found by
    walking the RIFF chunks (``VP8X``, ``ICCP``, ``ANIM``, ``ALPH``, ... may come first)."""
    with open(path, "rb") as file:
        data = file.read()
    offset = 12  # after "RIFF" <size> "WEBP"
    while offset + 8 <= len(data):
        fourcc, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc
        if fourcc == b"ANMF":  # an animation frame wraps its image chunks after a 16-byte header
            offset += 8 + 16
            continue
        offset += 8 + size + (size & 1)
    return b""


def _lossy(image: Image.Image, path: Path) -> bool:
    """JPEG, a TIFF compressed with JPEG (or WebP), or a WebP whose bitstream is not lossless
    (Pillow does not say which a WebP is)."""
    if image.format == "WEBP":
        return _webp_bitstream(path) != b"VP8L"
    if image.format == "TIFF":
        return str(image.info.get("compression", "")).lower() in ("jpeg", "tiff_jpeg", "webp")
    return image.format in LOSSY_FORMATS


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def _as_viewers_show(image: Image.Image) -> Image.Image:
    """The pixels as image viewers show them: turned by the file's EXIF Orientation tag, if any
    (a phone's portrait photo is stored sideways with Orientation 6)."""
    return ImageOps.exif_transpose(image) if _orientation(image) != 1 else image


LOW_RANGE_BITS = 12  # a 16-bit image whose values all fit in this many bits is most likely stored that way


def _scale_sixteen_bit(values: np.ndarray, path: Path, bits: int | None, kind: str) -> np.ndarray:
    """uint8 of 16-bit ``values`` (any shape) scaled from ``0..2^bits - 1`` (``bits`` None: 16, ``v / 257``),
    rounded; values above the range are refused, and with ``bits`` None an image whose values fit in 12
    bits is warned about once per process (read as 16-bit data it keeps 17 levels or fewer)."""
    values = values.astype(np.int64)
    top = 2 ** (bits or 16) - 1
    if values.min(initial=0) < 0 or values.max(initial=0) > top:
        knob = f"data.image_bits is {bits}" if bits else "images must be 8-bit or 16-bit (grey or RGB)"
        raise DataFileError(
            f"{path}: a {kind} image with values outside 0..{top} ({values.min()}..{values.max()}); {knob}"
        )
    if bits is None and values.size > 3 and values.max(initial=0) < 2**LOW_RANGE_BITS:
        _warn_low_range(path, int(values.max()))
    return np.rint(values / (top / 255.0)).astype(np.uint8)


def _rgb(image: Image.Image, path: Path, bits: int | None = None) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of any Pillow mode; 16-bit grey levels are scaled to 8 bits by
    :func:`_scale_sixteen_bit` (Pillow's own conversion would clip every value above 255 to white)."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = _scale_sixteen_bit(np.asarray(image), path, bits, image.mode)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise DataFileError(
            f"{path}: a floating-point image (mode F): its value range is not defined; save it as 8-bit or "
            f"16-bit (grey or RGB)"
        )
    return np.asarray(image.convert("RGB"))


def _sixteen_bit_colour(image: Image.Image) -> bool:
    """True for a colour file with 16 bits per channel (48-bit PNG / TIFF): Pillow opens it as 8-bit
    RGB, keeping the high byte only (12-bit data would arrive as 0..15)."""
    return image.mode in ("RGB", "RGBA") and any(";16" in str(tile[3]) for tile in image.tile)


def _sixteen_bit_rgb(image: Image.Image, path: Path, bits: int | None) -> np.ndarray:
    """``H x W x 3`` uint8 of a 16-bit-per-channel colour file, read with OpenCV (which keeps the 16
    bits) and scaled as 16-bit grey images are."""
    import cv2

    if _orientation(image) != 1:
        raise DataFileError(
            f"{path}: a 16-bit colour image with an EXIF Orientation tag ({_orientation(image)}): turn its pixels "
            f"and delete the tag, or save it with 8 bits per channel"
        )
    stored = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # any path (cv2.imread: ASCII)
    if stored is None or stored.dtype != np.uint16 or stored.ndim != 3:
        raise DataFileError(
            f"{path}: cannot read the 16-bit colour image (OpenCV read {getattr(stored, 'dtype', None)})"
        )
    return _scale_sixteen_bit(np.ascontiguousarray(stored[..., 2::-1]), path, bits, "16-bit colour")  # BGR(A) -> RGB


_LOW_RANGE_WARNED: list[bool] = []


def _warn_low_range(path: Path, top: int) -> None:
    if _LOW_RANGE_WARNED:
        return
    _LOW_RANGE_WARNED.append(True)
    from lightning.pytorch.utilities import rank_zero_warn

    depth = max(8, int(top).bit_length())
    rank_zero_warn(
        f"{path}: a 16-bit image whose values stop at {top} (12 bits or fewer, as microscopy, medical and "
        f"remote-sensing exports store them): read as 16-bit data they become 0..{round(top / 257)}, "
        f"{round(top / 257) + 1} grey levels; set data.image_bits to the data's depth (this image's values fit "
        f"in {depth}: data.image_bits: {depth} spreads 0..{2**depth - 1} over 0..255). Warned once."
    )


class SampleReader:
    """Reads images (RGB uint8) and masks (class indices) as an image viewer shows them, and
    checks them.

    Images: EXIF orientation applied; any Pillow mode converted to RGB (16-bit grey scaled to 8
    bits from ``0..2^image_bits - 1``, alpha dropped); floating-point images refused. Masks: EXIF
    orientation applied too; single-channel (P, L, 1, 16-bit) only, one frame; lossy files (JPEG,
    lossy WebP) are refused, except with ``binary``, where they are thresholded at 127 (compression
    spreads values over the edges: a 0/255 JPEG mask reads 1..254 there).

    ``mask_mapping`` maps stored mask values to classes (e.g. ``{255: 1}`` for 0/255 binary
    masks); ``binary`` makes class 1 of the values above half of the file's largest value (0/1
    masks: 1; 0/255 masks: 128..255, so anti-aliased edges split as a viewer would), or of every
    non-zero value when ``mask_mapping`` is given too. Afterwards every mask
    value must be a class index below ``num_classes`` or 255 (ignore). Every problem raises
    :class:`DataFileError` naming the file.
    """

    def __init__(
        self,
        num_classes: int,
        mask_mapping: dict[int, int] | None = None,
        binary: bool = False,
        image_bits: int | None = None,
    ) -> None:
        if image_bits is not None and not 8 <= image_bits <= 16:
            raise ValueError(
                f"data.image_bits must be 8..16 (the depth of 16-bit images' data) or null, got {image_bits}"
            )
        self.num_classes, self.binary, self.image_bits = num_classes, binary, image_bits
        self.threshold_binary = binary and not mask_mapping
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
                if _sixteen_bit_colour(image):
                    return _sixteen_bit_rgb(image, path, self.image_bits)
                return _rgb(_as_viewers_show(image), path, self.image_bits)
        except DataFileError:
            raise
        except Exception as error:  # noqa: BLE001 - any decoder failure is "cannot read", named
            raise DataFileError(f"{path}: cannot read the image ({error})") from error

    def _mask_pixels(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            lossy = _lossy(image, path)
            if lossy and not self.binary:
                raise DataFileError(
                    f"{path}: a {image.format} mask: lossy compression changes class indices along every edge, "
                    f"silently; save masks as PNG (for 0/255 binary masks, `data.binary: true` reads them "
                    f"thresholded at 127)"
                )
            if getattr(image, "n_frames", 1) > 1:
                raise DataFileError(f"{path}: the mask file holds {image.n_frames} frames; a mask must have one")
            oriented = _as_viewers_show(image)
            if lossy and oriented.mode not in ("L", "P", "1"):
                oriented = oriented.convert("L")  # a lossy decode of a grey mask spreads it over R, G and B
            mask, mode = np.asarray(oriented), oriented.mode
        if mode == "RGB" and mask.ndim == 3 and (mask == mask[..., :1]).all():
            mask = mask[..., 0]  # grey levels stored as RGB (WebP always is): the values are unambiguous
        elif mode not in ("P", "L", "I", "I;16", "I;16L", "I;16B", "1"):
            raise DataFileError(
                f"{path}: a mask must be a single-channel image of class indices (a PNG of mode P or L), got mode "
                f"{mode}" + (" with colours: convert the colours to class indices first" if mode == "RGB" else "")
            )
        if lossy:  # binary: foreground where the stored value is closer to 255 than to 0
            if mask.max(initial=0) <= 127 and mask.any():
                raise DataFileError(
                    f"{path}: a {image.format} binary mask whose values stay below 128 (a 0/1 mask saved lossy "
                    f"cannot be told from compression noise); save it as PNG"
                )
            return np.where(mask > 127, 255, 0).astype(np.uint8)
        return mask

    def mask(self, path: Path, image_shape: tuple[int, ...], image_path: Path | None = None) -> np.ndarray:
        try:
            mask = self._mask_pixels(path)
        except DataFileError:
            raise
        except Exception as error:  # noqa: BLE001 - any decoder failure is "cannot read", named
            raise DataFileError(f"{path}: cannot read the mask ({error})") from error
        if mask.shape != image_shape[:2]:
            message = (
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image_shape[1]}x{image_shape[0]} (width x height)"
            )
            if image_path is not None and mask.shape == tuple(image_shape[:2])[::-1]:
                message += self._orientation_hint(image_path)
            raise DataFileError(message)
        if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
            raise DataFileError(f"{path}: mask values must lie in 0..255, found {mask.min()}..{mask.max()}")
        if self.threshold_binary and mask.max(initial=0) > 1:
            # anti-aliased or resized 0/255 masks hold edge values 1..254: foreground is the upper half
            mask = np.where(mask > mask.max() / 2, 1, 0)
        mask = self.lookup[mask.astype(np.uint8)]
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise DataFileError(
                f"{path}: mask values {bad[:10].tolist()} are neither a class (0..{self.num_classes - 1}) nor "
                f"{IGNORE_INDEX} (ignore)"
                + (
                    "; for 0/255 binary masks set `data.binary: true` (and num_classes 2) or "
                    "`data.mask_mapping: {255: 1}`"
                    if self.num_classes <= 2 and not self.binary
                    else ""
                )
            )
        return mask

    @staticmethod
    def _orientation_hint(image_path: Path) -> str:
        try:
            with Image.open(image_path) as image:
                orientation = _orientation(image)
        except Exception:  # noqa: BLE001 - no hint then
            return ""
        if orientation in ROTATING_ORIENTATIONS:
            return (
                f". The image's EXIF Orientation is {orientation}: it is read turned, as viewers show it, and the "
                f"mask matches the stored, unturned pixels. Draw or export the mask on the image as viewers show "
                f"it, or delete the image's Orientation tag without turning its pixels (Pillow: "
                f"exif = im.getexif(); del exif[0x0112]; im.save(path, exif=exif))"
            )
        return " (width and height are swapped: is one of the two files rotated?)"

    def image_size(self, path: Path) -> tuple[int, int]:
        """``(height, width)`` as viewers show the image (EXIF orientation applied), from the file
        header, without decoding the pixels."""
        try:
            with Image.open(path) as image:
                try:
                    turned = _orientation(image) in ROTATING_ORIENTATIONS
                except Exception:  # noqa: BLE001 - EXIF past a truncation: the decode, when used, names it
                    turned = False
                return (image.width, image.height) if turned else (image.height, image.width)
        except Exception as error:  # noqa: BLE001 - any decoder failure is "cannot read", named
            raise DataFileError(f"{path}: cannot read the image ({error})") from error

    def verify(self, sample: Sample, decode: bool = True, min_side: int = 1) -> np.ndarray | None:
        """Check a sample up front: the image decodes (``decode``; else its header is readable),
        has sides of at least ``min_side`` pixels and, if it has a mask, the mask has the image's
        size and only class indices or 255. Returns the mask's values (after mapping), or None
        without a mask."""
        size = self.image(sample.image).shape if decode else self.image_size(sample.image)
        if min(size[:2]) < min_side:
            raise DataFileError(
                f"{sample.image}: the image is {size[1]}x{size[0]} pixels (width x height); training rescales "
                f"images by the lower end of data.scale_range, which leaves a side under 1 pixel: training images "
                f"need sides of at least {min_side} pixels (raise data.scale_range's lower end, or drop the image)"
            )
        return np.unique(self.mask(sample.mask, size, sample.image)) if sample.mask is not None else None

    def pair(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = self.image(sample.image)
        if sample.mask is None:
            raise DataFileError(f"{sample.image}: this sample needs a mask and has none")
        return image, self.mask(sample.mask, image.shape, sample.image)


def verify_samples(
    reader: SampleReader, samples: Sequence[Sample], decode: bool, what: str, min_side: int = 1
) -> set[int]:
    """:meth:`SampleReader.verify` every sample (a progress bar for large sets); the union of
    their mask values."""
    from tqdm.auto import tqdm

    values: set[int] = set()
    for sample in tqdm(samples, desc=f"checking {what}", disable=len(samples) < 2000, leave=False):
        found = reader.verify(sample, decode, min_side)
        if found is not None:
            values.update(found.tolist())
    return values


def check_labeled_values(
    values: set[int], num_classes: int, class_names: Sequence[str], source: Any, warn_absent: bool = True
) -> None:
    """Refuse masks (labeled, val or test) with nothing to learn or score (all 255, or only 0 and
    255: binary masks read as background + ignore); with ``warn_absent``, warn about classes that
    no mask holds."""
    if values <= {IGNORE_INDEX}:
        raise DataFileError(f"{source}: every mask is all {IGNORE_INDEX} (ignore): no pixel to learn from or score")
    if values == {0, IGNORE_INDEX}:
        raise DataFileError(
            f"{source}: the masks hold only 0 and 255, and 255 means 'ignore': the foreground would never be "
            f"learned or scored. For binary masks (255 = foreground) set `data.binary: true` or "
            f"`data.mask_mapping: {{255: 1}}`"
        )
    absent = [name for index, name in enumerate(class_names) if index not in values]
    if absent and warn_absent:
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
