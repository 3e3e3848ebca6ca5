"""Faults of kinds already fixed that still reached users (issue 42, part 3), each with its other forms:
folders assembled from symbolic links, and split-file names with spaces."""

import os

import numpy as np
import pytest
from PIL import Image

from maskmatch_pl.data import DataSourceError, load_samples


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def test_images_in_symlinked_subfolders_are_read_and_loops_skipped_with_a_warning(tmp_path):
    disk = tmp_path / "other_disk"
    for index in range(8):
        image(disk / f"far{index}.png")
    folder = tmp_path / "pool"
    image(folder / "near" / "a.png")
    image(folder / "near" / "b.png")
    os.symlink(disk, folder / "linked")  # a dataset assembled from two disks
    os.symlink(folder, folder / "near" / "back")  # a loop
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")  # a link to nothing
    os.symlink(disk, folder / "same_disk_again")  # a second link to one folder: its files would count twice
    os.symlink(disk / "far0.png", folder / "near" / "linked_file.png")  # a linked file is an image like any other
    with pytest.warns(
        UserWarning,
        match=r"skipped 1 links back to a folder above them \(e.g. .*back -> .*pool\) and 1 links to a folder read "
        r"already \(e.g. .*same_disk_again.*\) and 1 links to nothing",
    ):
        samples = load_samples(folder, None, need_masks=False)
    assert len(samples) == 11
    assert sorted(s.image.name for s in samples)[:3] == ["a.png", "b.png", "far0.png"]
    assert (folder / "near" / "linked_file.png") in {s.image for s in samples}


def test_a_folder_of_only_symlinked_subfolders_is_read(tmp_path):
    for part in ("disk1", "disk2"):
        image(tmp_path / part / f"{part}.png")
    folder = tmp_path / "assembled"
    folder.mkdir()
    for part in ("disk1", "disk2"):
        os.symlink(tmp_path / part, folder / part)
    assert [s.image.name for s in load_samples(folder, None, need_masks=False)] == ["disk1.png", "disk2.png"]


def test_labeled_folders_pair_images_and_masks_through_symlinked_subfolders(tmp_path):
    real = tmp_path / "real"
    image(real / "images" / "x.png")
    image(real / "masks" / "x.png")
    folder = tmp_path / "labeled"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    os.symlink(real / "images", folder / "images" / "batch1")
    os.symlink(real / "masks", folder / "masks" / "batch1")
    (sample,) = load_samples(folder, None, need_masks=True)
    assert sample.image == folder / "images" / "batch1" / "x.png" and sample.mask.name == "x.png"


def test_split_file_names_with_spaces_are_read_when_the_files_exist(tmp_path):
    image(tmp_path / "raw" / "IMG 0100.jpg")
    image(tmp_path / "raw" / "IMG 0101 final.png")
    image(tmp_path / "masks" / "IMG 0100.png")
    image(tmp_path / "plain.png")
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("raw/IMG 0100.jpg\nraw/IMG 0101 final.png\nplain.png\n")
    assert [s.image.name for s in load_samples(unlabeled, tmp_path, need_masks=False)] == [
        "IMG 0100.jpg", "IMG 0101 final.png", "plain.png",
    ]  # fmt: skip
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("raw/IMG 0100.jpg masks/IMG 0100.png\nraw/IMG 0101 final.png\tmasks/IMG 0100.png\n")
    samples = load_samples(labeled, tmp_path, need_masks=True)
    assert [(s.image.name, s.mask.name) for s in samples] == [
        ("IMG 0100.jpg", "IMG 0100.png"), ("IMG 0101 final.png", "IMG 0100.png"),
    ]  # fmt: skip


def test_split_files_from_other_editors_and_names_with_double_spaces_are_read(tmp_path):
    image(tmp_path / "raw" / "IMG  0100.jpg")  # two spaces, as a camera or a script may write them
    image(tmp_path / "masks" / "IMG  0100.png")
    image(tmp_path / "plain.png")
    split = tmp_path / "labeled.txt"
    split.write_bytes("\ufeffplain.png plain.png\r\nraw/IMG  0100.jpg masks/IMG  0100.png\r\n".encode())  # BOM, CRLF
    samples = load_samples(split, tmp_path, need_masks=True)
    assert [(s.image.name, s.mask.name) for s in samples] == [
        ("plain.png", "plain.png"), ("IMG  0100.jpg", "IMG  0100.png"),
    ]  # fmt: skip


def test_split_file_lines_that_name_no_file_or_two_readings_are_refused_clearly(tmp_path):
    missing = tmp_path / "missing.txt"
    missing.write_text("raw/IMG 0100.jpg masks/IMG 0100.png\n")
    with pytest.raises(DataSourceError, match=r"missing.txt:1: expected '<image> \[<mask>\]'.*got 4 fields"):
        load_samples(missing, tmp_path, need_masks=True)
    for name in ("a", "a b", "b c", "c"):
        (tmp_path / name).write_bytes(b"")  # only their existence decides the reading
    ambiguous = tmp_path / "ambiguous.txt"
    ambiguous.write_text("a b c\n")
    with pytest.raises(DataSourceError, match=r"ambiguous.txt:1: 'a b c' can be read as 'a' \+ 'b c' or 'a b' \+ 'c'"):
        load_samples(ambiguous, tmp_path, need_masks=True)


