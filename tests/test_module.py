"""Training steps with each part of the method switched on or off."""

import pytest
import torch
from torch import nn

from maskmatch_pl import BatchFormatError, MaskMatchModule, image_scale_probabilities, scale_probabilities

from .conftest import flat_module


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
    if overrides.get("strong_views") == 2:
        overrides = {**overrides, "masked_weight": 0.0}
        expected = expected - {"masked"}
    module = flat_module(**{**tiny_module_kwargs, **overrides})
    loss, logged = run_step(module, make_batch(strong_views=overrides.get("strong_views", 1)))
    assert {name.removeprefix("train/loss_") for name in logged if name.startswith("train/loss_")} == expected
    w = module.method.weights
    weights = {"sup": w.sup, "strong": w.strong, "masked": w.masked, "fp": w.fp}
    assert loss.item() == pytest.approx(sum(weights[n] * logged[f"train/loss_{n}"] for n in expected), rel=1e-5)
    assert ("train/confident_fraction" in logged) == (expected != {"sup"})
    assert all(p.grad is not None for p in module.network.parameters() if p.requires_grad)


@pytest.mark.parametrize(("step", "ramp"), [(0, 0.0), (50, 0.25), (200, 1.0), (400, 1.0)])
def test_unlabeled_weights_ramp_up_linearly(tiny_module_kwargs, monkeypatch, step, ramp):
    monkeypatch.setattr(MaskMatchModule, "global_step", property(lambda self: step))
    module = flat_module(
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
        flat_module(**tiny_module_kwargs, unsup_rampup_steps=-1)


def test_masked_term_alone_can_ramp_up(tiny_module_kwargs, monkeypatch):
    monkeypatch.setattr(MaskMatchModule, "global_step", property(lambda self: 50))
    module = flat_module(**tiny_module_kwargs, masked_rampup_steps=200, conf_threshold=0.0)
    loss, logged = run_step(module, make_batch())
    expected = (
        0.5 * logged["train/loss_sup"] + 0.5 * logged["train/loss_strong"] + 0.25 * 0.5 * logged["train/loss_masked"]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="masked_rampup_steps must be >= 0, got -2"):
        flat_module(**tiny_module_kwargs, masked_rampup_steps=-2)


@pytest.mark.parametrize(
    "extra",
    [
        {},  # FixMatch + the masked view
        {"student_forward": "batched"},
        {"strong_views": 2, "strong_weight": 0.25, "fp_weight": 0.25},  # UniMatch + the masked view
    ],
)
def test_norm_stats_unmasked_keeps_the_masked_view_out_of_the_running_statistics(tiny_module_kwargs, extra):
    # the strong views are CutMixed before the mask is drawn, so a run without the masked view sees the
    # same labeled, strong (and perturbed-feature) forwards: its running statistics are what 'unmasked' must leave
    batch = make_batch(strong_views=extra.get("strong_views", 1))
    kwargs = dict(tiny_module_kwargs, **extra)
    unmasked = flat_module(**kwargs, norm_stats="unmasked", masked_weight=0.5)
    every_view = flat_module(**kwargs, norm_stats="all", masked_weight=0.5)
    no_masked_view = flat_module(**kwargs, norm_stats="all", masked_weight=0.0)
    for module in (every_view, no_masked_view):
        module.load_state_dict(unmasked.state_dict())
    logged = []
    for module in (unmasked, every_view, no_masked_view):
        torch.manual_seed(0)  # the same Dropout2d draw for UniMatch's perturbed-feature stream
        logged.append(run_step(module, batch)[1])
    assert "train/loss_masked" in logged[0] and "train/loss_masked" not in logged[2]
    stats = [
        {name: b for name, b in m.network.named_buffers() if name.endswith(("running_mean", "running_var"))}
        for m in (unmasked, every_view, no_masked_view)
    ]
    assert stats[0]
    for name in stats[0]:
        torch.testing.assert_close(stats[0][name], stats[2][name])
    assert any(not torch.allclose(stats[0][name], stats[1][name]) for name in stats[0])


def test_norm_stats_labeled_keeps_running_statistics_of_the_labeled_batch_only(tiny_module_kwargs):
    import copy

    batch = make_batch()
    module = flat_module(**tiny_module_kwargs)  # norm_stats="labeled" is the default
    assert module.hparams.views["norm_stats"] == "labeled"
    reference = copy.deepcopy(module.network).train()
    with torch.no_grad():
        reference(batch["labeled"]["image"])  # what the running statistics should become
    everything = flat_module(**tiny_module_kwargs, norm_stats="all")
    everything.load_state_dict(module.state_dict())
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
    with pytest.raises(ValueError, match=r"views.norm_stats='labeled' needs views.student_forward 'sequential'"):
        flat_module(**tiny_module_kwargs, student_forward="concat")
    with pytest.raises(ValueError, match=r"views.norm_stats='unmasked' needs views.student_forward 'sequential'"):
        flat_module(**tiny_module_kwargs, student_forward="concat", norm_stats="unmasked")
    # without a masked view 'unmasked' is 'all': concat is the same step as with 'all'
    fixmatch = {**tiny_module_kwargs, "masked_weight": 0.0, "student_forward": "concat"}
    unmasked, every = flat_module(**fixmatch, norm_stats="unmasked"), flat_module(**fixmatch, norm_stats="all")
    every.load_state_dict(unmasked.state_dict())
    losses = [run_step(m, batch)[0] for m in (unmasked, every)]
    torch.testing.assert_close(losses[0], losses[1])
    for name, buffer in unmasked.network.named_buffers():
        torch.testing.assert_close(buffer, every.network.get_buffer(name))
    with pytest.raises(ValueError, match="norm_stats must be 'all', 'labeled' or 'unmasked', got 'masked'"):
        flat_module(**tiny_module_kwargs, norm_stats="masked")
    with pytest.raises(ValueError, match="student_forward must be 'sequential', 'batched' or 'concat', got 'joint'"):
        flat_module(**tiny_module_kwargs, student_forward="joint")


def test_masked_norm_running_normalises_the_masked_view_as_the_eval_mode_teacher(tiny_module_kwargs):
    module = flat_module(**{**tiny_module_kwargs, "pseudo_label_scales": [1.0]}, masked_norm="running")
    norms = [m for m in module.network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    student = []  # (input, BatchNorm in train mode?, logits) of every forward that builds a graph

    def record(net, inputs, output):
        if torch.is_grad_enabled():
            student.append((inputs[0].detach().clone(), norms[0].training, output.detach().clone()))

    module.network.register_forward_hook(record)
    run_step(module, make_batch())
    assert [training for _, training, _ in student] == [True, True, False]  # labeled, strong, masked
    masked_input, _, masked_logits = student[-1]
    assert (masked_input == 0).float().mean() > 0.5  # the patch-masked view (70 % hidden)
    assert all(m.training for m in norms)  # train mode restored
    module.network.eval()  # the step moved no weights, and the masked forward no running statistics
    with torch.no_grad():
        torch.testing.assert_close(module.network(masked_input), masked_logits)
    with pytest.raises(ValueError, match="masked_norm must be 'batch' or 'running', got 'eval'"):
        flat_module(**tiny_module_kwargs, masked_norm="eval")


def test_running_norm_statistics_switches_only_tracking_batchnorm_and_restores_it():
    from maskmatch_pl import running_norm_statistics

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.BatchNorm2d(4, track_running_stats=False)
    ).train()
    net[1].running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(2, 3, 8, 8)
    with running_norm_statistics(net):
        assert not net[1].training and net[2].training and net[3].training
        net(images)
    assert all(m.training for m in net)
    torch.testing.assert_close(net.state_dict(), before)  # running statistics and the batch count untouched
    net.eval()
    with running_norm_statistics(net):  # a layer already in eval mode stays there afterwards
        pass
    assert not net[1].training


def test_pseudo_label_fusion_reaches_the_step(tiny_module_kwargs):
    kwargs = {**tiny_module_kwargs, "masked_weight": 0.0, "conf_threshold": 0.0, "cutmix_prob": 0.0}
    geometric = flat_module(**kwargs, pseudo_label_fusion="geometric")
    mean = flat_module(**kwargs)
    mean.load_state_dict(geometric.state_dict())
    assert geometric.teacher.fusion == "geometric" and mean.teacher.fusion == "mean"
    batch = make_batch()
    _, logged_geometric = run_step(geometric, batch)
    _, logged_mean = run_step(mean, batch)
    assert logged_geometric["train/loss_sup"] == pytest.approx(logged_mean["train/loss_sup"])
    assert logged_geometric["train/loss_strong"] != pytest.approx(logged_mean["train/loss_strong"])
    with pytest.raises(ValueError, match="pseudo_label_fusion must be 'mean' or 'geometric', got 'max'"):
        flat_module(**tiny_module_kwargs, pseudo_label_fusion="max")


def test_image_relative_pseudo_label_scales_read_the_batchs_view_scale(tiny_module_kwargs):
    kwargs = {**tiny_module_kwargs, "masked_weight": 0.0, "conf_threshold": 0.0, "cutmix_prob": 0.0}
    kwargs["pseudo_label_scales"] = [1.0]
    image = flat_module(**kwargs, pseudo_label_scale_reference="image")
    view = flat_module(**kwargs)
    start = {name: value.clone() for name, value in image.state_dict().items()}

    def step(module, view_scale):  # every step from the same weights and BatchNorm statistics
        module.load_state_dict(start)
        batch = make_batch()
        if view_scale is not None:
            batch["unlabeled"]["view_scale"] = torch.tensor(view_scale)
        return run_step(module, batch)[1]

    with pytest.raises(ValueError, match="'view_scale' in the unlabeled batch"):
        step(image, None)
    reference = step(view, None)
    unscaled = step(image, [1.0, 1.0, 1.0, 1.0])  # views at the stored size: the same targets
    assert unscaled["train/loss_strong"] == pytest.approx(reference["train/loss_strong"], rel=1e-5)
    rescaled = step(image, [0.5, 0.75, 1.5, 2.0])  # predicted at 2, 1.33, 0.67 and 0.5
    assert rescaled["train/loss_sup"] == pytest.approx(reference["train/loss_sup"], rel=1e-5)
    assert rescaled["train/loss_strong"] != pytest.approx(reference["train/loss_strong"], rel=1e-3)
    with pytest.raises(ValueError, match="needs experimental.pseudo_label_scale_reference='view'"):
        flat_module(**kwargs, pseudo_label_scale_reference="image", teacher_pass="joint", norm_stats="all")


@pytest.mark.parametrize("norm_stats", ["labeled", "all", "unmasked"])
def test_batched_student_forward_gives_the_sequential_step(tiny_module_kwargs, norm_stats):
    """One forward for all views with per-view BatchNorm statistics: the same loss, gradients
    and running statistics as one forward per view."""
    sequential = flat_module(**tiny_module_kwargs, norm_stats=norm_stats, conf_threshold=0.1)
    batched = flat_module(**tiny_module_kwargs, norm_stats=norm_stats, conf_threshold=0.1, student_forward="batched")
    batched.load_state_dict(sequential.state_dict())
    batch = make_batch()
    loss_sequential, _ = run_step(sequential, batch)
    loss_batched, _ = run_step(batched, batch)
    assert loss_batched.item() == pytest.approx(loss_sequential.item(), rel=1e-5)
    theirs = dict(sequential.network.named_parameters())
    for name, parameter in batched.network.named_parameters():
        torch.testing.assert_close(parameter.grad, theirs[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(dict(batched.network.named_buffers()), dict(sequential.network.named_buffers()))
    assert all("forward" not in m.__dict__ for m in batched.network.modules())  # BatchNorm layers restored


@pytest.mark.parametrize(("fp_weight", "teacher"), [(0.0, "shared"), (0.5, "shared"), (0.0, "ema")])
def test_channels_last_gives_the_same_step_and_checkpoints(tiny_module_kwargs, fp_weight, teacher):
    """channels_last stores the weights and feeds the images channels-last: the same loss and gradients
    as the default layout (feature perturbation included), and its checkpoints load either way."""
    kwargs = dict(tiny_module_kwargs, conf_threshold=0.1, fp_weight=fp_weight, teacher=teacher)
    torch.manual_seed(0)
    default = flat_module(**kwargs)
    fast = flat_module(**kwargs, channels_last=True)
    fast.load_state_dict(default.state_dict())
    convolutions = [p for p in fast.network.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in default.network.parameters())
    batch = make_batch()
    torch.manual_seed(0)  # the feature-perturbation dropout draws from the global generator
    loss_default, _ = run_step(default, batch)
    torch.manual_seed(0)
    loss_fast, _ = run_step(fast, batch)
    assert loss_fast.item() == pytest.approx(loss_default.item(), rel=1e-5)
    # equal up to the order of float32 sums (a relative difference of about 1e-4 here), which near-zero
    # gradients (a BatchNorm before a residual sum) make large relative to themselves: compare the whole vector
    gradient_default, gradient_fast = (
        torch.cat([p.grad.flatten() for p in m.network.parameters()]) for m in (default, fast)
    )
    assert (gradient_fast - gradient_default).norm() < 1e-2 * gradient_default.norm()
    reloaded = flat_module(**kwargs)
    reloaded.load_state_dict(fast.state_dict())
    images = torch.randn(2, 3, 37, 45)  # padded to the stride, cropped back
    torch.testing.assert_close(reloaded.eval()(images), fast.eval()(images), rtol=1e-4, atol=1e-5)


def test_supervised_baseline_needs_no_unlabeled_loader_and_others_say_what_is_missing(tiny_module_kwargs):
    batch = {"labeled": make_batch()["labeled"]}
    supervised = flat_module(**{**tiny_module_kwargs, "strong_weight": 0.0, "masked_weight": 0.0})
    _, logged = run_step(supervised, batch)
    assert set(logged) == {"train/loss_sup", "train/loss"}
    with pytest.raises(BatchFormatError, match="unlabeled batch must be a dict"):
        run_step(flat_module(**tiny_module_kwargs), batch)


def test_concat_and_sequential_student_passes_agree_in_eval_mode(tiny_module_kwargs):
    from maskmatch_pl import forward_views

    network = flat_module(**tiny_module_kwargs).network.eval()
    inputs = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    together = forward_views(network, inputs, concat=True)
    torch.testing.assert_close(together, forward_views(network, inputs), atol=1e-5, rtol=1e-4)


def test_any_module_mapping_images_to_logits_can_be_wrapped_and_padded():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 11, 1), nn.Upsample(scale_factor=4)
    )
    module = flat_module(model=net, num_classes=11, pad_multiple=4, pseudo_label_scales=[1.0])
    assert module(torch.randn(1, 3, 30, 31)).shape == (1, 11, 30, 31)
    run_step(module, make_batch(size=30))
    with pytest.raises(TypeError, match="encoder.*decoder.*segmentation_head"):
        flat_module(model=net, num_classes=11, fp_weight=0.5)


class OwnPerturbation(nn.Module):
    """A user's network without smp's encoder/decoder split that defines its own perturbed stream."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 11, 1)

    def forward(self, images):
        return self.head(self.features(images).relu())

    def forward_perturbed(self, images, dropout):
        return self.head(torch.nn.functional.dropout2d(self.features(images).relu(), dropout, training=True))


def test_a_network_with_its_own_forward_perturbed_takes_feature_perturbation():
    torch.manual_seed(0)
    module = flat_module(model=OwnPerturbation(), num_classes=11, fp_weight=0.5, pseudo_label_scales=[1.0])
    images = torch.randn(2, 3, 30, 31)
    perturbed = module.network.forward_perturbed(images, 0.5)
    assert perturbed.shape == (2, 11, 30, 31) and not torch.allclose(perturbed, module(images))
    run_step(module, make_batch(size=30))


def test_smp_models_take_any_crop_size(tiny_module_kwargs):
    module = flat_module(**tiny_module_kwargs)
    assert module(torch.randn(1, 3, 37, 45)).shape == (1, 11, 37, 45)


def test_bad_batches_get_a_clear_error(tiny_module_kwargs):
    module = flat_module(**tiny_module_kwargs)
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
    module = flat_module(**{**tiny_module_kwargs, "teacher": "ema", "ema_momentum": 0.9})
    teacher = module.teacher.ema
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(k.startswith("method.teacher.ema.") for k in module.state_dict())
    assert not any(k.startswith("method.teacher.") for k in flat_module(**tiny_module_kwargs).state_dict())
    student = dict(module.network.named_parameters())
    teacher_before = {k: v.clone() for k, v in teacher.named_parameters()}
    with torch.no_grad():
        for p in student.values():
            p.add_(1.0)
    from maskmatch_pl.teacher import ema_update

    ema_update(teacher, module.network, 0.9)
    name = next(iter(student))
    torch.testing.assert_close(teacher.get_parameter(name), 0.9 * teacher_before[name] + 0.1 * student[name])


def test_ema_teacher_updates_once_per_optimiser_step_under_gradient_accumulation(tiny_module_kwargs, monkeypatch):
    import lightning as L

    import maskmatch_pl.teacher as teacher_file

    steps = []
    monkeypatch.setattr(teacher_file, "ema_update", lambda teacher, student, momentum: steps.append(momentum))
    module = flat_module(**{**tiny_module_kwargs, "teacher": "ema", "ema_momentum": 0.9})
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


def test_joint_teacher_pass_takes_pseudo_labels_from_the_labeled_batch_forward(tiny_module_kwargs, monkeypatch):
    import copy

    import maskmatch_pl.step as module_file

    seen = []
    real = module_file.consistency_loss
    monkeypatch.setattr(
        module_file,
        "consistency_loss",
        lambda logits, targets, threshold: seen.append(targets.pseudo_label) or real(logits, targets, threshold),
    )
    kwargs = {**tiny_module_kwargs, "pseudo_label_scales": [1.0], "masked_weight": 0.0, "cutmix_prob": 0.0}
    batch = make_batch()
    module = flat_module(**kwargs, teacher_pass="joint", norm_stats="all")
    reference = copy.deepcopy(module.network).train()
    with torch.no_grad():
        joint = reference(torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]]))[4:]
        alone = copy.deepcopy(module.network).eval()(batch["unlabeled"]["image"])
        reference(batch["unlabeled"]["strong"])  # the student's strong view, after the joint pass
    run_step(module, batch)
    torch.testing.assert_close(seen[0], joint.argmax(1))
    assert not torch.equal(joint.argmax(1), alone.argmax(1))  # the eval-mode teacher would differ
    for name, buffer in module.network.named_buffers():  # running statistics: labeled + weak, then strong
        if name.endswith("running_mean"):
            torch.testing.assert_close(buffer, reference.get_buffer(name))
    with pytest.raises(ValueError, match="pseudo_labels.teacher_pass='joint' needs pseudo_labels.teacher='shared'"):
        flat_module(**kwargs, teacher_pass="joint", teacher="ema", norm_stats="all")
    # the joint pass updates the running statistics from the weak view: not a labeled-only policy
    with pytest.raises(ValueError, match="it needs views.norm_stats 'all' or 'unmasked', got 'labeled'"):
        flat_module(**kwargs, teacher_pass="joint", norm_stats="labeled")


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("conf_threshold", 1.5, r"pseudo_labels.threshold must be in \[0, 1\], got 1.5"),
        ("cutmix_prob", 2, r"cutmix_prob must be in \[0, 1\], got 2"),
        ("mask_ratio", 1.5, r"masking.ratio must be in \[0, 1\]"),
        ("mask_ratio", -1, r"masking.ratio must be in \[0, 1\]"),
        ("mask_patch_size", 0, "masking.patch_size must be a whole number of pixels >= 1"),
        ("eval_mode", "tiles", "eval_mode must be 'original', 'center_crop' or 'sliding_window'"),
        ("warmup_steps", -5, "warmup_steps must be >= 0, got -5"),
    ],
)
def test_bad_knobs_are_refused_when_the_module_is_built(tiny_module_kwargs, knob, value, message):
    with pytest.raises(ValueError, match=message):
        flat_module(**{**tiny_module_kwargs, knob: value})


def test_image_relative_scales_with_an_ema_teacher_and_the_monitor_off_scale_one(tiny_module_kwargs):
    kwargs = {**tiny_module_kwargs, "masked_weight": 0.0, "pseudo_label_scales": [1.25], "teacher": "ema"}
    module = flat_module(**kwargs, pseudo_label_scale_reference="image")
    batch = make_batch()
    batch["unlabeled"]["view_scale"] = torch.tensor([0.8, 1.0, 1.2, 1.25])
    batch["unlabeled"]["monitor_mask"] = torch.randint(0, 11, (4, 32, 32))
    scored = {}
    module.pseudo_monitor.update = lambda name, probs, *args: scored.__setitem__(name, probs)
    loss, _ = run_step(module, batch)
    assert torch.isfinite(loss)
    # the EMA copy predicts each view at 1.25 / s; scale 1 is not among the teacher's scales, so the
    # monitor predicts it on its own, of the image too (1 / s), not of the view
    ema, weak, factors = module.teacher.ema, batch["unlabeled"]["image"], batch["unlabeled"]["view_scale"]
    with torch.no_grad():
        torch.testing.assert_close(scored["pseudo"], image_scale_probabilities(ema, weak, [1.25], factors)[0])
        torch.testing.assert_close(
            scored["pseudo_single_scale"], image_scale_probabilities(ema, weak, [1.0], factors)[0]
        )
        of_the_view = scale_probabilities(ema, weak, [1.0])[0]
    assert not torch.allclose(scored["pseudo_single_scale"], of_the_view, atol=1e-4)
