"""The method's training step, without Lightning: :class:`MaskMatchStep`.

One call is one step of MaskMatch as we read its abstract (arXiv:2312.08631; the paper itself was not
available), on UniMatch's ``unimatch.py`` / ``fixmatch.py``): the teacher's pseudo-labels on the weak view, the CutMixed
strong views, the masked view, the student on each view against its targets, the weighted loss.
It returns the losses and what the diagnostics read (:class:`StepOutput`); optimisation, logging,
seeding and evaluation are the caller's (``MaskMatchModule``, or a user's own LightningModule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .batch import strong_keys
from .cutmix import check_cutmix_prob, cutmix
from .losses import LossWeights, SupervisedLoss, consistency_loss
from .masking import PatchMasking
from .network import (
    NormStats,
    SegmentationNetwork,
    forward_views,
    maybe_frozen,
    running_norm_statistics,
    updates_running_stats,
)
from .perturbation import complementary_channel_masks
from .targets import IGNORE_INDEX, PseudoLabels
from .teacher import Teacher
from .thresholds import PseudoLabelThreshold

StudentForward = Literal["sequential", "batched", "concat"]


@dataclass
class TeacherOutput:
    """What the teacher computed on the weak view of a step.

    Attributes:
        pseudo_labels: the fused targets (``B x H x W`` labels and confidences, ignore mask).
        probabilities: the fused softmax, ``B x C x H x W`` float32.
        scale_probabilities: each pseudo-label scale's softmax, ``B x C x H x W``, by scale; with
            ``single_scale=True`` scale 1.0 is in it even where the teacher does not fuse it.
        threshold: the confidence threshold the targets are held to: a float, or ``C`` class-wise ones.
        flip_pair: with ``flip_pair=True``, the teacher's labels (``B x H x W``) of the weak view and
            of its mirror image (flipped back), at scale 1 without flip averaging.
    """

    pseudo_labels: PseudoLabels
    probabilities: torch.Tensor
    scale_probabilities: dict[float, torch.Tensor]
    threshold: float | torch.Tensor
    flip_pair: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class StepOutput:
    """The result of one :class:`MaskMatchStep` call.

    Attributes:
        total: the weighted loss (ramp-ups applied), a scalar with gradient.
        losses: the unweighted terms present: ``sup``, ``strong`` (mean over strong views),
            ``masked``, ``fp``.
        teacher: the teacher's side (None for the supervised baseline).
        strong_pseudo_labels: the first strong view's targets after CutMix (None without unlabeled data).
    """

    total: torch.Tensor
    losses: dict[str, torch.Tensor]
    teacher: TeacherOutput | None = None
    strong_pseudo_labels: PseudoLabels | None = None
    views: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def confident_fraction(self) -> torch.Tensor | None:
        """Share of the first strong view's valid pixels whose confidence reaches the threshold."""
        if self.strong_pseudo_labels is None or self.teacher is None:
            return None
        return self.strong_pseudo_labels.confident_fraction(self.teacher.threshold)


