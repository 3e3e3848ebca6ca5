"""Preemption: a fit sent SIGTERM saves where it was and exits non-zero, so that a scheduler
requeues it and ``--ckpt_path`` continues exactly where it stopped.

Lightning alone finishes the step under way when SIGTERM arrives, then raises
``SIGTERMException``: a ``SystemExit`` with code 0 that saves nothing since the last checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a process that the signal ended


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM during a fit, saves ``<dirpath>/<filename>.ckpt`` and makes the process exit with ``exit_code``.

    The fit stops after the optimiser step it was in (all of its micro-batches under gradient
    accumulation); the checkpoint holds that step, and resuming from it (``--ckpt_path``) gives
    the losses of the unbroken run. The ``maskmatch-pl`` command adds one by default; in a
    Trainer of your own add it yourself: ``Trainer(callbacks=[PreemptionCheckpoint()])``. Not an
    ``OnExceptionCheckpoint``: with one of those Lightning resumes every later fit without
    ``ckpt_path`` from ``"last"``. Tested in one process; under DDP every rank must get the
    signal (torchrun and SLURM send it to all).

    Args:
        dirpath: Folder of the checkpoint; default: the first ModelCheckpoint's folder, else
            ``<trainer.log_dir>/checkpoints``.
        filename: Its name without ``.ckpt`` (an older one of that name is overwritten).
        exit_code: The process's exit status (non-zero, so that schedulers requeue the job).
    """

    def __init__(self, dirpath: str | None = None, filename: str = "preempted", exit_code: int = PREEMPTED_EXIT_CODE):
        self.dirpath, self.filename, self.exit_code = dirpath, filename, exit_code
        self._deferred = False

    def path(self, trainer: L.Trainer) -> str:
        """Where the checkpoint goes (every rank must call it: ``trainer.log_dir`` is broadcast)."""
        dirpath = self.dirpath
        if dirpath is None and isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            dirpath = trainer.checkpoint_callback.dirpath
        if dirpath is None:
            dirpath = os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")
        return os.path.join(dirpath, f"{self.filename}.ckpt")

    def _hold(self, trainer: L.Trainer, hold: bool) -> None:
        """Keep a received SIGTERM from Lightning while ``hold``, give it back after (Lightning 2.x internals)."""
        connector = trainer._signal_connector
        if hold and (connector.received_sigterm or self._deferred):
            connector.received_sigterm, self._deferred = False, True
        elif not hold and self._deferred:
            connector.received_sigterm, self._deferred = True, False

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        # Lightning stops after any micro-batch, but no checkpoint holds the gradients accumulated so far:
        # under gradient accumulation the signal waits for the end of the optimiser step
        self._hold(trainer, trainer.fit_loop._should_accumulate())

    def on_validation_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        # a checkpoint taken mid-validation would resume with part of the val set scored: wait for its end
        if trainer.state.fn == TrainerFn.FITTING:
            self._hold(trainer, True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._hold(trainer, False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if next(c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)) is not self:
            return  # one configured by the user comes first and wins over the CLI's default one
        path = self.path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(
            f"SIGTERM: saved the fit at step {trainer.global_step} to {path}; resume it by running the same command "
            f"with --ckpt_path {path} "
            f"(exit code {self.exit_code})"
        )
        exception.code = self.exit_code  # Lightning re-raises this SystemExit once the callbacks have run
