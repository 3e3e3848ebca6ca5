"""MaskMatchModule: the LightningModule that composes the method's parts.

The parts carry their behaviour (``teacher.py``, ``cutmix.py``, ``masking.py``, ``losses.py``,
``network.py`` for the BatchNorm policy, ``monitoring.py``); this module reads the knobs once
into them and wires them into a training step that follows the paper's algorithm.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from .batch import check_batch, strong_keys
from .cutmix import cutmix
from .evaluation import EvalMode, EvalProtocol, iou_from_confusion, mean_iou, size_groups
from .health import PseudoLabelHealth
from .locality import LocalityScores
from .losses import LossWeights, SupervisedLoss, consistency_loss, rampup_factor
from .masking import PatchMasking
from .monitoring import PseudoLabelMonitor
from .multiscale import Fusion
from .network import (
    NormStats,
    SegmentationNetwork,
    build_smp_model,
    forward_views,
    maybe_frozen,
    running_norm_statistics,
    updates_running_stats,
)
from .optim import build_optimizer, poly_schedule
from .perturbation import complementary_channel_masks
from .targets import IGNORE_INDEX, PseudoLabels
from .teacher import ScaleReference, Teacher
from .thresholds import PseudoLabelThreshold, ThresholdKind


class MaskMatchModule(L.LightningModule):
    """Semi-supervised segmentation with MaskMatch (arXiv:2312.08631) and its baselines.

    One training step: supervised CE on the labeled batch; teacher pseudo-labels on the weak
    view from multi-scale ensembling; the student on the CutMixed strong view(s) and on a
    patch-masked copy, both against the same pseudo-labels with the reference consistency
    loss; optionally UniMatch's feature-perturbation stream. Setting a weight to 0 switches
    its part off: ``masked_weight=0`` with one scale is FixMatch, all unlabeled weights 0 is
    the supervised baseline.

    Args:
        num_classes: Number of classes, required (the CLI links it from ``data.num_classes``).
        arch: smp architecture, built with ``smp.create_model`` (e.g. DeepLabV3Plus, FPN, Unet).
        encoder_name: smp encoder (e.g. resnet50, tu-tf_efficientnet_lite0).
        encoder_weights: None (random init), 'packaged' (ImageNet weights shipped in a pip package, no download) or a
            hub name such as 'imagenet' (downloads).
        model_kwargs: More keyword arguments for ``smp.create_model`` (e.g. decoder_channels).
        model: Any nn.Module mapping B x 3 x H x W images to B x C x H x W logits, used instead of the smp model
            (in a config: ``{class_path: ..., init_args: ...}``).
        pad_multiple: Pad inputs to a multiple of this many pixels (default: the smp encoder's output stride, 1 for
            other networks).
        channels_last: Keep the weights and feed the images in the channels-last memory format: the same model, a
            faster one on CPU (oneDNN; about 20 % off the demo's training step on 2 cores, benchmarks/RESULTS.md)
            and, as a rule, on GPUs with tensor cores (not measured here). Off by default.
        sup_weight: Weight of the labeled loss.
        strong_weight: Weight of the strong-view consistency loss (the mean over strong views); 0 switches it off.
        masked_weight: Weight of the masked-view consistency loss (MaskMatch's masked modeling); 0 switches it off.
        fp_weight: Weight of UniMatch's feature-perturbation loss; 0 switches it off.
        unsup_rampup_steps: The unlabeled weights grow linearly from 0 over this many optimiser steps (0: full weight
            at once, the reference).
        masked_rampup_steps: The masked weight alone also grows linearly from 0 over this many optimiser steps (0:
            off).
        conf_threshold: Pseudo-label confidence threshold tau: pixels with confidence >= tau reach the unlabeled
            losses.
        pseudo_label_threshold: 'fixed' (conf_threshold for every class, the reference) or 'freematch' (class-wise
            self-adaptive thresholds of FreeMatch, arXiv:2205.07246: lower for the classes the teacher gives less
            probability; for weak teachers and rare or small classes, see README 'Pseudo-label health').
        threshold_momentum: EMA momentum of the 'freematch' thresholds (FreeMatch's 0.999 is for ~1M steps).
        health_every: Every this many steps the teacher also predicts the flipped weak view, for the mask-free
            pseudo-label health monitor's flip agreement (0: never; the class shares are counted every step).
        pseudo_label_scales: Input scales whose teacher softmax is fused into the pseudo-labels (MaskMatch's
            multi-scale ensembling; see pseudo_label_fusion).
        pseudo_label_flip: Also average the teacher's prediction of the horizontally flipped weak view.
        pseudo_label_fusion: How the scales' probabilities combine: 'mean' (the paper's softmax averaging) or
            'geometric' (softmax of the mean log-probability: keeps the confidence where the scales agree, and
            lets a scale that rules a class out veto it). Flips are averaged within each scale first.
        pseudo_label_scale_reference: What the pseudo-label scales are relative to: 'view' (the weak view as the data
            pipeline rescaled it, the reference) or 'image' (the image's stored size: a weak view rescaled by s is
            predicted at scale / s, so scale 1 sees objects at their stored size; needs 'view_scale' in the
            unlabeled batches, which maskmatch_pl's data module provides; views are then predicted one at a time).
        mask_ratio: Share of the patches hidden in the masked view (0.7: 30 % visible).
        mask_ratio_max: If set above mask_ratio, the ratio is drawn per step from U(mask_ratio, mask_ratio_max).
        mask_patch_size: Side of the square patches of the masked view, in pixels of the training crop.
        masked_view: Which view is masked: 'strong' (a copy of the CutMixed strong view) or 'weak'.
        masked_loss_on: Which pixels of the masked view reach its loss: 'all' (the paper: hidden ones too, predicted
            from context) or 'visible' (a diagnostic: occlusion without inpainting).
        cutmix_prob: Probability that an unlabeled image gets a CutMix box from its partner.
        mask_space: 'pixel' or 'token' (ViT: hidden patches never enter the encoder).
        strong_views: 1 (FixMatch) or 2 (UniMatch); 2 needs 'strong2' in the unlabeled batches (data.strong_views 2).
        strong_feature_dropout: 'none' or 'complementary' (UniMatch V2; a ViT).
        fp_dropout: Dropout2d rate of the feature-perturbation stream.
        teacher: 'shared' (the student's weights in eval mode, no gradient) or 'ema' (a moving average of them, saved
            in checkpoints).
        teacher_pass: 'eval': the shared teacher predicts in eval mode (running BatchNorm statistics, no dropout);
            'joint': the reference's, the weak view shares the labeled batch's train-mode forward.
        ema_momentum: Momentum of the EMA teacher, warmed up as min(1 - 1/(t+1), m).
        student_forward: 'sequential': one forward per view, each with its own BatchNorm statistics; 'batched': all
            views in one forward with the same result (BatchNorm normalises each view with its own statistics; the
            other layers run on the whole batch, faster for small models on CPU, see benchmarks/RESULTS.md);
            'concat': all views in one forward with shared BatchNorm statistics (needs norm_stats 'all', or
            'unmasked' with masked_weight 0, where the two are the same).
        norm_stats: Which student forwards update the BatchNorm running statistics: 'labeled' (the labeled batch only;
            not with teacher_pass 'joint', whose shared forward updates them from the weak view),
            'all' (the reference) or 'unmasked' (all but the masked view: the reference's statistics, which the
            masked view's 70 % mean-colour patches would otherwise pull towards inputs no eval-mode pass sees).
        masked_norm: How BatchNorm normalises the masked view: 'batch' (as the other student views, per
            student_forward) or 'running' (the running statistics, as the eval-mode teacher normalises the full
            view; the masked view then runs in a forward of its own whatever student_forward says).
        sup_loss: Labeled loss: 'ce' (cross-entropy, 255 ignored) or 'ohem' (Cityscapes).
        ohem_thresh: OHEM: keep pixels whose true-class probability is at most this.
        ohem_min_kept: OHEM: keep at least this many pixels per batch.
        optimizer: 'sgd' (the reference) or 'adamw'.
        lr: Learning rate of the encoder.
        lr_multi: The decoder and head train at lr x lr_multi.
        weight_decay: Weight decay (decoupled for AdamW).
        momentum: SGD momentum.
        poly_power: Power of the poly LR decay, stepped per iteration.
        warmup_steps: Linear LR warm-up over this many optimiser steps before the poly decay (0: none, the reference).
        eval_mode: Evaluation protocol: 'original' (whole image), 'center_crop' or 'sliding_window'.
        eval_crop_size: Crop or window size of the evaluation protocol (default: the training crop, data.crop_size, in
            the CLI; 320 in Python).
        eval_scales: Test-time scales whose softmax is averaged.
        eval_flip: Test-time horizontal flip.
        class_names: Names for the per-class IoU logs (the CLI links them from the data module).
        boundary_width: Half-width in pixels of the band around the ground truth's class edges scored by
            ``val/boundary_mIoU``, and the margin around small objects (:mod:`maskmatch_pl.locality`).
        small_object_share: A ground-truth connected component is a small object, scored by
            ``val/small_object_mIoU``, below this share of its image's pixels.
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "DeepLabV3Plus",
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        model: nn.Module | None = None,
        pad_multiple: int | None = None,
        channels_last: bool = False,
        sup_weight: float = 0.5,
        strong_weight: float = 0.5,
        masked_weight: float = 0.5,
        fp_weight: float = 0.0,
        unsup_rampup_steps: int = 0,
        masked_rampup_steps: int = 0,
        conf_threshold: float = 0.95,
        pseudo_label_threshold: ThresholdKind = "fixed",
        threshold_momentum: float = 0.99,
        health_every: int = 10,
        pseudo_label_scales: Sequence[float] = (0.75, 1.0, 1.25),
        pseudo_label_flip: bool = False,
        pseudo_label_fusion: Fusion = "mean",
        pseudo_label_scale_reference: ScaleReference = "view",
        mask_ratio: float = 0.7,
        mask_ratio_max: float | None = None,
        mask_patch_size: int = 32,
        masked_view: Literal["strong", "weak"] = "strong",
        masked_loss_on: Literal["all", "visible"] = "all",
        mask_space: Literal["pixel", "token"] = "pixel",
        cutmix_prob: float = 0.5,
        strong_views: Literal[1, 2] = 1,
        strong_feature_dropout: Literal["none", "complementary"] = "none",
        fp_dropout: float = 0.5,
        teacher: Literal["shared", "ema"] = "shared",
        teacher_pass: Literal["eval", "joint"] = "eval",
        ema_momentum: float = 0.996,
        student_forward: Literal["sequential", "batched", "concat"] = "sequential",
        norm_stats: NormStats = "labeled",
        masked_norm: Literal["batch", "running"] = "batch",
        sup_loss: Literal["ce", "ohem"] = "ce",
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 200_000,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 1e-3,
        lr_multi: float = 10.0,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        poly_power: float = 0.9,
        warmup_steps: int = 0,
        eval_mode: EvalMode = "original",
        eval_crop_size: int | None = None,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        class_names: list[str] | None = None,
        boundary_width: int = 3,
        small_object_share: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        for name, value in (("conf_threshold", conf_threshold), ("cutmix_prob", cutmix_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if student_forward not in ("sequential", "batched", "concat"):
            raise ValueError(f"student_forward must be 'sequential', 'batched' or 'concat', got {student_forward!r}")
        updates_running_stats(norm_stats, "sup")  # refuses an unknown policy
        # concat shares one forward, so every student view in it must move the running statistics
        concat_views = ("sup", "strong0", "masked") if masked_weight > 0 else ("sup", "strong0")
        if student_forward == "concat" and not all(updates_running_stats(norm_stats, v) for v in concat_views):
            raise ValueError(
                f"norm_stats={norm_stats!r} needs student_forward 'sequential' or 'batched': concat shares "
                "BatchNorm statistics between the views; with concat set norm_stats='all'"
            )
        if teacher_pass == "joint" and not updates_running_stats(norm_stats, "weak"):
            raise ValueError(
                "teacher_pass='joint' runs the weak view in the labeled batch's train-mode forward, which updates the "
                f"BatchNorm running statistics from it: it needs norm_stats 'all' or 'unmasked', got {norm_stats!r}"
            )
        if teacher_pass == "joint" and teacher != "shared":
            raise ValueError("teacher_pass='joint' needs teacher='shared': an EMA teacher has weights of its own")
        if teacher_pass == "joint" and pseudo_label_scale_reference != "view":
            raise ValueError(
                "teacher_pass='joint' predicts the weak view as it comes: it needs pseudo_label_scale_reference='view'"
            )
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if num_classes < 2:
            raise ValueError(
                f"num_classes is {num_classes}, but segmentation needs two classes at least: binary data has two, "
                "background (0) and foreground (1)"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.weights = LossWeights(
            sup_weight, strong_weight, masked_weight, fp_weight, unsup_rampup_steps, masked_rampup_steps
        )
        self.masking = PatchMasking(
            mask_patch_size, mask_ratio, mask_ratio_max, masked_view, masked_loss_on, mask_space
        )
        self.sup_loss = SupervisedLoss(sup_loss, ohem_thresh, ohem_min_kept)
        self.eval_protocol = EvalProtocol(eval_mode, eval_crop_size or 320, tuple(eval_scales), eval_flip)
        self.conf_threshold, self.cutmix_prob, self.fp_dropout = conf_threshold, cutmix_prob, fp_dropout
        self.strong_keys = strong_keys(strong_views)
        self.teacher_pass, self.student_forward, self.norm_stats = teacher_pass, student_forward, norm_stats
        if masked_norm not in ("batch", "running"):
            raise ValueError(f"masked_norm must be 'batch' or 'running', got {masked_norm!r}")
        self.masked_norm = masked_norm
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        net = (
            model
            if model is not None
            else build_smp_model(arch, encoder_name, encoder_weights, num_classes, **(model_kwargs or {}))
        )
        self.network = SegmentationNetwork(net, pad_multiple, channels_last)
        if fp_weight > 0:
            self.network.check_feature_perturbation()
        self._check_vit_options(strong_feature_dropout, strong_views, mask_space, mask_patch_size, masked_weight)
        self.strong_feature_dropout = strong_feature_dropout
        self.teacher = Teacher(
            self.network,
            teacher,
            ema_momentum,
            pseudo_label_scales,
            pseudo_label_flip,
            pseudo_label_fusion,
            pseudo_label_scale_reference,
        )
        # the confusion matrix summed over the set (synced under DDP); IoU and mIoU are computed from it
        self.val_iou = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.test_iou = self.val_iou.clone()
        self.val_locality = LocalityScores(num_classes, boundary_width, small_object_share)
        self.test_locality = self.val_locality.clone()
        other_scales = [f"pseudo_scale_{s:g}" for s in pseudo_label_scales if len(pseudo_label_scales) > 1 and s != 1.0]
        self.pseudo_monitor = PseudoLabelMonitor(num_classes, ["pseudo", "pseudo_single_scale", *other_scales])
        self.threshold = PseudoLabelThreshold(pseudo_label_threshold, conf_threshold, num_classes, threshold_momentum)
        if health_every < 0:
            raise ValueError(f"health_every must be >= 0, got {health_every}")
        self.health, self.health_every = PseudoLabelHealth(num_classes), health_every
        self._seed = 0
        self._restored_seed: int | None = None  # the run's seed, from a checkpoint being resumed

    def _check_vit_options(
        self, feature_dropout: str, strong_views: int, mask_space: str, mask_patch_size: int, masked_weight: float
    ) -> None:
        """Refuse Complementary Dropout or token-space masking where the network or the views cannot take them."""
        if feature_dropout not in ("none", "complementary"):
            raise ValueError(f"strong_feature_dropout must be 'none' or 'complementary', got {feature_dropout!r}")
        if feature_dropout == "complementary":
            if strong_views != 2:
                raise ValueError(
                    f"strong_feature_dropout='complementary' pairs two strong views: it needs strong_views 2 "
                    f"(and data.strong_views 2), got {strong_views}"
                )
            self.network.check_channel_masks()
        if mask_space == "token" and masked_weight > 0:
            self.network.check_token_masking()
            patch = self.network.token_patch_size
            if mask_patch_size % patch:
                raise ValueError(
                    f"mask_space='token' hides whole tokens: mask_patch_size must be a multiple of the ViT's patch "
                    f"size {patch}, got {mask_patch_size} (e.g. {patch * max(1, round(mask_patch_size / patch))})"
                )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Student logits ``B x C x H x W`` for normalised ``B x 3 x H x W`` images."""
        return self.network(images)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The step (:meth:`_step`) with the global RNG, which dropout draws from and no checkpoint
        holds, seeded from (seed, rank, step, micro-batch) and put back afterwards (``initial_seed``
        included): a resumed run draws what the unbroken one did, from any checkpoint."""
        devices = [self.device] if self.device.type == "cuda" else []  # the CPU generator is always forked
        with torch.random.fork_rng(devices, device_type="cuda"):
            torch.manual_seed(self.step_seed(batch_idx))
            try:
                return self._step(batch, batch_idx)
            except ValueError as error:
                if "Expected more than 1 value per channel" not in str(error):
                    raise
                raise ValueError(
                    f"{error}: a normalisation layer saw one value per channel, as BatchNorm after a global pooling "
                    f"(DeepLabV3+'s ASPP) does with one image per process: use data.batch_size and "
                    f"data.unlabeled_batch_size of 2 or more"
                ) from error

    def step_seed(self, batch_idx: int) -> int:
        """The seed of the global RNG during training batch ``batch_idx`` of the current step."""
        return hash((self._seed, self.global_rank, self.global_step, batch_idx)) & 0x7FFF_FFFF_FFFF_FFFF

    def _step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One training step, as the paper's algorithm (see the class docstring)."""
        labeled, unlabeled = self._checked(batch, batch_idx)
        if unlabeled is None:  # the supervised baseline needs no unlabeled loader
            return self._total({"sup": self.sup_loss(self.network(labeled["image"]), labeled["mask"])}, labeled)
        rng = self._rng()
        # 1. teacher: pseudo-labels on the weak view, fused over scales
        sup_logits, targets, threshold = self._pseudo_labels(labeled, unlabeled)
        self._check_health(labeled["mask"], unlabeled, targets, threshold)
        # 2. strong views, CutMixed together with their targets
        strong = [cutmix(unlabeled[key], targets, self.cutmix_prob, rng) for key in self.strong_keys]
        # 3. masked modeling: a patch-masked copy of the strong (or weak) view, same targets
        views = {f"strong{i}": pair for i, pair in enumerate(strong)} if self.weights.strong > 0 else {}
        masked_targets = token_masked = None
        if self.weights.masked > 0:
            source, source_targets = strong[0] if self.masking.view == "strong" else (unlabeled["image"], targets)
            if self.masking.space == "token":  # the same patches, dropped from the ViT's tokens
                visible, masked_targets = self.masking.draw(source, source_targets, rng)
                token_masked = (source, visible)
            else:
                views["masked"] = self.masking.apply(source, source_targets, rng)
                masked_targets = views["masked"][1]
        channel_masks = None
        if self.strong_feature_dropout == "complementary" and self.weights.strong > 0:
            batch_size, width = len(strong[0][0]), self.network.channel_mask_width
            channel_masks = complementary_channel_masks(batch_size, width, rng, strong[0][0].device)
            perturbed_views = {name: views.pop(name)[0] for name in ("strong0", "strong1")}
        # 4. the student on every view, each against its targets
        logits = self._student({"sup": labeled["image"]} if sup_logits is None else {}, views)
        if channel_masks is not None:
            logits.update(self._channel_masked(perturbed_views, channel_masks))
        if token_masked is not None:
            with maybe_frozen(self.network, not updates_running_stats(self.norm_stats, "masked")):
                logits["masked"] = self.network.forward_token_masked(*token_masked)
        losses = {"sup": self.sup_loss(logits.get("sup", sup_logits), labeled["mask"])}
        if self.weights.strong > 0:
            losses["strong"] = torch.stack(
                [consistency_loss(logits[f"strong{i}"], t, threshold) for i, (_, t) in enumerate(strong)]
            ).mean()
        if masked_targets is not None:
            losses["masked"] = consistency_loss(logits["masked"], masked_targets, threshold)
        if self.weights.fp > 0:  # UniMatch: the decoder on perturbed features of the weak view
            losses["fp"] = consistency_loss(self._perturbed(unlabeled["image"]), targets, threshold)
        return self._total(losses, labeled, strong[0][1], threshold)

    def _checked(self, batch: dict[str, Any], batch_idx: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        labeled = batch["labeled"]
        check_batch(
            labeled, "labeled", label_maps=("mask",), num_classes=self.hparams.num_classes, check_values=batch_idx == 0
        )
        if not self.weights.uses_unlabeled:
            return labeled, None
        unlabeled = batch.get("unlabeled")
        check_batch(unlabeled, "unlabeled", images=("image", *self.strong_keys))
        return labeled, unlabeled

    def _rng(self) -> torch.Generator:
        """Generator for CutMix boxes and patch masks, re-seeded from (seed, rank, step) every
        step so that ranks differ and a resumed run draws exactly what an unbroken one does."""
        seed = hash((self._seed, self.global_rank, self.global_step)) & 0x7FFF_FFFF_FFFF_FFFF
        return torch.Generator().manual_seed(seed)

    def _pseudo_labels(
        self, labeled: dict[str, Any], unlabeled: dict[str, Any]
    ) -> tuple[torch.Tensor | None, PseudoLabels, float | torch.Tensor]:
        """The teacher's targets for the weak view and the confidence threshold(s) they are held to;
        with ``teacher_pass='joint'`` also the labeled logits of the train-mode forward the two
        batches shared (the reference)."""
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
        if "monitor_mask" in unlabeled:  # true masks, for measuring only: no loss reads them
            scales = list(self.teacher.scales)
            single = (
                per_scale[scales.index(1.0)]
                if 1.0 in scales
                else self.teacher.scale_probabilities(weak, [1.0], view_scale)[0]
            )
            scored = {"pseudo": fused, "pseudo_single_scale": single}
            scored.update({f"pseudo_scale_{s:g}": p for s, p in zip(scales, per_scale) if len(scales) > 1 and s != 1.0})
            for name, probs in scored.items():
                self.pseudo_monitor.update(
                    name, probs, unlabeled["monitor_mask"], threshold, unlabeled.get("ignore_mask")
                )
        return sup_logits, PseudoLabels.from_probabilities(fused, ignore_mask), threshold

    def _check_health(
        self,
        labeled_mask: torch.Tensor,
        unlabeled: dict[str, Any],
        targets: PseudoLabels,
        threshold: float | torch.Tensor,
    ) -> None:
        """Count the step for the mask-free health monitor; every ``health_every`` steps the
        teacher also predicts the weak view and its mirror image at scale 1, without its own flip
        averaging (two more eval-mode teacher forwards), for its agreement with itself."""
        pair = None
        if self.health_every and self.global_step % self.health_every == 0:
            weak, view_scale = unlabeled["image"], unlabeled.get("view_scale")
            plain = self.teacher.scale_probabilities(weak, [1.0], view_scale, flip=False)[0].argmax(1)
            mirrored = self.teacher.scale_probabilities(weak.flip(-1), [1.0], view_scale, flip=False)[0]
            pair = (plain, mirrored.flip(-1).argmax(1))
        self.health.update(labeled_mask, targets, threshold, pair)

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

    def _total(
        self,
        losses: dict[str, torch.Tensor],
        labeled: dict[str, Any],
        strong_targets: PseudoLabels | None = None,
        threshold: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """The weighted total (ramp-ups included); logs each term, the total and the share of
        confident pixels in the first strong view's targets."""
        batch_size = len(labeled["image"])
        total = self.weights.total(losses, self.global_step)
        if strong_targets is not None:
            fraction = strong_targets.confident_fraction(threshold)
            self.log("train/confident_fraction", fraction, batch_size=len(strong_targets.confidence))
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        if self.weights.unsup_rampup_steps and len(losses) > 1:
            ramp = rampup_factor(self.global_step, self.weights.unsup_rampup_steps)
            self.log("train/unsup_ramp", ramp, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def on_fit_start(self) -> None:
        self._seed = self._restored_seed if self._restored_seed is not None else torch.initial_seed()

    def on_train_start(self) -> None:
        self.teacher.last_step = self.global_step  # a checkpoint's EMA weights already follow its step
        loaders = self.trainer.train_dataloader
        loaders = getattr(loaders, "iterables", loaders)  # a CombinedLoader's dict of loaders
        if self.weights.uses_unlabeled and isinstance(loaders, dict) and "unlabeled" not in loaders:
            raise ValueError(
                "this model trains on unlabeled images (strong/masked/fp weights > 0) but the training data has "
                "no unlabeled loader: set data.unlabeled (a folder of images or a split file) or data.split, "
                "or set the unlabeled weights to 0 for the supervised baseline"
            )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the EMA teacher's update: inside the step (once per step, whatever
        the gradient accumulation), so that a checkpoint taken after the step holds the teacher of
        that step (``ModelCheckpoint(every_n_train_steps)`` saves before the module's ``on_train_batch_end``)."""
        super().optimizer_step(*args, **kwargs)
        self.teacher.update(self.network, self.global_step + 1)  # Lightning counts the step after this hook

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["maskmatch_seed"] = self._seed  # CutMix, masks and dropout follow it: a resume keeps it

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another network or class count with a message, not a size-mismatch
        traceback; keep the run's seed for a resume."""
        self._restored_seed = checkpoint.get("maskmatch_seed")
        state = checkpoint.get("state_dict", {})
        ours = {f"threshold.{name}": value for name, value in self.threshold.state_dict().items()}
        for key in [k for k in state if k.startswith("threshold.") and k not in ours]:
            del state[key]  # adaptive-threshold state, loaded into a model that does not adapt
        for key, value in ours.items():
            state.setdefault(key, value)  # a checkpoint from before (or without) adaptive thresholds: start afresh
        theirs = checkpoint.get("hyper_parameters", {})
        different = [
            f"{key}: checkpoint {theirs[key]!r} vs this model {self.hparams.get(key)!r}"
            for key in ("num_classes", "arch", "encoder_name")
            if key in theirs and theirs[key] != self.hparams.get(key)
        ]
        if different:
            raise ValueError(
                f"the checkpoint was trained with another network or class count ({'; '.join(different)}): "
                f"load it with the config and data it was trained with"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(self.network, hp.optimizer, hp.lr, hp.lr_multi, hp.weight_decay, hp.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = poly_schedule(optimizer, total, hp.poly_power, hp.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _unpadded_probabilities(
        self, batch: dict[str, Any], whole: bool = False
    ) -> Iterator[tuple[list[int], int, int, torch.Tensor]]:
        """``(indices, height, width, probabilities)`` per group of equally sized images of the
        batch, each group predicted at its own size (:func:`~maskmatch_pl.evaluation.size_groups`):
        the result does not depend on the batch size. A failure names the images."""
        for indices, height, width in size_groups(batch):
            images = batch["image"][indices, :, :height, :width]
            try:
                probs = self.eval_protocol.probabilities(self.network, images, whole=whole)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError) as error:
                names = [batch["name"][i] for i in indices] if batch.get("name") else indices
                raise RuntimeError(f"{names}: the network failed on these {width}x{height} images: {error}") from error
            yield indices, height, width, probs

    def _evaluate(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        metric: MulticlassConfusionMatrix,
        locality: LocalityScores,
        stage: str,
    ) -> None:
        check_batch(
            batch, stage, label_maps=("mask",), num_classes=self.hparams.num_classes, check_values=batch_idx == 0
        )
        for indices, height, width, probs in self._unpadded_probabilities(batch):
            masks = batch["mask"][indices, :height, :width]  # the images' own masks, then the protocol's region
            prediction, target = probs.argmax(1), self.eval_protocol.region(masks)
            metric.update(prediction, target)
            locality.update(prediction, target)

    def _log_iou(self, metric: MulticlassConfusionMatrix, locality: LocalityScores, stage: str) -> None:
        """mIoU and per-class IoU of the set (NaN for a class in neither truth nor predictions), and
        the locality scores: boundary and small-object IoU, per class and their means."""
        iou = iou_from_confusion(metric.compute()).float()
        self.log(f"{stage}/mIoU", mean_iou(iou), prog_bar=True)
        for name, value in zip(self.class_names, iou):
            self.log(f"{stage}/IoU_{name}", value)
        metric.reset()
        for score, per_class in locality.compute().items():
            per_class = per_class.float()
            if not per_class.isnan().all():  # a set without small objects has no small-object IoU
                self.log(f"{stage}/{score}_mIoU", mean_iou(per_class))
            for name, value in zip(self.class_names, per_class):
                if not value.isnan():
                    self.log(f"{stage}/{score}_IoU_{name}", value)
        locality.reset()

    def _log_pseudo_label_quality(self) -> None:
        """Pseudo-label scores over the training steps since the last call: against masks when the
        unlabeled batches carry them (``pseudo/*``), and the mask-free health monitor (``health/*``),
        whose problems are warned about and counted in the progress bar (``pl_vanished``, ``pl_takeover``)."""
        if self.pseudo_monitor.updated:
            self.log_dict(self.pseudo_monitor.compute(self.class_names))
            self.pseudo_monitor.reset()
        if not self.health.update_called:
            return
        values = self.health.compute()
        problems = self.health.problems(self.class_names)
        logged = {f"health/{key}": value for key, value in values.items() if value.dim() == 0}
        for key in ("labeled_share", "confident_share", "confident_fraction"):
            logged.update({f"health/{key}_{name}": value for name, value in zip(self.class_names, values[key])})
        thresholds = self.threshold.thresholds()
        if isinstance(thresholds, torch.Tensor):
            logged.update({f"health/threshold_{name}": value for name, value in zip(self.class_names, thresholds)})
        self.log_dict({key: value.float() for key, value in logged.items() if not value.isnan()})
        for kind in ("vanished", "takeover", "no_confident"):
            count = sum(problem.kind == kind for problem in problems)
            self.log(f"pl_{kind}", float(count), prog_bar=True)
        for problem in problems:
            rank_zero_warn(f"pseudo-label health at step {self.global_step}: {problem.message}")
        self.health.reset()

    def on_validation_start(self) -> None:
        rank_zero_info(f"evaluation: {self.eval_protocol}")

    on_test_start = on_validation_start

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_iou, self.val_locality, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_iou(self.val_iou, self.val_locality, "val")
        self._log_pseudo_label_quality()

    def on_train_epoch_end(self) -> None:
        self._log_pseudo_label_quality()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_iou, self.test_locality, "test")

    def on_test_epoch_end(self) -> None:
        self._log_iou(self.test_iou, self.test_locality, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Class maps ``B x H x W`` of the whole images plus the batch's ``name``/``size``."""
        check_batch(batch, "predict")
        return {"prediction": self.predict_labels(batch), "name": batch.get("name"), "size": batch.get("size")}

    @torch.no_grad()
    def predict_labels(self, batch: dict[str, Any]) -> torch.Tensor:
        """Class maps ``B x H x W`` (long) of the whole images of an eval batch (``image``, and
        ``size`` when padded), each image predicted at its own size; pixels outside an image's
        own size (batch padding) are 255. A centre-crop protocol is applied as ``original``."""
        images = batch["image"]
        labels = torch.full((images.shape[0], *images.shape[-2:]), IGNORE_INDEX, dtype=torch.long, device=images.device)
        for indices, height, width, probs in self._unpadded_probabilities(batch, whole=True):
            labels[indices, :height, :width] = probs.argmax(1)
        return labels
