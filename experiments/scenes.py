"""Issue 27's grid: does the masked view help where context predicts a hidden patch, on local regions?

The demo configs, unchanged but for the data, on the street-scene testbed
(``maskmatch_pl.data.scenes``, ``dataset: scenes``), at the ratio and budget chosen with
supervised runs only (benchmarks/RESULTS.md, "Scenes"), through the real CLI
(``experiments/ablation.py``'s ``run_one``). Every run logs val mIoU, boundary IoU and
small-object IoU (``maskmatch_pl.locality``); semi-supervised runs also score their pseudo-labels
against the unlabeled masks (which no loss reads), per teacher scale.

    python experiments/scenes.py --seeds 0 1 2         # run what is missing, print the tables
    python experiments/scenes.py --table-only          # the tables from saved runs

Runs land under ``experiments/results/scenes/<method>/<ratio>/seed<k>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

from ablation import CEILING, FIXED_TAU, METHODS, run_one  # noqa: E402

RATIO = "1_64"
STEPS = 1000
OUT = REPO / "experiments" / "results" / "scenes"
PAPER_WEIGHT = (
    "maskmatch-weight1"  # masked-loss weight 1.0, METHOD.md's default (our choice) instead of the demo's 0.25
)
METHODS[PAPER_WEIGHT] = ("configs/demo.yaml", ["--model.masking.weight=1.0", FIXED_TAU])
# in the order a partial seed still compares the pairs that matter most
GRID = (
    "supervised",
    "fixmatch",
    "maskmatch",
    "unimatch",
    "unimatch+maskmatch",
    "fixmatch+multiscale",
    PAPER_WEIGHT,
    CEILING,
    # the diagnosis of the FixMatch row: class-wise thresholds against the thin classes' collapse
    "fixmatch+freematch_prior",
    "maskmatch+freematch_prior",
)
PAIRS = (  # (without, with, what the difference measures)
    ("fixmatch", "maskmatch", "masked view on FixMatch (demo weight 0.25)"),
    ("fixmatch", PAPER_WEIGHT, "masked view on FixMatch (paper weight 1.0)"),
    ("unimatch", "unimatch+maskmatch", "masked view on UniMatch"),
    ("fixmatch", "fixmatch+multiscale", "multi-scale pseudo-labels on FixMatch"),
    ("supervised", "fixmatch", "FixMatch over supervised"),
    ("supervised", "unimatch", "UniMatch over supervised"),
    ("fixmatch", "fixmatch+freematch_prior", "class-wise thresholds on FixMatch"),
    ("fixmatch+freematch_prior", "maskmatch+freematch_prior", "masked view on FixMatch, class-wise thresholds"),
    ("supervised", "fixmatch+freematch_prior", "FixMatch with class-wise thresholds over supervised"),
)
SCORES = {"mIoU": "val/mIoU", "boundary": "val/boundary_mIoU", "small objects": "val/small_object_mIoU"}
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45}  # Student's t, 97.5 % quantile, by degrees of freedom


def load(method: str) -> dict[int, dict]:
    folder = OUT / method / RATIO
    runs = (json.loads(p.read_text()) for p in sorted(folder.glob("seed*/result.json")))
    return {r["seed"]: r for r in runs}


def score(result: dict, key: str) -> float:
    return 100 * result["final"].get(key, math.nan)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def paired(without: dict[int, dict], with_: dict[int, dict], key: str) -> str:
    """Mean paired difference (with - without) over the shared seeds, its 95 % t interval and n."""
    diffs = [score(with_[s], key) - score(without[s], key) for s in sorted(without.keys() & with_.keys())]
    if len(diffs) < 2:
        return f"{diffs[0]:+.1f} (1 seed)" if diffs else "—"
    mean, half = statistics.mean(diffs), T95[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] ({len(diffs)})"


def tables() -> str:
    header = " | ".join(f"{name} %" for name in SCORES)
    lines = [
        f"| method | seeds | {header} | pseudo-label mIoU %: fused / scale 1 / other scales | time / run (s) |",
        "|---" * (len(SCORES) + 4) + "|",
    ]
    for method in GRID:
        runs = list(load(method).values())
        if not runs:
            continue
        cells = [mean_std([score(r, key) for r in runs]) for key in SCORES.values()]
        pseudo = [r.get("pseudo", {}) for r in runs]
        quality = "—"
        if pseudo and all("pseudo/mIoU" in p for p in pseudo):
            others = sorted({k for p in pseudo for k in p if k.startswith("pseudo_scale_") and k.endswith("/mIoU")})
            parts = [statistics.mean(p[k] * 100 for p in pseudo) for k in ("pseudo/mIoU", "pseudo_single_scale/mIoU")]
            parts += [statistics.mean(p[k] * 100 for p in pseudo if k in p) for k in others]
            quality = " / ".join(f"{v:.1f}" for v in parts)
            if others:
                quality += " (" + ", ".join(k.split("/")[0].removeprefix("pseudo_scale_") for k in others) + ")"
        seconds = statistics.median(r["seconds"] for r in runs)
        seeds = ",".join(str(r["seed"]) for r in runs)
        lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + f" | {quality} | {seconds:.0f} |")
    lines += ["", f"| paired difference [95 % CI] (n) | {header} |", "|---" * (len(SCORES) + 1) + "|"]
    for without, with_, what in PAIRS:
        a, b = load(without), load(with_)
        lines.append(f"| {what} | " + " | ".join(paired(a, b, key) for key in SCORES.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        run_args = argparse.Namespace(
            out=OUT, steps=STEPS, val_every=250, workers=1, force=False, extra=["--data.dataset=scenes"]
        )
        for seed in args.seeds:  # seed outermost: a partial grid still has whole pairs
            for method in args.methods:
                result = run_one(method, RATIO, seed, run_args)
                print(
                    f"{method} seed {seed}: "
                    + ", ".join(f"{name} {score(result, key):.1f}" for name, key in SCORES.items())
                    + f" ({result['seconds']:.0f} s)",
                    flush=True,
                )
    print(tables())


if __name__ == "__main__":
    main()
