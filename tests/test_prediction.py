"""PredictionWriter: outputs mirror the inputs' relative paths, never collide, never overwrite."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from maskmatch_pl.data.sources import Sample
from maskmatch_pl.prediction import PredictionWriter, input_root


def make_images(folder, relpaths, size=(20, 30)):
    paths = []
    for index, relpath in enumerate(relpaths):
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*size, 3), 40 * index, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def fake_trainer(paths, predict=None):
    """What the writer reads of a trainer: the predict loaders' samples and the data module."""
    dataset = SimpleNamespace(samples=[Sample(path) for path in paths])
    datamodule = SimpleNamespace(palette=None, hparams=SimpleNamespace(predict=predict))
    return SimpleNamespace(predict_dataloaders=[SimpleNamespace(dataset=dataset)], datamodule=datamodule)


def predict(writer, trainer, paths, size=(20, 30), batch_size=1):
    """Lightning's calls: on_predict_start, then the write hook per batch of the module's output."""
    writer.on_predict_start(trainer, None)
    for start in range(0, len(paths), batch_size):
        names = [str(path) for path in paths[start : start + batch_size]]
        masks = torch.arange(len(names)).view(-1, 1, 1).expand(-1, size[0] + 4, size[1] + 6) + 1
        output = {"prediction": masks, "name": names, "size": torch.tensor([size] * len(names))}
        writer.write_on_batch_end(trainer, None, output, None, None, start // batch_size)


def test_same_file_names_in_different_folders_keep_their_folders(tmp_path):
    paths = make_images(tmp_path / "in", ["a/img.png", "b/img.png", "top.jpg"])
    out = tmp_path / "out"
    writer = PredictionWriter(str(out), overlay=True)
    predict(writer, fake_trainer(paths), paths, batch_size=2)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a",
        "a/img.png",
        "a/img_overlay.jpg",
        "b",
        "b/img.png",
        "b/img_overlay.jpg",
        "top.png",
        "top_overlay.jpg",
    ]
    mask = Image.open(out / "a" / "img.png")
    assert mask.mode == "P" and mask.size == (30, 20)  # cropped to the input's size
    assert np.asarray(mask).max() == 1 and np.asarray(Image.open(out / "b" / "img.png")).max() == 2


def test_the_data_modules_predict_folder_is_the_root(tmp_path):
    paths = make_images(tmp_path / "in", ["images/x/one.png", "images/x/two.png"])
    assert input_root(paths) == tmp_path / "in" / "images" / "x"  # deepest common folder
    assert input_root(paths, tmp_path / "in") == tmp_path / "in" / "images"  # scanned as images/
    out = tmp_path / "out"
    predict(PredictionWriter(str(out)), fake_trainer(paths, predict=str(tmp_path / "in")), paths)
    assert (out / "x" / "one.png").is_file() and (out / "x" / "two.png").is_file()


def test_two_inputs_for_one_output_stop_the_run_naming_both(tmp_path):
    paths = make_images(tmp_path / "in", ["a/img.png", "a/img.jpg"])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="img.png and .*img.jpg would both be written to .*img.png"):
        predict(PredictionWriter(str(out)), fake_trainer(paths), paths)
    assert not out.exists()  # checked before anything is written


def test_inputs_not_known_up_front_are_written_by_stem_and_collisions_still_caught(tmp_path):
    paths = make_images(tmp_path / "in", ["a/img.png", "b/img.png"])
    out = tmp_path / "out"
    trainer = SimpleNamespace(datamodule=None)  # e.g. trainer.predict(dataloaders=...) of another dataset
    with pytest.raises(ValueError, match=r"a[/\\]img.png and .*b[/\\]img.png would both be written"):
        predict(PredictionWriter(str(out)), trainer, paths)
    assert (out / "img.png").is_file()


def test_existing_files_are_kept_unless_overwrite(tmp_path):
    paths = make_images(tmp_path / "in", ["a/img.png", "b/img.png"])
    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    (out / "b" / "img.png").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match=r"b[/\\]img.png exists"):
        predict(PredictionWriter(str(out)), fake_trainer(paths), paths)
    assert (out / "b" / "img.png").read_bytes() == b"user data" and not (out / "a").exists()
    predict(PredictionWriter(str(out), overwrite=True), fake_trainer(paths), paths)
    assert Image.open(out / "b" / "img.png").mode == "P" and (out / "a" / "img.png").is_file()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    paths = make_images(tmp_path / "in", ["a/img.png"])
    writer = PredictionWriter(str(tmp_path / "out"))
    predict(writer, fake_trainer(paths), paths)
    with pytest.raises(FileExistsError, match="img.png exists"):
        predict(writer, fake_trainer(paths), paths)
