"""ViT encoders behind a DPT head: a tiny random patch-14 ViT (DINOv2's patch size) through the real CLI,
on inputs whose sides are not multiples of 14."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskmatch_pl.cli import main
from maskmatch_pl.network import SegmentationNetwork, build_smp_model

TINY_VIT = {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 28}
TINY_HEAD = {"decoder_intermediate_channels": [16, 16, 16, 16], "decoder_fusion_channels": 16}


def tiny_vit(num_classes=11):
    return build_smp_model("DPT", "tu-vit_small_patch14_dinov2", None, num_classes, **TINY_VIT, **TINY_HEAD)


def test_smps_own_dpt_cannot_take_a_patch14_encoder_and_ours_can():
    import segmentation_models_pytorch as smp

    with pytest.raises(RuntimeError):  # the reason PatchDPT exists: if smp fixes it, this fails and says so
        smp.DPT("tu-vit_small_patch14_dinov2", encoder_weights=None, classes=3, dynamic_img_size=True)(
            torch.randn(1, 3, 56, 56)
        )
    network = SegmentationNetwork(tiny_vit(3))
    assert network.pad_multiple == 28  # twice the patch: the decoder halves the token grid and doubles it back
    for height, width in [(37, 53), (5, 7), (1, 1), (100, 20), (56, 56)]:
        padded = network.padded_size(height, width)
        assert padded[0] % 28 == 0 and padded[1] % 28 == 0
        network.train()
        assert network(torch.randn(2, 3, height, width)).shape == (2, 3, height, width)
        assert network.forward_perturbed(torch.randn(2, 3, height, width)).shape == (2, 3, height, width)
        network.eval()
        assert network(torch.randn(1, 3, height, width)).shape == (1, 3, height, width)


def test_the_token_grid_is_the_patch_grid_of_the_padded_input():
    net = tiny_vit(3)
    features, _ = net._features(torch.randn(1, 3, 56, 84))
    assert [tuple(f.shape) for f in features] == [(1, 32, 4, 6)] * 4


def test_fit_validate_predict_through_the_cli_with_a_patch14_vit(tmp_path, demo_cache):
    model = [
        "--model.network.arch=DPT",
        "--model.network.encoder_name=tu-vit_small_patch14_dinov2",
        "--model.network.encoder_weights=null",
        "--model.network.model_kwargs={depth: 4, embed_dim: 32, num_heads: 2, img_size: 28, "
        "decoder_intermediate_channels: [16, 16, 16, 16], decoder_fusion_channels: 16}",
    ]
    common = [
        "--config",
        "configs/demo_unimatch_maskmatch.yaml",  # two strong views, the masked view and feature perturbation
        *model,
        f"--data.cache_dir={demo_cache}",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--data.crop_size=50",  # not a multiple of 14: padded to 56 and cropped back
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    main(["fit", *common, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2",
          "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"])  # fmt: skip
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    main(["validate", *common, f"--trainer.default_root_dir={tmp_path}", "--trainer.limit_val_batches=1",
          "--model.evaluation.mode=sliding_window", "--model.evaluation.crop_size=40",
          f"--ckpt_path={checkpoint}"])  # fmt: skip
    images = tmp_path / "photos"
    images.mkdir()
    for index, size in enumerate([(37, 53), (29, 50)]):
        pixels = np.random.default_rng(index).integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"p{index}.png")
    out = tmp_path / "out"
    main(["predict", *common, f"--trainer.default_root_dir={tmp_path}", f"--data.predict={images}",
          f"--prediction.output_dir={out}", f"--ckpt_path={checkpoint}"])  # fmt: skip
    assert Image.open(out / "p0.png").size == (53, 37)
    assert Image.open(out / "p1.png").size == (50, 29)
