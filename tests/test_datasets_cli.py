"""Real dataset layouts (VOC, Cityscapes, binary folders) through the real CLI."""

import csv

import numpy as np
import pytest
from PIL import Image

from maskmatch_pl.cli import main

from .conftest import tiny_model_args
from .layouts import make_binary_folders, make_cityscapes, make_voc

CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.sync_batchnorm=false",
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
    "--trainer.log_every_n_steps=1",
    "--data.num_workers=0",
    "--data.batch_size=2",
    "--data.crop_size=64",
    "--model.evaluation.crop_size=64",
]


def logged(root):
    rows = list(csv.DictReader(open(next(root.rglob("metrics.csv")))))
    return {key: value for row in rows for key, value in row.items() if value}


def fit(config, root, run, extra):
    logs = [
        f"--trainer.default_root_dir={run}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={run}",
    ]
    main(["fit", "--config", config, *tiny_model_args(), *CPU, *logs, "--trainer.max_steps=2", *extra])
    return next(run.rglob("last.ckpt"))


def test_pascal_voc_layout_with_unimatch_split_files(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    ckpt = fit("configs/pascal.yaml", root, tmp_path / "run", [f"--data.root={root}", "--data.split=92"])
    metrics = logged(tmp_path / "run")
    assert "val/mIoU" in metrics and "val/IoU_aeroplane" in metrics
    out = tmp_path / "pred"
    main(
        [
            "predict",
            "--config",
            "configs/pascal.yaml",
            *tiny_model_args(),
            *CPU,
            f"--data.root={root}",
            f"--data.predict={root / 'JPEGImages'}",
            f"--prediction.output_dir={out}",
            f"--ckpt_path={ckpt}",
            f"--trainer.default_root_dir={tmp_path / 'p'}",
            "--trainer.logger=false",
        ]
    )
    first = Image.open(out / "2007_000000.png")
    assert first.size == Image.open(root / "JPEGImages" / "2007_000000.jpg").size and first.mode == "P"
    assert len(list(out.glob("*.png"))) == 11


def test_cityscapes_layout_sliding_window_and_ohem(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    ckpt = fit(
        "configs/cityscapes.yaml",
        root,
        tmp_path / "run",
        [f"--data.root={root}", "--data.split=1_16", "--model.sup_loss.ohem_min_kept=1000"],
    )
    assert "val/IoU_traffic_light" in logged(tmp_path / "run")
    main(
        [
            "validate",
            "--config",
            "configs/cityscapes.yaml",
            *tiny_model_args(),
            *CPU,
            f"--data.root={root}",
            f"--ckpt_path={ckpt}",
            f"--trainer.default_root_dir={tmp_path / 'v'}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'v'}",
        ]
    )
    assert "val/mIoU" in logged(tmp_path / "v")


def test_binary_folders_and_an_unlabeled_folder_without_masks(tmp_path):
    root = make_binary_folders(tmp_path / "data")
    extra = [
        "--data.dataset=custom",
        f"--data.labeled={root / 'labeled'}",
        f"--data.unlabeled={root / 'unlabeled'}",
        f"--data.val={root / 'val'}",
        "--data.binary=true",
        "--data.split=null",
        "--trainer.val_check_interval=2",  # the demo validates every 250 steps
    ]
    fit("configs/demo.yaml", root, tmp_path / "run", extra)
    metrics = logged(tmp_path / "run")
    assert {"val/IoU_0", "val/IoU_1", "train/loss_masked"} <= set(metrics)


def test_bad_inputs_stop_before_training(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    (root / "JPEGImages" / "2007_000004.jpg").unlink()
    with pytest.raises(Exception, match=r"unlabeled.txt:2: .*2007_000004.jpg does not exist"):
        fit("configs/pascal.yaml", root, tmp_path / "run", [f"--data.root={root}", "--data.split=92"])
    bad = make_voc(tmp_path / "VOC_bad")
    mask_path = bad / "SegmentationClass" / "2007_000000.png"
    original = Image.open(mask_path)
    array = np.asarray(original).copy()
    array[5, 5] = 40
    corrupted = Image.fromarray(array, mode="P")
    corrupted.putpalette(original.getpalette())  # a P image saved without its palette loses values
    corrupted.save(mask_path)
    with pytest.raises(Exception, match=r"2007_000000.png: mask values \[40\]"):
        fit("configs/pascal.yaml", bad, tmp_path / "run2", [f"--data.root={bad}", "--data.split=92"])


def test_published_splits_ship_with_the_package(tmp_path):
    import yaml

    from maskmatch_pl import SemiSupervisedDataModule

    config = yaml.safe_load(open("configs/pascal/data.yaml"))
    data = SemiSupervisedDataModule(
        **{**config, "root": str(tmp_path / "VOC2012"), "split": "92", "cache_dir": str(tmp_path / "cache")}
    )
    counts = {stage: len(data.split_file(stage).read_text().split()) // 2 for stage in ("labeled", "unlabeled", "val")}
    assert counts == {"labeled": 92, "unlabeled": 10490, "val": 1449}
    assert (data.split_file("val").parents[2] / "LICENSE").read_text().startswith("MIT License")
    cityscapes = SemiSupervisedDataModule(dataset="cityscapes", split="1_16", cache_dir=str(tmp_path / "cache"))
    assert len(cityscapes.split_file("labeled").read_text().split()) // 2 == 186
