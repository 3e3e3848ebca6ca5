"""How fast a network learns a segmentation task, supervised only: the probe that chose the demo model.

A plain PyTorch loop (no Lightning, no unlabeled data): AdamW (or SGD) with a linear warm-up
and poly decay on the labeled canvases (weak view without the horizontal flip), and at a few
points val mIoU, foreground IoU (every class but 0 against 0: can the network find the
objects at all, whatever their class?), per-class IoU and the wall time.

    python experiments/model_probe.py --arch FPN --model-kwargs \\
        '{"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}' --split full --steps 1000
    python experiments/model_probe.py --dataset scenes --flip --split 1_16     # a testbed
    python experiments/model_probe.py --root /data/my_canvases --num-classes 6 --split 1_16   # your own data

Converged means: the all-labels run gains little over the last quarter; label-limited means:
the ``--split 1_16`` run ends well below it at the same budget.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmetrics.classification import MulticlassJaccardIndex  # noqa: E402

from maskmatch_pl import SegmentationNetwork, SemiSupervisedDataModule  # noqa: E402
from maskmatch_pl.data.datasets import pad_collate  # noqa: E402
from maskmatch_pl.network import build_smp_model  # noqa: E402
from maskmatch_pl.optim import build_optimizer, poly_schedule  # noqa: E402


def evaluate(network: torch.nn.Module, loader: DataLoader, num_classes: int) -> tuple[torch.Tensor, float]:
    """Per-class IoU and foreground IoU (any class > 0 vs 0) over the whole val set."""
    network.eval()
    per_class = MulticlassJaccardIndex(num_classes, ignore_index=255, average=None)
    foreground = MulticlassJaccardIndex(2, ignore_index=255, average=None)
    with torch.no_grad():
        for batch in loader:
            prediction, mask = network(batch["image"]).argmax(1), batch["mask"]
            per_class.update(prediction, mask)
            foreground.update((prediction > 0).long(), torch.where((mask > 0) & (mask < 255), 1, mask))
    network.train()
    return per_class.compute(), float(foreground.compute()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="FPN")
    parser.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    parser.add_argument("--weights", default="packaged", help="'packaged', 'none' or a hub name")
    parser.add_argument("--model-kwargs", type=json.loads, default={})
    parser.add_argument("--dataset", default="demo", help="a generated dataset: demo, faces, defects or scenes")
    parser.add_argument("--root", default=None, help="a dataset root with splits/ (instead of --dataset)")
    parser.add_argument("--num-classes", type=int, default=None, help="with --root")
    parser.add_argument("--split", default="full")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lr-multi", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--evals", type=int, default=4, help="how many times to evaluate during the run")
    parser.add_argument("--flip", action="store_true", help="keep the weak view's horizontal flip")
    args = parser.parse_args()
    torch.manual_seed(0)
    common = dict(split=args.split, crop_size=args.crop_size, scale_range=(0.75, 1.25), num_workers=0)
    if args.root:
        data = SemiSupervisedDataModule(dataset="custom", root=args.root, num_classes=args.num_classes, **common)
    else:
        data = SemiSupervisedDataModule(dataset=args.dataset, **common)
    data.prepare_data()
    data.setup("fit")
    labeled = data.dataset("labeled")
    if not args.flip:
        labeled.weak = A.Compose([t for t in labeled.weak.transforms if not isinstance(t, A.HorizontalFlip)])
    labeled.length = args.steps * args.batch_size
    weights = None if args.weights == "none" else args.weights
    net = build_smp_model(args.arch, args.encoder, weights, data.num_classes, **args.model_kwargs)
    network = SegmentationNetwork(net)
    optimizer = build_optimizer(net, args.optimizer, args.lr, args.lr_multi, args.weight_decay)
    schedule = poly_schedule(optimizer, args.steps, 0.9, args.warmup_steps)
    train = DataLoader(labeled, batch_size=args.batch_size, shuffle=True, num_workers=1, drop_last=True)
    val = DataLoader(data.dataset("val"), batch_size=50, collate_fn=pad_collate)
    print(vars(args), flush=True)
    start, losses, every = time.perf_counter(), [], max(1, args.steps // args.evals)
    for step, batch in enumerate(train, start=1):
        loss = F.cross_entropy(network(batch["image"]), batch["mask"], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % every == 0 or step == args.steps:
            iou, foreground = evaluate(network, val, data.num_classes)
            print(
                f"step {step}: train loss {np.mean(losses[-50:]):.3f}, val mIoU {iou.mean() * 100:.1f} %, "
                f"foreground IoU {foreground * 100:.1f} %, {time.perf_counter() - start:.0f} s; "
                f"per class {(iou * 100).round().int().tolist()}",
                flush=True,
            )


if __name__ == "__main__":
    main()
