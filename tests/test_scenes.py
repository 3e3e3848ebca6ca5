"""The street-scene testbed (issue 27): deterministic, masks that match the pictures, a layout, class balance."""

import numpy as np
import pytest

from maskmatch_pl.data.presets import PRESETS
from maskmatch_pl.data.scenes import SCENE_CLASSES, render_scene
from maskmatch_pl.data.testbeds import load_textures, write_testbed

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def textures():
    return load_textures()


@pytest.fixture(scope="module")
def scenes(textures):
    return [render_scene(textures, np.random.default_rng([5, index])) for index in range(60)]


def test_scenes_are_deterministic_bytes(tmp_path, textures):
    for copy in ("a", "b"):
        write_testbed(tmp_path / copy, lambda rng: render_scene(textures, rng), seed=3, train_images=5, val_images=2)
    files = sorted((tmp_path / "a").rglob("*.*"))
    assert len([f for f in files if f.suffix == ".png"]) == 2 * 7
    for path in files:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
    first, _ = render_scene(textures, np.random.default_rng(0))
    other, _ = render_scene(textures, np.random.default_rng(1))
    assert not np.array_equal(first, other)


def test_masks_follow_the_pictures_edges(scenes):
    """The image changes more across a label edge than inside a region: the masks are where the things are."""
    across, inside = [], []
    for image, label in scenes:
        image = image.astype(np.float32)
        step = np.abs(np.diff(image, axis=1)).sum(-1)  # horizontal neighbours
        edge = label[:, 1:] != label[:, :-1]
        across.append(step[edge].mean())
        inside.append(step[~edge].mean())
    assert np.mean(across) > 2 * np.mean(inside), (np.mean(across), np.mean(inside))


def test_the_layout_puts_things_where_context_says(scenes):
    """Sky above the road, cars on the road's rows, every class somewhere; the class shares are printed."""
    index = {name: i for i, name in enumerate(SCENE_CLASSES)}
    shares = np.zeros(len(SCENE_CLASSES))
    for image, label in scenes:
        assert image.shape == (64, 128, 3) and label.shape == (64, 128) and label.max() < len(SCENE_CLASSES)
        shares += np.bincount(label.ravel(), minlength=len(SCENE_CLASSES)) / label.size
        rows = np.arange(label.shape[0])[:, None] * np.ones_like(label)
        sky, road = label == index["sky"], label == index["road"]
        assert rows[sky].mean() < rows[road].mean()  # the sky is above the road
        cars = label == index["car"]
        if cars.any():  # a car's lowest pixel is below the horizon (on the road or the kerb)
            assert rows[cars].max() > rows[road].min()
    shares /= len(scenes)
    print("class shares:", {name: f"{100 * share:.1f} %" for name, share in zip(SCENE_CLASSES, shares)})
    assert (shares > 0).all()  # every class occurs
    assert all(shares[index[name]] > 0.1 for name in ("road", "sidewalk", "building", "sky"))  # the stuff
    assert all(shares[index[name]] < 0.03 for name in ("person", "pole", "sign"))  # the small things


def test_scenes_is_a_preset_with_the_scene_classes():
    assert PRESETS["scenes"].class_names == SCENE_CLASSES
