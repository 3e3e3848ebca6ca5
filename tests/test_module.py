"""Training steps with each part of the method switched on or off."""

import pytest
import torch
from torch import nn

from maskmatch_pl import BatchFormatError, MaskMatchModule


def make_batch(batch=4, size=32, strong_views=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labeled = {
        "image": torch.randn(batch, 3, size, size, generator=generator),
        "mask": torch.randint(0, 11, (batch, size, size), generator=generator),
    }
    labeled["mask"][:, :2] = 255
    unlabeled = {
        "image": torch.randn(batch, 3, size, size, generator=generator),
        "strong": torch.randn(batch, 3, size, size, generator=generator),
        "ignore_mask": torch.zeros(batch, size, size, dtype=torch.long),
    }
    if strong_views == 2:
        unlabeled["strong2"] = torch.randn(batch, 3, size, size, generator=generator)
    return {"labeled": labeled, "unlabeled": unlabeled}


def run_step(module, batch):
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss, logged


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"sup", "strong", "masked"}),
        ({"masked_weight": 0.0, "pseudo_label_scales": [1.0]}, {"sup", "strong"}),  # FixMatch
        ({"strong_weight": 0.0, "masked_weight": 0.0}, {"sup"}),  # supervised baseline
        ({"strong_weight": 0.0}, {"sup", "masked"}),
        ({"masked_view": "weak", "teacher": "ema"}, {"sup", "strong", "masked"}),
        ({"strong_views": 2, "fp_weight": 0.25, "strong_weight": 0.25}, {"sup", "strong", "fp"}),
        ({"student_forward": "sequential", "pseudo_label_flip": True}, {"sup", "strong", "masked"}),
    ],
)
def test_each_part_can_be_switched_off_and_logs_only_what_applies(tiny_module_kwargs, overrides, expected):
    module = MaskMatchModule(**{**tiny_module_kwargs, **overrides})
    if overrides.get("strong_views") == 2:
        module.hparams.masked_weight = 0.0
        expected = expected - {"masked"}
    loss, logged = run_step(module, make_batch(strong_views=overrides.get("strong_views", 1)))
    assert {name.removeprefix("train/loss_") for name in logged if name.startswith("train/loss_")} == expected
    weights = {
        "sup": module.hparams.sup_weight,
        "strong": module.hparams.strong_weight,
        "masked": module.hparams.masked_weight,
        "fp": module.hparams.fp_weight,
    }
    assert loss.item() == pytest.approx(sum(weights[n] * logged[f"train/loss_{n}"] for n in expected), rel=1e-5)
    assert ("train/confident_fraction" in logged) == (expected != {"sup"})
    assert all(p.grad is not None for p in module.network.parameters() if p.requires_grad)


@pytest.mark.parametrize(("step", "ramp"), [(0, 0.0), (50, 0.25), (200, 1.0), (400, 1.0)])
def test_unlabeled_weights_ramp_up_linearly(tiny_module_kwargs, monkeypatch, step, ramp):
    monkeypatch.setattr(MaskMatchModule, "global_step", property(lambda self: step))
    module = MaskMatchModule(
        **tiny_module_kwargs, unsup_rampup_steps=200, strong_weight=0.5, masked_weight=0.7, conf_threshold=0.0
    )
    loss, logged = run_step(module, make_batch())
    expected = 0.5 * logged["train/loss_sup"] + ramp * (
        0.5 * logged["train/loss_strong"] + 0.7 * logged["train/loss_masked"]
    )
    assert logged["train/loss_strong"] > 0 and logged["train/loss_masked"] > 0
    assert logged["train/unsup_ramp"] == ramp
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="unsup_rampup_steps must be >= 0, got -1"):
        MaskMatchModule(**tiny_module_kwargs, unsup_rampup_steps=-1)


