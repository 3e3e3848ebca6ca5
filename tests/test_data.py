import numpy as np
import pytest
import torch
from PIL import Image

from maskmatch_pl.data import DataFileError, DataSourceError, SampleReader, SemiSupervisedDataModule, load_samples
from maskmatch_pl.data.demo import LABELED_FRACTIONS, TRAIN_CANVASES, build_demo_dataset
from maskmatch_pl.data.transforms import to_tensor


def test_demo_dataset_is_deterministic_and_in_the_unimatch_layout(demo_cache, tmp_path):
    root = build_demo_dataset(demo_cache)
    for split, fraction in LABELED_FRACTIONS.items():
        labeled = (root / "splits" / split / "labeled.txt").read_text().split("\n")
        unlabeled = (root / "splits" / split / "unlabeled.txt").read_text().split("\n")
        labeled, unlabeled = [x for x in labeled if x], [x for x in unlabeled if x]
        assert len(labeled) == TRAIN_CANVASES // fraction
        if fraction > 1:
            assert not set(labeled) & set(unlabeled) and len(labeled) + len(unlabeled) == TRAIN_CANVASES
    val_classes = set()
    for index in range(60):  # the digits file is sorted by label: val must still hold every class
        val_classes |= set(np.unique(np.asarray(Image.open(root / "masks" / f"val_{index:04d}.png"))).tolist())
    assert val_classes == set(range(11)) | {255}
    mask = np.asarray(Image.open(root / "masks" / "train_0000.png"))
    assert set(np.unique(mask)) <= set(range(11)) | {255} and len(np.unique(mask)) >= 3
    # a second build elsewhere gives the same bytes
    other = build_demo_dataset(tmp_path)
    assert (other / "images" / "val_0007.png").read_bytes() == (root / "images" / "val_0007.png").read_bytes()


def test_one_class_per_canvas_variant_gives_each_canvas_one_digit_class(demo_cache, tmp_path):
    from maskmatch_pl.data.demo import load_mnist_5k, write_canvas_dataset

    sizes = {"train_canvases": 160, "val_canvases": 4, "labeled_counts": {"1_16": 10}}
    write_canvas_dataset(tmp_path, *load_mnist_5k(), 0, one_class_per_canvas=True, **sizes)
    labeled = (tmp_path / "splits" / "1_16" / "labeled.txt").read_text().split()
    unlabeled = (tmp_path / "splits" / "1_16" / "unlabeled.txt").read_text().split()
    assert len(labeled) == 2 * 10 and len(unlabeled) == 2 * 150  # "images/x.png masks/x.png" per line
    demo = build_demo_dataset(demo_cache)  # the default canvases are not this variant's
    assert (tmp_path / "masks" / "train_0000.png").read_bytes() != (demo / "masks" / "train_0000.png").read_bytes()
    per_canvas, several = set(), 0
    for index in range(100):
        mask = np.asarray(Image.open(tmp_path / "masks" / f"train_{index:04d}.png"))
        digits = set(np.unique(mask).tolist()) - {0, 255}
        assert len(digits) == 1, index
        per_canvas |= digits
        several += _components(mask) > 1
    assert per_canvas == set(range(1, 11)) and several > 30  # every class; many canvases with several digit regions


def _components(mask: np.ndarray) -> int:
    """Connected regions of digit pixels (4-neighbourhood), ignore rim included."""
    from scipy import ndimage

    return int(ndimage.label(mask > 0)[1])


def test_datamodule_batches_follow_the_documented_format(demo_cache):
    dm = SemiSupervisedDataModule(
        dataset="demo",
        cache_dir=str(demo_cache),
        crop_size=48,
        batch_size=4,
        val_batch_size=3,
        num_workers=0,
        strong_views=2,
    )
    assert dm.num_classes == 11 and dm.class_names[1] == "digit_0"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    labeled, unlabeled = batch["labeled"], batch["unlabeled"]
    assert labeled["image"].shape == (4, 3, 48, 48) and labeled["image"].dtype == torch.float32
    assert labeled["mask"].shape == (4, 48, 48) and labeled["mask"].dtype == torch.int64
    assert set(unlabeled) == {"image", "strong", "strong2", "ignore_mask", "view_scale", "index"}
    assert unlabeled["view_scale"].shape == (4,) and unlabeled["view_scale"].dtype == torch.float32
    assert not torch.equal(unlabeled["strong"], unlabeled["strong2"])
    assert len(dm.dataset("labeled")) == len(dm.dataset("unlabeled")) == 1875  # labeled list cycled
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (3, 3, 64, 64) and len(val["name"]) == 3


def test_augmentations_are_a_function_of_seed_epoch_and_index(demo_cache):
    dm = SemiSupervisedDataModule(dataset="demo", cache_dir=str(demo_cache), crop_size=48, num_workers=0)
    dm.setup("fit")
    dataset = dm.dataset("unlabeled")
    first, again = dataset[5], dataset[5]
    assert all(torch.equal(first[k], again[k]) for k in first)
    dataset.set_epoch(1)
    assert not torch.equal(first["strong"], dataset[5]["strong"])