def test_twelve_bit_data_in_sixteen_bit_files_is_warned_about_and_spread_with_image_bits(tmp_path, monkeypatch):
    from maskmatch_pl.data import DataFileError, SampleReader, datasets

    monkeypatch.setattr(datasets, "_LOW_RANGE_WARNED", [])
    grey = np.linspace(0, 4095, 64 * 64).astype(np.uint16).reshape(64, 64)  # a microscope's 12 bits in 16
    Image.fromarray(grey).save(tmp_path / "cells.png")
    Image.fromarray(grey).save(tmp_path / "more.png")
    with pytest.warns(
        UserWarning,
        match=r"cells.png: a 16-bit image whose values stop at 4095.*0..16.*data.image_bits: 12 spreads 0..4095",
    ):
        squeezed = SampleReader(num_classes=2).image(tmp_path / "cells.png")
    assert len(np.unique(squeezed)) == 17  # what the sensor recorded, left as 17 grey levels
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not per file
        SampleReader(num_classes=2).image(tmp_path / "more.png")
    spread = SampleReader(num_classes=2, image_bits=12).image(tmp_path / "cells.png")
    assert spread.min() == 0 and spread.max() == 255 and len(np.unique(spread)) == 256
    Image.fromarray(np.full((8, 8), 5000, np.uint16)).save(tmp_path / "brighter.png")
    with pytest.raises(
        DataFileError, match=r"brighter.png: .* values outside 0..4095 \(5000..5000\); data.image_bits is 12"
    ):
        SampleReader(num_classes=2, image_bits=12).image(tmp_path / "brighter.png")
    with pytest.raises(ValueError, match="data.image_bits must be 8..16"):
        SampleReader(num_classes=2, image_bits=7)


def test_twelve_bit_data_in_sixteen_bit_colour_files_keeps_its_levels_and_channels(tmp_path, monkeypatch):
    """Pillow opens 48-bit PNG / TIFF as 8-bit RGB from the high bytes (12-bit data arrived as 0..15)."""
    import cv2

    from maskmatch_pl.data import SampleReader, datasets

    ramp = np.linspace(0, 4095, 32 * 32).reshape(32, 32)
    rgb = np.stack([ramp, ramp / 2, 4095 - ramp], axis=2).astype(np.uint16)  # red, half red, blue falling
    for suffix in ("png", "tif"):
        cv2.imwrite(str(tmp_path / f"scene.{suffix}"), rgb[..., ::-1])  # OpenCV writes BGR
        monkeypatch.setattr(datasets, "_LOW_RANGE_WARNED", [])
        with pytest.warns(UserWarning, match=rf"scene.{suffix}: a 16-bit image whose values stop at 4095"):
            SampleReader(num_classes=2).image(tmp_path / f"scene.{suffix}")
        spread = SampleReader(num_classes=2, image_bits=12).image(tmp_path / f"scene.{suffix}")
        assert spread.dtype == np.uint8 and spread.shape == (32, 32, 3)
        assert len(np.unique(spread[..., 0])) > 200  # not the 16 levels of the high byte
        assert spread[-1, -1].tolist() == [255, 127, 0] and spread[0, 0].tolist() == [0, 0, 255]  # RGB order kept


# ---------------------------------------------------------------- user errors exit without a traceback
def _fit_with_a_missing_root(tmp_path, **env):
    import subprocess
    import sys

    command = [sys.executable, "-m", "maskmatch_pl.cli", "fit", "--config", "configs/demo_fixmatch.yaml"]
    command += ["--data.dataset=custom", "--data.num_classes=2", f"--data.root={tmp_path / 'nope'}"]
    command += [f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1"]
    environment = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **env}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, env=environment, timeout=300)


def test_a_user_error_prints_its_message_and_exits_2_without_a_traceback(tmp_path):
    quiet = _fit_with_a_missing_root(tmp_path, MASKMATCH_PL_TRACEBACK="")
    assert quiet.returncode == 2, quiet.stderr[-2000:]
    assert "Traceback" not in quiet.stderr
    assert f"maskmatch-pl: error: {tmp_path / 'nope'}" in quiet.stderr and "MASKMATCH_PL_TRACEBACK=1" in quiet.stderr
    loud = _fit_with_a_missing_root(tmp_path, MASKMATCH_PL_TRACEBACK="1")
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "DataSourceError" in loud.stderr


def test_errors_raised_outside_the_package_keep_their_traceback():
    from maskmatch_pl.cli import _raised_by_our_check
    from maskmatch_pl.config import Views

    with pytest.raises(ValueError) as ours:
        Views(fp_dropout=2.0)
    with pytest.raises(ValueError) as theirs:
        int("not a number")  # raised here, in a test: not one of the package's checks
    assert _raised_by_our_check(ours.value) and not _raised_by_our_check(theirs.value)