def test_norm_stats_labeled_keeps_running_statistics_of_the_labeled_batch_only(tiny_module_kwargs):
    import copy

    batch = make_batch()
    module = MaskMatchModule(**tiny_module_kwargs)  # norm_stats="labeled" is the default
    assert module.hparams.norm_stats == "labeled"
    reference = copy.deepcopy(module.network).train()
    with torch.no_grad():
        reference(batch["labeled"]["image"])  # what the running statistics should become
    everything = copy.deepcopy(module)
    everything.hparams.norm_stats = "all"
    run_step(module, batch)
    run_step(everything, batch)
    norms = [
        name for name, _ in module.network.named_buffers() if name.endswith(("running_mean", "num_batches_tracked"))
    ]
    assert norms
    buffers, expected, mixed = (dict(m.named_buffers()) for m in (module.network, reference, everything.network))
    for name in norms:
        torch.testing.assert_close(buffers[name], expected[name])
    assert any(not torch.allclose(mixed[name].float(), expected[name].float()) for name in norms)
    momenta = {m.momentum for m in module.network.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert 0.0 not in momenta  # restored after the step
    with pytest.raises(ValueError, match=r"norm_stats='labeled' \(the default\) needs student_forward='sequential'"):
        MaskMatchModule(**tiny_module_kwargs, student_forward="concat")


def test_supervised_baseline_needs_no_unlabeled_loader_and_others_say_what_is_missing(tiny_module_kwargs):
    batch = {"labeled": make_batch()["labeled"]}
    supervised = MaskMatchModule(**{**tiny_module_kwargs, "strong_weight": 0.0, "masked_weight": 0.0})
    _, logged = run_step(supervised, batch)
    assert set(logged) == {"train/loss_sup", "train/loss"}
    with pytest.raises(BatchFormatError, match="unlabeled batch must be a dict"):
        run_step(MaskMatchModule(**tiny_module_kwargs), batch)


def test_concat_and_sequential_student_passes_agree_in_eval_mode(tiny_module_kwargs):
    module = MaskMatchModule(**tiny_module_kwargs, student_forward="concat", norm_stats="all").eval()
    inputs = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    together = module.student_logits(inputs)
    module.hparams.student_forward = "sequential"
    torch.testing.assert_close(together, module.student_logits(inputs), atol=1e-5, rtol=1e-4)


def test_any_module_mapping_images_to_logits_can_be_wrapped_and_padded():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 11, 1), nn.Upsample(scale_factor=4)
    )
    module = MaskMatchModule(model=net, num_classes=11, pad_multiple=4, pseudo_label_scales=[1.0])
    assert module(torch.randn(1, 3, 30, 31)).shape == (1, 11, 30, 31)
    run_step(module, make_batch(size=30))
    with pytest.raises(TypeError, match="encoder.*decoder.*segmentation_head"):
        MaskMatchModule(model=net, num_classes=11, fp_weight=0.5)


def test_smp_models_take_any_crop_size(tiny_module_kwargs):
    module = MaskMatchModule(**tiny_module_kwargs)
    assert module(torch.randn(1, 3, 37, 45)).shape == (1, 11, 37, 45)


def test_bad_batches_get_a_clear_error(tiny_module_kwargs):
    module = MaskMatchModule(**tiny_module_kwargs)
    batch = make_batch()
    batch["labeled"]["mask"][0, 5, 5] = 40
    with pytest.raises(BatchFormatError, match=r"'mask' holds \[40\]"):
        run_step(module, batch)
    batch = make_batch()
    batch["unlabeled"].pop("strong")
    with pytest.raises(BatchFormatError, match="unlabeled batch: 'strong'"):
        run_step(module, batch)
    batch = make_batch()
    batch["labeled"]["mask"] = batch["labeled"]["mask"].float()
    with pytest.raises(BatchFormatError, match="integer tensor"):
        run_step(module, batch)


def test_ema_teacher_follows_the_student_and_is_saved(tiny_module_kwargs):
    module = MaskMatchModule(**{**tiny_module_kwargs, "teacher": "ema", "ema_momentum": 0.9})
    assert not any(p.requires_grad for p in module.teacher_network.parameters())
    assert any(k.startswith("teacher_network.") for k in module.state_dict())
    student = dict(module.network.named_parameters())
    teacher_before = {k: v.clone() for k, v in module.teacher_network.named_parameters()}
    with torch.no_grad():
        for p in student.values():
            p.add_(1.0)
    from maskmatch_pl.teacher import ema_update

    ema_update(module.teacher_network, module.network, 0.9)
    name = next(iter(student))
    torch.testing.assert_close(
        module.teacher_network.get_parameter(name), 0.9 * teacher_before[name] + 0.1 * student[name]
    )


def test_ema_teacher_updates_once_per_optimiser_step_under_gradient_accumulation(tiny_module_kwargs, monkeypatch):
    import lightning as L

    import maskmatch_pl.module as module_file

    steps = []
    monkeypatch.setattr(module_file, "ema_update", lambda teacher, student, momentum: steps.append(momentum))
    module = MaskMatchModule(**{**tiny_module_kwargs, "teacher": "ema", "ema_momentum": 0.9})
    batches = torch.utils.data.DataLoader([make_batch(seed=seed) for seed in range(4)], batch_size=None)
    trainer = L.Trainer(
        max_steps=2,
        accumulate_grad_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=batches)
    assert trainer.global_step == 2
    assert steps == [0.0, 0.5]  # 4 micro-batches, 2 optimiser steps: warm-up momenta of steps 0 and 1
