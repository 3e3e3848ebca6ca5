"""The mask-free pseudo-label health monitor, the class-wise (FreeMatch) thresholds, and the
faces / defects testbeds (issue 24)."""

import lightning as L
import numpy as np
import pytest
import torch

from maskmatch_pl import SemiSupervisedDataModule
from maskmatch_pl.data.testbeds import load_faces, load_textures, render_defects, render_faces, write_testbed
from maskmatch_pl.health import HealthProblem, HealthWarnings, PseudoLabelHealth, remedy, warning_message
from maskmatch_pl.losses import consistency_loss
from maskmatch_pl.targets import PseudoLabels
from maskmatch_pl.thresholds import PseudoLabelThreshold

from .conftest import TINY_MODEL, flat_module


# ---------------------------------------------------------------- FreeMatch thresholds
def test_freematch_thresholds_follow_the_papers_formula():
    """FreeMatch (arXiv:2205.07246) eqs. 4-6 read from scratch, over pixels: EMA of the mean max
    probability (global) and of the mean probability vector (local), both from 1/C; class
    threshold = local / max(local) * global."""
    torch.manual_seed(0)
    classes, momentum = 3, 0.9
    threshold = PseudoLabelThreshold("freematch", 0.95, classes, momentum)
    tau, local = 1 / classes, [1 / classes] * classes
    for _ in range(4):
        probs = torch.randn(2, classes, 5, 4).mul(3).softmax(1)
        got = threshold.update(probs)
        pixels = probs.permute(0, 2, 3, 1).reshape(-1, classes).tolist()
        tau = momentum * tau + (1 - momentum) * sum(max(p) for p in pixels) / len(pixels)
        local = [momentum * local[c] + (1 - momentum) * sum(p[c] for p in pixels) / len(pixels) for c in range(classes)]
        expected = [local[c] / max(local) * tau for c in range(classes)]
        assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert PseudoLabelThreshold("fixed", 0.7, classes).update(probs) == 0.7


def test_the_prior_variant_divides_the_class_distribution_by_the_labeled_share():
    """Ours: FreeMatch's p_t(c) divided by the labeled class share pi_t(c) (the same EMA over the
    labeled masks, from 1/C) before MaxNorm."""
    torch.manual_seed(1)
    classes, momentum = 2, 0.5
    threshold = PseudoLabelThreshold("freematch_prior", 0.95, classes, momentum)
    tau, local, prior = 0.5, [0.5, 0.5], [0.5, 0.5]
    for _ in range(3):
        probs = torch.randn(2, classes, 4, 4).mul(2).softmax(1)
        mask = (torch.rand(2, 4, 4) < 0.2).long()
        mask[0, 0, 0] = 255  # ignored
        got = threshold.update(probs, labeled_mask=mask)
        pixels = probs.permute(0, 2, 3, 1).reshape(-1, classes).tolist()
        known = [int(v) for v in mask.flatten().tolist() if v != 255]
        tau = momentum * tau + (1 - momentum) * sum(max(p) for p in pixels) / len(pixels)
        local = [momentum * local[c] + (1 - momentum) * sum(p[c] for p in pixels) / len(pixels) for c in range(2)]
        prior = [momentum * prior[c] + (1 - momentum) * known.count(c) / len(known) for c in range(2)]
        ratio = [local[c] / prior[c] for c in range(2)]
        assert got.tolist() == pytest.approx([r / max(ratio) * tau for r in ratio], rel=1e-5)


