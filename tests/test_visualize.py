"""Val panels: tiles, column titles, the class legend and the ignore colour of unconfident pixels."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from maskmatch_pl.data.transforms import denormalise
from maskmatch_pl.palettes import colour_map, ignore_colour, voc_palette
from maskmatch_pl.visualize import BACKGROUND, GUTTER, ValPanels, annotate, legend_entries, panel

from .conftest import flat_module

PALETTE = voc_palette(256)
NAMES = ["background", "aeroplane", "bicycle", "bird"]


def columns(batch=2, size=64):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    truth = torch.zeros(batch, size, size, dtype=torch.long)
    truth[:, size // 2 :] = 2
    truth[:, :4] = 255
    prediction = torch.ones(batch, size, size, dtype=torch.long)
    return images, truth, prediction


def grid_top(picture):
    """The first row of the tiles: column 0 is white in the header, grey in the grid's border."""
    return int(np.flatnonzero((picture[:, 0] != BACKGROUND).any(-1))[0]) + GUTTER


def test_panel_by_default_is_the_plain_tiles():
    images, truth, prediction = columns()
    picture = panel([images, truth, prediction], PALETTE)
    assert picture.shape == (2 * 64, 3 * 64, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[64:, :64], denormalise(images[1]))
    np.testing.assert_array_equal(picture[:64, 64:128], colour_map(truth[0], PALETTE))
    assert tuple(picture[0, 64]) == ignore_colour(PALETTE) == (224, 224, 192)


def test_panel_enlarges_tiles_and_separates_them_with_gutters():
    images, truth, _ = columns()
    picture = panel([images, truth], PALETTE, scale=2, gap=2)
    assert picture.shape == (2 * 130 + 2, 2 * 130 + 2, 3)
    tile = picture[2:130, 132:260]
    np.testing.assert_array_equal(tile, colour_map(truth[0], PALETTE).repeat(2, 0).repeat(2, 1))
    assert (picture[:, :2] == 96).all() and (picture[130:132] == 96).all()


def test_legend_lists_the_classes_present_and_the_ignore_colour():
    _, truth, prediction = columns()
    entries = legend_entries([truth, prediction], PALETTE, NAMES)
    assert entries == [
        ("background", PALETTE[0]),
        ("aeroplane", PALETTE[1]),
        ("bicycle", PALETTE[2]),
        ("ignore / below threshold", (224, 224, 192)),
    ]
    assert legend_entries([torch.tensor([[5]])], PALETTE, NAMES)[0] == ("5", PALETTE[5])  # no name: the index


def test_annotate_adds_titles_above_and_the_legend_below():
    images, truth, prediction = columns()
    grid = panel([images, truth, prediction], PALETTE, scale=2, gap=GUTTER)
    entries = legend_entries([truth, prediction], PALETTE, NAMES)
    picture = annotate(grid, ["image", "truth", "prediction"], entries, tile_width=128, gap=GUTTER)
    top = grid_top(picture) - GUTTER
    assert picture.shape[1] == grid.shape[1] and picture.shape[0] > grid.shape[0] + top
    np.testing.assert_array_equal(picture[top : top + grid.shape[0]], grid)
    header, legend = picture[:top], picture[top + grid.shape[0] :]
    assert len(np.unique(header.reshape(-1, 3), axis=0)) > 1  # not one colour: text on white
    for column in range(3):  # a title over every column, dark on white
        assert (header[:, GUTTER + column * 130 : (column + 1) * 130] < 100).all(-1).any()
    colours = {tuple(pixel) for pixel in legend.reshape(-1, 3)}
    assert {PALETTE[1], PALETTE[2], (224, 224, 192)} <= colours  # swatches
    assert PALETTE[3] not in colours  # a class not in the panel has none


def fake_parts(tmp_path, label, confidence, threshold=0.9, step=7):
    """A stand-in module (its ``preview`` gives ``label`` where ``confidence`` reaches ``threshold``,
    row by row) and trainer for ValPanels."""
    rows = iter(range(len(label)))

    def preview(images, seed=0):
        row = next(rows)
        pseudo = label[row : row + 1].masked_fill(confidence[row : row + 1] < threshold, 255)
        return {"pseudo_label": pseudo, "masked": torch.zeros_like(images), "threshold": threshold}

    module = SimpleNamespace(preview=preview, class_names=NAMES)
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        global_step=step,
        datamodule=SimpleNamespace(palette=PALETTE),
        logger=SimpleNamespace(log_dir=str(tmp_path)),
    )
    return module, trainer


def outputs(images, truth, prediction):
    """What MaskMatchModule's validation_step returns: per-image lists."""
    return {"image": list(images), "mask": list(truth), "prediction": list(prediction)}


