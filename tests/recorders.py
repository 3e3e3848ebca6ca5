"""Callbacks that the CLI tests load by class path to observe a run from the inside."""

import json
from pathlib import Path

import lightning as L


class RecordLosses(L.Callback):
    """Writes ``{global_step: loss}`` of every training step to ``<path>.rank<R>.json``, and,
    with ``stop_at``, saves ``<path>.ckpt`` after that step and stops (an interruption)."""

    def __init__(self, path: str, stop_at: int = 0) -> None:
        self.path, self.stop_at, self.losses = Path(path), stop_at, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        if trainer.global_step == self.stop_at:
            trainer.save_checkpoint(self.path.with_suffix(".ckpt"))
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        target = self.path.with_suffix(f".rank{trainer.global_rank}.json")
        target.write_text(json.dumps(self.losses))


class RecordSamples(L.Callback):
    """Writes the dataset indices of every labeled and unlabeled training sample this rank saw,
    and the teacher's float32 check, to ``<path>.rank<R>.json``."""

    def __init__(self, path: str) -> None:
        self.path, self.seen = Path(path), {"labeled": [], "unlabeled": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for key in self.seen:
            self.seen[key] += batch[key]["index"].tolist()

    def on_train_end(self, trainer, pl_module):
        self.path.with_suffix(f".rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


class RecordLR(L.Callback):
    """Writes ``{global_step: [LR of each parameter group]}`` in force at each training step to
    ``<path>.rank<R>.json`` (read before the step, which uses them)."""

    def __init__(self, path: str) -> None:
        self.path, self.lrs = Path(path), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = [group["lr"] for group in trainer.optimizers[0].param_groups]

    def on_train_end(self, trainer, pl_module):
        self.path.with_suffix(f".rank{trainer.global_rank}.json").write_text(json.dumps(self.lrs))
