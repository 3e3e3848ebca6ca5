"""``maskmatch-pl export``: the exported student predicts, at any input size, what ``predict`` writes."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from maskmatch_pl import SegmentationNetwork
from maskmatch_pl.cli import main
from maskmatch_pl.data.transforms import to_tensor
from maskmatch_pl.export import export_onnx, padded_size

from .conftest import flat_module, tiny_model_args

ort = pytest.importorskip("onnxruntime")

FPN = ["--model.network.arch=FPN", "--model.network.model_kwargs={}"]  # the tiny encoder under FPN: inputs padded to 32
SIZES = [(64, 64), (37, 53), (100, 20), (5, 7)]  # height x width; 5 x 7 pads to two cells of the deepest map


def cli_args(root, cache):
    return [
        "--config",
        "configs/demo.yaml",
        *tiny_model_args(),
        *FPN,
        f"--data.cache_dir={cache}",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--data.crop_size=48",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, demo_cache):
    """A tiny model fitted for two steps, photos of several sizes, and what ``predict`` wrote for them."""
    root = tmp_path_factory.mktemp("export")
    args = cli_args(root / "run", demo_cache)
    main(["fit", *args, "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"])
    ckpt = next((root / "run").rglob("last.ckpt"))
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(photos / f"{height}x{width}.png")
    out = root / "predictions"
    main(["predict", *args, f"--data.predict={photos}", f"--prediction.output_dir={out}", f"--ckpt_path={ckpt}"])
    return ckpt, photos, out


def photo(photos, size):
    """``1 x 3 x H x W`` uint8 RGB, as the file decodes."""
    return np.asarray(Image.open(photos / f"{size[0]}x{size[1]}.png").convert("RGB")).transpose(2, 0, 1)[None].copy()


def written(out, size):
    return np.asarray(Image.open(out / f"{size[0]}x{size[1]}.png"))  # palette indices = class indices


def test_onnx_export_predicts_what_predict_writes_at_every_size(predicted, tmp_path):
    ckpt, photos, out = predicted
    model = tmp_path / "model.onnx"
    main(["export", f"--ckpt_path={ckpt}", f"--output={model}"])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_inputs()[0].type == "tensor(uint8)"
    for size in SIZES:
        (labels,) = session.run(None, {"image": photo(photos, size)})
        assert labels.shape == (1, *size) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels[0], written(out, size))
    pair = np.concatenate([photo(photos, (37, 53))] * 2)  # a batch of two
    (labels,) = session.run(None, {"image": pair})
    np.testing.assert_array_equal(labels, np.stack([written(out, (37, 53))] * 2))
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["maskmatch_pl.class_names"])[:2] == ["background", "digit_0"]
    assert "uint8" in metadata["maskmatch_pl.input"]


def test_torchscript_export_predicts_what_predict_writes(predicted, tmp_path):
    ckpt, photos, out = predicted
    model = tmp_path / "model.pt"
    main(["export", f"--ckpt_path={ckpt}", f"--output={model}", "--format=torchscript"])
    loaded = torch.jit.load(str(model))
    for size in SIZES:
        labels = loaded(torch.from_numpy(photo(photos, size)))
        np.testing.assert_array_equal(labels[0].numpy(), written(out, size))


def test_probabilities_output_is_the_softmax_whose_argmax_predict_writes(predicted, tmp_path):
    ckpt, photos, out = predicted
    model = export_onnx(ckpt, tmp_path / "probs.onnx", output="probabilities")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"image": photo(photos, (100, 20))})
    assert probabilities.shape == (1, 11, 100, 20) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(1)[0], written(out, (100, 20)))


def test_an_existing_output_is_kept_unless_overwrite_and_a_missing_checkpoint_is_named(predicted, tmp_path):
    ckpt = predicted[0]
    model = tmp_path / "model.onnx"
    model.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="model.onnx exists"):
        main(["export", f"--ckpt_path={ckpt}", f"--output={model}"])
    assert model.read_bytes() == b"user data" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    main(["export", f"--ckpt_path={ckpt}", f"--output={model}", "--overwrite=true"])
    assert ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    missing = tmp_path / "nowhere" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such checkpoint"):
        main(["export", f"--ckpt_path={missing}", f"--output={tmp_path / 'other.onnx'}"])


def test_a_network_exports_from_python_and_matches_predict_labels(tiny_module_kwargs, tmp_path):
    """The tiny Unet takes any size but never a 1 x 1 deepest map: the padding rule's other branch."""
    module = flat_module(**tiny_module_kwargs).eval()
    model = export_onnx(module.network, tmp_path / "unet.onnx")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for size in [(2, 32, 32), (1, 5, 7), (3, 33, 97)]:
        images = rng.integers(0, 256, (size[0], size[1], size[2], 3), dtype=np.uint8)
        batch = {"image": torch.stack([to_tensor(image) for image in images])}
        expected = module.predict_labels(batch).numpy()
        chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(session.run(None, {"image": chw})[0], expected)


@pytest.mark.parametrize("multiple, stride", [(32, 32), (1, 32), (16, 16), (8, 32), (1, 1)])
def test_the_graphs_padding_is_the_networks(multiple, stride):
    network = SegmentationNetwork(nn.Conv2d(3, 2, 1), pad_multiple=multiple)
    network.feature_stride = stride
    for height in range(1, 70):
        for width in range(1, 70):
            assert padded_size(height, width, multiple, stride) == network.padded_size(height, width)


def test_a_missing_export_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "maskmatch-pl\[export\]"'):
        export_onnx(nn.Conv2d(3, 2, 1), tmp_path / "m.onnx")
