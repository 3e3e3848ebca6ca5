"""UniMatch V2 on a ViT (Complementary Dropout against a from-scratch reading of LiheYoung/UniMatch-V2's
``unimatch_v2.py`` and ``model/semseg/dpt.py``), its configs, and MaskMatch's masked view in token space."""

import importlib

import pytest
import torch
import torch.nn.functional as F
import yaml

from maskmatch_pl import MaskMatchModule
from maskmatch_pl.cli import main
from maskmatch_pl.masking import PatchMasking
from maskmatch_pl.network import SegmentationNetwork
from maskmatch_pl.perturbation import complementary_channel_masks
from maskmatch_pl.targets import PseudoLabels

from .conftest import flat_module
from .test_module import make_batch
from .test_vit import TINY_HEAD, TINY_VIT, tiny_vit

cutmix_file = importlib.import_module("maskmatch_pl.cutmix")
module_file = importlib.import_module("maskmatch_pl.step")


def test_complementary_masks_are_unimatch_v2s():
    """``dropout_mask1 = Binomial(0.5) * 2``, ``dropout_mask2 = 2 - dropout_mask1``, ``bs // 2 * (1 - 0.5)``
    images set to ones in both (their ``bs`` is the two views concatenated)."""
    generator, unperturbed_sets = torch.Generator().manual_seed(0), set()
    kept_share = []
    for _ in range(20):
        first, second = complementary_channel_masks(6, 64, generator)
        assert first.shape == second.shape == (6, 64)
        assert torch.equal(first + second, torch.full((6, 64), 2.0))
        ones = (first == 1).all(1)
        assert int(ones.sum()) == 3 and bool((second[ones] == 1).all())
        assert set(first[~ones].unique().tolist()) <= {0.0, 2.0}  # inverted dropout at 0.5
        assert bool((first[~ones] * second[~ones] == 0).all())  # each channel in exactly one view
        kept_share.append(float((first[~ones] == 2).float().mean()))
        unperturbed_sets.add(tuple(ones.nonzero().flatten().tolist()))
    assert len(unperturbed_sets) > 5  # which images go unperturbed is drawn
    assert sum(kept_share) / len(kept_share) == pytest.approx(0.5, abs=0.03)
    assert complementary_channel_masks(5, 8, torch.Generator().manual_seed(1))[0].eq(1).all(1).sum() == 2  # int(2.5)
    with pytest.raises(ValueError, match="unperturbed_share"):
        complementary_channel_masks(4, 8, unperturbed_share=1.5)


def v2_comp_drop_logits(net, images, channel_mask):
    """``DPT.forward(x, comp_drop=True)`` of UniMatch V2 on our head: tokens ``B x N x D`` times
    ``dropout_mask.unsqueeze(1)``, the same mask on every intermediate layer, then the head."""
    outputs = net.encoder.forward_intermediates(  # V2's get_intermediate_layers: the final norm on each
        images,
        indices=net.output_indices,
        output_fmt="NLC",
        intermediates_only=True,
        return_prefix_tokens=True,
        norm=True,
    )
    grid_h, grid_w = images.shape[-2] // net.patch_size, images.shape[-1] // net.patch_size
    features = [
        (tokens * channel_mask.unsqueeze(1)).permute(0, 2, 1).reshape(len(images), -1, grid_h, grid_w)
        for tokens, _ in outputs
    ]
    logits = net.segmentation_head(net.decoder(features, [prefix for _, prefix in outputs]))
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def unimatch_v2_reference(net, batch, boxes, masks, tau):
    """UniMatch V2's training step (``unimatch_v2.py``) written out, at step 0 (the EMA teacher is the
    student's copy) with our CutMix partner (the next image) in place of ``flip(0)``; the two strong
    views are decoded separately (the test's network has no BatchNorm: the same as V2's one forward)."""
    x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
    u_w, ignore = batch["unlabeled"]["image"], batch["unlabeled"]["ignore_mask"]
    with torch.no_grad():
        conf, mask = net.eval()(u_w).softmax(1).max(1)
    net.train()
    partner = torch.roll(torch.arange(len(u_w)), -1)
    losses = []
    for strong, box, channel_mask in zip((batch["unlabeled"]["strong"], batch["unlabeled"]["strong2"]), boxes, masks):
        mixed = strong.clone()
        mixed[box.unsqueeze(1).expand_as(mixed)] = strong[partner][box.unsqueeze(1).expand_as(mixed)]
        mask_mixed, conf_mixed, ignore_mixed = mask.clone(), conf.clone(), ignore.clone()
        mask_mixed[box], conf_mixed[box] = mask[partner][box], conf[partner][box]
        ignore_mixed[box] = ignore[partner][box]
        loss = F.cross_entropy(v2_comp_drop_logits(net, mixed, channel_mask), mask_mixed, reduction="none")
        loss = loss * ((conf_mixed >= tau) & (ignore_mixed != 255))
        losses.append(loss.sum() / (ignore_mixed != 255).sum())
    loss_x = F.cross_entropy(net(x), y, ignore_index=255)
    return (loss_x + (losses[0] + losses[1]) / 2.0) / 2.0