def test_the_lowering_rule_keeps_tau_and_lowers_only_under_predicted_classes():
    """Ours (``prior_lowered``): class c gets tau * min(1, p_t(c) / pi_t(c)), the same EMAs as the
    prior rule; it starts at tau for every class (both EMAs start at 1/C) and never exceeds it."""
    classes, momentum, tau = 3, 0.5, 0.7
    threshold = PseudoLabelThreshold("prior_lowered", tau, classes, momentum)
    assert threshold.thresholds().tolist() == pytest.approx([tau] * classes)
    # the teacher gives class 2 a tenth of the probability; the labeled masks hold it on a third of the pixels
    probs = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    mask = torch.arange(32).view(2, 4, 4) % 3
    local, prior = [1 / 3] * 3, [1 / 3] * 3
    for _ in range(3):
        got = threshold.update(probs, labeled_mask=mask)
        local = [momentum * local[c] + (1 - momentum) * [0.6, 0.3, 0.1][c] for c in range(3)]
        counts = [int((mask == c).sum()) for c in range(3)]
        prior = [momentum * prior[c] + (1 - momentum) * counts[c] / 32 for c in range(3)]
        expected = [tau * min(1.0, local[c] / prior[c]) for c in range(3)]
        assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert got[0] == pytest.approx(tau) and got[2] < got[1] < tau  # over-predicted kept, under-predicted lowered
    with pytest.raises(ValueError, match="prior_lowered"):
        threshold.update(probs)  # needs the labeled masks