def test_view_scale_is_the_weak_views_rescale_and_leaves_the_views_alone(demo_cache):
    from maskmatch_pl.data import UnlabeledDataset

    dm = SemiSupervisedDataModule(dataset="demo", cache_dir=str(demo_cache), num_workers=0)
    samples = dm.samples("unlabeled")[:40]
    dataset = UnlabeledDataset(samples, dm.reader, 64, (0.5, 1.5), seed=1)
    shrunk = 0
    for index in range(40):
        item = dataset[index]
        factor = item["view_scale"].item()
        assert 0.5 <= factor <= 1.5
        if factor < 1:  # a 64-px canvas shrunk into a 64-px crop: the unpadded rows are the rescaled height
            shrunk += 1
            rows = int((item["ignore_mask"] != 255).any(1).sum())
            assert rows == pytest.approx(64 * factor, abs=1e-6), index
    assert shrunk > 5
    # reading the factor changes no view: the same seed gives the same weak view without it
    import albumentations as A

    plain = A.Compose(dataset.weak.transforms)
    image = dm.reader.image(samples[3].image)
    plain.set_random_seed(hash((1, dataset.stream, 0, 3)) % (2**32))  # as _SeededAugmentation seeds the weak view
    expected = plain(image=image, mask=np.zeros(image.shape[:2], dtype=np.uint8))["image"]
    torch.testing.assert_close(dataset[3]["image"], to_tensor(expected))


def _write_png(path, array, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="P" if palette else None)
    image.save(path)


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    reader = SampleReader(num_classes=3)
    _write_png(tmp_path / "a.png", np.zeros((8, 8, 3)))
    _write_png(tmp_path / "small.png", np.zeros((4, 8)))
    _write_png(tmp_path / "bad_values.png", np.full((8, 8), 7))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataFileError, match="small.png.*8x4.*8x8"):
        reader.mask(tmp_path / "small.png", (8, 8, 3))
    with pytest.raises(DataFileError, match=r"bad_values.png.*\[7\].*neither a class"):
        reader.mask(tmp_path / "bad_values.png", (8, 8, 3))
    with pytest.raises(DataFileError, match="broken.png.*cannot read"):
        reader.image(tmp_path / "broken.png")
    (tmp_path / "split.txt").write_text("a.png a.png\nmissing.jpg a.png\n")
    with pytest.raises(DataSourceError, match=r"split.txt:2: .*missing.jpg does not exist"):
        load_samples(tmp_path / "split.txt", tmp_path, need_masks=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="empty: holds no images"):
        load_samples(tmp_path / "empty", None, need_masks=False)


def test_binary_masks_stored_as_0_255_map_to_classes(tmp_path):
    _write_png(tmp_path / "m.png", np.array([[0, 255], [255, 0]]))
    # without a mapping 255 means "ignore": the foreground would silently vanish from training
    assert SampleReader(num_classes=2).mask(tmp_path / "m.png", (2, 2, 3)).tolist() == [[0, 255], [255, 0]]
    assert SampleReader(num_classes=2, binary=True).mask(tmp_path / "m.png", (2, 2, 3)).tolist() == [[0, 1], [1, 0]]
    assert SampleReader(num_classes=2, mask_mapping={255: 1}).mask(tmp_path / "m.png", (2, 2, 3)).tolist() == [
        [0, 1],
        [1, 0],
    ]


def test_labeled_and_unlabeled_views_of_one_batch_slot_are_drawn_independently(demo_cache):
    from maskmatch_pl.data import LabeledDataset, UnlabeledDataset

    dm = SemiSupervisedDataModule(dataset="demo", cache_dir=str(demo_cache), num_workers=0)
    samples = dm.samples("labeled")[:8]
    # the same images in both sets: with a shared seed stream, slot k would get the same crop and flip
    labeled = LabeledDataset(samples, dm.reader, 48, (0.5, 2.0), seed=3)
    unlabeled = UnlabeledDataset(samples, dm.reader, 48, (0.5, 2.0), seed=3)
    same = [torch.equal(labeled[k]["image"], unlabeled[k]["image"]) for k in range(8)]
    assert not any(same)


def test_view_scale_of_non_square_images_larger_and_smaller_than_the_crop():
    from maskmatch_pl.data.transforms import view_scale, weak_transform

    transform = weak_transform(32, (0.5, 2.0))
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    factors = []
    for seed in range(30):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=np.zeros((40, 80), dtype=np.uint8))
        drawn = dict(out["applied_transforms"])["RandomScale"]["scale"]
        factors.append(view_scale(out, image.shape))
        assert factors[-1] == pytest.approx(drawn, abs=1 / 40)  # the rescaled height, rounded to whole pixels
    assert min(factors) < 0.8 and max(factors) > 1.0  # the crop (32) cuts the image above and below its size