class MaskMatchStep(nn.Module):
    """The semi-supervised training step as a plain ``nn.Module`` (no Lightning inside).

    Args:
        network: the student, a :class:`~maskmatch_pl.network.SegmentationNetwork` (or any
            ``nn.Module`` mapping ``B x 3 x H x W`` to ``B x C x H x W`` logits, wrapped in one).
        teacher: the :class:`~maskmatch_pl.teacher.Teacher` of ``network``, built on that very
            ``SegmentationNetwork`` (default: shared weights, scale 1).
        threshold: the confidence threshold, a :class:`~maskmatch_pl.thresholds.PseudoLabelThreshold`
            or a float tau.
        weights: the loss weights (:class:`~maskmatch_pl.losses.LossWeights`); a weight of 0 switches its
            term off: ``masked=0`` is FixMatch, all unlabeled weights 0 the supervised baseline.
        masking: the masked view's settings (:class:`~maskmatch_pl.masking.PatchMasking`).
        sup_loss: the labeled loss (:class:`~maskmatch_pl.losses.SupervisedLoss`).
        cutmix_prob: probability that an unlabeled image gets a CutMix box from its partner, in [0, 1].
        strong_views: 1 (FixMatch) or 2 (UniMatch: ``strong2`` in the unlabeled batches).
        fp_dropout: Dropout2d rate of UniMatch's feature-perturbation stream.
        teacher_pass: ``eval`` (the teacher predicts in eval mode) or ``joint`` (the reference's:
            the weak view shares the labeled batch's train-mode forward).
        student_forward: ``sequential``, ``batched`` or ``concat`` (see ``MaskMatchModule``).
        norm_stats: which student forwards update the BatchNorm running statistics: ``labeled``,
            ``all`` or ``unmasked`` (:func:`~maskmatch_pl.network.updates_running_stats`).
        masked_norm: ``batch`` or ``running`` BatchNorm statistics for the masked view.
        strong_feature_dropout: ``none`` or ``complementary`` (UniMatch V2, a ViT, two strong views).

    Raises:
        ValueError: a setting out of range, two settings that cannot go together, or a network that
            cannot run a part that is on (feature perturbation, channel masks, token masking).
    """

    def __init__(
        self,
        network: nn.Module,
        teacher: Teacher | None = None,
        threshold: PseudoLabelThreshold | float = 0.95,
        weights: LossWeights | None = None,
        masking: PatchMasking | None = None,
        sup_loss: SupervisedLoss | None = None,
        cutmix_prob: float = 0.5,
        strong_views: Literal[1, 2] = 1,
        fp_dropout: float = 0.5,
        teacher_pass: Literal["eval", "joint"] = "eval",
        student_forward: StudentForward = "sequential",
        norm_stats: NormStats = "labeled",
        masked_norm: Literal["batch", "running"] = "batch",
        strong_feature_dropout: Literal["none", "complementary"] = "none",
    ) -> None:
        super().__init__()
        self.network = network if isinstance(network, SegmentationNetwork) else SegmentationNetwork(network)
        if teacher is not None and teacher._student[0] is not self.network:
            raise ValueError(
                "the teacher must be built on the step's network: wrap the network first, "
                "net = SegmentationNetwork(model), then MaskMatchStep(net, Teacher(net, ...))"
            )
        self.teacher = teacher if teacher is not None else Teacher(self.network)
        if not isinstance(threshold, PseudoLabelThreshold):
            threshold = PseudoLabelThreshold("fixed", threshold)
        self.threshold = threshold
        self.weights = weights if weights is not None else LossWeights()
        self.masking = masking if masking is not None else PatchMasking()
        self.sup_loss = sup_loss if sup_loss is not None else SupervisedLoss()
        check_cutmix_prob(cutmix_prob)
        self.cutmix_prob, self.fp_dropout, self.strong_keys = cutmix_prob, fp_dropout, strong_keys(strong_views)
        self.teacher_pass, self.student_forward, self.norm_stats = teacher_pass, student_forward, norm_stats
        self.masked_norm, self.strong_feature_dropout = masked_norm, strong_feature_dropout
        self._check_settings(strong_views)

    def _check_settings(self, strong_views: int) -> None:
        """The rules between settings, and the network's capabilities for the parts that are on."""
        if self.student_forward not in ("sequential", "batched", "concat"):
            raise ValueError(
                f"views.student_forward must be 'sequential', 'batched' or 'concat', got {self.student_forward!r}"
            )
        updates_running_stats(self.norm_stats, "labeled")  # refuses an unknown policy
        # concat shares one forward, so every student view in it must move the running statistics
        concat_views = ("labeled", "strong", "masked") if self.weights.masked > 0 else ("labeled", "strong")
        shared = all(updates_running_stats(self.norm_stats, view) for view in concat_views)
        if self.student_forward == "concat" and not shared:
            raise ValueError(
                f"views.norm_stats={self.norm_stats!r} needs views.student_forward 'sequential' or 'batched': "
                "concat shares BatchNorm statistics between the views; with concat set views.norm_stats='all'"
            )
        if self.teacher_pass not in ("eval", "joint"):
            raise ValueError(f"pseudo_labels.teacher_pass must be 'eval' or 'joint', got {self.teacher_pass!r}")
        if self.teacher_pass == "joint":
            if not updates_running_stats(self.norm_stats, "weak"):
                raise ValueError(
                    "pseudo_labels.teacher_pass='joint' runs the weak view in the labeled batch's train-mode forward, "
                    "which updates the BatchNorm running statistics from it: it needs views.norm_stats 'all' or "
                    f"'unmasked', got {self.norm_stats!r}"
                )
            if self.teacher.kind != "shared":
                raise ValueError(
                    "pseudo_labels.teacher_pass='joint' needs pseudo_labels.teacher='shared': an EMA teacher has "
                    "weights of its own"
                )
            if self.teacher.reference != "view":
                raise ValueError(
                    "pseudo_labels.teacher_pass='joint' predicts the weak view as it comes: it needs "
                    "experimental.pseudo_label_scale_reference='view'"
                )
        if self.masked_norm not in ("batch", "running"):
            raise ValueError(f"experimental.masked_norm must be 'batch' or 'running', got {self.masked_norm!r}")
        if self.weights.fp > 0:
            self.network.check_feature_perturbation()
        if self.strong_feature_dropout not in ("none", "complementary"):
            raise ValueError(
                f"views.strong_feature_dropout must be 'none' or 'complementary', got {self.strong_feature_dropout!r}"
            )
        if self.strong_feature_dropout == "complementary":
            if strong_views != 2:
                raise ValueError(
                    "views.strong_feature_dropout='complementary' pairs two strong views: it needs "
                    f"views.strong_views 2 (and data.strong_views 2), got {strong_views}"
                )
            self.network.check_channel_masks()
        if self.masking.space == "token" and self.weights.masked > 0:
            self.network.check_token_masking()
            patch, size = self.network.token_patch_size, self.masking.patch_size
            if size % patch:
                raise ValueError(
                    "masking.space='token' hides whole tokens: masking.patch_size must be a multiple of the ViT's "
                    f"patch size {patch}, got {size} (e.g. {patch * max(1, round(size / patch))})"
                )

    def forward(
        self,
        labeled: dict[str, Any],
        unlabeled: dict[str, Any] | None = None,
        *,
        step: int = 0,
        generator: torch.Generator | None = None,
        single_scale: bool = False,
        flip_pair: bool = False,
    ) -> StepOutput:
        """One training step on a labeled and an unlabeled batch (the format of :mod:`maskmatch_pl.batch`).

        Args:
            labeled: ``image`` ``B x 3 x H x W`` float and ``mask`` ``B x H x W`` integer (255 ignored).
            unlabeled: ``image`` (the weak view) and ``strong`` (``strong2``), optional ``ignore_mask``
                and ``view_scale``; None, or all unlabeled weights 0, trains on the labeled batch alone.
            step: the optimiser step, for the weights' ramp-ups.
            generator: draws the CutMix boxes, the patch masks and the channel masks (default: a fresh,
                unseeded one); dropout draws from the global RNG.
            single_scale: also return the teacher's scale-1 softmax (one more teacher forward where 1.0
                is not a pseudo-label scale), for scoring the fusion against one scale.
            flip_pair: also return the teacher's labels of the weak view and of its mirror image (two
                more teacher forwards), for the health monitor's flip agreement.

        Returns:
            :class:`StepOutput`: the weighted total (call ``backward`` on it) and the terms.

        Raises:
            ValueError: ``teacher_pass='joint'`` or ``pseudo_label_scale_reference='image'`` with a batch
                that lacks what they need.
        """
        if unlabeled is None or not self.weights.uses_unlabeled:
            losses = {"sup": self.sup_loss(self.network(labeled["image"]), labeled["mask"])}
            return StepOutput(self.weights.total(losses, step), losses)
        rng = generator if generator is not None else torch.Generator()
        # 1. teacher: pseudo-labels on the weak view, fused over scales
        sup_logits, teacher = self._teacher(labeled, unlabeled, single_scale, flip_pair)
        targets, threshold = teacher.pseudo_labels, teacher.threshold
        # 2. strong views, CutMixed together with their targets
        strong = {key: cutmix(unlabeled[key], targets, self.cutmix_prob, rng) for key in self.strong_keys}
        # 3. masked modeling: a patch-masked copy of the strong (or weak) view, same targets
        views = dict(strong) if self.weights.strong > 0 else {}
        masked_targets = token_masked = None
        if self.weights.masked > 0:
            weak = (unlabeled["image"], targets)
            source, source_targets = strong["strong"] if self.masking.view == "strong" else weak
            if self.masking.space == "token":  # the same patches, dropped from the ViT's tokens
                visible, masked_targets = self.masking.draw(source, source_targets, rng)
                token_masked = (source, visible)
            else:
                views["masked"] = self.masking.apply(source, source_targets, rng)
                masked_targets = views["masked"][1]
        channel_masks = None
        if self.strong_feature_dropout == "complementary" and self.weights.strong > 0:
            batch_size, width = len(strong["strong"][0]), self.network.channel_mask_width
            channel_masks = complementary_channel_masks(batch_size, width, rng, strong["strong"][0].device)
            perturbed_views = {name: views.pop(name)[0] for name in self.strong_keys}
        # 4. the student on every view, each against its targets
        logits = self._student({"labeled": labeled["image"]} if sup_logits is None else {}, views)
        if channel_masks is not None:
            logits.update(self._channel_masked(perturbed_views, channel_masks))
        if token_masked is not None:
            with maybe_frozen(self.network, not updates_running_stats(self.norm_stats, "masked")):
                logits["masked"] = self.network.forward_token_masked(*token_masked)
        losses = {"sup": self.sup_loss(logits.get("labeled", sup_logits), labeled["mask"])}
        if self.weights.strong > 0:
            losses["strong"] = torch.stack(
                [consistency_loss(logits[key], view_targets, threshold) for key, (_, view_targets) in strong.items()]
            ).mean()
        if masked_targets is not None:
            losses["masked"] = consistency_loss(logits["masked"], masked_targets, threshold)
        if self.weights.fp > 0:  # UniMatch: the decoder on perturbed features of the weak view
            losses["fp"] = consistency_loss(self._perturbed(unlabeled["image"]), targets, threshold)
        student_inputs = {name: view for name, (view, _) in views.items()}
        return StepOutput(self.weights.total(losses, step), losses, teacher, strong["strong"][1], student_inputs)

    def update_teacher(self, step: int) -> None:
        """After optimiser ``step`` (1-based): the EMA teacher follows the student (once per step)."""
        self.teacher.update(self.network, step)

    def _teacher(
        self, labeled: dict[str, Any], unlabeled: dict[str, Any], single_scale: bool, flip_pair: bool
    ) -> tuple[torch.Tensor | None, TeacherOutput]:
        """The teacher's targets for the weak view and the threshold(s) they are held to; with
        ``teacher_pass='joint'`` also the labeled logits of the train-mode forward the two batches
        shared (the reference)."""
        weak, sup_logits, view_scale = unlabeled["image"], None, unlabeled.get("view_scale")
        if self.teacher_pass == "joint":
            both = self.network(torch.cat([labeled["image"], weak]))
            sup_logits, weak_logits = both.split([len(labeled["image"]), len(weak)])
            per_scale = self.teacher.joint_scale_probabilities(weak, weak_logits)
        else:
            per_scale = self.teacher.scale_probabilities(weak, view_scale=view_scale)
        fused = self.teacher.fuse(per_scale)
        ignore_mask = unlabeled.get("ignore_mask")
        valid = None if ignore_mask is None else ignore_mask != IGNORE_INDEX
        threshold = self.threshold.update(fused, valid, labeled["mask"])
        scales = dict(zip(self.teacher.scales, per_scale))
        if single_scale and 1.0 not in scales:
            scales[1.0] = self.teacher.scale_probabilities(weak, [1.0], view_scale)[0]
        pair = None
        if flip_pair:
            plain = self.teacher.scale_probabilities(weak, [1.0], view_scale, flip=False)[0].argmax(1)
            mirrored = self.teacher.scale_probabilities(weak.flip(-1), [1.0], view_scale, flip=False)[0]
            pair = (plain, mirrored.flip(-1).argmax(1))
        targets = PseudoLabels.from_probabilities(fused, ignore_mask)
        return sup_logits, TeacherOutput(targets, fused, scales, threshold, pair)

    def _student(
        self, labeled: dict[str, torch.Tensor], views: dict[str, tuple[torch.Tensor, PseudoLabels]]
    ) -> dict[str, torch.Tensor]:
        """Student logits per named view; with ``norm_stats='labeled'`` only the labeled forward
        updates the BatchNorm running statistics, with ``'unmasked'`` every forward but the masked view's."""
        inputs = {**labeled, **{name: view for name, (view, _) in views.items()}}
        masked = inputs.pop("masked") if self.masked_norm == "running" and "masked" in inputs else None
        update = [updates_running_stats(self.norm_stats, name) for name in inputs]
        concat, per_view = self.student_forward != "sequential", self.student_forward == "batched"
        logits = dict(zip(inputs, forward_views(self.network, list(inputs.values()), concat, update, per_view)))
        if masked is not None:  # normalised as the eval-mode teacher normalises its full view
            with running_norm_statistics(self.network):
                logits["masked"] = self.network(masked)
        return logits

    def _channel_masked(
        self, views: dict[str, torch.Tensor], channel_masks: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The two strong views' logits under Complementary Dropout, in one forward as UniMatch V2's
        (its normalisation layers see both views together)."""
        names, images = list(views), list(views.values())
        with maybe_frozen(self.network, not all(updates_running_stats(self.norm_stats, n) for n in names)):
            logits = self.network.forward_channel_masked(torch.cat(images), torch.cat(channel_masks))
        return dict(zip(names, logits.split([len(i) for i in images])))

    def _perturbed(self, weak: torch.Tensor) -> torch.Tensor:
        with maybe_frozen(self.network, not updates_running_stats(self.norm_stats, "fp")):
            return self.network.forward_perturbed(weak, self.fp_dropout)
