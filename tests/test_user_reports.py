"""Inputs from users' bug reports (issue 23): pixels read as a viewer shows them, files paired
unambiguously, scores and predictions independent of batching, small images, messages whose
suggested fix works."""

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from maskmatch_pl import SemiSupervisedDataModule
from maskmatch_pl.data import DataFileError, DataSourceError, SampleReader, load_samples
from maskmatch_pl.data.sources import Sample
from maskmatch_pl.evaluation import iou_from_confusion, mean_iou
from maskmatch_pl.network import SegmentationNetwork, build_smp_model

from .conftest import TINY_MODEL, flat_module

ORIENTATION = 0x0112


def save(path, array, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kwargs)
    return path


def square_mask(size=64, side=21):
    mask = np.zeros((size, size), np.uint8)
    mask[20 : 20 + side, 17 : 17 + side] = 255
    return mask


# ---------------------------------------------------------------- 1. pixels read as viewers show them
def test_a_binary_jpeg_mask_is_thresholded_not_read_as_foreground_noise(tmp_path):
    path = save(tmp_path / "m.jpg", square_mask(), "L", quality=75)
    assert (np.asarray(Image.open(path)) % 255 != 0).any()  # the compression noise is there
    mask = SampleReader(num_classes=2, binary=True).mask(path, (64, 64, 3))
    assert int((mask == 1).sum()) == 21 * 21  # 441 foreground pixels, as drawn
    with pytest.raises(DataFileError, match=r"m.jpg: a JPEG mask: lossy compression .* save masks as PNG"):
        SampleReader(num_classes=2, mask_mapping={255: 1}).mask(path, (64, 64, 3))


def test_anti_aliased_binary_png_masks_split_their_edges_at_half(tmp_path):
    smooth = np.asarray(Image.fromarray(square_mask()).resize((32, 32), Image.BILINEAR))
    assert len(np.unique(smooth)) > 2  # edge values between 0 and 255
    save(tmp_path / "aa.png", smooth, "L")
    read = SampleReader(num_classes=2, binary=True).mask(tmp_path / "aa.png", (32, 32, 3))
    assert np.array_equal(read, (smooth > 127.5).astype(np.uint8))
    save(tmp_path / "01.png", (square_mask() > 0).astype(np.uint8), "L")
    assert int(SampleReader(num_classes=2, binary=True).mask(tmp_path / "01.png", (64, 64, 3)).sum()) == 441


def test_lossy_webp_and_jpeg_tiff_binary_masks_are_thresholded_and_lossless_webp_is_told_apart(tmp_path):
    reader = SampleReader(num_classes=2, binary=True)
    lossy = save(tmp_path / "m.webp", square_mask(), "L", quality=75)
    assert int((reader.mask(lossy, (64, 64, 3)) == 1).sum()) == 21 * 21
    tiff = save(tmp_path / "m.tif", np.repeat(square_mask()[..., None], 3, 2), compression="jpeg")
    with pytest.raises(DataFileError, match=r"m.tif: a TIFF mask: lossy"):
        SampleReader(num_classes=2).mask(tiff, (64, 64, 3))
    profile = bytes(range(256)) * 24  # a 6 KB ICC profile puts the bitstream chunk past the first 4 KB
    indexed = np.where(square_mask() > 0, 1, 0).astype(np.uint8)
    lossless = save(tmp_path / "icc.webp", indexed, "L", lossless=True, icc_profile=profile)
    assert int((SampleReader(num_classes=2).mask(lossless, (64, 64, 3)) == 1).sum()) == 21 * 21


