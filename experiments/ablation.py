"""The ablation grid on the demo data: each method, label ratio and seed trained with the
same step budget through the real CLI; prints a markdown table of val mIoU (mean ± std over
seeds) and wall time per run.

    python experiments/ablation.py                       # the whole grid (1/16 labeled, 3 seeds, 1,000 steps)
    python experiments/ablation.py --methods maskmatch --seeds 0   # one row alone
    python experiments/ablation.py --table-only --plot   # table and plots from saved results

Results go to ``--out`` (``experiments/results``): one JSON per run (a finished run is not
run again), the CSV logs, and with ``--plot`` two PNGs. Every semi-supervised run also scores
its pseudo-labels against the unlabeled canvases' masks, which no loss reads
(``data.unlabeled_masks_for_monitoring``), and keeps the last scores in its JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# method -> (config, CLI overrides); every row uses the demo data and the same step budget
METHODS: dict[str, tuple[str, list[str]]] = {
    "supervised": ("configs/demo_supervised.yaml", []),
    "fixmatch": ("configs/demo_fixmatch.yaml", []),
    # FixMatch plus the masked view as configs/demo.yaml added it until the seventh session, BatchNorm running
    # statistics from the labeled batch only (the sweep's base; "maskmatch" now uses norm_stats unmasked)
    "fixmatch+masked": (
        "configs/demo_fixmatch.yaml",
        [
            "--model.masking.weight=0.25",
            "--model.views.norm_stats=labeled",
            "--model.masking.ratio=0.7",
            "--model.masking.patch_size=8",
        ],
    ),
    "fixmatch+multiscale": ("configs/demo_fixmatch.yaml", ["--model.pseudo_labels.scales=[0.75, 1.0, 1.25]"]),
    # the closest fusion came to FixMatch on the demo (benchmarks/RESULTS.md, "Teacher scales relative to the image")
    "fixmatch+multiscale-image": (
        "configs/demo_fixmatch.yaml",
        [
            "--model.pseudo_labels.scales=[1.0, 1.25]",
            "--model.experimental.pseudo_label_fusion=geometric",
            "--model.experimental.pseudo_label_scale_reference=image",
        ],
    ),
    "maskmatch": ("configs/demo.yaml", []),  # the demo default: the masked view, pseudo-labels at one scale
    # the full method as we read the abstract: the masked view and pseudo-labels fused over three scales
    "maskmatch+multiscale": ("configs/demo.yaml", ["--model.pseudo_labels.scales=[0.75, 1.0, 1.25]"]),
    "maskmatch+ema": ("configs/demo.yaml", ["--model.pseudo_labels.teacher=ema"]),
    # MaskMatch with every student forward updating the BatchNorm statistics (the default before 2026-11-24)
    "maskmatch-bn-all": ("configs/demo.yaml", ["--model.views.norm_stats=all"]),
    "unimatch": ("configs/demo_unimatch.yaml", []),
    "unimatch+maskmatch": ("configs/demo_unimatch_maskmatch.yaml", []),
    "supervised-all-labels": ("configs/demo_supervised.yaml", ["--data.split=full"]),
    # issue 24 (weak teachers): class-wise self-adaptive thresholds (FreeMatch) on each method, and the
    # demo's tau / LR against the reference's
    "fixmatch+freematch": ("configs/demo_fixmatch.yaml", ["--model.pseudo_labels.threshold_rule=freematch"]),
    "maskmatch+freematch": ("configs/demo.yaml", ["--model.pseudo_labels.threshold_rule=freematch"]),
    "unimatch+freematch": ("configs/demo_unimatch.yaml", ["--model.pseudo_labels.threshold_rule=freematch"]),
    "fixmatch+freematch_prior": (
        "configs/demo_fixmatch.yaml",
        ["--model.pseudo_labels.threshold_rule=freematch_prior"],
    ),
    "maskmatch+freematch_prior": ("configs/demo.yaml", ["--model.pseudo_labels.threshold_rule=freematch_prior"]),
    "unimatch+freematch_prior": (
        "configs/demo_unimatch.yaml",
        ["--model.pseudo_labels.threshold_rule=freematch_prior"],
    ),
    # issue 42: tau lowered (never raised) for the classes the teacher predicts under their labeled share
    "fixmatch+prior_lowered": ("configs/demo_fixmatch.yaml", ["--model.pseudo_labels.threshold_rule=prior_lowered"]),
    "maskmatch+prior_lowered": ("configs/demo.yaml", ["--model.pseudo_labels.threshold_rule=prior_lowered"]),
    "fixmatch-tau0.95": ("configs/demo_fixmatch.yaml", ["--model.pseudo_labels.threshold=0.95"]),
    "fixmatch-lr0.003": ("configs/demo_fixmatch.yaml", ["--model.optimization.lr=0.003"]),
}
# every row ran with one fixed tau until prior_lowered became the default (issue 42): the rows that name no
# rule keep it, so that rerunning a recorded row reproduces it
FIXED_TAU = "--model.pseudo_labels.threshold_rule=fixed"
for _config, _overrides in METHODS.values():
    if not _config.endswith("demo_supervised.yaml") and not any("threshold_rule" in o for o in _overrides):
        _overrides.append(FIXED_TAU)
CORE = [
    "supervised",
    "fixmatch",
    "fixmatch+multiscale",
    "maskmatch",
    "unimatch",
    "unimatch+maskmatch",
]
CEILING = "supervised-all-labels"  # trained once per seed on every label ("full"), shown in every column
RATIOS = {"1_64": 1 / 64, "1_16": 1 / 16, "1_8": 1 / 8, "1_4": 1 / 4}
PSEUDO = ("pseudo/mIoU", "pseudo_single_scale/mIoU", "pseudo/acc_confident", "pseudo/confident_fraction")


def _commit() -> str | None:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src", "configs"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def _versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers (kernels, RNG streams, augmentations)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for package in (
        "torch",
        "lightning",
        "segmentation-models-pytorch",
        "timm",
        "albumentations",
        "numpy",
        "opencv-python-headless",
    ):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def run_one(method: str, ratio: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one cell of the grid (or load its saved result)."""
    folder = args.out / method / ratio / f"seed{seed}"
    result_file = folder / "result.json"
    if result_file.is_file() and not args.force:
        return json.loads(result_file.read_text())
    commit = _commit()  # the code the run starts with
    config, overrides = METHODS[method]
    split = "full" if method == CEILING else ratio
    command = [
        sys.executable,
        "-m",
        "maskmatch_pl.cli",
        "fit",
        "--config",
        config,
        *overrides,
        f"--data.split={split}",
        f"--seed_everything={seed}",
        f"--trainer.max_steps={args.steps}",
        "--trainer.max_epochs=-1",
        "--trainer.check_val_every_n_epoch=null",
        f"--trainer.val_check_interval={args.val_every}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={folder}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={folder}",
        "--trainer.logger.name=logs",
        "--trainer.logger.version=version_0",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        f"--data.num_workers={args.workers}",
        "--data.unlabeled_masks_for_monitoring=true",
        *args.extra,
    ]
    if folder.exists():  # an unfinished or --force'd cell: its old logs would block the new run
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (folder / "output.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{method} {ratio} seed {seed} failed; see {folder / 'output.log'}")
    rows = list(csv.DictReader(open(folder / "logs" / "version_0" / "metrics.csv")))
    curve = [(int(r["step"]), float(r["val/mIoU"])) for r in rows if r.get("val/mIoU")]
    scored = [r for r in rows if r.get(PSEUDO[0])]
    last = scored[-1] if scored else {}
    pseudo = {key: float(value) for key, value in last.items() if value and key.startswith("pseudo")}
    validated = [r for r in rows if r.get("val/mIoU")]
    final = {key: float(value) for key, value in validated[-1].items() if value and key.startswith("val/")}
    checked = [r for r in rows if r.get("health/flip_agreement")]
    health = {
        k: float(v) for k, v in (checked[-1] if checked else {}).items() if v and k.startswith(("health/", "pl_"))
    }
    health_curve = [  # every validation's monitor signals, to replay a warning rule over the run
        (int(r["step"]), {k: float(v) for k, v in r.items() if v and k.startswith(("health/", "pl_"))}) for r in checked
    ]
    pseudo_curve = [
        (int(r["step"]), {k: float(v) for k, v in r.items() if v and k.startswith("pseudo")}) for r in scored
    ]
    result = {
        "method": method,
        "ratio": ratio,
        "seed": seed,
        "steps": args.steps,
        "miou": curve[-1][1],
        "curve": curve,
        "pseudo": pseudo,
        "final": final,
        "health": health,
        "pseudo_curve": pseudo_curve,
        "health_curve": health_curve,
        "seconds": seconds,
        "commit": commit,
        "versions": _versions(),  # the numbers are deterministic for one set of versions, not across them
    }
    result_file.write_text(json.dumps(result))
    return result


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f} ({len(values)})" if values else "—"


