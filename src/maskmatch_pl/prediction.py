"""Writing predictions: palette PNG masks of the input's size, optional overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from .palettes import colorize, voc_palette


def overlay(image: Image.Image, mask: Image.Image, alpha: float = 0.5) -> Image.Image:
    """The prediction's colours blended over the input image."""
    return Image.blend(image.convert("RGB"), mask.convert("RGB"), alpha)


class PredictionWriter(BasePredictionWriter):
    """Writes ``<output_dir>/<image stem>.png`` for each predicted image (and
    ``<stem>_overlay.jpg`` with ``overlay: true``). An existing file is never replaced unless
    ``overwrite: true``: the run stops with an error naming it instead."""

    def __init__(self, output_dir: str = "predictions", overlay: bool = False, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlay = overlay
        self.overwrite = overwrite

    def _target(self, name: str, suffix: str) -> Path:
        path = self.output_dir / f"{Path(name).stem}{suffix}"
        if path.exists() and not self.overwrite:
            raise FileExistsError(
                f"{path} exists; set --prediction.overwrite true to replace it, or choose "
                f"another --prediction.output_dir"
            )
        return path

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        palette = getattr(trainer.datamodule, "palette", None) or voc_palette(256)
        masks = prediction["prediction"].cpu().numpy()
        names = prediction.get("name") or [f"batch{batch_idx:05d}_{i}" for i in range(len(masks))]
        sizes = prediction.get("size")
        for index, (mask, name) in enumerate(zip(masks, names)):
            if sizes is not None:
                height, width = (int(v) for v in sizes[index])
                mask = mask[:height, :width]
            coloured = colorize(mask, palette)
            target = self._target(name, ".png")
            overlay_target = self._target(name, "_overlay.jpg") if self.overlay else None
            coloured.save(target)
            if overlay_target is not None:
                with Image.open(name) as source:
                    overlay(source, coloured).save(overlay_target)