def fake_run(tmp_path, label, confidence, threshold=0.9, size=64):
    images, truth, prediction = columns(batch=len(label), size=size)
    module, trainer = fake_parts(tmp_path, label, confidence, threshold)
    batch = {"image": images, "mask": truth}
    ValPanels(num_images=len(label)).on_validation_batch_end(
        trainer, module, outputs(*batch.values(), prediction), batch, 0
    )
    return np.asarray(Image.open(tmp_path / "panels" / "val_step0000007.png"))


def test_unconfident_pseudo_label_pixels_are_drawn_in_the_ignore_colour(tmp_path):
    label = torch.full((2, 64, 64), 3, dtype=torch.long)
    confidence = torch.ones(2, 64, 64)
    confidence[:, :, :32] = 0.5  # left half below tau = 0.9
    picture = fake_run(tmp_path, label, confidence)
    top, pitch = grid_top(picture), 128 + GUTTER
    assert picture.shape[1] == 5 * pitch + GUTTER and picture.shape[0] > top + 2 * pitch  # titles, tiles, legend
    for row in range(2):
        tile = picture[top + row * pitch : top + row * pitch + 128, GUTTER + 3 * pitch : 4 * pitch]
        assert (tile[:, :64] == ignore_colour(PALETTE)).all()  # left half of 64 px, shown at 128
        assert (tile[:, 64:] == PALETTE[3]).all()
    legend = {tuple(p) for p in picture[top + 2 * pitch :].reshape(-1, 3)}
    assert {PALETTE[3], (224, 224, 192)} <= legend


@pytest.mark.parametrize("size", [32, 200])
def test_small_tiles_are_enlarged_to_128_pixels_and_large_ones_kept(tmp_path, size):
    label = torch.zeros(1, size, size, dtype=torch.long)
    picture = fake_run(tmp_path, label, torch.ones(1, size, size), size=size)
    tile = 128 if size < 128 else size
    assert picture.shape[1] == 5 * (tile + GUTTER) + GUTTER


@pytest.mark.parametrize("reference", ["view", "image"])
def test_val_panels_with_the_real_module(tmp_path, tiny_module_kwargs, reference):

    names = [f"c{i}" for i in range(11)]
    module = flat_module(**tiny_module_kwargs, class_names=names, pseudo_label_scale_reference=reference).eval()
    images, truth, _ = columns(batch=2, size=64)
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        global_step=3,
        datamodule=None,
        logger=SimpleNamespace(log_dir=str(tmp_path)),
    )
    batch = {"image": images, "mask": truth}
    scored = module.validation_step(batch, 0)
    assert [p.shape for p in scored["prediction"]] == [(64, 64)] * 2
    torch.testing.assert_close(torch.stack(scored["prediction"]), module.predict_labels(batch))
    ValPanels(num_images=1).on_validation_batch_end(trainer, module, scored, batch, 0)
    picture = np.asarray(Image.open(tmp_path / "panels" / "val_step0000003.png"))
    top = grid_top(picture)
    assert picture.shape[1] == 5 * 130 + GUTTER and picture.shape[0] > top + 130
    masked, image = picture[top : top + 128, GUTTER + 4 * 130 : 5 * 130], picture[top : top + 128, GUTTER:130]
    assert (masked != image).any(-1).mean() > 0.3


def test_one_image_per_val_batch_still_fills_every_row(tmp_path):
    """``val_batch_size: 1`` (the VOC setting): the rows come from successive batches."""
    label = torch.full((1, 64, 64), 2, dtype=torch.long)
    images, truth, prediction = columns(batch=3, size=64)
    module, trainer = fake_parts(tmp_path, label.expand(3, -1, -1), torch.ones(3, 64, 64), step=5)
    callback = ValPanels(num_images=3)
    callback.on_validation_epoch_start(trainer, module)
    for index in range(3):
        batch = {"image": images[index : index + 1], "mask": truth[index : index + 1]}
        scored = outputs(batch["image"], batch["mask"], prediction[index : index + 1])
        callback.on_validation_batch_end(trainer, module, scored, batch, index)
    picture = np.asarray(Image.open(tmp_path / "panels" / "val_step0000005.png"))
    top, pitch = grid_top(picture), 128 + GUTTER
    assert picture.shape[0] > top + 3 * pitch  # three rows of tiles, then the legend
    for row in range(3):  # each row's truth tile is its own image's ground truth
        tile = picture[top + row * pitch : top + row * pitch + 128, GUTTER + pitch : 2 * pitch]
        expected = np.array(PALETTE)[truth[row].numpy()].repeat(2, 0).repeat(2, 1)
        assert (tile == expected).all()


def test_val_panels_refuse_a_validation_step_that_returns_nothing(tmp_path):
    label = torch.zeros(1, 64, 64, dtype=torch.long)
    module, trainer = fake_parts(tmp_path, label, torch.ones(1, 64, 64))
    images, truth, _ = columns(batch=1, size=64)
    with pytest.raises(TypeError, match="draws what validation_step returns"):
        ValPanels(num_images=1).on_validation_batch_end(trainer, module, None, {"image": images, "mask": truth}, 0)