def table(results: list[dict], methods: list[str], ratios: list[str]) -> str:
    """Markdown: val mIoU (%) mean ± std over seeds per method and ratio; at the first ratio the
    gain over the supervised row, the share of the gap to all labels that it closes, and the
    last pseudo-label mIoU against the unlabeled masks (fused over the teacher's scales / scale 1
    alone); the median wall time per run (robust to a run slowed by other work on the machine)."""

    def runs(method: str, ratio: str) -> list[dict]:
        return [r for r in results if r["method"] == method and (r["ratio"] == ratio or method == CEILING)]

    first = ratios[0]
    base = [r["miou"] * 100 for r in runs("supervised", first)]
    ceiling = [r["miou"] * 100 for r in runs(CEILING, first)]
    lines = [
        "| method | "
        + " | ".join(f"{r.replace('_', '/')} labeled: mIoU % (n)" for r in ratios)
        + " | gain over supervised | gap to all labels closed | pseudo-label mIoU %, fused / 1 scale"
        + " | time / run (s, median) |",
        "|---" * (len(ratios) + 5) + "|",
    ]
    for method in methods:
        cells = [_mean_std([r["miou"] * 100 for r in runs(method, ratio)]) for ratio in ratios]
        mine = [r["miou"] * 100 for r in runs(method, first)]
        gain = gap = pseudo = "—"
        if mine and base and method not in ("supervised", CEILING):
            delta = statistics.mean(mine) - statistics.mean(base)
            gain = f"{delta:+.1f}"
            if ceiling and statistics.mean(ceiling) > statistics.mean(base):
                gap = f"{delta / (statistics.mean(ceiling) - statistics.mean(base)):.0%}"
        scores = [r.get("pseudo", {}) for r in runs(method, first)]
        if scores and all("pseudo/mIoU" in x for x in scores):
            fused = statistics.mean(x["pseudo/mIoU"] * 100 for x in scores)
            single = statistics.mean(x["pseudo_single_scale/mIoU"] * 100 for x in scores)
            pseudo = f"{fused:.1f} / {single:.1f}"
        times = [r["seconds"] for ratio in ratios for r in runs(method, ratio)]
        time_cell = f"{statistics.median(times):.0f}" if times else "—"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {gain} | {gap} | {pseudo} | {time_cell} |")
    return "\n".join(lines)


