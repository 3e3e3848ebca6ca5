"""The ablation grid on the demo data: each method, label ratio and seed trained with the
same step budget through the real CLI; prints a markdown table of val mIoU (mean ± std over
seeds) and wall time per run.

    python benchmarks/ablation.py                       # the whole grid (about an hour, 2 CPU cores)
    python benchmarks/ablation.py --methods maskmatch --ratios 1_16 --seeds 0   # one row alone
    python benchmarks/ablation.py --table-only --plot   # table and plots from saved results

Results go to ``--out`` (``benchmarks/results``): one JSON per run (a finished run is not
run again), the CSV logs, and with ``--plot`` two PNGs.
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
    # the masked view as MaskMatch (configs/demo.yaml) adds it: BatchNorm statistics from the labeled forward only
    "fixmatch+masked": ("configs/demo_fixmatch.yaml", ["--model.masked_weight=0.5", "--model.norm_stats=labeled"]),
    "fixmatch+multiscale": ("configs/demo_fixmatch.yaml", ["--model.pseudo_label_scales=[0.75, 1.0, 1.25]"]),
    "maskmatch": ("configs/demo.yaml", []),
    "maskmatch+ema": ("configs/demo.yaml", ["--model.teacher=ema"]),
    # MaskMatch with every student forward updating the BatchNorm statistics (the default before 2026-11-24)
    "maskmatch-bn-all": ("configs/demo.yaml", ["--model.norm_stats=all"]),
    "unimatch": ("configs/demo_unimatch.yaml", []),
    "unimatch+maskmatch": ("configs/demo_unimatch_maskmatch.yaml", []),
    "supervised-all-labels": ("configs/demo_supervised.yaml", ["--data.split=full"]),
}
CORE = ["supervised", "fixmatch", "fixmatch+masked", "fixmatch+multiscale", "maskmatch", "maskmatch+ema"]
CEILING = "supervised-all-labels"  # trained once per seed on every label ("full"), shown in every column
RATIOS = {"1_16": 1 / 16, "1_4": 1 / 4}


def run_one(method: str, ratio: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one cell of the grid (or load its saved result)."""
    folder = args.out / method / ratio / f"seed{seed}"
    result_file = folder / "result.json"
    if result_file.is_file() and not args.force:
        return json.loads(result_file.read_text())
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
        f"--trainer.logger.init_args.save_dir={folder}",
        "--trainer.logger.init_args.name=logs",
        "--trainer.logger.init_args.version=version_0",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--model.log_panels=0",
        f"--data.num_workers={args.workers}",
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
    result = {
        "method": method,
        "ratio": ratio,
        "seed": seed,
        "steps": args.steps,
        "miou": curve[-1][1],
        "curve": curve,
        "seconds": seconds,
    }
    result_file.write_text(json.dumps(result))
    return result


def table(results: list[dict], methods: list[str], ratios: list[str]) -> str:
    """Markdown: val mIoU (%) mean ± std over seeds per method and ratio, and the median wall time
    per run (robust to a run slowed by other work on the machine)."""
    lines = [
        "| method | "
        + " | ".join(f"{r.replace('_', '/')} labeled: mIoU % (n)" for r in ratios)
        + " | time / run (s, median) |",
        "|---" * (len(ratios) + 2) + "|",
    ]
    for method in methods:
        cells, times = [], []
        for ratio in ratios:
            runs = [r for r in results if r["method"] == method and (r["ratio"] == ratio or method == CEILING)]
            values = [r["miou"] * 100 for r in runs]
            times += [r["seconds"] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f} ({len(values)})" if values else "—")
        time_cell = f"{statistics.median(times):.0f}" if times else "—"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {time_cell} |")
    return "\n".join(lines)


def plot(
    results: list[dict],
    methods: list[str],
    ratios: list[str],
    out: Path,
    curves: tuple[str, ...] = ("supervised", "maskmatch"),
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for method in methods:
        points = [
            (RATIOS[r], statistics.mean(x["miou"] * 100 for x in results if x["method"] == method and x["ratio"] == r))
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
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in curves:
        for result in results:
            if result["method"] == method and result["ratio"] == ratios[0] and result["seed"] == 0:
                axis.plot(*zip(*[(s, m * 100) for s, m in result["curve"]]), marker=".", label=method)
    axis.set_xlabel("training step")
    axis.set_ylabel(f"val mIoU (%), {ratios[0].replace('_', '/')} labeled, seed 0")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "miou_over_steps.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=[*CORE, CEILING], choices=list(METHODS))
    parser.add_argument("--ratios", nargs="+", default=list(RATIOS), choices=list(RATIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps per run (same for every row)")
    parser.add_argument("--val-every", type=int, default=50, help="validate every this many steps")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers per run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--force", action="store_true", help="rerun cells that already have a result")
    parser.add_argument("--table-only", action="store_true", help="only print the table of saved results")
    parser.add_argument("--plot", action="store_true", help="also save the two plots into --out")
    parser.add_argument(
        "--curves",
        nargs="+",
        default=["supervised", "maskmatch"],
        choices=list(METHODS),
        help="methods in the plot of val mIoU over steps (seed 0, first ratio)",
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
