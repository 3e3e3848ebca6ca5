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
RULE_NAMES = {
    "fixmatch": "fixed tau",
    "fixmatch+freematch_prior": "freematch_prior",
    "fixmatch+prior_lowered": "prior_lowered",
}
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


# rows run before this grid, in the same configs, data and budgets: read where this grid has none (their
# commit and package versions are in each result.json; the table marks them)
RECORDED = {
    "demo": {"fixmatch": "rerun-current", "fixmatch+freematch_prior": "defaults/demo"},
    "letters": {"fixmatch": "defaults/letters", "fixmatch+freematch_prior": "defaults/letters"},
    "faces": {"fixmatch": "faces", "fixmatch+freematch_prior": "faces"},
    "defects": {"fixmatch": "defects", "fixmatch+freematch_prior": "defects"},
    "scenes": {"fixmatch": "scenes", "fixmatch+freematch_prior": "scenes"},
}


def load(bed: str, method: str) -> dict[int, dict]:
    """Saved runs of one row, by seed: this grid's, and for the seeds it has not run, the recorded ones
    (``RECORDED``), marked ``recorded``."""
    found = {}
    if method in RECORDED.get(bed, {}):
        for path in sorted((OUT.parent / RECORDED[bed][method] / method).glob("*/seed*/result.json")):
            result = json.loads(path.read_text())
            found[result["seed"]] = {**result, "recorded": RECORDED[bed][method]}
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


SUPERVISED = {
    "demo": "rerun-current",
    "letters": "second-dataset",
    "faces": "faces",
    "defects": "defects",
    "scenes": "scenes",
}


def supervised(bed: str) -> dict[int, float]:
    """The testbed's recorded supervised runs (same configs, data and budget), score by seed."""
    runs = (OUT.parent / SUPERVISED[bed] / "supervised").glob("*/seed*/result.json")
    return {r["seed"]: score(r, bed) for r in map(lambda p: json.loads(p.read_text()), sorted(runs))}


def table() -> str:
    """Markdown: per testbed, supervised and each rule's score (mean ± std, n) on the seeds of the
    lowering rule's runs, and the lowering rule's paired differences. A dagger marks a row read from
    ``RECORDED`` (run before this grid)."""
    lines = [
        "| testbed (score) | supervised | fixed tau | `freematch_prior` | `prior_lowered` "
        "| lowered - supervised | lowered - fixed [95 % CI] | lowered - prior [95 % CI] "
        "| per seed (fixed / prior / lowered) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bed in BEDS:
        rows = {method: load(bed, method) for method in RULES}
        seeds = sorted(rows[RULES[2]])
        if not seeds:
            continue
        base = supervised(bed)
        rows["supervised"] = {s: {"score": base[s]} for s in seeds if s in base}

        def value(method: str, seed: int, rows: dict = rows, bed: str = bed) -> float:
            run = rows[method][seed]
            return run["score"] if "score" in run else score(run, bed)

        cells = []
        for method in ("supervised", *RULES):
            values = [value(method, s) for s in seeds if s in rows[method]]
            mark = "†" if any("recorded" in rows[method].get(s, {}) for s in seeds) else ""
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f} ({len(values)}){mark}" if values else "—")
        for other in ("supervised", *RULES[:2]):
            paired = [s for s in seeds if s in rows[other]]
            diffs = [value(RULES[2], s) - value(other, s) for s in paired]
            cells.append(_interval(diffs) if diffs else "—")
        per_seed = ", ".join(" / ".join(f"{value(m, s):.1f}" if s in rows[m] else "—" for m in RULES) for s in seeds)
        key = BEDS[bed][1].replace("val/", "")
        lines.append(f"| {bed} ({key}) | " + " | ".join(cells) + f" | {per_seed} |")
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
                    print(
                        f"{bed} {method} seed {seed}: {score(result, bed):.1f} ({result['seconds']:.0f} s)", flush=True
                    )
    print(table())


if __name__ == "__main__":
    main()
