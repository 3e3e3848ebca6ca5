"""DDP, mixed precision, resume and reproducibility, through the real CLI on CPU."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import tiny_model_args

pytestmark = pytest.mark.filterwarnings("ignore")


def cli(subcommand, *args, cache, root, timeout=600):
    """``maskmatch-pl`` in a subprocess (DDP re-launches it per rank)."""
    env = dict(os.environ, MASKMATCH_PL_CACHE=str(cache), PYTHONPATH=os.getcwd())
    command = [
        sys.executable,
        "-m",
        "maskmatch_pl.cli",
        subcommand,
        "--config",
        "configs/demo.yaml",
        *tiny_model_args(),
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--data.crop_size=48",
        "--data.val_batch_size=8",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read(path, rank=0):
    return json.loads(path.with_suffix(f".rank{rank}.json").read_text())


def losses_of(root, name, *extra, cache):
    record = root / name
    cli(
        "fit",
        "--trainer.max_steps=6",
        "--trainer.limit_val_batches=0",
        "--model.pseudo_labels.teacher=ema",
        "--trainer.callbacks+=tests.recorders.RecordLosses",
        f"--trainer.callbacks.path={record}",
        *extra,
        cache=cache,
        root=root / name,
    )
    return record


def test_two_process_ddp_disjoint_shares_and_synced_miou(tmp_path, demo_cache):
    record = tmp_path / "samples"
    cli(
        "fit",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.max_steps=4",
        "--trainer.limit_val_batches=4",
        "--trainer.callbacks+=tests.recorders.RecordSamples",
        f"--trainer.callbacks.path={record}",
        cache=demo_cache,
        root=tmp_path / "ddp",
    )
    ranks = [read(record, 0), read(record, 1)]
    for key in ("labeled", "unlabeled"):
        assert len(ranks[0][key]) == len(ranks[1][key]) == 8
        assert not set(ranks[0][key]) & set(ranks[1][key]), key
    ckpt = next((tmp_path / "ddp").rglob("last.ckpt"))
    mious = []
    for devices in ("1", "2"):
        root = tmp_path / f"val{devices}"
        cli(
            "validate",
            f"--ckpt_path={ckpt}",
            f"--trainer.devices={devices}",
            "--trainer.strategy=ddp",
            "--trainer.limit_val_batches=1.0",
            "--data.val_batch_size=8",
            cache=demo_cache,
            root=root,
        )
        import csv

        rows = list(csv.DictReader(open(next(root.rglob("metrics.csv")))))
        mious.append(float(rows[-1]["val/mIoU"]))
    assert mious[0] == pytest.approx(mious[1], abs=1e-6)


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, demo_cache):
    record = losses_of(tmp_path, "bf16", "--trainer.precision=bf16-mixed", cache=demo_cache)
    losses = read(record)
    assert len(losses) == 6 and all(0 < value < 20 for value in losses.values())


def test_same_seed_same_losses_and_interrupted_resume_matches(tmp_path, demo_cache):
    straight = read(losses_of(tmp_path, "a", cache=demo_cache))
    again = read(losses_of(tmp_path, "b", "--data.num_workers=2", cache=demo_cache))
    assert straight == again  # any number of workers: augmentations are seeded per sample
    other_seed = read(losses_of(tmp_path, "c", "--seed_everything=1", cache=demo_cache))
    assert other_seed != straight
    interrupted = losses_of(tmp_path, "d", "--trainer.callbacks.stop_at=3", cache=demo_cache)
    first = read(interrupted)
    resumed = losses_of(tmp_path, "e", f"--ckpt_path={interrupted.with_suffix('.ckpt')}", cache=demo_cache)
    second = read(resumed)
    assert sorted(map(int, first)) == [1, 2, 3] and sorted(map(int, second)) == [4, 5, 6]
    assert {**first, **second} == pytest.approx(straight, rel=1e-5)
