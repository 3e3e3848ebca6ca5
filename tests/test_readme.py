"""The README's Python snippets run as written (shortened to a few steps)."""

import re
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_python_snippets_train(monkeypatch, demo_cache):
    monkeypatch.setenv("MASKMATCH_PL_CACHE", str(demo_cache))
    quick, own_module = python_blocks()[:2]
    assert "max_steps=1000" in quick
    names: dict = {}
    exec(
        quick.replace("max_steps=1000", "max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False"),
        names,
    )
    assert names["model"].global_step == 2

    names = {}
    exec(own_module, names)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)
    )
    model = names["MySegmenter"](net, 3)
    labeled = [{"image": torch.randn(3, 32, 32), "mask": torch.randint(0, 3, (32, 32))} for _ in range(8)]
    unlabeled = [{"image": torch.randn(3, 32, 32), "strong": torch.randn(3, 32, 32)} for _ in range(8)]
    ema_before = [p.clone() for p in model.method.teacher.ema.parameters()]
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(
        model,
        train_dataloaders={
            "labeled": DataLoader(labeled, batch_size=4),
            "unlabeled": DataLoader(unlabeled, batch_size=4),
        },
    )
    assert trainer.global_step == 3
    assert {"loss_sup", "loss_strong", "loss_masked"} <= set(trainer.callback_metrics)
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, model.method.teacher.ema.parameters()))
