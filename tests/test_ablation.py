"""The ablation script runs one tiny row end to end (the grid itself is a benchmark)."""

import json
import os
import subprocess
import sys

from .conftest import tiny_model_args


def test_ablation_script_runs_one_tiny_row(tmp_path, demo_cache):
    env = dict(os.environ, MASKMATCH_PL_CACHE=str(demo_cache))
    command = [
        sys.executable,
        "benchmarks/ablation.py",
        "--methods",
        "supervised",
        "maskmatch",
        "--ratios",
        "1_16",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--val-every",
        "2",
        "--workers",
        "0",
        "--out",
        str(tmp_path),
        "--plot",
        "--extra",
        *tiny_model_args(),
        "--data.crop_size=48",
        "--data.batch_size=2",
        "--trainer.limit_val_batches=2",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| maskmatch | " in result.stdout and "| supervised | " in result.stdout
    saved = json.loads((tmp_path / "maskmatch" / "1_16" / "seed0" / "result.json").read_text())
    assert saved["steps"] == 2 and 0 <= saved["miou"] <= 1 and saved["curve"][-1][0] == 1
    assert 0 <= saved["pseudo"]["pseudo/mIoU"] <= 1  # pseudo-labels scored against the unlabeled masks
    assert (tmp_path / "miou_by_method.png").is_file() and (tmp_path / "miou_over_steps.png").is_file()
