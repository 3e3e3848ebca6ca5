"""Writing predictions: palette PNG masks of the input's size, optional overlays."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from .data.datasets import SampleReader
from .palettes import colorize, voc_palette


def overlay(image: Image.Image, mask: Image.Image, alpha: float = 0.5) -> Image.Image:
    """The prediction's colours blended over the input image."""
    return Image.blend(image.convert("RGB"), mask.convert("RGB"), alpha)


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _under(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder) and path != folder


def input_root(inputs: Sequence[str | Path], folder: str | Path | None = None) -> Path | None:
    """The folder that the outputs mirror: ``folder`` (or its ``images/`` subfolder) when it holds
    every input, else the deepest folder holding them all (None without inputs)."""
    paths = [_absolute(path) for path in inputs]
    if not paths:
        return None
    if folder is not None:
        for candidate in (_absolute(folder) / "images", _absolute(folder)):
            if candidate.is_dir() and all(_under(path, candidate) for path in paths):
                return candidate
    return Path(os.path.commonpath([path.parent for path in paths]))


def _predict_inputs(trainer: L.Trainer) -> list[str] | None:
    """The image paths of every predict loader's dataset (``samples`` of an
    :class:`~maskmatch_pl.data.datasets.EvalDataset`), None when a dataset does not say."""
    loaders = getattr(trainer, "predict_dataloaders", None)
    if loaders is None:
        return None
    inputs: list[str] = []
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        samples = getattr(getattr(loader, "dataset", None), "samples", None)
        if samples is None:
            return None
        inputs += [str(getattr(sample, "image", sample)) for sample in samples]
    return inputs


class PredictionWriter(BasePredictionWriter):
    """Writes one palette PNG per predicted image (and a ``<stem>_overlay.jpg`` next to it with
    ``overlay: true``), at the input's path relative to the input root with the suffix ``.png``:
    ``a/img.jpg`` -> ``<output_dir>/a/img.png``. The input root is the data module's ``predict``
    folder (its ``images/`` subfolder if that holds the images), else the deepest folder that
    holds every predicted input; an input outside it, or one without a name, is written as
    ``<output_dir>/<stem>.png``.

    An existing file is never replaced unless ``overwrite: true``: the run stops with an error
    naming it instead, before writing anything when the inputs are known up front. Two inputs
    that would be written to one file (``a/img.jpg`` and ``a/img.png``) stop the run with an
    error naming both.

    Args:
        output_dir: folder the predictions are written to (created if missing).
        overlay: also write ``<name>_overlay.jpg``, the prediction's colours blended over the input.
        overwrite: replace existing files instead of stopping with an error.
    """

    def __init__(self, output_dir: str = "predictions", overlay: bool = False, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlay = overlay
        self.overwrite = overwrite
        self.root: Path | None = None
        self._sources: dict[Path, str] = {}  # output -> the input it was (or will be) written from

    # ------------------------------------------------------------------ where outputs go
    def relative_output(self, name: str) -> Path:
        """The output path of input ``name``, relative to ``output_dir``, without suffix."""
        path = _absolute(name)
        if self.root is not None and _under(path, self.root):
            return path.relative_to(self.root).with_suffix("")
        return Path(Path(name).stem)

    def targets(self, name: str) -> list[Path]:
        relative = self.relative_output(name)
        paths = [self.output_dir / relative.with_name(relative.name + ".png")]
        if self.overlay:
            paths.append(self.output_dir / relative.with_name(relative.name + "_overlay.jpg"))
        return paths

    def _claim(self, names: Iterable[str]) -> list[list[Path]]:
        """The targets of ``names``, after checking that no other input has one of them and that
        none exists (unless ``overwrite``)."""
        claimed = []
        for name in names:
            paths = self.targets(name)
            for path in paths:
                other = self._sources.setdefault(path, name)
                if other != name:
                    raise ValueError(
                        f"the predictions of {other} and {name} would both be written to {path}; "
                        f"rename one of them or predict them separately"
                    )
                if path.exists() and not self.overwrite:
                    raise FileExistsError(
                        f"{path} exists; set --prediction.overwrite true to replace it, or choose "
                        f"another --prediction.output_dir"
                    )
            claimed.append(paths)
        return claimed

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Finds the input root and checks every output before anything is written."""
        self._sources = {}
        inputs = _predict_inputs(trainer)
        folder = getattr(getattr(getattr(trainer, "datamodule", None), "hparams", None), "predict", None)
        self.root = input_root(inputs, folder) if inputs else None
        if inputs:
            self._claim(inputs)

    # ------------------------------------------------------------------ writing
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
        palette = getattr(trainer.datamodule, "palette", None) or voc_palette(256)
        masks = prediction["prediction"].cpu().numpy()
        names = prediction.get("name") or [f"batch{batch_idx:05d}_{i}" for i in range(len(masks))]
        sizes = prediction.get("size")
        for index, (mask, name) in enumerate(zip(masks, names)):
            if sizes is not None:
                height, width = (int(v) for v in sizes[index])
                mask = mask[:height, :width]
            coloured = colorize(mask, palette)
            paths = self.targets(name)
            if any(self._sources.get(path) != name for path in paths):  # not checked up front
                paths = self._claim([name])[0]
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            coloured.save(paths[0])
            if self.overlay:
                source = Image.fromarray(SampleReader(1).image(Path(name)))  # read as the prediction's input was
                overlay(source, coloured).save(paths[1])
