"""The framework-free step (``maskmatch_pl.step``): called directly, inside a user's own
LightningModule, and the checkpoints saved before the step had a module of its own."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from maskmatch_pl import MaskMatchModule, MaskMatchStep
from maskmatch_pl.losses import LossWeights
from maskmatch_pl.masking import PatchMasking
from maskmatch_pl.network import SegmentationNetwork
from maskmatch_pl.teacher import Teacher
from maskmatch_pl.thresholds import PseudoLabelThreshold

from .conftest import flat_module


def tiny_net(classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, classes, 3, padding=1)
    )


def shapes(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` 32-px images of a bright square (class 1) and a dark bar (class 2) on noise, with masks."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 32, 32, dtype=torch.long)
    for i in range(n):
        top, left = torch.randint(0, 20, (2,), generator=g).tolist()
        masks[i, top : top + 10, left : left + 10] = 1
        masks[i, torch.randint(0, 28, (1,), generator=g).item() :][:4, :] = 2
    images = torch.stack([masks == 1, masks == 2, torch.zeros_like(masks, dtype=torch.bool)], 1).float()
    return {"image": images + 0.3 * torch.randn(n, 3, 32, 32, generator=g), "mask": masks}


def test_the_step_returns_the_weighted_total_and_what_the_diagnostics_read():
    network = SegmentationNetwork(tiny_net())
    step = MaskMatchStep(
        network,
        Teacher(network, scales=(0.75, 1.25)),
        threshold=0.0,
        weights=LossWeights(sup=1.0, strong=0.5, masked=0.25),
        masking=PatchMasking(patch_size=8),
    )
    labeled, unlabeled = shapes(4, 0), shapes(4, 1)
    unlabeled = {"image": unlabeled["image"], "strong": unlabeled["image"].flip(1)}
    out = step(
        labeled, unlabeled, step=3, generator=torch.Generator().manual_seed(0), single_scale=True, flip_pair=True
    )
    assert set(out.losses) == {"sup", "strong", "masked"}
    expected = out.losses["sup"] + 0.5 * out.losses["strong"] + 0.25 * out.losses["masked"]
    torch.testing.assert_close(out.total, expected)
    assert set(out.teacher.scale_probabilities) == {0.75, 1.25, 1.0}  # 1.0 added for single_scale
    assert out.teacher.probabilities.shape == (4, 3, 32, 32)
    torch.testing.assert_close(
        out.teacher.probabilities, (out.teacher.scale_probabilities[0.75] + out.teacher.scale_probabilities[1.25]) / 2
    )
    plain, mirrored = out.teacher.flip_pair
    assert plain.shape == mirrored.shape == (4, 32, 32)
    assert out.confident_fraction == 1.0  # threshold 0: every valid pixel is confident
    assert set(out.views) == {"strong", "masked"}
    assert (out.views["masked"] == 0).float().mean() > 0.5  # ~70 % of the patches hidden
    out.total.backward()
    assert all(p.grad is not None for p in network.parameters())


def test_the_step_alone_trains_on_the_labeled_batch_without_unlabeled_data():
    step = MaskMatchStep(tiny_net(), weights=LossWeights(sup=1.0, strong=0.0, masked=0.0))
    out = step(shapes(2, 0), None)
    assert set(out.losses) == {"sup"} and out.teacher is None and out.confident_fraction is None


def test_a_teacher_of_another_network_is_refused():
    with pytest.raises(ValueError, match="built on the step's network"):
        MaskMatchStep(tiny_net(), Teacher(tiny_net()))


class Labeled(Dataset):
    def __init__(self, batch: dict[str, torch.Tensor], unlabeled: bool = False) -> None:
        self.batch, self.unlabeled = batch, unlabeled

    def __len__(self) -> int:
        return len(self.batch["image"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.batch["image"][i]
        if self.unlabeled:  # the weak view and a colour-jittered strong one
            return {"image": image, "strong": image * 0.8 + 0.1}
        return {"image": image, "mask": self.batch["mask"][i]}


class UsersSegmenter(L.LightningModule):
    """A user's own module: its network, its optimiser, MaskMatch's step in its training_step."""

    def __init__(self) -> None:
        super().__init__()
        network = SegmentationNetwork(tiny_net())
        self.method = MaskMatchStep(
            network,
            Teacher(network, "ema", momentum=0.9),
            threshold=PseudoLabelThreshold("fixed", 0.6, num_classes=3),
            weights=LossWeights(sup=1.0, strong=0.5, masked=0.5),
            masking=PatchMasking(patch_size=8),
        )
        self.sup_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        generator = torch.Generator().manual_seed(self.global_step)
        out = self.method(batch["labeled"], batch["unlabeled"], step=self.global_step, generator=generator)
        self.sup_losses.append(float(out.losses["sup"]))
        return out.total

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.method.update_teacher(self.global_step)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.method.network.parameters(), lr=1e-2)


def test_a_users_own_lightning_module_trains_through_the_step():
    torch.manual_seed(0)
    model = UsersSegmenter()
    ema_before = [p.clone() for p in model.method.teacher.ema.parameters()]
    loaders = {
        "labeled": DataLoader(Labeled(shapes(8, 0)), batch_size=4, shuffle=False),
        "unlabeled": DataLoader(Labeled(shapes(8, 1), unlabeled=True), batch_size=4, shuffle=False),
    }
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loaders)
    assert trainer.global_step == 30
    first, last = sum(model.sup_losses[:2]) / 2, sum(model.sup_losses[-2:]) / 2
    assert last < 0.5 * first, model.sup_losses  # it learns the shapes
    ema_after = list(model.method.teacher.ema.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, ema_after))  # the EMA teacher followed


def test_a_checkpoint_from_before_the_step_module_loads(tmp_path, tiny_module_kwargs):
    """Checkpoints saved with the parts at the top (``network.*``, ``teacher.ema.*``, ``threshold.*``)
    load into the module, whose parts now sit under ``method.``."""
    kwargs = {**tiny_module_kwargs, "teacher": "ema", "pseudo_label_threshold": "freematch"}
    torch.manual_seed(0)
    saved = flat_module(**kwargs)
    state = saved.state_dict()
    assert any(k.startswith("method.teacher.ema.") for k in state)
    assert any(k.startswith("method.threshold.") for k in state)
    old = {k.removeprefix("method."): v for k, v in state.items()}
    path = tmp_path / "old.ckpt"
    torch.save(
        {"state_dict": old, "hyper_parameters": dict(saved.hparams), "pytorch-lightning_version": L.__version__}, path
    )
    torch.manual_seed(1)
    loaded = MaskMatchModule.load_from_checkpoint(path)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)


def test_a_checkpoint_with_the_flat_knobs_of_earlier_versions_loads_into_the_groups(tmp_path, tiny_module_kwargs):
    """Checkpoints written before the knobs were grouped hold 48 flat hyperparameters
    (``mask_ratio``, ``conf_threshold``, ...): they are converted, not silently dropped."""
    from maskmatch_pl.compat import FLAT_KNOBS
    from maskmatch_pl.export import load_student

    kwargs = {**tiny_module_kwargs, "mask_ratio": 0.4, "conf_threshold": 0.6, "teacher": "ema", "strong_weight": 0.3}
    torch.manual_seed(0)
    saved = flat_module(**kwargs)
    grouped = dict(saved.hparams)
    flat = {"num_classes": grouped["num_classes"], "class_names": grouped["class_names"]}
    for key, (group, name) in FLAT_KNOBS.items():
        flat[key] = grouped[group][name] if grouped[group] is not None else 0.0
    assert flat["mask_ratio"] == 0.4 and flat["masked_weight"] == 0.5
    path = tmp_path / "flat.ckpt"
    torch.save(
        {"state_dict": saved.state_dict(), "hyper_parameters": flat, "pytorch-lightning_version": L.__version__}, path
    )
    loaded = MaskMatchModule.load_from_checkpoint(path)
    method = loaded.method
    assert method.masking.ratio == 0.4 and method.threshold.tau == 0.6 and method.weights.strong == 0.3
    assert loaded.teacher.kind == "ema" and dict(loaded.hparams) == grouped
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, saved.state_dict()[key], msg=key)
    network, _ = load_student(path)  # export reads them too
    assert sum(p.numel() for p in network.parameters()) == sum(p.numel() for p in saved.network.parameters())

    flat["masked_weight"] = 0.0  # no masked view then: masking None
    torch.save(
        {"state_dict": saved.state_dict(), "hyper_parameters": flat, "pytorch-lightning_version": L.__version__}, path
    )
    assert MaskMatchModule.load_from_checkpoint(path).hparams.masking is None
