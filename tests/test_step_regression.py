"""What one training step computes, pinned for every CNN ``configs/demo*.yaml`` (issue 25).

Each demo config is read through the real CLI (``run=False``: nothing trains), its module takes one
training step on a fixed batch (seed 0, CPU, one thread), and the logged losses and the gradient
norm of the student must match ``tests/data/step_regression.json``, which the code wrote before
the library redesign. The confidence threshold is set to 0 so that every unlabeled loss has pixels
at initialisation (at the configs' 0.7 no pixel of an untrained teacher is confident, and the
strong and masked terms would be pinned at 0 only).

Rewrite the pins only for a change of behaviour that the README explains:
``python tests/test_step_regression.py --write``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from maskmatch_pl.cli import MaskMatchCLI
from maskmatch_pl.data.datamodule import SemiSupervisedDataModule
from maskmatch_pl.module import MaskMatchModule

ROOT = Path(__file__).parents[1]
PINS = Path(__file__).parent / "data" / "step_regression.json"
# the CNN demo configs (the DINOv2 ones came after the pins; tests/test_dinov2.py covers them)
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("demo*.yaml") if "dinov2" not in p.name)
OVERRIDES = ["--model.pseudo_labels.threshold=0.0"]  # every unlabeled pixel confident: all terms non-zero


def _module(config: str) -> MaskMatchModule:
    args = ["--config", str(ROOT / "configs" / config), "--trainer.logger=false", *OVERRIDES]
    cli = MaskMatchCLI(
        MaskMatchModule,
        SemiSupervisedDataModule,
        seed_everything_default=0,
        args=args,
        run=False,
        save_config_callback=None,
    )
    return cli.model


def _batch(views: int) -> dict[str, dict[str, torch.Tensor]]:
    """Four labeled and four unlabeled 64-px images with blocky class layouts (seed 0)."""
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 11, (8, 8, 8), generator=g)
    masks = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    colours = torch.randn(11, 3, generator=g)
    images = colours[masks].permute(0, 3, 1, 2) + 0.5 * torch.randn(8, 3, 64, 64, generator=g)
    unlabeled = {"image": images[4:]}
    for i in range(views):
        jitter = 0.5 + torch.rand(4, 3, 1, 1, generator=g)
        unlabeled["strong" if i == 0 else f"strong{i + 1}"] = images[4:] * jitter + 0.3 * torch.randn(
            4, 3, 64, 64, generator=g
        )
    return {"labeled": {"image": images[:4], "mask": masks[:4]}, "unlabeled": unlabeled}


def step_record(config: str) -> dict[str, float]:
    """The losses the step logs (``train/loss_*``, ``train/loss``) and the student's gradient norm."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = _module(config)
        logged: dict[str, float] = {}
        module.log = lambda name, value, **_: logged.__setitem__(name, float(value))  # no trainer here
        views = 2 if "unimatch" in config else 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.train()
            total = module.training_step(_batch(views), 0)
        total.backward()
        grads = [p.grad.detach().flatten() for p in module.network.parameters() if p.grad is not None]
        record = {k: v for k, v in logged.items() if k.startswith("train/loss")}
        record["grad_norm"] = float(torch.cat(grads).norm())
        return record
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("config", CONFIGS)
def test_step_matches_pins(config):
    pins = json.loads(PINS.read_text())[config]
    record = step_record(config)
    assert sorted(record) == sorted(pins), f"{config}: other loss terms than pinned"
    for key, pinned in pins.items():
        assert record[key] == pytest.approx(pinned, rel=1e-4, abs=1e-6), f"{config}: {key}"


def test_every_demo_config_is_pinned():
    assert sorted(json.loads(PINS.read_text())) == CONFIGS


if __name__ == "__main__":
    pins = {config: step_record(config) for config in CONFIGS}
    json.dump(pins, sys.stdout, indent=1)
    if sys.argv[1:] == ["--write"]:
        PINS.parent.mkdir(exist_ok=True)
        PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
