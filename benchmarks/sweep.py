"""The sweep behind the demo defaults: one knob at a time from the demo configs, 1/16 labeled,
300 steps; prints a markdown table of val mIoU (mean ± std over seeds) and wall time per run.

    python benchmarks/sweep.py                                   # every variant, seed 0
    python benchmarks/sweep.py --table-only                      # the table of the saved runs
    python benchmarks/sweep.py --variants "maskmatch, sequential" --seeds 0 1 2

Each run goes through :func:`ablation.run_one` (the real CLI, one JSON per run, a finished run
is not run again) into ``--out/<variant>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from ablation import REPO, run_one

# variant -> (method of the ablation grid, extra maskmatch-pl arguments, steps); 1/16 labeled.
# Each question is answered against its neighbour: BatchNorm batches (concat vs sequential
# forwards), a ramp-up of the unlabeled weights, the masked view's ratio, patch size and source
# image, which forwards update the BatchNorm running statistics, and the confidence threshold.
CONCAT, SEQUENTIAL = "--model.student_forward=concat", "--model.student_forward=sequential"
ALL_BN = "--model.norm_stats=all"  # configs/demo.yaml says `labeled` since 2026-11-24; these rows ran before
VARIANTS: dict[str, tuple[str, list[str], int]] = {
    "supervised": ("supervised", [], 300),
    "fixmatch, concat": ("fixmatch", [CONCAT], 300),
    "fixmatch, concat, ramp-up 150": ("fixmatch", [CONCAT, "--model.unsup_rampup_steps=150"], 300),
    "fixmatch, sequential": ("fixmatch", [SEQUENTIAL], 300),
    "maskmatch, concat": ("maskmatch", [ALL_BN, CONCAT], 300),
    "maskmatch, concat, ramp-up 150": ("maskmatch", [ALL_BN, CONCAT, "--model.unsup_rampup_steps=150"], 300),
    "maskmatch, sequential": ("maskmatch", [ALL_BN, SEQUENTIAL], 300),
    "maskmatch, sequential, mask ratio 0.5": ("maskmatch", [ALL_BN, SEQUENTIAL, "--model.mask_ratio=0.5"], 300),
    "maskmatch, sequential, patch 16": ("maskmatch", [ALL_BN, SEQUENTIAL, "--model.mask_patch_size=16"], 300),
    "fixmatch, sequential, BN stats from labeled": ("fixmatch", [SEQUENTIAL, "--model.norm_stats=labeled"], 300),
    "maskmatch, sequential, BN stats from labeled": ("maskmatch", [SEQUENTIAL, "--model.norm_stats=labeled"], 300),
    "maskmatch, sequential, BN stats from labeled, masked view of the weak image": (
        "maskmatch",
        [SEQUENTIAL, "--model.norm_stats=labeled", "--model.masked_view=weak"],
        300,
    ),
    "fixmatch, sequential, threshold 0.8": ("fixmatch", [SEQUENTIAL, "--model.conf_threshold=0.8"], 300),
    "maskmatch, sequential, BN stats from labeled, threshold 0.8": (
        "maskmatch",
        [SEQUENTIAL, "--model.norm_stats=labeled", "--model.conf_threshold=0.8"],
        300,
    ),
}


def folder_name(variant: str) -> str:
    return variant.replace(", ", "_").replace(" ", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--ratio", default="1_16")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sweep")
    parser.add_argument("--table-only", action="store_true", help="only print the table of saved runs")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the runs start in the repository root; a relative --out means here
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    lines = ["| variant | steps | val mIoU % (n) | time / run (s) |", "|---|---|---|---|"]
    for name in args.variants:
        method, extra, steps = VARIANTS[name]
        run_args = argparse.Namespace(
            steps=steps,
            val_every=args.val_every,
            workers=args.workers,
            out=args.out / folder_name(name),
            force=False,
            extra=extra,
        )
        if args.table_only:
            saved = [run_args.out / method / args.ratio / f"seed{seed}" / "result.json" for seed in args.seeds]
            results = [json.loads(path.read_text()) for path in saved if path.is_file()]
            if not results:
                continue
        else:
            results = [run_one(method, args.ratio, seed, run_args) for seed in args.seeds]
        values = [r["miou"] * 100 for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        seconds = statistics.mean(r["seconds"] for r in results)
        miou = f"{statistics.mean(values):.1f} ± {spread:.1f} ({len(values)})"
        lines.append(f"| {name} | {run_args.steps} | {miou} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
