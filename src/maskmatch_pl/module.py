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

from .batch import check_batch
from .evaluation import EvalMode, EvalProtocol, iou_from_confusion, mean_iou, size_groups
from .health import PseudoLabelHealth
from .locality import LocalityScores
from .losses import LossWeights, SupervisedLoss, rampup_factor
from .masking import PatchMasking
from .monitoring import PseudoLabelMonitor
from .multiscale import Fusion
from .network import NormStats, SegmentationNetwork, build_smp_model
from .optim import build_optimizer, poly_schedule
from .step import MaskMatchStep, StepOutput, TeacherOutput
from .targets import IGNORE_INDEX
from .teacher import ScaleReference, Teacher
from .thresholds import PseudoLabelThreshold, ThresholdKind

PARTS_BEFORE_STEP = ("network.", "teacher.", "threshold.")  # checkpoint keys now under ``method.``


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
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if num_classes < 2:
            raise ValueError(
                f"num_classes is {num_classes}, but segmentation needs two classes at least: binary data has two, "
                "background (0) and foreground (1)"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if health_every < 0:
            raise ValueError(f"health_every must be >= 0, got {health_every}")
        net = (
            model
            if model is not None
            else build_smp_model(arch, encoder_name, encoder_weights, num_classes, **(model_kwargs or {}))
        )
        network = SegmentationNetwork(net, pad_multiple, channels_last)
        self.method = MaskMatchStep(
            network,
            Teacher(
                network,
                teacher,
                ema_momentum,
                pseudo_label_scales,
                pseudo_label_flip,
                pseudo_label_fusion,
                pseudo_label_scale_reference,
            ),
            PseudoLabelThreshold(pseudo_label_threshold, conf_threshold, num_classes, threshold_momentum),
            LossWeights(sup_weight, strong_weight, masked_weight, fp_weight, unsup_rampup_steps, masked_rampup_steps),
            PatchMasking(mask_patch_size, mask_ratio, mask_ratio_max, masked_view, masked_loss_on, mask_space),
            SupervisedLoss(sup_loss, ohem_thresh, ohem_min_kept),
            cutmix_prob=cutmix_prob,
            strong_views=strong_views,
            fp_dropout=fp_dropout,
            teacher_pass=teacher_pass,
            student_forward=student_forward,
            norm_stats=norm_stats,
            masked_norm=masked_norm,
            strong_feature_dropout=strong_feature_dropout,
        )
        self.eval_protocol = EvalProtocol(eval_mode, eval_crop_size or 320, tuple(eval_scales), eval_flip)
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        # the confusion matrix summed over the set (synced under DDP); IoU and mIoU are computed from it
        self.val_iou = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.test_iou = self.val_iou.clone()
        self.val_locality = LocalityScores(num_classes, boundary_width, small_object_share)
        self.test_locality = self.val_locality.clone()
        other_scales = [f"pseudo_scale_{s:g}" for s in pseudo_label_scales if len(pseudo_label_scales) > 1 and s != 1.0]
        self.pseudo_monitor = PseudoLabelMonitor(num_classes, ["pseudo", "pseudo_single_scale", *other_scales])
        self.health, self.health_every = PseudoLabelHealth(num_classes), health_every
        self._seed = 0
        self._restored_seed: int | None = None  # the run's seed, from a checkpoint being resumed

    @property
    def network(self) -> SegmentationNetwork:
        """The student (``method.network``)."""
        return self.method.network

    @property
    def teacher(self) -> Teacher:
        """The teacher (``method.teacher``)."""
        return self.method.teacher

    @property
    def threshold(self) -> PseudoLabelThreshold:
        """The confidence threshold (``method.threshold``)."""
        return self.method.threshold

    @property
    def weights(self) -> LossWeights:
        """The loss weights (``method.weights``)."""
        return self.method.weights

    @property
    def masking(self) -> PatchMasking:
        """The masked view's settings (``method.masking``)."""
        return self.method.masking

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
        """One training step (:class:`~maskmatch_pl.step.MaskMatchStep`), then the diagnostics that read it."""
        labeled, unlabeled = self._checked(batch, batch_idx)
        monitored = unlabeled is not None and "monitor_mask" in unlabeled
        flip_pair = bool(self.health_every) and self.global_step % self.health_every == 0
        out = self.method(
            labeled,
            unlabeled,
            step=self.global_step,
            generator=self._rng(),
            single_scale=monitored,
            flip_pair=flip_pair,
        )
        if out.teacher is not None:
            if monitored:
                self._monitor(out.teacher, unlabeled)
            self.health.update(labeled["mask"], out.teacher.pseudo_labels, out.teacher.threshold, out.teacher.flip_pair)
        return self._log_step(out, len(labeled["image"]))

    def _checked(self, batch: dict[str, Any], batch_idx: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        labeled = batch["labeled"]
        check_batch(
            labeled, "labeled", label_maps=("mask",), num_classes=self.hparams.num_classes, check_values=batch_idx == 0
        )
        if not self.weights.uses_unlabeled:
            return labeled, None
        unlabeled = batch.get("unlabeled")
        check_batch(unlabeled, "unlabeled", images=("image", *self.method.strong_keys))
        return labeled, unlabeled

    def _rng(self) -> torch.Generator:
        """Generator for CutMix boxes and patch masks, re-seeded from (seed, rank, step) every
        step so that ranks differ and a resumed run draws exactly what an unbroken one does."""
        seed = hash((self._seed, self.global_rank, self.global_step)) & 0x7FFF_FFFF_FFFF_FFFF
        return torch.Generator().manual_seed(seed)

    def _monitor(self, teacher: TeacherOutput, unlabeled: dict[str, Any]) -> None:
        """Score the fused pseudo-labels, scale 1 alone and each other scale against the true masks
        the unlabeled batch carries for measuring only (no loss reads them)."""
        scored = {"pseudo": teacher.probabilities, "pseudo_single_scale": teacher.scale_probabilities[1.0]}
        scales = self.teacher.scales
        others = [s for s in scales if len(scales) > 1 and s != 1.0]
        scored.update({f"pseudo_scale_{s:g}": teacher.scale_probabilities[s] for s in others})
        for name, probs in scored.items():
            self.pseudo_monitor.update(
                name, probs, unlabeled["monitor_mask"], teacher.threshold, unlabeled.get("ignore_mask")
            )

    def _log_step(self, out: StepOutput, batch_size: int) -> torch.Tensor:
        """Log each loss term, the total, the unlabeled ramp and the share of confident pixels in the
        first strong view's targets; return the total."""
        fraction = out.confident_fraction
        if fraction is not None:
            self.log("train/confident_fraction", fraction, batch_size=len(out.strong_pseudo_labels.confidence))
        for name, value in out.losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        if self.weights.unsup_rampup_steps and len(out.losses) > 1:
            ramp = rampup_factor(self.global_step, self.weights.unsup_rampup_steps)
            self.log("train/unsup_ramp", ramp, batch_size=batch_size)
        self.log("train/loss", out.total, prog_bar=True, batch_size=batch_size)
        return out.total

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
        self.method.update_teacher(self.global_step + 1)  # Lightning counts the step after this hook

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["maskmatch_seed"] = self._seed  # CutMix, masks and dropout follow it: a resume keeps it

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another network or class count with a message, not a size-mismatch
        traceback; keep the run's seed for a resume."""
        self._restored_seed = checkpoint.get("maskmatch_seed")
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(PARTS_BEFORE_STEP)]:
            state[f"method.{key}"] = state.pop(key)  # saved before the step had a module of its own
        ours = {f"method.threshold.{name}": value for name, value in self.threshold.state_dict().items()}
        for key in [k for k in state if k.startswith("method.threshold.") and k not in ours]:
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
    ) -> dict[str, list[torch.Tensor]]:
        """Score a val / test batch; return what was scored, per image in batch order: the evaluation
        protocol's region of each ``image`` (``3 x h x w``) and ``mask``, and the ``prediction`` (``h x w``)."""
        check_batch(
            batch, stage, label_maps=("mask",), num_classes=self.hparams.num_classes, check_values=batch_idx == 0
        )
        count = len(batch["image"])
        scored: dict[str, list[Any]] = {key: [None] * count for key in ("image", "mask", "prediction")}
        for indices, height, width, probs in self._unpadded_probabilities(batch):
            masks = batch["mask"][indices, :height, :width]  # the images' own masks, then the protocol's region
            prediction, target = probs.argmax(1), self.eval_protocol.region(masks)
            metric.update(prediction, target)
            locality.update(prediction, target)
            images = self.eval_protocol.region(batch["image"][indices, :, :height, :width])
            for row, index in enumerate(indices):
                scored["image"][index], scored["mask"][index] = images[row], target[row]
                scored["prediction"][index] = prediction[row]
        return scored

    @torch.no_grad()
    def preview(self, images: torch.Tensor, seed: int = 0) -> dict[str, Any]:
        """What training would make of ``images`` (``B x 3 x H x W``, as stored, not rescaled): the
        teacher's ``pseudo_label`` (``B x H x W``, 255 where the confidence is below ``threshold``,
        a float: tau) and the ``masked`` view (``B x 3 x H x W``, patches drawn from ``seed``)."""
        stored_size = torch.ones(len(images), device=images.device)
        targets = self.teacher.pseudo_labels(images, view_scale=stored_size)
        tau = self.threshold.tau
        return {
            "pseudo_label": targets.pseudo_label.masked_fill(targets.confidence < tau, IGNORE_INDEX),
            "masked": self.masking(images, torch.Generator().manual_seed(seed)),
            "threshold": tau,
        }

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

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, list[torch.Tensor]]:
        """Score the batch; return its images, masks and predictions as scored (:class:`~maskmatch_pl.ValPanels`
        draws them)."""
        return self._evaluate(batch, batch_idx, self.val_iou, self.val_locality, "val")

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