V2 = dict(
    sup_weight=0.5,
    strong_weight=0.5,
    masked_weight=0.0,
    strong_views=2,
    strong_feature_dropout="complementary",
    teacher="ema",
    pseudo_label_scales=[1.0],
    norm_stats="all",
)


def without_batchnorm_and_dropout(net):
    """smp's DPT decoder and head have BatchNorm and dropout (V2's head neither): removed, so that the
    reference's forwards compute what the step's do."""
    for name, child in net.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(net, name, torch.nn.Identity())
        else:
            if isinstance(child, torch.nn.Dropout):
                child.p = 0.0
            without_batchnorm_and_dropout(child)
    return net


@pytest.mark.parametrize("tau", [0.0, 0.1])
def test_unimatch_v2_total_loss_matches_the_reference(monkeypatch, tau):
    torch.manual_seed(0)
    net = without_batchnorm_and_dropout(tiny_vit(11))
    module = flat_module(model=net, num_classes=11, conf_threshold=tau, **V2)
    module.log = lambda *args, **kwargs: None
    batch = make_batch(batch=4, size=56, strong_views=2)  # 56: no padding (28 would pad to 28 x 56)
    batch["unlabeled"]["ignore_mask"][0, :, -4:] = 255
    generator = torch.Generator().manual_seed(5)
    boxes = [torch.rand(4, 56, 56, generator=generator) > 0.6 for _ in range(2)]
    masks = complementary_channel_masks(4, 32, generator)
    queue = list(boxes)
    monkeypatch.setattr(cutmix_file, "cutmix_boxes", lambda *args, **kwargs: queue.pop(0))
    monkeypatch.setattr(module_file, "complementary_channel_masks", lambda *args, **kwargs: masks)
    ours = module.training_step(batch, 0)
    reference = unimatch_v2_reference(net, batch, boxes, masks, tau)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    strong = batch["unlabeled"]["strong2"]  # and the masks matter: the logits move with them
    assert not torch.allclose(v2_comp_drop_logits(net, strong, masks[1]), net(strong), atol=1e-3)


def test_complementary_dropout_is_refused_where_it_cannot_apply(tiny_module_kwargs):
    with pytest.raises(ValueError, match="needs views.strong_views 2"):
        flat_module(model=tiny_vit(11), num_classes=11, **{**V2, "strong_views": 1})
    with pytest.raises(TypeError, match="forward_channel_masked.*Set views.strong_feature_dropout: none"):
        flat_module(**{**tiny_module_kwargs, **V2})  # an smp CNN
    with pytest.raises(ValueError, match="strong_feature_dropout must be"):
        flat_module(model=tiny_vit(11), num_classes=11, **{**V2, "strong_feature_dropout": "channel"})


