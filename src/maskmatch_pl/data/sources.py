"""Where samples come from: UniMatch split files, image/mask folders, plain image folders.

A *source* is a path:

- a text file: one sample per line, ``<image relpath> [<mask relpath>]`` relative to the
  data root (UniMatch's ``labeled.txt`` / ``unlabeled.txt`` / ``val.txt``);
- a folder with ``images/`` (and ``masks/``, matched by file stem) subfolders;
- a plain folder of images (searched recursively), for unlabeled data without masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class DataSourceError(ValueError):
    """A data source is missing, empty, or lists files that do not exist."""


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None = None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_split_file(path: Path, root: Path, need_masks: bool) -> list[Sample]:
    """Samples listed in a UniMatch-style split file, paths relative to ``root``; every listed
    file must exist."""
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise DataSourceError(f"{path}:{number}: expected '<image> [<mask>]', got {line!r}")
        image = root / fields[0]
        mask = root / fields[1] if len(fields) == 2 and need_masks else None
        if need_masks and len(fields) < 2:
            raise DataSourceError(f"{path}:{number}: a mask path is needed here, the line names only {fields[0]!r}")
        for file in (image, mask):
            if file is not None and not file.is_file():
                raise DataSourceError(f"{path}:{number}: {file} does not exist (data root: {root})")
        samples.append(Sample(image, mask))
    return samples


def scan_folder(folder: Path, need_masks: bool) -> list[Sample]:
    """Samples of a folder: ``images/`` + ``masks/`` matched by stem, or a plain image folder."""
    images_dir = folder / "images"
    if not images_dir.is_dir():
        if need_masks:
            raise DataSourceError(
                f"{folder}: a labeled folder needs 'images/' and 'masks/' subfolders (masks matched by file stem)"
            )
        return [Sample(p) for p in _images_in(folder)]
    images = _images_in(images_dir)
    if not need_masks:
        return [Sample(p) for p in images]
    masks_dir = folder / "masks"
    masks = {p.relative_to(masks_dir).with_suffix(""): p for p in _images_in(masks_dir)} if masks_dir.is_dir() else {}
    samples = []
    for image in images:
        mask = masks.get(image.relative_to(images_dir).with_suffix(""))
        if mask is None:
            raise DataSourceError(f"{image}: no mask with the same stem in {masks_dir}")
        samples.append(Sample(image, mask))
    return samples


def load_samples(source: str | Path, root: str | Path | None, need_masks: bool) -> list[Sample]:
    """The samples of a split file or folder; raises :class:`DataSourceError` naming the
    path when it is missing, empty, or lists missing files."""
    path = Path(source).expanduser()
    root_path = Path(root).expanduser() if root is not None else path.parent
    if not path.is_absolute() and not path.exists() and root is not None:
        path = root_path / path
    if path.is_file():
        samples = read_split_file(path, root_path, need_masks)
    elif path.is_dir():
        samples = scan_folder(path, need_masks)
    else:
        raise DataSourceError(f"{source}: no such split file or folder")
    if not samples:
        raise DataSourceError(f"{path}: holds no images")
    return samples
