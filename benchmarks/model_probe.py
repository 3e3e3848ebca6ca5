"""How fast a network learns the demo task, supervised only: the probe that chose the demo model.

A plain PyTorch loop (no Lightning, no unlabeled data): AdamW + poly decay on the labeled demo
canvases (weak view without the horizontal flip, which turns digits into other shapes), val
mIoU and per-class IoU four times per run, and the wall time.

    python benchmarks/model_probe.py --arch DeepLabV3Plus --encoder tu-tf_efficientnet_lite0 \\
        --weights packaged --model-kwargs '{"decoder_channels": 64}' --split full --steps 400 --lr 3e-3
    python benchmarks/model_probe.py --arch Unet --encoder tu-mobilenetv3_small_100 \\
        --model-kwargs '{"encoder_depth": 5, "decoder_channels": [64, 32, 16, 16, 16]}' --split full
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

from maskmatch_pl.data.datamodule import SemiSupervisedDataModule  # noqa: E402
from maskmatch_pl.data.datasets import pad_collate  # noqa: E402
from maskmatch_pl.network import build_smp_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="DeepLabV3Plus")
    parser.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="'packaged' for the pip-shipped ImageNet weights")
    parser.add_argument("--model-kwargs", type=json.loads, default={})
    parser.add_argument("--split", default="1_16")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--flip", action="store_true", help="keep the weak view's horizontal flip")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = SemiSupervisedDataModule(dataset="demo", split=args.split, crop_size=64, scale_range=(0.75, 1.25))
    data.prepare_data()
    data.setup("fit")
    labeled = data._datasets["labeled"]
    if not args.flip:
        labeled.weak = A.Compose([t for t in labeled.weak.transforms if not isinstance(t, A.HorizontalFlip)])
    labeled.length = args.steps * args.batch_size
    net = build_smp_model(args.arch, args.encoder, args.weights, data.num_classes, **args.model_kwargs)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - step / args.steps) ** 0.9)
    train = DataLoader(labeled, batch_size=args.batch_size, shuffle=True, num_workers=1, drop_last=True)
    val = DataLoader(data._datasets["val"], batch_size=50, collate_fn=pad_collate)

    def evaluate() -> torch.Tensor:
        net.eval()
        metric = MulticlassJaccardIndex(data.num_classes, ignore_index=255, average=None)
        with torch.no_grad():
            for batch in val:
                metric.update(net(batch["image"]).argmax(1), batch["mask"])
        net.train()
        return metric.compute()

    start, losses = time.perf_counter(), []
    for step, batch in enumerate(train, start=1):
        loss = F.cross_entropy(net(batch["image"]), batch["mask"], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 4) == 0 or step == args.steps:
            iou = evaluate() * 100
            print(
                f"step {step}: train loss {np.mean(losses[-50:]):.3f}, val mIoU {iou.mean():.1f} %, "
                f"{time.perf_counter() - start:.0f} s; per class {iou.round().int().tolist()}",
                flush=True,
            )


if __name__ == "__main__":
    main()
