"""Does multi-scale fusion help a trained teacher, and which fusion rule? Scored on val images.

Loads a checkpoint (its data settings come from the checkpoint), predicts every val image at
each scale, fuses the scales with each rule, and prints one row per scale and per (scale set,
rule): mIoU of the arg max, the share of each class's pixels that reach the confidence
threshold (mean over the classes, background excluded), and the mIoU over those confident
pixels alone. It answers, for a user's own data, what the per-scale training monitor
(``pseudo_scale_<s>/*``) answers on moving weak views: whether the off-scales are worse than
scale 1, and whether fusing them costs targets (fewer confident pixels at the same tau).

    python benchmarks/fusion_probe.py runs/demo/lightning_logs/version_0/checkpoints/last.ckpt
    python benchmarks/fusion_probe.py CKPT --scales 0.75 1.0 1.25 --sets "0.75 1.0 1.25" "1.0 1.25" --tau 0.7
    python benchmarks/fusion_probe.py CKPT --input-scale 0.75   # the images first resized, as a weak view at 0.75
    python benchmarks/fusion_probe.py CKPT --input-scale 0.75 --reference image   # scales relative to the image
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
import torch.nn.functional as F


def main() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from maskmatch_pl import (
        MaskMatchModule,
        PseudoLabelMonitor,
        SemiSupervisedDataModule,
        fuse_probabilities,
        image_scale_probabilities,
        scale_probabilities,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--scales", nargs="+", type=float, default=[0.75, 1.0, 1.25], help="scales scored alone")
    parser.add_argument(
        "--sets", nargs="+", default=["0.75 1.0 1.25", "1.0 1.25"], help="scale sets to fuse, each a quoted list"
    )
    parser.add_argument("--rules", nargs="+", default=["mean", "geometric"], choices=["mean", "geometric"])
    parser.add_argument("--tau", type=float, default=None, help="confidence threshold (default: the checkpoint's)")
    parser.add_argument(
        "--input-scale",
        type=float,
        default=1.0,
        help="resize each val image (and its mask) by this factor first, as the weak views' random rescale does",
    )
    parser.add_argument(
        "--reference",
        choices=["view", "image"],
        default=None,
        help="scales relative to the (resized) image as it comes, or to its stored size, i.e. divided by "
        "--input-scale (default: the checkpoint's pseudo_label_scale_reference)",
    )
    parser.add_argument("--keep-background", action="store_true", help="count class 0 in the confident share")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    module = MaskMatchModule.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    data = torch.load(args.checkpoint, map_location="cpu", weights_only=False).get("datamodule_hyper_parameters")
    if not data:
        raise SystemExit(
            f"{args.checkpoint} holds no data settings (datamodule_hyper_parameters): was it saved by fit?"
        )
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    data.update(num_workers=0, unlabeled_masks_for_monitoring=False)
    datamodule = SemiSupervisedDataModule(**data)
    datamodule.setup("fit")
    tau = module.hparams.pseudo_labels["threshold"] if args.tau is None else args.tau
    reference = args.reference or module.hparams.experimental["pseudo_label_scale_reference"]
    sets = [[float(s) for s in text.split()] for text in args.sets]
    scales = sorted({*args.scales, *(s for group in sets for s in group)})
    rows = [f"scale {s:g}" for s in args.scales] + [
        f"{rule} of {' / '.join(f'{s:g}' for s in group)}" for group in sets for rule in args.rules
    ]
    monitor = PseudoLabelMonitor(module.hparams.num_classes, rows)
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            images, masks = batch["image"], batch["mask"]
            if args.input_scale != 1.0:
                images = F.interpolate(images, scale_factor=args.input_scale, mode="bilinear", align_corners=False)
                masks = F.interpolate(masks[:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0].long()
            network, flip = module.teacher.network, module.hparams.pseudo_labels["flip"]
            if reference == "image":
                factors = torch.full((len(images),), args.input_scale)
                predicted = image_scale_probabilities(network, images, scales, factors, flip)
            else:
                predicted = scale_probabilities(network, images, scales, flip)
            per_scale = dict(zip(scales, predicted))
            for scale in args.scales:
                monitor.update(f"scale {scale:g}", per_scale[scale], masks, tau)
            for group in sets:
                for rule in args.rules:
                    fused = fuse_probabilities([per_scale[s] for s in group], rule)
                    name = f"{rule} of {' / '.join(f'{s:g}' for s in group)}"
                    monitor.update(name, fused, masks, tau)
    names = [str(i) for i in range(module.hparams.num_classes)]
    metrics = monitor.compute(names)
    first = 0 if args.keep_background else 1
    print(f"{args.checkpoint}: val images at input scale {args.input_scale:g}, scales of the {reference}, tau {tau}\n")
    print(
        "| teacher prediction | mIoU % | class pixels confident (mean over classes) | mIoU % of the confident pixels |"
    )
    print("|---|---|---|---|")
    for row in rows:
        keys = [f"{row}/confident_fraction_{n}" for n in names[first:]]
        shares = [metrics[key].item() for key in keys if key in metrics]
        share = f"{statistics.mean(shares):.0%}" if shares else "—"
        print(
            f"| {row} | {metrics[f'{row}/mIoU'].item() * 100:.1f} | {share} "
            f"| {metrics[f'{row}/mIoU_confident'].item() * 100:.1f} |"
        )


if __name__ == "__main__":
    main()
