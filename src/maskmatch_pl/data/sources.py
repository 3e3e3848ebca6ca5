"""Where samples come from: UniMatch split files, image/mask folders, plain image folders.

A *source* is a path:

- a text file: one sample per line, ``<image relpath> [<mask relpath>]`` relative to the
  data root (UniMatch's ``labeled.txt`` / ``unlabeled.txt`` / ``val.txt``); a name with spaces is read
  when the split it implies names existing files (:func:`split_line`);
- a folder with ``images/`` (and ``masks/``, matched by file stem) subfolders;
- a plain folder of images (searched recursively), for unlabeled data without masks.

Folders are walked following symbolic links (a dataset assembled from several disks), each real folder
once: a link back to a folder already walked (a loop) is skipped and reported, as are links to nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MASK_FOLDER_NAMES = {  # lower-case names of folders of masks, whose files must never be read as images
    "masks", "mask", "labels", "label", "annotations", "gt", "gtfine", "segmentationclass", "segmentationclassaug",
}  # fmt: skip


class DataSourceError(ValueError):
    """A data source is missing, empty, ambiguous, or lists files that do not exist."""


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None = None


def _hidden(path: Path, folder: Path) -> bool:
    """A dot-file or a file under a dot-folder of ``folder`` (``._a.jpg`` resource forks,
    ``.ipynb_checkpoints/``, ``.git/``): never data."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _walk(folder: Path) -> list[Path]:
    """Every file and folder under ``folder`` (any depth, in sorted order), following symbolic links, hidden
    folders left out. Each real folder is read once, at the first path that reaches it in that order; warns,
    naming them, about what it skipped: links back to a folder above them (loops), further links to a folder
    already read (its files would count twice), and links to nothing."""
    entries: list[Path] = []
    skipped: dict[str, list[Path]] = {"links back to a folder above them": [], "links to a folder read already": []}
    broken: list[Path] = []
    seen = {os.path.realpath(folder)}
    above = {str(folder): {os.path.realpath(folder)}}  # the real folders on the path to each folder walked
    for here, dirs, files in os.walk(folder, followlinks=True):
        chain, kept = above.pop(here), []
        for name in sorted(dirs):
            path, real = Path(here) / name, os.path.realpath(Path(here) / name)
            if name.startswith("."):
                continue  # hidden: never data (_hidden)
            if real in chain or real in seen:
                skipped[
                    "links back to a folder above them" if real in chain else "links to a folder read already"
                ].append(path)
                continue
            seen.add(real)
            above[str(path)] = chain | {real}
            kept.append(name)
            entries.append(path)
        dirs[:] = kept  # sorted: the walk, and which path reads a folder reached twice, do not depend on the disk
        for name in sorted(files):
            path = Path(here) / name
            (entries if path.exists() else broken).append(path)
    parts = [
        f"{len(paths)} {what} (e.g. {paths[0]} -> {paths[0].resolve()})" for what, paths in skipped.items() if paths
    ]
    parts += [f"{len(broken)} links to nothing (e.g. {broken[0]})"] if broken else []
    if parts:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"{folder}: skipped {' and '.join(parts)}; every other file, linked or not, is read")
    return entries


def _images_in(folder: Path, entries: list[Path] | None = None) -> list[Path]:
    """Image files under ``folder`` (any depth, symbolic links followed: :func:`_walk`, or ``entries`` of a
    walk already taken), by suffix (:data:`IMAGE_SUFFIXES`, any case), hidden ones skipped, sorted."""
    entries = _walk(folder) if entries is None else entries
    return sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p, folder) and p.is_file())


def _by_name(files: list[Path], folder: Path, what: str) -> dict[Path, Path]:
    """``files`` keyed by their path under ``folder`` without suffix; two files with one key
    (``a.png`` and a stale ``a.tif``) are refused with both names."""
    found: dict[Path, Path] = {}
    for file in files:
        key = file.relative_to(folder).with_suffix("")
        if key in found:
            raise DataSourceError(
                f"{found[key]} and {file} are both {what} named '{key}': images and masks are paired by name, so "
                f"this pairing is ambiguous; remove or rename one of them"
            )
        found[key] = file
    return found


def _no_mask_message(image: Path, key: Path, masks_dir: Path) -> str:
    """Why ``image`` has no mask: the folder, and files that nearly match (another suffix, another case)."""
    message = f"{image}: no mask named '{key}' in {masks_dir}"
    if not masks_dir.is_dir():
        return f"{image}: no mask: {masks_dir} does not exist (a labeled folder needs images/ and masks/)"
    near = [
        p
        for p in (masks_dir / key).parent.glob("*")
        if p.is_file() and p.stem.lower() == key.name.lower() and not _hidden(p, masks_dir)
    ]
    if near:
        names = ", ".join(p.name for p in near)
        message += (
            f"; found {names}, but masks are paired by exact name (case included) and read only from "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} files"
        )
    return message