def test_val_masks_of_only_0_and_255_are_refused_like_labeled_ones(tmp_path):
    square = np.zeros((16, 16), np.uint8)
    square[4:9, 4:9] = 255
    labeled = labeled_folder(tmp_path / "labeled", names=("a", "b"))
    for name in ("a", "b"):
        save(labeled / "masks" / f"{name}.png", square // 255, "L")
    val = labeled_folder(tmp_path / "val", names=("v",))
    save(val / "masks" / "v.png", square, "L")
    data = SemiSupervisedDataModule(dataset="custom", num_classes=2, labeled=str(labeled), val=str(val), num_workers=0)
    with pytest.raises(DataFileError, match=r"val.*hold only 0 and 255.*data.binary: true"):
        data.setup("validate")


def test_lossy_webp_and_multi_frame_masks_are_refused_by_name(tmp_path):
    lossy = save(tmp_path / "m.webp", square_mask(), "L", quality=50)
    with pytest.raises(DataFileError, match=r"m.webp: a WEBP mask: lossy"):
        SampleReader(num_classes=3).mask(lossy, (64, 64, 3))
    lossless = save(tmp_path / "ok.webp", np.where(square_mask() > 0, 2, 0).astype(np.uint8), "L", lossless=True)
    assert set(np.unique(SampleReader(num_classes=3).mask(lossless, (64, 64, 3)))) == {0, 2}
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8), mode="L") for v in (0, 1)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataFileError, match=r"anim.gif: the mask file holds 2 frames"):
        SampleReader(num_classes=2).mask(tmp_path / "anim.gif", (8, 8, 3))


def portrait_photo(path, stored_format="PNG"):
    """A picture that viewers show 64 wide x 96 tall, stored sideways (96 x 64) with EXIF
    Orientation 6, as phones store portrait shots. Returns what viewers show."""
    rng = np.random.default_rng(0)
    shown = rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # 96 wide x 64 tall
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 clockwise to display"
    stored.save(path, format=stored_format, exif=exif)
    return shown


def test_an_exif_rotated_photo_is_read_as_viewers_show_it(tmp_path):
    shown = portrait_photo(tmp_path / "photo.png")
    reader = SampleReader(num_classes=2)
    assert np.array_equal(reader.image(tmp_path / "photo.png"), shown)
    assert reader.image_size(tmp_path / "photo.png") == (96, 64)  # headers-only check agrees
    mask = np.zeros((96, 64), np.uint8)
    mask[:48] = 1  # drawn on the picture as viewers show it: top half
    save(tmp_path / "mask.png", mask, "L")
    image, read = reader.pair(Sample(tmp_path / "photo.png", tmp_path / "mask.png"))
    assert image.shape == (96, 64, 3) and np.array_equal(read, mask)


def test_a_mask_drawn_on_the_unturned_pixels_is_refused_with_the_exif_reason(tmp_path):
    portrait_photo(tmp_path / "photo.png")
    save(tmp_path / "mask.png", np.zeros((64, 96), np.uint8), "L")
    with pytest.raises(DataFileError, match=r"mask.png: mask is 96x64 but its image is 64x96.*EXIF Orientation is 6"):
        SampleReader(num_classes=2).pair(Sample(tmp_path / "photo.png", tmp_path / "mask.png"))


def test_sixteen_bit_images_are_scaled_not_clipped_and_float_images_refused(tmp_path):
    grey = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    save(tmp_path / "deep.png", grey)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = SampleReader(num_classes=2).image(tmp_path / "deep.png")
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 0], np.rint(grey / 257).astype(np.uint8))
    save(tmp_path / "float.tif", np.ones((8, 8), np.float32))
    with pytest.raises(DataFileError, match=r"float.tif: a floating-point image \(mode F\)"):
        SampleReader(num_classes=2).image(tmp_path / "float.tif")


# ---------------------------------------------------------------- 2. the right files, or a refusal
def labeled_folder(root, names=("a",), image_suffix=".jpg", mask_suffixes=(".png",), size=(16, 16)):
    for name in names:
        save(root / "images" / f"{name}{image_suffix}", np.zeros((*size, 3), np.uint8))
        for suffix in mask_suffixes:
            save(root / "masks" / f"{name}{suffix}", np.zeros(size, np.uint8), "L")
    return root


def test_two_masks_for_one_image_are_refused_with_both_names(tmp_path):
    root = labeled_folder(tmp_path / "d", mask_suffixes=(".png", ".tif"))
    with pytest.raises(DataSourceError, match=r"masks/a.png and .*masks/a.tif are both masks named 'a'"):
        load_samples(root, None, need_masks=True)
    save(root / "images" / "a.png", np.zeros((16, 16, 3), np.uint8))
    (root / "masks" / "a.tif").unlink()
    with pytest.raises(DataSourceError, match=r"images/a.jpg and .*images/a.png are both images named 'a'"):
        load_samples(root, None, need_masks=True)


