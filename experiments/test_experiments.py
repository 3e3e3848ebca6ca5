"""The ablation script runs one tiny row end to end (the grid itself is a benchmark)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import tiny_model_args


def test_ablation_script_runs_one_tiny_row(tmp_path, demo_cache):
    env = dict(os.environ, MASKMATCH_PL_CACHE=str(demo_cache))
    command = [
        sys.executable,
        "experiments/ablation.py",
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
    assert "health/labeled_share_digit_0" in saved["health_curve"][-1][1]  # every check's health signals, to replay
    assert (tmp_path / "miou_by_method.png").is_file() and (tmp_path / "miou_over_steps.png").is_file()


def test_second_datasets_letters_are_drawn_from_every_font_and_stay_apart():
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    from second_dataset import LETTERS, render_glyph, text_fonts

    fonts = text_fonts()
    assert len(fonts) >= 10  # matplotlib's DejaVu, STIX and Computer Modern text fonts
    rng = np.random.default_rng(0)
    glyphs = {letter: [render_glyph(letter, font, rng) for font in fonts] for letter in LETTERS}
    for letter, drawn in glyphs.items():
        for font, glyph in zip(fonts, drawn):
            assert glyph.shape == (28, 28) and glyph.dtype == np.uint8
            assert glyph.max() > 200 and (glyph > 0).sum() > 40, (letter, font.name)  # a letter, not a blank
            assert (glyph[:3] == 0).all() and (glyph[-3:] == 0).all(), (letter, font.name)  # inside the 20-px box
    # ten classes, not one shape in ten names: the nearest letter mean names most glyphs right (chance: 10 %)
    mean = {letter: np.mean([g.astype(float) for g in drawn], 0) for letter, drawn in glyphs.items()}
    nearest = [
        min(LETTERS, key=lambda other: np.abs(glyph - mean[other]).mean()) == letter
        for letter, drawn in glyphs.items()
        for glyph in drawn
    ]
    assert np.mean(nearest) > 0.6  # 82 % with matplotlib 3.11's 21 text fonts


def test_the_health_replay_counts_warnings_as_the_monitor_gives_them():
    from health_replay import warnings

    def check(defect_share):  # a binary run's check: the defect holds 2 % of the labeled pixels
        return {
            "health/labeled_share_background": 0.98,
            "health/labeled_share_defect": 0.02,
            "health/confident_share_background": 1 - defect_share,
            "health/confident_share_defect": defect_share,
            "health/confident_pixels": 1000.0,
        }

    early = {"steps": 1000, "health_curve": [[250, check(0.0)], [500, check(0.02)], [750, check(0.02)]]}
    assert warnings(early, None) == 1 and warnings(early, 0.4) == 0  # the instant rule warned at step 250
    late = {"steps": 1000, "health_curve": [[250, check(0.02)], [500, check(0.0)], [750, check(0.0)]]}
    assert warnings(late, None) == 2 and warnings(late, 0.4) == 1  # vanished at 500 and 750: reported at 750