@pytest.mark.parametrize(("height", "width"), [(56, 84), (50, 37)])
def test_token_and_pixel_masks_hide_the_same_patches(height, width):
    network = SegmentationNetwork(tiny_vit(5))
    masking = PatchMasking(patch_size=28, ratio=0.7, space="token")
    images = torch.randn(3, 3, height, width)
    targets = PseudoLabels.from_probabilities(torch.rand(3, 5, height, width).softmax(1))
    visible, _ = masking.draw(images, targets, torch.Generator().manual_seed(3))
    pixel_view, _ = masking.apply(images, targets, torch.Generator().manual_seed(3))
    assert torch.equal(pixel_view == 0, (~visible).expand_as(images))  # the same draw paints those pixels
    padded_h, padded_w = network.padded_size(height, width)
    padded = F.pad(visible.float(), (0, padded_w - width, 0, padded_h - height), mode="replicate") > 0.5
    tokens = network.net.token_visibility(padded)
    assert tokens.shape == (3, padded_h // 14, padded_w // 14)
    assert (~tokens).flatten(1).sum(1).tolist() != [0, 0, 0]
    pixels = tokens.repeat_interleave(14, 1).repeat_interleave(14, 2)[:, :height, :width]
    assert torch.equal(pixels, visible[:, 0])  # every hidden pixel is a hidden token, and only those


def test_the_token_masked_view_never_reads_hidden_patches_and_costs_the_visible_tokens():
    torch.manual_seed(0)
    network = SegmentationNetwork(tiny_vit(5)).eval()
    images = torch.randn(2, 3, 50, 70)
    visible = PatchMasking(patch_size=28, ratio=0.7).draw(images, None, torch.Generator().manual_seed(0))[0]
    logits = network.forward_token_masked(images, visible)
    assert logits.shape == (2, 5, 50, 70)
    scribbled = images.masked_fill(~visible, 100.0)
    assert torch.equal(network.forward_token_masked(scribbled, visible), logits)
    assert not torch.allclose(network.forward_token_masked(images.masked_fill(visible, 1.0), visible), logits)
    # images with different visible counts share one padded forward: the same as one image at a time
    one_by_one = torch.cat([network.forward_token_masked(images[i : i + 1], visible[i : i + 1]) for i in range(2)])
    assert torch.allclose(one_by_one, logits, atol=1e-5)
    assert torch.allclose(network.forward_token_masked(images, torch.ones_like(visible)), network(images), atol=1e-6)
    seen = []
    block = network.net.encoder.blocks[0]
    handle = block.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    network.forward_token_masked(images, visible)
    handle.remove()
    grid = network.padded_size(50, 70)
    most_visible = int(network.net.token_visibility(
        F.pad(visible.float(), (0, grid[1] - 70, 0, grid[0] - 50), mode="replicate") > 0.5
    ).flatten(1).sum(1).max())  # fmt: skip
    assert seen == [1 + most_visible] and most_visible < (grid[0] // 14) * (grid[1] // 14) // 2


def test_token_masking_is_refused_where_it_cannot_apply(tiny_module_kwargs):
    with pytest.raises(ValueError, match="multiple of the ViT's patch size 14, got 20"):
        flat_module(model=tiny_vit(11), num_classes=11, mask_space="token", mask_patch_size=20)
    with pytest.raises(TypeError, match="forward_token_masked.*Set masking.space: pixel"):
        flat_module(**{**tiny_module_kwargs, "mask_space": "token"})
    with pytest.raises(ValueError, match="masking.space must be"):
        flat_module(model=tiny_vit(11), num_classes=11, mask_space="tokens")


def test_the_token_step_draws_the_masked_view_the_pixel_step_does(monkeypatch):
    drawn, original = [], PatchMasking.draw

    def spy(self, *args, **kwargs):
        visible, targets = original(self, *args, **kwargs)
        drawn.append(visible)
        return visible, targets

    monkeypatch.setattr(PatchMasking, "draw", spy)
    losses = {}
    for space in ("pixel", "token"):
        torch.manual_seed(0)
        module = flat_module(
            model=tiny_vit(11), num_classes=11, mask_space=space, mask_patch_size=14, conf_threshold=0.0,
            pseudo_label_scales=[1.0],
        )  # fmt: skip
        losses[space] = logged = {}
        module.log = lambda name, value, logged=logged, **kwargs: logged.__setitem__(name, float(value))
        module.training_step(make_batch(batch=2, size=42), 0).backward()
        assert module.network.net.encoder.patch_embed.proj.weight.grad is not None
    assert len(drawn) == 2 and torch.equal(drawn[0], drawn[1])
    assert losses["pixel"]["train/loss_strong"] == pytest.approx(losses["token"]["train/loss_strong"])
    assert losses["pixel"]["train/loss_masked"] != pytest.approx(losses["token"]["train/loss_masked"])


@pytest.mark.parametrize("config", ["configs/pascal_unimatch_v2.yaml", "configs/pascal_dinov2.yaml"])
def test_the_dinov2_configs_parse_and_their_step_runs_on_a_tiny_vit(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]
    assert model["views"]["strong_feature_dropout"] == "complementary" and printed["data"]["crop_size"] == 518
    assert printed["trainer"]["max_epochs"] == 60
    assert model["network"]["encoder_name"].startswith("tu-vit_small_patch14")
    model["network"].update(encoder_weights=None, model_kwargs={**TINY_VIT, **TINY_HEAD})
    module = MaskMatchModule(**{k: v for k, v in model.items() if k != "class_names"}, num_classes=11)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.training_step(make_batch(batch=2, size=50, strong_views=2), 0).backward()  # 50: not a multiple of 14
    expected = {"train/loss_sup", "train/loss_strong", "train/loss"}
    assert expected | ({"train/loss_masked"} if model["masking"] else set()) <= set(logged)