def plot(
    results: list[dict],
    methods: list[str],
    ratios: list[str],
    out: Path,
    curves: tuple[str, ...] = ("supervised", "fixmatch", "maskmatch", "supervised-all-labels"),
) -> None:
    """``miou_by_method.png`` (mean ± std over seeds at the first ratio), ``miou_over_steps.png``
    (val mIoU over steps, mean over seeds, for ``curves``) and, with several ratios,
    ``miou_vs_ratio.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = ratios[0]
    shown = [m for m in methods if any(x["method"] == m and (x["ratio"] == first or m == CEILING) for x in results)]
    values = [
        [x["miou"] * 100 for x in results if x["method"] == m and (x["ratio"] == first or m == CEILING)] for m in shown
    ]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar(
        range(len(shown)),
        [statistics.mean(v) for v in values],
        yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values],
        capsize=3,
        color=["grey" if m in ("supervised", CEILING) else "tab:blue" for m in shown],
    )
    axis.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel(f"val mIoU (%), {first.replace('_', '/')} labeled")
    low = min(min(v) for v in values)
    axis.set_ylim(max(0, low - 10), None)
    figure.tight_layout()
    figure.savefig(out / "miou_by_method.png", dpi=120)
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in curves:
        runs = [x for x in results if x["method"] == method and (x["ratio"] == first or method == CEILING)]
        if runs:
            steps = [s for s, _ in runs[0]["curve"]]
            means = [statistics.mean(r["curve"][i][1] * 100 for r in runs) for i in range(len(steps))]
            axis.plot(steps, means, marker=".", label=f"{method} (n={len(runs)})")
    axis.set_xlabel("training step")
    axis.set_ylabel(f"val mIoU (%), {first.replace('_', '/')} labeled, mean over seeds")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "miou_over_steps.png", dpi=120)
    if len(ratios) > 1:
        figure, axis = plt.subplots(figsize=(6, 4))
        for method in methods:
            points = [
                (
                    RATIOS[r],
                    statistics.mean(x["miou"] * 100 for x in results if x["method"] == method and x["ratio"] == r),
                )
                for r in ratios
                if any(x["method"] == method and x["ratio"] == r for x in results)
            ]
            if points and method != CEILING:
                axis.plot(*zip(*points), marker="o", label=method)
        ceiling = [x["miou"] * 100 for x in results if x["method"] == CEILING]
        if ceiling:
            axis.axhline(statistics.mean(ceiling), color="black", linestyle="--", label=f"{CEILING} (ceiling)")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("fraction of training canvases labeled")
        axis.set_ylabel("val mIoU (%)")
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out / "miou_vs_ratio.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=[*CORE, CEILING], choices=list(METHODS))
    parser.add_argument("--ratios", nargs="+", default=["1_16"], choices=list(RATIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps per run (same for every row)")
    parser.add_argument("--val-every", type=int, default=250, help="validate every this many steps")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers per run")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    parser.add_argument("--force", action="store_true", help="rerun cells that already have a result")
    parser.add_argument("--table-only", action="store_true", help="only print the table of saved results")
    parser.add_argument("--plot", action="store_true", help="also save the two plots into --out")
    parser.add_argument(
        "--curves",
        nargs="+",
        default=["supervised", "fixmatch", "maskmatch", "supervised-all-labels"],
        choices=list(METHODS),
        help="methods in the plot of val mIoU over steps (mean over seeds, first ratio)",
    )
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more maskmatch-pl arguments")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the runs start in the repository root; a relative --out means here
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    results = []
    for seed in args.seeds:  # seed outermost: a partial grid still compares every method and ratio
        for ratio in args.ratios:
            for method in args.methods:
                if method == CEILING and ratio != args.ratios[0]:
                    continue  # one ceiling run per seed, whatever the ratios
                folder = args.out / method / ratio / f"seed{seed}" / "result.json"
                if args.table_only:
                    if folder.is_file():
                        results.append(json.loads(folder.read_text()))
                    continue
                result = run_one(method, ratio, seed, args)
                print(
                    f"{method:22s} {ratio:5s} seed {seed}: mIoU {result['miou'] * 100:.1f}  "
                    f"({result['seconds']:.0f} s)",
                    flush=True,
                )
                results.append(result)
    print(table(results, args.methods, args.ratios))
    if args.plot and results:
        plot(results, args.methods, args.ratios, args.out, tuple(args.curves))


if __name__ == "__main__":
    main()
