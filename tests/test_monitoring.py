"""Pseudo-label quality against the unlabeled images' true masks: counted right, and never trained on."""

import csv
import json

import pytest
import torch

from maskmatch_pl import SemiSupervisedDataModule
from maskmatch_pl.cli import main
from maskmatch_pl.monitoring import PseudoLabelMonitor

from .test_cli import tiny_args


def test_monitor_counts_accuracy_iou_and_confident_fractions_by_hand():
    # 1 image, 2 x 3 pixels, 3 classes; pixel (1, 2) is crop padding, pixel (0, 2) has no known class
    probs = torch.tensor(
        [
            [[0.9, 0.2, 0.1], [0.1, 0.6, 0.3]],  # class 0
            [[0.05, 0.7, 0.1], [0.8, 0.3, 0.3]],  # class 1
            [[0.05, 0.1, 0.8], [0.1, 0.1, 0.4]],  # class 2
        ]
    ).unsqueeze(0)
    # arg max: [[0, 1, 2], [1, 0, 2]]; confidence: [[.9, .7, .8], [.8, .6, .4]]
    truth = torch.tensor([[[0, 1, 255], [0, 0, 2]]])
    padding = torch.tensor([[[0, 0, 0], [0, 0, 255]]])
    monitor = PseudoLabelMonitor(3, names=("p",))
    monitor.update("p", probs, truth, threshold=0.75, ignore_mask=padding)
    metrics = monitor.compute(["bg", "a", "b"])
    # valid pixels: (0,0) t0 p0 c.9 | (0,1) t1 p1 c.7 | (1,0) t0 p1 c.8 | (1,1) t0 p0 c.6
    assert metrics["p/acc"].item() == pytest.approx(3 / 4)
    # IoU class 0: 2 / (3 + 2 - 2) = 2/3; class 1: 1 / (1 + 2 - 1) = 1/2; class 2 absent everywhere
    assert metrics["p/mIoU"].item() == pytest.approx((2 / 3 + 1 / 2) / 2)
    # confident (>= 0.75): (0,0) right, (1,0) wrong
    assert metrics["p/acc_confident"].item() == pytest.approx(1 / 2)
    assert metrics["p/confident_fraction"].item() == pytest.approx(2 / 4)
    assert metrics["p/confident_fraction_bg"].item() == pytest.approx(2 / 3)
    assert metrics["p/confident_fraction_a"].item() == pytest.approx(0.0)
    assert "p/confident_fraction_b" not in metrics  # no valid pixel of that class
    assert monitor.updated
    monitor.reset()
    assert not monitor.updated


def _views(dataset, index):
    item = dataset[index]
    return {key: value for key, value in item.items() if key != "monitor_mask"}


def test_monitoring_adds_the_true_mask_and_leaves_every_view_unchanged(demo_cache):
    def unlabeled(monitor):
        data = SemiSupervisedDataModule(
            dataset="demo",
            cache_dir=str(demo_cache),
            crop_size=48,
            num_workers=0,
            scale_range=(0.5, 2.0),
            unlabeled_masks_for_monitoring=monitor,
        )
        data.setup("fit")
        return data.dataset("unlabeled")

    plain, monitored = unlabeled(False), unlabeled(True)
    for index in (0, 7, 100):
        left, right = _views(plain, index), _views(monitored, index)
        assert all(torch.equal(left[key], right[key]) for key in left)
    item = monitored[7]
    truth, padding = item["monitor_mask"], item["ignore_mask"]
    assert truth.shape == padding.shape == item["image"].shape[1:]
    assert set(truth.unique().tolist()) <= set(range(11)) | {255}
    assert (truth[padding == 255] == 255).all()  # crop padding is unknown in the true mask too


def test_monitoring_needs_masks_and_says_so(tmp_path, demo_cache):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "a.png")
    data = SemiSupervisedDataModule(
        dataset="demo", cache_dir=str(demo_cache), unlabeled=str(folder), unlabeled_masks_for_monitoring=True
    )
    with pytest.raises(ValueError, match="images/' and 'masks/'"):
        data.setup("fit")


def _run(root, cache, monitor):
    main(
        [
            "fit",
            "--config",
            "configs/demo.yaml",
            *tiny_args(root, cache),
            "--trainer.max_steps=4",
            "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2",
            "--trainer.log_every_n_steps=1",
            "--trainer.callbacks+=tests.recorders.RecordLosses",
            f"--trainer.callbacks.path={root / 'losses'}",
            "--model.pseudo_labels.threshold=0.5",
            f"--data.unlabeled_masks_for_monitoring={str(monitor).lower()}",
        ]
    )
    losses = json.loads((root / "losses.rank0.json").read_text())
    rows = list(csv.DictReader(open(next(root.rglob("metrics.csv")))))
    return losses, rows


def test_the_true_masks_never_reach_a_loss_and_their_scores_are_logged(tmp_path, demo_cache):
    plain, _ = _run(tmp_path / "plain", demo_cache, monitor=False)
    monitored, rows = _run(tmp_path / "monitored", demo_cache, monitor=True)
    assert plain == monitored and len(plain) == 4  # the same loss at every step, to the last bit
    logged = {key for row in rows for key, value in row.items() if value}
    for name in ("pseudo", "pseudo_single_scale"):
        for metric in ("acc", "mIoU", "acc_confident", "mIoU_confident", "confident_fraction"):
            assert f"{name}/{metric}" in logged
    assert "pseudo/confident_fraction_background" in logged
    values = [float(row["pseudo/acc"]) for row in rows if row.get("pseudo/acc")]
    assert len(values) == 2 and all(0.0 <= value <= 1.0 for value in values)  # one score per validation