def test_gif_masks_are_read_and_unread_suffixes_are_named(tmp_path):
    root = labeled_folder(tmp_path / "gif", mask_suffixes=(".gif",))
    assert [s.mask.name for s in load_samples(root, None, need_masks=True)] == ["a.gif"]
    other = labeled_folder(tmp_path / "other", mask_suffixes=())
    (other / "masks").mkdir()
    (other / "masks" / "a.npy").write_bytes(b"")
    with pytest.raises(DataSourceError, match=r"no mask named 'a' .*found a.npy, but masks .* read only from .*\.png"):
        load_samples(other, None, need_masks=True)


def test_hidden_files_are_skipped_and_a_mask_folder_is_never_read_as_images(tmp_path):
    root = tmp_path / "unlabeled"
    save(root / "a.jpg", np.zeros((16, 16, 3), np.uint8))
    save(root / ".ipynb_checkpoints" / "a-checkpoint.jpg", np.zeros((16, 16, 3), np.uint8))
    (root / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork
    assert [s.image.name for s in load_samples(root, None, need_masks=False)] == ["a.jpg"]
    save(root / "masks" / "a.png", np.zeros((16, 16), np.uint8), "L")
    with pytest.raises(DataSourceError, match=r"plain image folder .* the masks in .*masks too"):
        load_samples(root, None, need_masks=False)


def test_an_image_listed_twice_in_a_split_file_is_refused(tmp_path):
    save(tmp_path / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "split.txt").write_text("a.jpg\na.jpg\n")
    with pytest.raises(DataSourceError, match=r"split.txt:2: a.jpg is listed again \(first on line 1\)"):
        load_samples(tmp_path / "split.txt", tmp_path, need_masks=False)


# ---------------------------------------------------------------- 3. scores that depend on predictions and truth only
def unequal_val_set(root):
    rng = np.random.default_rng(1)
    for name, (height, width) in {"big": (160, 192), "small": (40, 40), "wide": (40, 72)}.items():
        save(root / "images" / f"{name}.png", rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 :, : width // 2] = 1
        mask[: height // 4, width // 2 :] = 2
        save(root / "masks" / f"{name}.png", mask, "L")
    return root


def evaluate(model, root, val_batch_size):
    data = SemiSupervisedDataModule(
        dataset="custom", num_classes=4, val=str(root), predict=str(root / "images"), val_batch_size=val_batch_size,
        num_workers=0,
    )  # fmt: skip
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    outputs = trainer.predict(model, datamodule=data)
    predictions = {}
    for output in outputs:
        for name, size, labels in zip(output["name"], output["size"], output["prediction"]):
            predictions[name] = labels[: size[0], : size[1]].clone()
    return metrics, predictions


@pytest.mark.parametrize("mode", ["original", "center_crop", "sliding_window"])
def test_miou_and_predictions_do_not_depend_on_the_batch(tmp_path, mode):
    torch.manual_seed(0)
    model = flat_module(**TINY_MODEL, num_classes=4, eval_mode=mode, eval_crop_size=48)
    root = unequal_val_set(tmp_path / "val")
    one, predicted_one = evaluate(model, root, 1)
    three, predicted_three = evaluate(model, root, 3)
    for key in ("val/mIoU", "val/boundary_mIoU"):  # the locality scores too are sums over the set
        assert one[key] == three[key], key
    for name in predicted_one:
        assert torch.equal(predicted_one[name], predicted_three[name]), name
    # the score is what a user computes by hand from the predictions over the set
    intersection, union = np.zeros(4), np.zeros(4)
    for name, labels in predicted_one.items():
        truth = np.asarray(Image.open(name.replace("images", "masks")))
        for c in range(4):
            intersection[c] += ((labels.numpy() == c) & (truth == c)).sum()
            union[c] += ((labels.numpy() == c) | (truth == c)).sum()
    present = union > 0
    if mode != "center_crop":  # (predict covers the whole image; the centre crop scores its centre)
        assert np.isclose(one["val/mIoU"], (intersection[present] / union[present]).mean(), atol=1e-6)


def test_classes_in_neither_truth_nor_prediction_are_left_out_of_the_mean():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # rows truth, columns prediction; class 2 absent
    iou = iou_from_confusion(confusion)
    assert iou[:2].tolist() == [3 / 4, 2 / 3] and iou[2].isnan()
    assert mean_iou(iou).item() == pytest.approx((3 / 4 + 2 / 3) / 2)


# ---------------------------------------------------------------- 4. small and extreme sizes
@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs"),
    [
        ("FPN", "tu-tf_efficientnet_lite0", {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}),
        ("Unet", TINY_MODEL["encoder_name"], TINY_MODEL["model_kwargs"]),
    ],
)
def test_any_input_size_runs_in_eval_and_in_training(arch, encoder, kwargs):
    """A property test over sizes: tiny sides, extreme aspect ratios, sizes around the stride
    (the demo's FPN has GroupNorm, which fails on a 1 x 1 feature map in every mode)."""
    network = SegmentationNetwork(build_smp_model(arch, encoder, None, 3, **kwargs))
    rng = np.random.default_rng(0)
    sizes = [(24, 30), (1, 1), (1, 200), (200, 1), (31, 33), (32, 32), (5, 7)]
    sizes += [tuple(int(v) for v in rng.integers(1, 100, 2)) for _ in range(6)]
    for height, width in sizes:
        for training in (False, True):
            network.train(training)
            with torch.no_grad():
                logits = network(torch.randn(1, 3, height, width))
            assert logits.shape == (1, 3, height, width), (height, width, training)


def test_a_30_by_24_val_image_validates_through_the_demo_network(tmp_path):
    root = tmp_path / "val"
    save(root / "images" / "tiny.png", np.zeros((24, 30, 3), np.uint8))
    save(root / "masks" / "tiny.png", np.ones((24, 30), np.uint8), "L")
    model = flat_module(
        num_classes=2,
        arch="FPN",
        encoder_name="tu-tf_efficientnet_lite0",
        model_kwargs={"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32},
        eval_scales=(0.5, 1.0),
    )
    metrics, predictions = evaluate_two_classes(model, root)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0 and next(iter(predictions.values())).shape == (24, 30)


def evaluate_two_classes(model, root):
    data = SemiSupervisedDataModule(dataset="custom", num_classes=2, val=str(root), predict=str(root), num_workers=0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    output = trainer.predict(model, datamodule=data)[0]
    return metrics, {
        name: p[: s[0], : s[1]] for name, s, p in zip(output["name"], output["size"], output["prediction"])
    }


def test_a_training_image_too_small_for_the_random_rescale_is_refused_up_front(tmp_path):
    labeled = labeled_folder(tmp_path / "labeled", names=("a", "b"), size=(16, 16))
    save(labeled / "images" / "line.jpg", np.zeros((1, 40, 3), np.uint8))
    save(labeled / "masks" / "line.png", np.ones((1, 40), np.uint8), "L")
    data = SemiSupervisedDataModule(
        dataset="custom", num_classes=2, labeled=str(labeled), val=str(labeled), batch_size=1, num_workers=0
    )
    with pytest.raises(DataFileError, match=r"line.jpg: the image is 40x1 pixels .* at least 2 pixels"):
        data.setup("fit")


# ---------------------------------------------------------------- 5. messages whose fix works
def test_one_class_is_refused_with_the_two_classes_of_binary_data():
    with pytest.raises(ValueError, match=r"binary data has two, background \(0\) and foreground \(1\)"):
        SemiSupervisedDataModule(dataset="custom", num_classes=1)
    with pytest.raises(ValueError, match=r"binary: true .* 2 classes .* but data.num_classes is 3"):
        SemiSupervisedDataModule(dataset="custom", num_classes=3, binary=True)
    assert SemiSupervisedDataModule(dataset="custom", binary=True).num_classes == 2  # the suggested fix works
    with pytest.raises(ValueError, match=r"num_classes is 1, but segmentation needs two classes"):
        flat_module(**TINY_MODEL, num_classes=1)


def test_palette_masks_are_read_as_their_indices_not_their_colours(tmp_path):
    image = Image.fromarray(np.array([[0, 5], [255, 1]], np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    image.save(tmp_path / "m.png")
    assert SampleReader(num_classes=6).mask(tmp_path / "m.png", (2, 2, 3)).tolist() == [[0, 5], [255, 1]]
