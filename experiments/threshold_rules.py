"""Threshold rules on every testbed (issue 42): FixMatch with the fixed tau, with ``freematch_prior`` and
with ``prior_lowered`` (tau lowered, never raised, for the classes the teacher under-predicts), seeds
paired; each run also keeps every validation's health signals (``health_curve``) for the monitor's
false-alarm / miss table (``experiments/health_replay.py``).

    python experiments/threshold_rules.py --beds defects demo --methods fixmatch+prior_lowered --seeds 0 1 2
    python experiments/threshold_rules.py --table-only

Each testbed keeps its own budget and data (the demo configs unchanged but for the data, as the earlier
grids ran them): demo digits 1/16, letters 64 labeled, faces and defects 1/64, scenes 1/64, 1,000 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

from ablation import run_one  # noqa: E402

OUT = REPO / "experiments" / "results" / "threshold-rules"
RULES = ("fixmatch", "fixmatch+freematch_prior", "fixmatch+prior_lowered")
RULE_NAMES = {"fixmatch": "fixed tau", "fixmatch+freematch_prior": "freematch_prior", "fixmatch+prior_lowered": "prior_lowered"}
# testbed -> (labeled split, score key, CLI overrides; the letters' are built on first use)
BEDS: dict[str, tuple[str, str, list[str] | None]] = {
    "demo": ("1_16", "val/mIoU", []),
    "letters": ("64", "val/mIoU", None),
    "faces": ("1_64", "val/mIoU", ["--data.dataset=faces"]),
    "defects": ("1_64", "val/IoU_defect", ["--data.dataset=defects"]),
    "scenes": ("1_64", "val/mIoU", ["--data.dataset=scenes"]),
}


def overrides(bed: str) -> list[str]:
    """The testbed's data overrides (the letters' glyph canvases are written once into the cache)."""
    extra = BEDS[bed][2]
    if extra is not None:
        return extra
    from second_dataset import CLASS_NAMES, build_glyph_canvases

    return [
        "--data.dataset=custom",
        f"--data.root={build_glyph_canvases()}",
        f"--data.num_classes={len(CLASS_NAMES)}",
        f"--data.class_names=[{', '.join(CLASS_NAMES)}]",
    ]


def load(bed: str, method: str) -> dict[int, dict]:
    """Saved runs of one row, by seed."""
    found = {}
    for path in sorted((OUT / bed / method).glob("*/seed*/result.json")):
        result = json.loads(path.read_text())
        found[result["seed"]] = result
    return found


def score(result: dict, bed: str) -> float:
    return result["final"].get(BEDS[bed][1], result["miou"]) * 100


def _interval(differences: list[float]) -> str:
    """Mean and 95 % t interval of paired differences."""
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return f"{mean:+.1f} (1 seed)"
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(len(differences), 2.0)
    half = t * statistics.stdev(differences) / math.sqrt(len(differences))
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"


def table() -> str:
    """Markdown: per testbed, each rule's score (mean ± std, n) and the lowering rule's paired differences."""
    lines = [
        "| testbed (score) | fixed tau | `freematch_prior` | `prior_lowered` | lowered - fixed [95 % CI] "
        "| lowered - prior [95 % CI] | per seed (fixed / prior / lowered) |",
        "|---|---|---|---|---|---|---|",
    ]
    for bed in BEDS:
        rows = {method: load(bed, method) for method in RULES}
        if not any(rows.values()):
            continue
        cells = []
        for method in RULES:
            values = [score(r, bed) for r in rows[method].values()]
            cells.append(
                f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0:.1f} ({len(values)})"
                if values
                else "—"
            )
        pairs = []
        for base in RULES[:2]:
            seeds = sorted(set(rows[base]) & set(rows[RULES[2]]))
            diffs = [score(rows[RULES[2]][s], bed) - score(rows[base][s], bed) for s in seeds]
            pairs.append(_interval(diffs) if diffs else "—")
        seeds = sorted(set().union(*rows.values()))
        per_seed = ", ".join(
            " / ".join(f"{score(rows[m][s], bed):.1f}" if s in rows[m] else "—" for m in RULES) for s in seeds
        )
        key = BEDS[bed][1].replace("val/", "")
        lines.append(f"| {bed} ({key}) | " + " | ".join(cells + pairs) + f" | {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beds", nargs="+", default=list(BEDS), choices=list(BEDS))
    parser.add_argument("--methods", nargs="+", default=list(RULES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if not args.table_only:
        for bed in args.beds:
            run_args = argparse.Namespace(
                out=OUT / bed, steps=1000, val_every=250, workers=1, force=False, extra=overrides(bed)
            )
            for seed in args.seeds:
                for method in args.methods:
                    result = run_one(method, BEDS[bed][0], seed, run_args)
                    print(f"{bed} {method} seed {seed}: {score(result, bed):.1f} ({result['seconds']:.0f} s)", flush=True)
    print(table())


if __name__ == "__main__":
    main()
