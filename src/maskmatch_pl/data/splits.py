"""UniMatch's published split files for Pascal VOC and Cityscapes, shipped with the package.

``unimatch_splits.tar.xz`` holds ``splits/pascal`` (92 / 183 / 366 / 732 / 1464, 1_16 / 1_8 /
1_4, the U2PL variants, val) and ``splits/cityscapes`` (1_16 / 1_8 / 1_4 / 1_2 / 1_30, val),
as published in github.com/LiheYoung/UniMatch under the MIT licence (``UNIMATCH_SPLITS_LICENSE``
next to it, Copyright (c) 2022 Lihe Yang). They are unpacked once into the cache folder.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from .demo import build_once, default_cache_dir

ARCHIVE = Path(__file__).with_name("unimatch_splits.tar.xz")
PUBLISHED = ("pascal", "cityscapes")


def published_splits_dir(dataset: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of UniMatch's split files for ``dataset`` (``pascal`` or ``cityscapes``),
    unpacked from the package on first use into ``cache_dir`` (default: the demo's cache)."""
    if dataset not in PUBLISHED:
        raise ValueError(f"published split files exist for {PUBLISHED}, not {dataset!r}")
    target = Path(cache_dir or default_cache_dir()).expanduser() / "unimatch-splits"

    def fill(staging: Path) -> None:
        with tarfile.open(ARCHIVE) as archive:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
            archive.extractall(staging, **safe)

    build_once(target, fill, "UniMatch split files (MIT licence, see LICENSE)")
    return target / "splits" / dataset
