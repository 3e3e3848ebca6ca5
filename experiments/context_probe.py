"""Does the masked view need context? FixMatch with and without it on demo canvases whose digits
all share one class, so that a hidden digit's class can be read from the other digits.

The diagnosis of the demo (benchmarks/RESULTS.md, "The sweep") is that a masked view teaches
nothing there because digits are placed independently: nothing around a hidden patch predicts it.
This builds the same canvases (same digits, sizes, colours, placement rules; cached beside the
demo) with one class per canvas, trains each method through the real CLI on them as a user's
``dataset: custom`` data, and prints val mIoU per seed next to the demo's own runs of the grid.

    python experiments/context_probe.py                   # fixmatch and fixmatch+masked, seeds 0 1
    python experiments/context_probe.py --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

from ablation import run_one  # noqa: E402

CLASS_NAMES = ["background", *(f"digit_{d}" for d in range(10))]
GRID_NAME = {"fixmatch+masked": "maskmatch"}  # the grid's run of the same config


def build_context_canvases(seed: int = 0) -> Path:
    """The demo's canvases with one digit class per canvas, built once into the demo cache."""
    from maskmatch_pl.data.demo import (
        DEMO_VERSION,
        build_once,
        default_cache_dir,
        load_mnist_5k,
        write_canvas_dataset,
    )

    root = default_cache_dir() / f"demo-{DEMO_VERSION}-one-class-per-canvas-seed{seed}"

    def fill(staging: Path) -> None:
        write_canvas_dataset(staging, *load_mnist_5k(), seed, one_class_per_canvas=True)

    return build_once(root, fill, f"maskmatch-pl demo canvases {DEMO_VERSION}, one class per canvas, seed {seed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["fixmatch", "fixmatch+masked"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "context")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.out = args.out.resolve()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    root = build_context_canvases()
    data = [
        "--data.dataset=custom",
        f"--data.root={root}",
        "--data.num_classes=11",
        f"--data.class_names=[{', '.join(CLASS_NAMES)}]",
    ]
    run_args = argparse.Namespace(
        steps=args.steps, val_every=args.val_every, workers=args.workers, out=args.out, force=False, extra=data
    )
    print("| method | canvases | val mIoU % per seed | mean ± std | time / run (s) |")
    print("|---|---|---|---|---|")
    for method in args.methods:
        for label, folder in (
            ("one class per canvas", args.out),
            ("the demo (grid)", REPO / "experiments" / "results"),
        ):
            if folder == args.out and not args.table_only:
                results = [run_one(method, "1_16", seed, run_args) for seed in args.seeds]
            else:
                name = method if folder == args.out else GRID_NAME.get(method, method)
                paths = [folder / name / "1_16" / f"seed{seed}" / "result.json" for seed in args.seeds]
                results = [json.loads(path.read_text()) for path in paths if path.is_file()]
            if not results:
                continue
            values = [r["miou"] * 100 for r in results]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            times = statistics.median(r["seconds"] for r in results)
            print(
                f"| {method} | {label} | {' / '.join(f'{v:.1f}' for v in values)} "
                f"| {statistics.mean(values):.1f} ± {spread:.1f} | {times:.0f} |"
            )


if __name__ == "__main__":
    main()