def split_line(line: str, root: Path) -> list[str]:
    """The one or two names of a split-file line: ``<image> [<mask>]``.

    UniMatch's format separates the names by whitespace, so a name with spaces is ambiguous: a tab
    separates the two names when the line has one; otherwise the words are split at whitespace, and when
    that does not give two existing files, the readings that do (the whole line as one image, or the line
    cut into an image and a mask at one run of whitespace, names kept as written) are tried, and the one
    that names existing files under ``root`` is taken. Lines whose names do not exist come back as split
    at whitespace (the caller names the missing file); more than one existing reading is refused. A
    byte-order mark and CRLF line ends (Windows editors) are read by :func:`read_split_file`.

    Raises:
        DataSourceError: two readings of the line name existing files (the line and both readings named).
    """
    text = line.strip()
    if "\t" in text:
        return [part.strip() for part in text.split("\t") if part.strip()]
    words = text.split()
    if len(words) <= 1 or (len(words) == 2 and all((root / word).is_file() for word in words)):
        return words
    readings = [[text]] if (root / text).is_file() else []
    for gap in re.finditer(r"\s+", text):  # cut at each run of whitespace, names kept as written (double spaces)
        image, mask = text[: gap.start()], text[gap.end() :]
        if (root / image).is_file() and (root / mask).is_file():
            readings.append([image, mask])
    if len(readings) > 1:
        options = " or ".join(" + ".join(repr(name) for name in reading) for reading in readings)
        raise DataSourceError(f"{text!r} can be read as {options}: separate the image and mask names with a tab")
    return readings[0] if readings else words


def read_split_file(path: Path, root: Path, need_masks: bool) -> list[Sample]:
    """Samples listed in a UniMatch-style split file, paths relative to ``root`` (names with spaces:
    :func:`split_line`); every listed file must exist, and no image may be listed twice."""
    samples, seen = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):  # BOM of Windows editors
        try:
            fields = split_line(line, root)
        except DataSourceError as error:
            raise DataSourceError(f"{path}:{number}: {error}") from error
        if not fields:
            continue
        if len(fields) > 2:
            raise DataSourceError(
                f"{path}:{number}: expected '<image> [<mask>]' (two names at most, separated by whitespace or a "
                f"tab; a name with spaces is read when the file exists under {root}), got {len(fields)} fields: "
                f"{line!r}"
            )
        image = root / fields[0]
        mask = root / fields[1] if len(fields) == 2 and need_masks else None
        if need_masks and len(fields) < 2:
            raise DataSourceError(f"{path}:{number}: a mask path is needed here, the line names only {fields[0]!r}")
        for file in (image, mask):
            if file is not None and not file.is_file():
                raise DataSourceError(f"{path}:{number}: {file} does not exist (data root: {root})")
        key = image.resolve()
        if key in seen:
            raise DataSourceError(
                f"{path}:{number}: {fields[0]} is listed again (first on line {seen[key]}); each once"
            )
        seen[key] = number
        samples.append(Sample(image, mask))
    return samples


def scan_folder(folder: Path, need_masks: bool) -> list[Sample]:
    """Samples of a folder: ``images/`` + ``masks/`` paired by path and stem, or a plain image
    folder (searched recursively). Hidden files and folders are skipped. Refused: two images or
    two masks of one name, an image without its mask (when masks are needed), and a plain folder
    that holds a mask folder (its masks would be read as images)."""
    images_dir = folder / "images"
    if not images_dir.is_dir():
        if need_masks:
            raise DataSourceError(
                f"{folder}: a labeled folder needs 'images/' and 'masks/' subfolders (masks matched by file stem)"
            )
        entries = _walk(folder)
        masks = next((p for p in sorted(entries) if p.name.lower() in MASK_FOLDER_NAMES and p.is_dir()), None)
        if masks is not None:
            raise DataSourceError(
                f"{folder} is read as a plain image folder (it has no images/ subfolder), and every image under it, "
                f"at any depth, would be used as an image, the masks in {masks} too: put the images in "
                f"{folder / 'images'} (masks/ beside it is then paired, not read as images), or point at the "
                f"folder of the images alone"
            )
        return [Sample(p) for p in _images_in(folder, entries)]
    images = _images_in(images_dir)
    if not need_masks:
        return [Sample(p) for p in images]
    masks_dir = folder / "masks"
    by_name = _by_name(images, images_dir, "images")
    masks = _by_name(_images_in(masks_dir), masks_dir, "masks") if masks_dir.is_dir() else {}
    samples = []
    for key, image in by_name.items():
        mask = masks.get(key)
        if mask is None:
            raise DataSourceError(_no_mask_message(image, key, masks_dir))
        samples.append(Sample(image, mask))
    orphans = sorted(set(masks) - set(by_name))
    if orphans:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"{masks_dir}: {len(orphans)} masks have no image in {images_dir} and are not used "
            f"(e.g. {', '.join(str(masks[k]) for k in orphans[:3])})"
        )
    return sorted(samples, key=lambda sample: sample.image)


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
