"""Val panels: image / ground truth / prediction / teacher pseudo-label / masked view.

:class:`ValPanels` is a Lightning ``Callback``: add it to the trainer's callbacks (the demo
configs do) and every validation logs a panel of the first val images, to TensorBoard when
it is the logger, otherwise as PNG files in ``<log dir>/panels``. Each panel has a title over
every column and, under the tiles, a legend: a colour swatch and the name of every class that
occurs in its label maps, and the ignore colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from .data.transforms import denormalise
from .palettes import Palette, colour_map, full_palette, ignore_colour, voc_palette
from .targets import IGNORE_INDEX

MIN_TILE_SIZE = 128  # smaller tiles are enlarged (nearest neighbour) so the titles stay readable next to them
GUTTER = 2  # pixels between tiles, in GUTTER_COLOUR
GUTTER_COLOUR = 96  # a dark grey, set apart from the white background of the titles and the legend
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
IGNORE_LABEL = "ignore / below threshold"
Entry = tuple[str, tuple[int, int, int]]


def panel(columns: Sequence[torch.Tensor], palette: Palette, scale: int = 1, gap: int = 0) -> np.ndarray:
    """One row per image, one tile per column: ``B x 3 x H x W`` normalised images are shown
    denormalised, ``B x H x W`` label maps in colour (255 in the palette's ignore colour, see
    :func:`~maskmatch_pl.palettes.ignore_colour`). Each tile is enlarged ``scale`` times (nearest
    neighbour) and tiles are ``gap`` pixels apart (and from the border), in :data:`GUTTER_COLOUR`.
    Returns ``uint8 [B*(s*H+gap)+gap, len(columns)*(s*W+gap)+gap, 3]`` with ``s = scale``.

    The tiling is torchvision's ``make_grid``; the colouring stays a palette lookup:
    ``draw_segmentation_masks`` blends one boolean mask per class over an image and knows no
    ignore index."""

    def tile(column: torch.Tensor, index: int) -> torch.Tensor:
        picture = denormalise(column[index]) if column.dim() == 4 else colour_map(column[index], palette)
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
        return torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1)

    tiles = [tile(column, index) for index in range(len(columns[0])) for column in columns]
    if len(tiles) == 1 and gap:  # make_grid returns a lone tile without its border
        return np.pad(
            tiles[0].permute(1, 2, 0).numpy(), ((gap, gap), (gap, gap), (0, 0)), constant_values=GUTTER_COLOUR
        )
    grid = make_grid(tiles, nrow=len(columns), padding=gap, pad_value=GUTTER_COLOUR)
    return grid.permute(1, 2, 0).numpy().copy()


def legend_entries(
    label_maps: Sequence[torch.Tensor],
    palette: Palette,
    class_names: Sequence[str] | None = None,
    ignore_label: str = IGNORE_LABEL,
) -> list[Entry]:
    """``(name, colour)`` of every class index that occurs in ``label_maps``, in index order
    (named by ``class_names``, else by the index), then ``(ignore_label, ignore colour)``."""
    present = sorted({int(v) for labels in label_maps for v in torch.unique(labels.detach().cpu()).tolist()})
    colours, names = full_palette(palette), list(class_names or [])
    entries = [
        (names[index] if index < len(names) else str(index), colours[index])
        for index in present
        if index != IGNORE_INDEX and 0 <= index < len(colours)
    ]
    return [*entries, (ignore_label, ignore_colour(palette))]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()  # ships with Pillow: nothing is read from the system or downloaded


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font: Any) -> list[str]:
    """``text`` in lines no wider than ``width`` (at explicit newlines and between words; a
    word wider than ``width`` gets a line of its own)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def annotate(
    grid: np.ndarray, titles: Sequence[str], legend: Sequence[Entry], tile_width: int, gap: int = 0
) -> np.ndarray:
    """``grid`` (as :func:`panel` returns it) with a header strip above it, ``titles[c]``
    centred over column ``c`` (``tile_width`` wide, ``gap`` apart), and a legend strip under it:
    a swatch of each entry's colour (outlined in black) followed by its name, in rows as wide
    as the grid. Both strips are black text on white in Pillow's default font."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = probe.textbbox((0, 0), "Ag", font=font)[3] + 2
    margin, swatch, spacing = 4, line_height - 2, 12
    width = grid.shape[1]

    wrapped = [_wrap(title, tile_width - 4, probe, font) for title in titles]
    header_height = 2 * margin + line_height * max((len(lines) for lines in wrapped), default=0)

    # legend entries flow left to right, a new row when the next one would not fit
    places, x, row = [], margin, 0
    for name, _ in legend:
        entry_width = swatch + 4 + int(math.ceil(probe.textlength(name, font=font)))
        if x > margin and x + entry_width > width - margin:
            x, row = margin, row + 1
        places.append((x, row))
        x += entry_width + spacing
    legend_height = 2 * margin + (row + 1) * (line_height + 2) if legend else 0

    canvas = Image.new("RGB", (width, header_height + grid.shape[0] + legend_height), BACKGROUND)
    canvas.paste(Image.fromarray(grid), (0, header_height))
    draw = ImageDraw.Draw(canvas)
    for column, lines in enumerate(wrapped):
        centre = gap + column * (tile_width + gap) + tile_width / 2
        for number, line in enumerate(lines):
            left = centre - draw.textlength(line, font=font) / 2
            draw.text((max(0, round(left)), margin + number * line_height), line, fill=TEXT, font=font)
    top = header_height + grid.shape[0] + margin
    for (name, colour), (x, row) in zip(legend, places):
        y = top + row * (line_height + 2)
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(colour), outline=TEXT)
        draw.text((x + swatch + 4, y), name, fill=TEXT, font=font)
    return np.asarray(canvas)


class ValPanels(L.Callback):
    """At each validation, a panel of the first ``num_images`` val images of rank 0, one row
    each, under the titles "image", "truth", "prediction", "pseudo-label (conf >= tau)" and
    "masked view": the image, its ground truth, the prediction (under the module's eval
    protocol), the teacher's pseudo-label and the masked view the student would get of it.
    Pseudo-label pixels whose confidence is below the threshold ``tau`` are set to the ignore
    index 255 and drawn in the palette's ignore colour (entry 255; with the VOC colour map and
    the shipped palettes the pale beige (224, 224, 192)), the same colour as the ground truth's
    ignored pixels; the legend under the tiles names each class that occurs in truth, prediction
    or pseudo-label next to its colour, and that colour as "ignore / below threshold".

    Tiles smaller than 128 pixels are enlarged (nearest neighbour) to at least that size.
    Class names come from the module's ``class_names``, else the data module's, and the palette
    from the data module's ``palette`` (default: the VOC colour map).

    It draws what ``validation_step`` returned (a dict of per-image lists ``image``, ``mask`` and
    ``prediction``, as scored: no second forward) and asks the module's public ``preview(images, seed)``
    for the pseudo-label and masked columns, as :class:`~maskmatch_pl.MaskMatchModule` provides.

    Raises:
        TypeError: ``validation_step`` returned something else.
    """

    def __init__(self, num_images: int = 4) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self._rows: list[list[torch.Tensor]] = []  # per val image: its five tiles
        self._written, self._threshold = False, 1.0

    @staticmethod
    def titles(conf_threshold: float) -> list[str]:
        return ["image", "truth", "prediction", f"pseudo-label\n(conf >= {conf_threshold:g})", "masked view"]

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._written = [], False

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collects the first ``num_images`` val images over as many batches as it takes
        (``val_batch_size: 1`` gives one per batch) and writes the panel once it has them."""
        if self._written or len(self._rows) >= self.num_images or trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._rows.extend(self.rows(pl_module, outputs, self.num_images - len(self._rows), trainer.global_step))
        if len(self._rows) >= self.num_images:
            self.flush(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rows and not self._written:  # fewer val images than num_images
            self.flush(trainer, pl_module)

    def rows(self, pl_module: L.LightningModule, outputs: Any, count: int, step: int) -> list[list[torch.Tensor]]:
        """Image, truth, prediction, thresholded pseudo-label and masked view (each with a batch
        dimension of 1) of the first ``count`` images that ``validation_step`` scored (its ``outputs``)."""
        if not isinstance(outputs, dict) or not {"image", "mask", "prediction"} <= set(outputs):
            raise TypeError(
                "ValPanels draws what validation_step returns: a dict with per-image lists 'image', 'mask' and "
                f"'prediction' (as MaskMatchModule returns), got {type(outputs).__name__}"
            )
        rows = []
        for image, mask, prediction in list(zip(outputs["image"], outputs["mask"], outputs["prediction"]))[:count]:
            preview = pl_module.preview(image[None], seed=step)
            self._threshold = preview["threshold"]
            rows.append([image[None], mask[None], prediction[None], preview["pseudo_label"], preview["masked"]])
        return rows

    def flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Writes the collected rows as one panel; rows of other sizes are resized to the first's
        (bilinear for images, nearest for label maps)."""
        height, width = self._rows[0][0].shape[-2:]

        def fit(column: torch.Tensor) -> torch.Tensor:
            if column.shape[-2:] == (height, width):
                return column
            if column.dim() == 4:
                return F.interpolate(column.float(), size=(height, width), mode="bilinear", align_corners=False)
            return F.interpolate(column[:, None].float(), size=(height, width), mode="nearest")[:, 0].long()

        images, masks, prediction, pseudo_label, masked = (
            torch.cat([fit(row[index]) for row in self._rows]) for index in range(5)
        )
        self._written = True
        datamodule = getattr(trainer, "datamodule", None)
        palette = getattr(datamodule, "palette", None) or voc_palette(256)
        class_names = getattr(pl_module, "class_names", None) or getattr(datamodule, "class_names", None)
        scale = max(1, math.ceil(MIN_TILE_SIZE / min(height, width)))
        grid = panel([images, masks, prediction, pseudo_label, masked], palette, scale=scale, gap=GUTTER)
        legend = legend_entries([masks, prediction, pseudo_label], palette, class_names)
        self.write(trainer, annotate(grid, self.titles(self._threshold), legend, scale * width, GUTTER))

    @staticmethod
    def write(trainer: L.Trainer, picture: np.ndarray) -> None:
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("val/panel", picture, trainer.global_step, dataformats="HWC")
        elif logger is not None and logger.log_dir is not None:
            folder = Path(logger.log_dir) / "panels"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"val_step{trainer.global_step:07d}.png")
