"""MaskMatch inside your own LightningModule, without MaskMatchModule.

A plain LightningModule with its own DataModule (synthetic shapes: discs and squares on
noise) adds MaskMatch's parts to its training step with maskmatch_pl's public API: an EMA
``Teacher`` with multi-scale pseudo-labels, ``cutmix`` of a view with its targets, the
``masked_view`` and the reference ``consistency_loss``. Run it:
``python examples/own_lightning_module.py`` (about a minute on a CPU).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from maskmatch_pl import PseudoLabels, Teacher, consistency_loss, cutmix, masked_view


class Shapes(Dataset):
    """Images of a disc (class 1) and a square (class 2) on noise; ``labeled=False`` returns
    the weak image and a strong (colour-jittered, noisier) view instead of a mask."""

    def __init__(self, size: int, labeled: bool, seed: int) -> None:
        self.size, self.labeled, self.seed = size, labeled, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_000 + index)
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        mask = torch.zeros(32, 32, dtype=torch.long)
        cy, cx, r = (torch.randint(6, 26, (2,), generator=g).float()).tolist() + [
            float(torch.randint(3, 7, (1,), generator=g))
        ]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        top, left = torch.randint(0, 22, (2,), generator=g).tolist()
        mask[top : top + 8, left : left + 8] = 2
        colours = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.3, 0.3], [0.3, 0.3, 1.0]])
        image = colours[mask].permute(2, 0, 1) + 0.3 * torch.randn(3, 32, 32, generator=g)
        if self.labeled:
            return {"image": image, "mask": mask}
        strong = image * (0.5 + torch.rand(3, 1, 1, generator=g)) + 0.3 * torch.randn(3, 32, 32, generator=g)
        return {"image": image, "strong": strong}


class ShapesData(L.LightningDataModule):
    def train_dataloader(self):
        labeled = DataLoader(Shapes(256, True, seed=0), batch_size=8, shuffle=True, drop_last=True)
        unlabeled = DataLoader(Shapes(256, False, seed=1), batch_size=8, shuffle=True, drop_last=True)
        return {"labeled": labeled, "unlabeled": unlabeled}


class MySegmenter(L.LightningModule):
    """Someone's own supervised module, with MaskMatch added to its training step."""

    def __init__(self, threshold: float = 0.9, mask_ratio: float = 0.7, patch: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 3, 1),
        )
        self.teacher = Teacher(self.net, "ema", momentum=0.99, scales=(0.75, 1.0, 1.25))
        self.threshold, self.mask_ratio, self.patch = threshold, mask_ratio, patch

    def training_step(self, batch, batch_idx):
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        targets: PseudoLabels = self.teacher.pseudo_labels(unlabeled["image"])  # multi-scale, on the weak view
        strong, targets = cutmix(unlabeled["strong"], targets)  # the view and its targets mixed alike
        masked = masked_view(strong, self.patch, self.mask_ratio)  # the masked-modeling view
        logits_l, logits_s, logits_m = self.net(torch.cat([labeled["image"], strong, masked])).chunk(3)
        loss_sup = F.cross_entropy(logits_l, labeled["mask"], ignore_index=255)
        loss_strong = consistency_loss(logits_s, targets, self.threshold)
        loss_masked = consistency_loss(logits_m, targets, self.threshold)
        loss = (loss_sup + loss_strong + loss_masked) / 2
        self.log_dict({"loss_sup": loss_sup, "loss_strong": loss_strong, "loss_masked": loss_masked}, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.teacher.update(self.net, self.global_step)  # the EMA weights follow, once per optimiser step

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=3e-3)


def main(max_steps: int = 200) -> MySegmenter:
    L.seed_everything(0)
    model = MySegmenter()
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.fit(model, ShapesData())
    return model


if __name__ == "__main__":
    main()
