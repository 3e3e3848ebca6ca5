"""The UniMatch objective against a from-scratch reading of the reference (METHOD.md)."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .conftest import flat_module
from .test_module import make_batch

cutmix_file = importlib.import_module("maskmatch_pl.cutmix")  # the module, not the function of that name


class EncoderDecoder(nn.Module):
    """A small network with the encoder / decoder / segmentation_head split that smp models
    have, without BatchNorm so that one forward per view equals one concatenated forward."""

    def __init__(self, classes=11):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.segmentation_head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return self.segmentation_head(self.decoder(self.encoder(x)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1, self.stage2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = torch.relu(self.stage1(x))
        return [x, f1, torch.relu(self.stage2(f1))]


class Decoder(nn.Module):
    def forward(self, features):
        return features[1] + F.interpolate(features[2], size=features[1].shape[-2:], mode="nearest")


def unimatch_reference(net, batch, boxes, tau):
    """UniMatch's training step for one labeled and one unlabeled batch, written out."""
    x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
    u_w, u_s1, u_s2 = batch["unlabeled"]["image"], batch["unlabeled"]["strong"], batch["unlabeled"]["strong2"]
    ignore = batch["unlabeled"]["ignore_mask"]
    with torch.no_grad():
        prob = net(u_w).softmax(1)
        conf, mask = prob.max(1)
    partner = torch.roll(torch.arange(len(u_w)), -1)
    losses = []
    for strong, box in zip((u_s1, u_s2), boxes):
        mixed = strong.clone()
        mixed[box.unsqueeze(1).expand_as(mixed)] = strong[partner][box.unsqueeze(1).expand_as(mixed)]
        mask_mixed, conf_mixed, ignore_mixed = mask.clone(), conf.clone(), ignore.clone()
        mask_mixed[box], conf_mixed[box], ignore_mixed[box] = (
            mask[partner][box],
            conf[partner][box],
            ignore[partner][box],
        )
        loss = F.cross_entropy(net(mixed), mask_mixed, reduction="none")
        loss = loss * ((conf_mixed >= tau) & (ignore_mixed != 255))
        losses.append(loss.sum() / (ignore_mixed != 255).sum())
    features = net.encoder(u_w)
    perturbed = [features[0]] + [nn.Dropout2d(0.5)(f) for f in features[1:]]
    loss_fp = F.cross_entropy(net.segmentation_head(net.decoder(perturbed)), mask, reduction="none")
    loss_fp = (loss_fp * ((conf >= tau) & (ignore != 255))).sum() / (ignore != 255).sum()
    loss_x = F.cross_entropy(net(x), y, ignore_index=255)
    return (loss_x + 0.25 * losses[0] + 0.25 * losses[1] + 0.5 * loss_fp) / 2.0


@pytest.mark.parametrize("tau", [0.0, 0.2])
def test_unimatch_total_loss_matches_the_reference(monkeypatch, tau):
    torch.manual_seed(0)
    net = EncoderDecoder()
    module = flat_module(
        model=net,
        num_classes=11,
        sup_weight=0.5,
        strong_weight=0.25,
        masked_weight=0.0,
        fp_weight=0.25,
        strong_views=2,
        pseudo_label_scales=[1.0],
        conf_threshold=tau,
    )
    module.log = lambda *args, **kwargs: None
    batch = make_batch(batch=3, size=16, strong_views=2)
    batch["unlabeled"]["ignore_mask"][0, :, -4:] = 255
    generator = torch.Generator().manual_seed(5)
    boxes = [torch.rand(3, 16, 16, generator=generator) > 0.6 for _ in range(2)]
    queue = list(boxes)
    monkeypatch.setattr(cutmix_file, "cutmix_boxes", lambda *args, **kwargs: queue.pop(0))
    ours = module.training_step(batch, 0)
    torch.manual_seed(module.step_seed(0))  # the feature-perturbation dropout draws as the step's did
    reference = unimatch_reference(net, batch, boxes, tau)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
