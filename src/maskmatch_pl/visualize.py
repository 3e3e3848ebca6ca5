"""Val panels: image / ground truth / prediction / teacher pseudo-label / masked view.

:class:`ValPanels` is a Lightning ``Callback``: add it to the trainer's callbacks (the demo
configs do) and every validation logs a panel of the first val images, to TensorBoard when
it is the logger, otherwise as PNG files in ``<log dir>/panels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from .data.transforms import denormalise
from .palettes import Palette, colour_map, voc_palette
from .targets import IGNORE_INDEX


def panel(columns: Sequence[torch.Tensor], palette: Palette) -> np.ndarray:
    """One row per image, one tile per column: ``B x 3 x H x W`` normalised images are shown
    denormalised, ``B x H x W`` label maps in colour (255 in the palette's ignore colour).
    Returns ``uint8 [B*H, len(columns)*W, 3]``."""

    def tile(column: torch.Tensor, index: int) -> np.ndarray:
        return denormalise(column[index]) if column.dim() == 4 else colour_map(column[index], palette)

    rows = [np.concatenate([tile(column, index) for column in columns], axis=1) for index in range(len(columns[0]))]
    return np.concatenate(rows, axis=0)


class ValPanels(L.Callback):
    """At each validation, a panel of the first ``num_images`` val images of rank 0: the image,
    its ground truth, the prediction (under the module's eval protocol), the teacher's
    pseudo-label (the ignore colour where its confidence is below the threshold) and the
    masked view the student would get of it.

    Works with :class:`~maskmatch_pl.MaskMatchModule` (it reads ``teacher``, ``masking``,
    ``conf_threshold`` and ``eval_protocol``).
    """

    def __init__(self, num_images: int = 4) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        protocol = pl_module.eval_protocol
        images, masks = batch["image"][: self.num_images], batch["mask"][: self.num_images]
        with torch.no_grad():
            prediction = protocol.probabilities(pl_module.network, images).argmax(1)
            images, masks = protocol.region(images), protocol.region(masks)
            targets = pl_module.teacher.pseudo_labels(images)
        pseudo_label = targets.pseudo_label.masked_fill(targets.confidence < pl_module.conf_threshold, IGNORE_INDEX)
        masked = pl_module.masking(images, torch.Generator().manual_seed(trainer.global_step))
        palette = getattr(trainer.datamodule, "palette", None) or voc_palette(256)
        self.write(trainer, panel([images, masks, prediction, pseudo_label, masked], palette))

    @staticmethod
    def write(trainer: L.Trainer, picture: np.ndarray) -> None:
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("val/panel", picture, trainer.global_step, dataformats="HWC")
        elif logger is not None and logger.log_dir is not None:
            folder = Path(logger.log_dir) / "panels"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"val_step{trainer.global_step:07d}.png")
