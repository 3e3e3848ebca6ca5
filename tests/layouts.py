"""Miniature datasets on disk in the real layouts, for tests."""

from pathlib import Path

import numpy as np
from PIL import Image

from maskmatch_pl.data.presets import voc_palette


def _image(path: Path, rng, height, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, array, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette([v for colour in palette for v in colour])
    image.save(path)


def _blobs(rng, height, width, num_classes, ignore_rim=True):
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(3):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top : top + height // 3, left : left + width // 3] = rng.integers(1, num_classes)
    if ignore_rim:
        mask[0, :] = 255
    return mask


def make_voc(root: Path, n_train=8, n_val=3, seed=0) -> Path:
    """JPEGImages/*.jpg, SegmentationClass/*.png (VOC palette, 255 rims), and UniMatch split
    files under splits/<split>/ and splits/val.txt, with images of different sizes."""
    rng = np.random.default_rng(seed)
    names = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    for index, name in enumerate(names):
        height, width = 60 + 4 * index, 80 - 2 * index
        _image(root / "JPEGImages" / f"{name}.jpg", rng, height, width)
        _mask(root / "SegmentationClass" / f"{name}.png", _blobs(rng, height, width, 21), voc_palette(256))
    lines = [f"JPEGImages/{n}.jpg SegmentationClass/{n}.png" for n in names]
    (root / "splits" / "92").mkdir(parents=True)
    (root / "splits" / "92" / "labeled.txt").write_text("\n".join(lines[:3]) + "\n")
    (root / "splits" / "92" / "unlabeled.txt").write_text("\n".join(lines[3:n_train]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(lines[n_train:]) + "\n")
    return root


def make_cityscapes(root: Path, seed=0) -> Path:
    """leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/.../*_gtFine_labelTrainIds.png."""
    rng = np.random.default_rng(seed)
    lines = {"train": [], "val": []}
    for split, count in (("train", 6), ("val", 2)):
        for index in range(count):
            stem = f"aachen_{index:06d}_000019"
            image = f"leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png"
            mask = f"gtFine/{split}/aachen/{stem}_gtFine_labelTrainIds.png"
            _image(root / image, rng, 96, 192)
            _mask(root / mask, _blobs(rng, 96, 192, 19))
            lines[split].append(f"{image} {mask}")
    (root / "splits" / "1_16").mkdir(parents=True)
    (root / "splits" / "1_16" / "labeled.txt").write_text("\n".join(lines["train"][:2]) + "\n")
    (root / "splits" / "1_16" / "unlabeled.txt").write_text("\n".join(lines["train"][2:]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(lines["val"]) + "\n")
    return root


def make_binary_folders(root: Path, seed=0) -> Path:
    """labeled/ and val/ with images/ + masks/ (0/255 binary PNGs, matched by stem), and
    unlabeled/ as a plain folder of images with no masks at all."""
    rng = np.random.default_rng(seed)
    for split, count in (("labeled", 3), ("val", 2)):
        for index in range(count):
            _image(root / split / "images" / f"case{index}.jpg", rng, 48, 56)
            _mask(root / split / "masks" / f"case{index}.png", (_blobs(rng, 48, 56, 2, ignore_rim=False) > 0) * 255)
    for index in range(5):
        _image(root / "unlabeled" / f"scan_{index}.png", rng, 50, 50)
    return root