def test_checkpoints_load_across_threshold_kinds(tmp_path):
    fixed = flat_module(**TINY_MODEL, num_classes=11)
    adaptive = flat_module(**TINY_MODEL, num_classes=11, pseudo_label_threshold="freematch_prior")
    for source, target in ((fixed, adaptive), (adaptive, fixed)):
        checkpoint = {"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}
        target.on_load_checkpoint(checkpoint)
        target.load_state_dict(checkpoint["state_dict"])  # strict: no missing or unexpected keys


def test_class_wise_thresholds_keep_each_pixel_by_its_own_class():
    confidence = torch.tensor([[[0.9, 0.6, 0.3, 0.5]]])
    label = torch.tensor([[[0, 0, 1, 1]]])
    targets = PseudoLabels(label, confidence, torch.zeros_like(label, dtype=torch.uint8))
    assert targets.confident(torch.tensor([0.8, 0.4])).tolist() == [[[True, False, False, True]]]
    logits = torch.randn(1, 2, 1, 4)
    ce = torch.nn.functional.cross_entropy(logits, label, reduction="none")
    expected = (ce[0, 0, 0] + ce[0, 0, 3]) / 4  # kept pixels summed, divided by every valid pixel
    assert consistency_loss(logits, targets, torch.tensor([0.8, 0.4])).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- the health monitor
def targets_of(label, confidence):
    return PseudoLabels(label, confidence, torch.zeros_like(label, dtype=torch.uint8))


def small_foreground_mask(share=0.03, size=20):
    mask = torch.zeros(2, size, size, dtype=torch.long)
    mask.view(2, -1)[:, : int(share * size * size)] = 1
    return mask


def test_a_collapse_to_background_is_named_with_what_to_try():
    health = PseudoLabelHealth(2)
    collapsed = targets_of(torch.zeros(2, 20, 20, dtype=torch.long), torch.full((2, 20, 20), 0.99))
    health.update(small_foreground_mask(), collapsed, 0.95)
    problems = health.problems(["background", "defect"])
    assert {(p.kind, p.class_name) for p in problems} == {("vanished", "defect"), ("takeover", "background")}
    message = warning_message(problems, 7, remedy("fixed", problems))
    assert message.startswith("pseudo-label health at step 7") and message.count("\n") == 0  # one line per check
    assert "'defect' (0.00% of the confident pixels" in message and "took over" in message and "'background'" in message
    assert "--model.pseudo_labels.threshold_rule=freematch_prior" in message and "Pseudo-label health" in message
    vanished = [p for p in problems if p.kind == "vanished"]
    assert "threshold_rule=prior_lowered" in remedy("fixed", vanished)  # a vanished class: lower its tau
    assert "threshold_rule=freematch_prior" in remedy("prior_lowered", vanished)
    assert "threshold_rule" not in remedy("freematch_prior", problems)  # what is left: labels
    nothing = PseudoLabelHealth(2)
    nothing.update(small_foreground_mask(), collapsed, 1.0)  # a threshold no pixel reaches
    assert [p.kind for p in nothing.problems(["background", "defect"])] == ["no_confident"]
    healthy = PseudoLabelHealth(2)
    healthy.update(small_foreground_mask(), targets_of(small_foreground_mask(), torch.full((2, 20, 20), 0.99)), 0.95)
    assert healthy.problems(["background", "defect"]) == []


def test_shares_fractions_and_flip_agreement_are_counted_per_class():
    health = PseudoLabelHealth(3)
    label = torch.tensor([[[0, 0, 1, 2]]])
    confidence = torch.tensor([[[0.9, 0.5, 0.9, 0.9]]])
    mirrored = torch.tensor([[[0, 1, 1, 0]]])  # the teacher's arg max on the mirror image, mirrored back
    health.update(torch.tensor([[[0, 1, 1, 255]]]), targets_of(label, confidence), 0.8, (label, mirrored))
    values = health.compute()
    assert values["labeled_share"].tolist() == pytest.approx([1 / 3, 2 / 3, 0])
    assert values["confident_share"].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert values["confident_fraction"].tolist() == pytest.approx([0.5, 1, 1])
    assert values["flip_agreement"].item() == pytest.approx(2 / 4)  # pixels 0 and 2 keep their label
    assert values["flip_agreement_confident"].item() == pytest.approx(2 / 3)


def always_background(images, scales=None, view_scale=None, flip=None):
    """A teacher sure that every pixel is background, at every scale: a constructed collapse."""
    probs = torch.zeros(images.shape[0], 11, *images.shape[-2:])
    probs[:, 0] = 1.0
    return [probs for _ in scales or [1.0]]


def test_warnings_wait_for_the_grace_and_a_second_check_in_a_row():
    rule = HealthWarnings(grace=0.4)
    car, pole = HealthProblem("vanished", "car", 0.0, 0.1), HealthProblem("vanished", "pole", 0.0, 0.02)
    assert rule.check([car], progress=0.1) == []  # early: a teacher still learning the class
    assert rule.check([car], progress=0.3) == []  # persistent, but within the grace
    assert rule.check([car, pole], progress=0.5) == [car]  # pole is new at this check
    assert rule.check([pole], progress=0.6) == [pole]
    assert rule.check([car], progress=0.9) == []  # car came back after a check without it


def test_the_module_warns_once_per_check_after_the_grace_without_masks(demo_cache):
    torch.manual_seed(0)
    model = flat_module(**TINY_MODEL, num_classes=11, masked_weight=0, pseudo_label_scales=[1.0], health_every=1)
    model.teacher.scale_probabilities = always_background
    data = SemiSupervisedDataModule(
        dataset="demo", cache_dir=str(demo_cache), crop_size=32, batch_size=2, num_workers=0
    )  # no monitoring masks: the health monitor needs none
    trainer = L.Trainer(
        max_steps=4, limit_val_batches=1, val_check_interval=2, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        trainer.fit(model, datamodule=data)
    health = [str(w.message) for w in caught if "pseudo-label health" in str(w.message)]
    assert len(health) == 1 and health[0].startswith("pseudo-label health at step 4, for two checks in a row")
    assert "took over" in health[0] and "'0'" in health[0]  # background (class '0') took over
    logged = trainer.callback_metrics
    assert logged["pl_vanished"] >= 1 and logged["pl_takeover"] == 1
    assert logged["health/confident_share_0"] == 1.0 and logged["health/flip_agreement"] == 1.0


# ---------------------------------------------------------------- the testbeds
@pytest.mark.parametrize("name", ["faces", "defects"])
def test_testbeds_are_deterministic_and_their_masks_match_the_images(tmp_path, name):
    textures = load_textures()
    if name == "faces":
        faces = load_faces()

        def render(rng):
            return render_faces(faces, textures, rng)
    else:

        def render(rng):
            return render_defects(textures, rng)

    for copy in ("a", "b"):
        write_testbed(tmp_path / copy, render, seed=3, train_images=6, val_images=2)
    for path in sorted((tmp_path / "a").rglob("*.*")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
    for index in range(6):
        image, mask = render(np.random.default_rng([3, index, False]))
        labels = set(np.unique(mask).tolist()) - {255}
        assert labels - {0} and labels <= set(range(11 if name == "faces" else 2))
        foreground = mask == max(labels)
        background = mask == 0
        # items are drawn over the background: their pixels differ from the background's on average
        assert abs(image[foreground].mean() - image[background].mean()) > 3
        if name == "defects":
            assert 0.01 <= (mask == 1).mean() <= 0.05
