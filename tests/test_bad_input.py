"""Bad input stops before training with the file or knob named and the fix suggested."""

import numpy as np
import pytest
from PIL import Image

from maskmatch_pl import SemiSupervisedDataModule
from maskmatch_pl.cli import main
from maskmatch_pl.data import DataFileError, DataSourceError

from .conftest import tiny_model_args
from .layouts import make_binary_folders, make_voc


def custom(root, **kwargs):
    return SemiSupervisedDataModule(
        dataset="custom",
        labeled=str(root / "labeled"),
        unlabeled=str(root / "unlabeled"),
        val=str(root / "val"),
        crop_size=32,
        batch_size=2,
        num_workers=0,
        **kwargs,
    )


def test_binary_masks_without_binary_are_refused_with_the_fix(tmp_path):
    root = make_binary_folders(tmp_path)
    with pytest.raises(DataFileError, match=r"only 0 and 255.*data.binary: true.*mask_mapping: \{255: 1\}"):
        custom(root, num_classes=2).setup("fit")
    custom(root, binary=True).setup("fit")  # the fix works


def test_labeled_masks_that_are_all_ignore_are_refused(tmp_path):
    root = make_binary_folders(tmp_path)
    for path in (root / "labeled" / "masks").iterdir():
        Image.fromarray(np.full((48, 56), 255, np.uint8), mode="L").save(path)
    with pytest.raises(DataFileError, match="every mask is all 255"):
        custom(root, num_classes=2).setup("fit")


def test_classes_that_no_labeled_mask_holds_are_named(tmp_path):
    root = make_binary_folders(tmp_path)
    with pytest.warns(UserWarning, match=r"classes \['2', '3'\] occur in no labeled mask \(num_classes is 4\)"):
        custom(root, mask_mapping={255: 1}, num_classes=4).setup("fit")


def test_a_truncated_image_is_found_by_the_full_check_before_training(tmp_path):
    root = make_binary_folders(tmp_path)
    broken = root / "unlabeled" / "scan_3.png"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(DataFileError, match="scan_3.png: cannot read the image"):
        custom(root, binary=True).setup("fit")
    custom(root, binary=True, verify="headers").setup("fit")  # headers only: not found up front


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_size": 0}, "data.crop_size must be a positive number of pixels, got 0"),
        ({"scale_range": (2.0, 0.5)}, r"data.scale_range must be \[low, high\] with 0 < low <= high"),
        ({"batch_size": 0}, "data.batch_size must be >= 1, got 0"),
        ({"verify": "yes"}, "data.verify must be 'full', 'headers' or 'off'"),
    ],
)
def test_bad_data_knobs_are_refused_at_once(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SemiSupervisedDataModule(dataset="demo", **kwargs)


def test_a_batch_larger_than_the_data_is_refused(tmp_path):
    root = make_binary_folders(tmp_path)
    with pytest.raises(ValueError, match="unlabeled training set has 5 images, less than one batch of 8"):
        custom(root, binary=True, unlabeled_batch_size=8).setup("fit")


def test_missing_and_unknown_splits_say_what_exists(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    with pytest.raises(DataSourceError, match=r"the splits in .*splits are: 92"):
        SemiSupervisedDataModule(dataset="pascal", root=str(root), split="183").setup("fit")
    (root / "splits" / "1_16").mkdir()
    (root / "splits" / "1_16" / "labeled.txt").write_text("")
    with pytest.raises(DataSourceError, match=r"YAML reads 1_16 as the number 116: quote it, split: '1_16'"):
        SemiSupervisedDataModule(dataset="pascal", root=str(root), split=116).setup("fit")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(DataSourceError, match=r"no split files in .*bare/splits.*data.splits_dir"):
        SemiSupervisedDataModule(dataset="custom", num_classes=3, root=str(bare), split="92").setup("fit")


def test_a_model_that_needs_unlabeled_data_says_so_when_none_is_given(tmp_path):
    root = make_binary_folders(tmp_path / "data")
    args = [
        *tiny_model_args(),
        "--data.dataset=custom",
        f"--data.labeled={root / 'labeled'}",
        f"--data.val={root / 'val'}",
        "--data.binary=true",
        "--data.split=null",
        "--data.crop_size=32",
        "--data.batch_size=2",
        "--data.num_workers=0",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false",
    ]
    with pytest.raises(ValueError, match="no unlabeled loader: set data.unlabeled"):
        main(["fit", "--config", "configs/demo.yaml", *args])
    main(["fit", "--config", "configs/demo_supervised.yaml", *args])  # the supervised baseline needs none
