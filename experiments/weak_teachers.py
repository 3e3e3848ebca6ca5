"""Issue 24's grid: do the demo's methods help where the teacher is weak, and does a remedy?

The demo configs, unchanged but for the data, on the two harder testbeds that ship
(``maskmatch_pl.data.testbeds``): ``faces`` (ten look-alike faces) and ``defects`` (binary,
1-5 % foreground), 1/64 labeled (25 of 1,600 images; chosen with supervised runs only, see
benchmarks/RESULTS.md), 1,000 steps, through the real CLI (``experiments/ablation.py``'s
``run_one``). Every semi-supervised run also scores its pseudo-labels against the unlabeled
masks (which no loss reads) and logs the mask-free health monitor, so the monitor can be
checked against the truth.

    python experiments/weak_teachers.py                 # run what is missing, print the tables
    python experiments/weak_teachers.py --table-only    # the tables from saved runs

Runs land under ``experiments/results/<dataset>/<method>/1_64/seed<k>/result.json``.
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

from ablation import CEILING, run_one  # noqa: E402

DATASETS = ("faces", "defects")
GRID = (
    "supervised",
    "fixmatch",
    "fixmatch+freematch",
    "fixmatch+freematch_prior",
    "maskmatch",
    "maskmatch+freematch_prior",
    "unimatch",
    "unimatch+freematch_prior",
)
DIAGNOSIS = ("fixmatch-tau0.95", "fixmatch-lr0.003")
RATIO = "1_64"
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}  # Student's t, 97.5 % quantile, by degrees of freedom


def load(dataset: str, method: str) -> list[dict]:
    folder = REPO / "experiments" / "results" / dataset / method / RATIO
    return [json.loads(p.read_text()) for p in sorted(folder.glob("seed*/result.json"))]


def score(result: dict, dataset: str) -> float:
    """mIoU (faces) or the defect class's IoU (defects), in %."""
    return 100 * (result["final"]["val/IoU_defect"] if dataset == "defects" else result["miou"])


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f} ({len(values)})"


def paired(a: list[dict], b: list[dict], dataset: str) -> str:
    """Mean paired difference b - a over shared seeds, with its 95 % t interval."""
    by_seed = {r["seed"]: score(r, dataset) for r in a}
    diffs = [score(r, dataset) - by_seed[r["seed"]] for r in b if r["seed"] in by_seed]
    if len(diffs) < 2:
        return f"{diffs[0]:+.1f} (1 seed)" if diffs else "—"
    mean, half = statistics.mean(diffs), T95[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] ({len(diffs)})"


def table(dataset: str) -> str:
    what = "defect IoU %" if dataset == "defects" else "mIoU %"
    base, ceiling = load(dataset, "supervised"), load(dataset, CEILING)
    lines = [
        f"| method | {what} (n) | paired vs supervised [95 % CI] | paired vs without the remedy | gap to all "
        "labels closed | pseudo-label acc. of confident pixels % | confident fraction % | flip agreement % "
        "| health warnings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in (*GRID, *DIAGNOSIS, CEILING):
        runs = load(dataset, method)
        if not runs:
            continue
        values = [score(r, dataset) for r in runs]
        gap = "—"
        if method not in ("supervised", CEILING) and base and ceiling:
            low = statistics.mean(score(r, dataset) for r in base)
            high = statistics.mean(score(r, dataset) for r in ceiling)
            gap = f"{(statistics.mean(values) - low) / (high - low):.0%}" if high > low else "—"
        pseudo = [r.get("pseudo", {}) for r in runs]
        acc = [p["pseudo/acc_confident"] * 100 for p in pseudo if "pseudo/acc_confident" in p]
        frac = [p["pseudo/confident_fraction"] * 100 for p in pseudo if "pseudo/confident_fraction" in p]
        flips = [
            r["health"]["health/flip_agreement"] * 100 for r in runs if "health/flip_agreement" in r.get("health", {})
        ]
        warned = [
            int(r["health"].get("pl_vanished", 0) + r["health"].get("pl_takeover", 0)) for r in runs if r.get("health")
        ]
        vs = paired(base, runs, dataset) if method not in ("supervised", CEILING) else "—"
        without = method.split("+freematch")[0] if "+freematch" in method else ""
        remedy = paired(load(dataset, without), runs, dataset) if without else "—"

        def avg(xs: list[float]) -> str:
            return f"{statistics.mean(xs):.1f}" if xs else "—"

        lines.append(
            f"| {method} | {mean_std(values)} | {vs} | {remedy} | {gap} | {avg(acc)} | {avg(frac)} | {avg(flips)} | "
            f"{'/'.join(map(str, warned)) or '—'} |"
        )
    return "\n".join(lines)


def per_class(dataset: str, method: str = "fixmatch", seed: int = 1) -> str:
    """Per class, over training: the accuracy of the confident pixels pseudo-labelled with it, and
    the share of its true pixels that are confident and pseudo-labelled right (its recall; runs
    older than that metric show the share of its true pixels that are confident), from the
    monitor's masks."""
    runs = [r for r in load(dataset, method) if r["seed"] == seed]
    if not runs or not runs[0].get("pseudo_curve"):
        return ""
    curve = runs[0]["pseudo_curve"]
    names = sorted({k.split("acc_confident_")[1] for _, v in curve for k in v if k.startswith("pseudo/acc_confident_")})
    lines = ["| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for step, values in curve:
        cells = []
        for name in names:
            acc = values.get(f"pseudo/acc_confident_{name}")
            frac = values.get(f"pseudo/recall_confident_{name}", values.get(f"pseudo/confident_fraction_{name}"))
            cells.append(f"{acc * 100:.0f} / {frac * 100:.0f}" if acc is not None and frac is not None else "—")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def proxy_check(dataset: str) -> str:
    """How well the mask-free flip agreement tracks the true pseudo-label accuracy: Pearson's r
    over every validation point of every semi-supervised run whose CSV log is on disk (the logs
    are not committed; the runs' ``result.json`` keep the last values only)."""
    import csv

    pairs = []
    for log in sorted((REPO / "experiments" / "results" / dataset).glob(f"*/{RATIO}/seed*/logs/version_0/metrics.csv")):
        for row in csv.DictReader(open(log)):
            if row.get("health/flip_agreement") and row.get("pseudo/acc"):
                pairs.append((float(row["health/flip_agreement"]), float(row["pseudo/acc"])))
    if len(pairs) < 3:
        return f"{dataset}: fewer than 3 points"
    xs, ys = zip(*pairs)
    return f"{dataset}: r = {statistics.correlation(xs, ys):.2f} over {len(pairs)} validation points"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        for seed in args.seeds:
            for dataset in DATASETS:
                for method in (*GRID, *((CEILING, *DIAGNOSIS) if seed == 0 else ())):
                    run_args = argparse.Namespace(
                        out=REPO / "experiments" / "results" / dataset,
                        steps=1000,
                        val_every=250,
                        workers=1,
                        force=False,
                        extra=[f"--data.dataset={dataset}"],
                    )
                    result = run_one(method, RATIO, seed, run_args)
                    print(f"{dataset} {method} seed {seed}: {score(result, dataset):.1f}", flush=True)
    for dataset in DATASETS:
        print(f"\n### {dataset}\n\n{table(dataset)}\n")
        title = "FixMatch, seed 1, per class: confident-pixel accuracy / recall of confident pixels (%)"
        print(f"{title}\n\n{per_class(dataset)}\n")
        print("flip agreement against pseudo-label accuracy:", proxy_check(dataset))


if __name__ == "__main__":
    main()
