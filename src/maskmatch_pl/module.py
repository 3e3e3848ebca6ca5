"""MaskMatchModule: the LightningModule that composes the method's parts."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from PIL import Image
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex

from .batch import check_batch
from .cutmix import cutmix_boxes, partner_indices, paste
from .data.presets import palette_for
from .evaluation import EvalMode, center_crop, predict_probabilities
from .losses import consistency_loss, rampup_factor, supervised_loss
from .masking import apply_patch_mask, random_patch_mask
from .multiscale import multiscale_probabilities, pseudo_labels
from .network import SegmentationNetwork, build_smp_model, frozen_norm_statistics
from .optim import build_optimizer, poly_schedule
from .teacher import ema_momentum, ema_update
from .visualize import panel

STRONG_KEYS = ("strong", "strong2")


class MaskMatchModule(L.LightningModule):
    """Semi-supervised segmentation with MaskMatch (arXiv:2312.08631) and its baselines.

    One training step: supervised CE on the labeled batch; teacher pseudo-labels on the weak
    view from multi-scale ensembling; the student on the CutMixed strong view(s) and on a
    patch-masked copy, both against the same pseudo-labels with the reference consistency
    loss; optionally UniMatch's feature-perturbation stream. Setting a weight to 0 switches
    its part off: ``masked_weight=0`` with one scale is FixMatch, all unlabeled weights 0 is
    the supervised baseline.

    Args:
        num_classes: number of classes (linked from ``data.num_classes`` in the CLI).
        arch, encoder_name, encoder_weights, model_kwargs: an smp model built with
            ``smp.create_model``; ``encoder_weights=None`` downloads nothing.
        model: any ``nn.Module`` mapping ``B x 3 x H x W`` to ``B x C x H x W`` logits, used
            instead of the smp model.
        pad_multiple: pad inputs to a multiple of this (default: the smp encoder's stride).
        sup_weight, strong_weight, masked_weight, fp_weight: loss weights; the total is their
            weighted sum. Defaults give FixMatch's ``(L_sup + L_strong) / 2`` plus
            ``L_masked / 2``. With two strong views ``L_strong`` is their mean.
        unsup_rampup_steps: the unlabeled weights (strong, masked, fp) grow linearly from 0 to
            their value over this many optimiser steps (0: from the start, as the reference).
            Guards a from-scratch or short run against pseudo-labels of an untrained teacher.
        conf_threshold: pseudo-label confidence threshold tau (``>=`` keeps a pixel).
        pseudo_label_scales, pseudo_label_flip: teacher multi-scale ensembling.
        mask_ratio, mask_patch_size, masked_view: the masked-modeling view: ``mask_ratio`` of
            the ``mask_patch_size`` patches of the (CutMixed) strong view, or of the weak view,
            set to 0; ``mask_ratio_max`` > ``mask_ratio`` draws the ratio per step from that range.
        cutmix_prob: probability that an unlabeled image gets a CutMix box.
        strong_views: 1 (FixMatch) or 2 (UniMatch); 2 needs ``strong2`` in unlabeled batches.
        fp_dropout: Dropout2d rate of the feature-perturbation stream.
        teacher: ``shared`` (the student's weights in eval mode, no grad) or ``ema``.
        ema_momentum: EMA teacher momentum, warmed up as ``min(1 - 1/(t+1), m)``.
        student_forward: ``sequential`` (default) runs the labeled batch, each strong view and
            the masked view in forwards of their own, so that each gets its own BatchNorm
            statistics; ``concat`` runs them in one forward (faster on a GPU, but BatchNorm
            then normalises the labeled images with statistics of strong and masked views:
            on the demo data this cost FixMatch 6 mIoU points, benchmarks/RESULTS.md).
        norm_stats: which student forwards update the BatchNorm running statistics (those used
            in eval mode, by the shared teacher and at validation): ``labeled`` (default; strong
            and masked views normalise with their own batch statistics but leave the running ones
            alone; needs ``student_forward=sequential``) or ``all`` (the reference, UniMatch; the
            FixMatch/UniMatch configs set it). With ``all`` the masked views' statistics collapsed
            MaskMatch on the demo data after ~800 steps (8.5 vs 40.2 % mIoU at 2,000 steps,
            benchmarks/RESULTS.md).
        sup_loss, ohem_thresh, ohem_min_kept: labeled loss, CE or OHEM (Cityscapes).
        optimizer, lr, lr_multi, weight_decay, momentum, poly_power: SGD (or AdamW), the
            decoder/head at ``lr * lr_multi``, poly decay per step.
        eval_mode, eval_crop_size, eval_scales, eval_flip: validation/test protocol.
        class_names: names for per-class IoU logs (linked from the data module).
        log_panels: at each validation, log a panel of this many val images: image, ground
            truth, prediction, teacher pseudo-label (black below ``conf_threshold``); to
            TensorBoard if it is the logger, else as PNG files under the log dir. 0: off.
    """

    def __init__(
        self,
        num_classes: int = 21,
        arch: str = "DeepLabV3Plus",
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        model: nn.Module | None = None,
        pad_multiple: int | None = None,
        sup_weight: float = 0.5,
        strong_weight: float = 0.5,
        masked_weight: float = 0.5,
        fp_weight: float = 0.0,
        unsup_rampup_steps: int = 0,
        conf_threshold: float = 0.95,
        pseudo_label_scales: Sequence[float] = (0.75, 1.0, 1.25),
        pseudo_label_flip: bool = False,
        mask_ratio: float = 0.7,
        mask_ratio_max: float | None = None,
        mask_patch_size: int = 32,
        masked_view: Literal["strong", "weak"] = "strong",
        cutmix_prob: float = 0.5,
        strong_views: Literal[1, 2] = 1,
        fp_dropout: float = 0.5,
        teacher: Literal["shared", "ema"] = "shared",
        ema_momentum: float = 0.996,
        student_forward: Literal["concat", "sequential"] = "sequential",
        norm_stats: Literal["all", "labeled"] = "labeled",
        sup_loss: Literal["ce", "ohem"] = "ce",
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 200_000,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 1e-3,
        lr_multi: float = 10.0,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        poly_power: float = 0.9,
        eval_mode: EvalMode = "original",
        eval_crop_size: int = 320,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        class_names: list[str] | None = None,
        log_panels: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if min(sup_weight, strong_weight, masked_weight, fp_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if norm_stats == "labeled" and student_forward == "concat":
            raise ValueError(
                "norm_stats='labeled' (the default) needs student_forward='sequential': concat shares one forward "
                "between the views; with concat set norm_stats='all'"
            )
        if unsup_rampup_steps < 0:
            raise ValueError(f"unsup_rampup_steps must be >= 0, got {unsup_rampup_steps}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        net = (
            model
            if model is not None
            else build_smp_model(arch, encoder_name, encoder_weights, num_classes, **(model_kwargs or {}))
        )
        self.network = SegmentationNetwork(net, pad_multiple)
        if fp_weight > 0:
            self.network.check_feature_perturbation()
        self.teacher_network: SegmentationNetwork | None = None
        if teacher == "ema":
            self.teacher_network = copy.deepcopy(self.network).requires_grad_(False).eval()
        self.val_iou = MulticlassJaccardIndex(num_classes, average="none", ignore_index=255, validate_args=False)
        self.test_iou = self.val_iou.clone()
        self._seed = 0

    # ------------------------------------------------------------------ helpers
    @property
    def uses_unlabeled(self) -> bool:
        hp = self.hparams
        return hp.strong_weight > 0 or hp.masked_weight > 0 or hp.fp_weight > 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Student logits ``B x C x H x W`` for normalised ``B x 3 x H x W`` images."""
        return self.network(images)

    def _rng(self) -> torch.Generator:
        """Generator for CutMix boxes and patch masks, re-seeded from (seed, rank, step) every
        step so that ranks differ and a resumed run draws exactly what an unbroken one does."""
        seed = hash((self._seed, self.global_rank, self.global_step)) & 0x7FFF_FFFF_FFFF_FFFF
        return torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def teacher_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Multi-scale (and flip) ensembled float32 probabilities of the teacher, in eval mode."""
        teacher = self.teacher_network if self.teacher_network is not None else self.network
        was_training = teacher.training
        teacher.eval()
        try:
            return multiscale_probabilities(
                teacher, images, self.hparams.pseudo_label_scales, self.hparams.pseudo_label_flip
            )
        finally:
            teacher.train(was_training and teacher is self.network)

    def student_logits(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student logits for each input batch, in one concatenated forward or one by one."""
        same_size = len({tuple(x.shape[1:]) for x in inputs}) == 1
        if self.hparams.student_forward == "concat" and same_size and len(inputs) > 1:
            return list(self.network(torch.cat(inputs)).split([len(x) for x in inputs]))
        if self.hparams.norm_stats == "labeled":  # only the labeled batch, inputs[0], updates them
            first = self.network(inputs[0])
            with frozen_norm_statistics(self.network):
                return [first, *[self.network(x) for x in inputs[1:]]]
        return [self.network(x) for x in inputs]

    def _cutmix_view(
        self, view: torch.Tensor, targets: tuple[torch.Tensor, ...], rng: torch.Generator
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Paste a box from the partner image into the view and into its target maps alike."""
        batch, _, height, width = view.shape
        boxes = cutmix_boxes(batch, height, width, self.hparams.cutmix_prob, generator=rng, device=view.device)
        partner = partner_indices(batch, view.device)
        return paste(view, view[partner], boxes), tuple(paste(t, t[partner], boxes) for t in targets)

    def _masked_copy(self, view: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        hp = self.hparams
        ratio = hp.mask_ratio
        if hp.mask_ratio_max is not None and hp.mask_ratio_max > ratio:
            ratio += (hp.mask_ratio_max - ratio) * torch.rand((), generator=rng).item()
        batch, _, height, width = view.shape
        visible = random_patch_mask(batch, height, width, hp.mask_patch_size, ratio, generator=rng, device=view.device)
        return apply_patch_mask(view, visible)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        labeled, unlabeled = batch["labeled"], batch.get("unlabeled")  # no unlabeled loader: supervised only
        check_batch(labeled, "labeled", label_maps=("mask",), num_classes=hp.num_classes, check_values=batch_idx == 0)
        if not self.uses_unlabeled:
            loss_sup = supervised_loss(self.network(labeled["image"]), labeled["mask"], **self._sup_loss_args())
            return self._log_losses({"sup": loss_sup}, batch_size=len(labeled["image"]))

        strong_keys = STRONG_KEYS[: hp.strong_views]
        check_batch(unlabeled, "unlabeled", images=("image", *strong_keys))
        weak = unlabeled["image"]
        ignore_mask = unlabeled.get("ignore_mask")
        if ignore_mask is None:
            ignore_mask = torch.zeros(weak.shape[0], *weak.shape[2:], dtype=torch.uint8, device=weak.device)
        rng = self._rng()

        # 1. teacher: multi-scale pseudo-labels on the weak view
        confidence, pseudo_label = pseudo_labels(self.teacher_probabilities(weak))
        weak_targets = (pseudo_label, confidence, ignore_mask)

        # 2. strong views with CutMix; the targets are mixed the same way
        strong_views, strong_targets = [], []
        for key in strong_keys:
            view, targets = self._cutmix_view(unlabeled[key], weak_targets, rng)
            strong_views.append(view)
            strong_targets.append(targets)

        # 3. masked modeling: a patch-masked copy of the strong (or weak) view, same targets
        use_masked = hp.masked_weight > 0
        if use_masked:
            source, masked_targets = (
                (strong_views[0], strong_targets[0]) if hp.masked_view == "strong" else (weak, weak_targets)
            )
            masked_view = self._masked_copy(source, rng)

        # 4. the student on all views
        use_strong = hp.strong_weight > 0
        inputs = [labeled["image"], *(strong_views if use_strong else []), *([masked_view] if use_masked else [])]
        logits = self.student_logits(inputs)
        losses = {"sup": supervised_loss(logits.pop(0), labeled["mask"], **self._sup_loss_args())}
        if use_strong:
            view_losses = [self._consistency(logits.pop(0), t) for t in strong_targets]
            losses["strong"] = torch.stack(view_losses).mean()
        if use_masked:
            losses["masked"] = self._consistency(logits.pop(0), masked_targets)
        if hp.fp_weight > 0:
            losses["fp"] = self._consistency(self.network.forward_perturbed(weak, hp.fp_dropout), weak_targets)

        _, conf, ignored = strong_targets[0]
        valid = ignored != 255
        self.log(
            "train/confident_fraction",
            ((conf >= hp.conf_threshold) & valid).sum() / valid.sum().clamp_min(1),
            batch_size=len(weak),
        )
        return self._log_losses(losses, batch_size=len(labeled["image"]))

    def _consistency(self, logits: torch.Tensor, targets: tuple[torch.Tensor, ...]) -> torch.Tensor:
        pseudo_label, confidence, ignore_mask = targets
        return consistency_loss(logits, pseudo_label, confidence, ignore_mask, self.hparams.conf_threshold)

    def _sup_loss_args(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.sup_loss == "ohem":
            return {"kind": "ohem", "thresh": hp.ohem_thresh, "min_kept": hp.ohem_min_kept}
        return {"kind": "ce"}

    def _log_losses(self, losses: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        ramp = rampup_factor(self.global_step, self.hparams.unsup_rampup_steps)
        weights = {
            "sup": self.hparams.sup_weight,
            "strong": self.hparams.strong_weight * ramp,
            "masked": self.hparams.masked_weight * ramp,
            "fp": self.hparams.fp_weight * ramp,
        }
        if self.hparams.unsup_rampup_steps and len(losses) > 1:
            self.log("train/unsup_ramp", ramp, batch_size=batch_size)
        total = sum(weights[name] * value for name, value in losses.items())
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def on_fit_start(self) -> None:
        self._seed = torch.initial_seed()

    def on_train_start(self) -> None:
        self._ema_step = self.global_step  # the optimiser step the EMA teacher last followed (resume-safe)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # once per optimiser step: under gradient accumulation the student only changes every
        # `accumulate_grad_batches` micro-batches, and the warm-up counts optimiser steps
        if self.teacher_network is not None and self.global_step > getattr(self, "_ema_step", -1):
            self._ema_step = self.global_step
            ema_update(
                self.teacher_network, self.network, ema_momentum(self.global_step - 1, self.hparams.ema_momentum)
            )

    def train(self, mode: bool = True) -> MaskMatchModule:
        super().train(mode)
        if self.teacher_network is not None:
            self.teacher_network.eval()  # the EMA teacher always predicts in eval mode
        return self

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(self.network, hp.optimizer, hp.lr, hp.lr_multi, hp.weight_decay, hp.momentum)
        scheduler = poly_schedule(optimizer, int(self.trainer.estimated_stepping_batches), hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, Any], batch_idx: int, metric: MulticlassJaccardIndex, stage: str) -> None:
        hp = self.hparams
        check_batch(batch, stage, label_maps=("mask",), num_classes=hp.num_classes, check_values=batch_idx == 0)
        probs = predict_probabilities(
            self.network, batch["image"], hp.eval_mode, hp.eval_crop_size, hp.eval_scales, hp.eval_flip
        )
        mask = center_crop(batch["mask"], hp.eval_crop_size) if hp.eval_mode == "center_crop" else batch["mask"]
        metric.update(probs.argmax(1), mask)
        if stage == "val" and batch_idx == 0 and hp.log_panels > 0 and not self.trainer.sanity_checking:
            self._log_panel(batch["image"][: hp.log_panels], batch["mask"][: hp.log_panels], probs[: hp.log_panels])

    @rank_zero_only
    def _log_panel(self, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor) -> None:
        """Image / ground truth / prediction / teacher pseudo-label, to the configured logger."""
        if self.hparams.eval_mode != "original" or probs.shape[-2:] != images.shape[-2:]:
            return
        confidence, pseudo_label = pseudo_labels(self.teacher_probabilities(images))
        pseudo_label = pseudo_label.masked_fill(confidence < self.hparams.conf_threshold, 255)
        palette = getattr(self.trainer.datamodule, "palette", None) or palette_for(self.hparams.num_classes)
        picture = panel(images, [masks, probs.argmax(1), pseudo_label], palette)
        logger = self.logger
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("val/panel", picture, self.global_step, dataformats="HWC")
        elif logger is not None and logger.log_dir is not None:
            folder = Path(logger.log_dir) / "panels"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"val_step{self.global_step:07d}.png")

    def _log_iou(self, metric: MulticlassJaccardIndex, stage: str) -> None:
        iou = metric.compute()
        names = self.hparams.class_names or [str(i) for i in range(len(iou))]
        self.log(f"{stage}/mIoU", iou.mean(), prog_bar=True)
        for name, value in zip(names, iou):
            self.log(f"{stage}/IoU_{name}", value)
        metric.reset()

    def on_validation_start(self) -> None:
        hp = self.hparams
        rank_zero_info(
            f"evaluation: eval_mode={hp.eval_mode}, crop {hp.eval_crop_size}, scales {list(hp.eval_scales)}, "
            f"flip {hp.eval_flip}; mIoU = sum of intersections / sum of unions over the whole set"
        )

    on_test_start = on_validation_start

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_iou, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_iou(self.val_iou, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_iou, "test")

    def on_test_epoch_end(self) -> None:
        self._log_iou(self.test_iou, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Class maps ``B x H x W`` (uint8 when C <= 256) plus the batch's ``name``/``size``."""
        hp = self.hparams
        check_batch(batch, "predict")
        mode = "original" if hp.eval_mode == "center_crop" else hp.eval_mode
        probs = predict_probabilities(
            self.network, batch["image"], mode, hp.eval_crop_size, hp.eval_scales, hp.eval_flip
        )
        return {"prediction": probs.argmax(1), "name": batch.get("name"), "size": batch.get("size")}
