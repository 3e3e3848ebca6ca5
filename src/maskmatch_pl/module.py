"""MaskMatchModule: the LightningModule that composes the method's parts.

The parts carry their behaviour (``teacher.py``, ``cutmix.py``, ``masking.py``, ``losses.py``,
``network.py`` for the BatchNorm policy, ``monitoring.py``); this module reads the knobs once
into them and wires them into a training step that follows our reading of the paper's abstract (the
paper itself was not available).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from .batch import check_batch
from .compat import group_flat_knobs, is_flat
from .config import Evaluation, Masking, Network, Optimization, PseudoLabeling, Views, Weights, plain
from .evaluation import EvalProtocol, iou_from_confusion, mean_iou, size_groups
from .experimental import Experimental
from .health import HealthWarnings, PseudoLabelHealth, remedy, warning_message
from .locality import LocalityScores
from .losses import LossWeights, SupervisedLoss, rampup_factor
from .masking import PatchMasking
from .monitoring import PseudoLabelMonitor
from .network import SegmentationNetwork, build_smp_model
from .optim import build_optimizer, poly_schedule, schedule_state_after
from .step import MaskMatchStep, StepOutput, TeacherOutput
from .targets import IGNORE_INDEX
from .teacher import Teacher
from .thresholds import PseudoLabelThreshold

PARTS_BEFORE_STEP = ("network.", "teacher.", "threshold.")  # checkpoint keys now under ``method.``
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"  # Lightning's
Group = TypeVar("Group")


def _group(cls: type[Group], value: Group | Mapping[str, Any]) -> Group:
    """A knob group from its dataclass or a dict of its fields (a checkpoint's hyperparameters)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected a {cls.__name__} or a dict of its fields, got {value!r}")


def _own_schedule(module: L.LightningModule) -> bool:
    """Whether ``module`` builds its optimiser and schedule with MaskMatchModule's configure_optimizers."""
    return type(module).configure_optimizers is MaskMatchModule.configure_optimizers


class MaskMatchModule(L.LightningModule):
    """Semi-supervised segmentation with MaskMatch (arXiv:2312.08631) and its baselines.

    One training step: supervised CE on the labeled batch; teacher pseudo-labels on the weak
    view from multi-scale ensembling; the student on the CutMixed strong view(s) and on a
    patch-masked copy, both against the same pseudo-labels with the reference consistency
    loss; optionally UniMatch's feature-perturbation stream. ``masking=None`` with one scale is
    FixMatch; unlabeled weights of 0 and no masking are the supervised baseline.

    Args:
        num_classes: Number of classes, required (the CLI links it from ``data.num_classes``).
        network: The smp network to build (arch, encoder, weights, padding, memory format).
        model: Any nn.Module mapping B x 3 x H x W images to B x C x H x W logits, used instead of ``network``'s
            smp model (in a config: ``{class_path: ..., init_args: ...}``).
        pseudo_labels: The teacher and its pseudo-labels (threshold, class-wise rule, scales, EMA).
        masking: MaskMatch's masked view; None (``null``) for FixMatch / UniMatch without it.
        weights: Weights of the labeled, strong-view and feature-perturbation losses.
        views: The student's views (UniMatch's two strong views, CutMix, BatchNorm policy).
        sup_loss: The labeled loss (cross-entropy, or OHEM for Cityscapes).
        optimization: The optimiser and its per-step LR schedule.
        evaluation: The evaluation protocol and the locality scores.
        class_names: Names for the per-class logs (the CLI links them from the data module).
        experimental: Research knobs kept to reproduce measured results (:mod:`maskmatch_pl.experimental`).

    Raises:
        ValueError: a knob out of range or two knobs that do not go together, named.

    Each group may be given as its dataclass or as a dict of its fields; flat knobs of checkpoints
    written before the groups are converted on load (:mod:`maskmatch_pl.compat`).
    """

    def __init__(
        self,
        num_classes: int,
        network: Network = Network(),
        model: nn.Module | None = None,
        pseudo_labels: PseudoLabeling = PseudoLabeling(),
        masking: Masking | None = Masking(),
        weights: Weights = Weights(),
        views: Views = Views(),
        sup_loss: SupervisedLoss = SupervisedLoss(),
        optimization: Optimization = Optimization(),
        evaluation: Evaluation = Evaluation(),
        class_names: list[str] | None = None,
        experimental: Experimental = Experimental(),
    ) -> None:
        super().__init__()
        network, pseudo_labels, weights, views = (
            _group(Network, network),
            _group(PseudoLabeling, pseudo_labels),
            _group(Weights, weights),
            _group(Views, views),
        )
        masking = None if masking is None else _group(Masking, masking)
        sup_loss, optimization = _group(SupervisedLoss, sup_loss), _group(Optimization, optimization)
        evaluation, experimental = _group(Evaluation, evaluation), _group(Experimental, experimental)
        groups = dict(
            network=network,
            pseudo_labels=pseudo_labels,
            masking=masking,
            weights=weights,
            views=views,
            sup_loss=sup_loss,
            optimization=optimization,
            evaluation=evaluation,
            experimental=experimental,
        )
        self.save_hyperparameters(
            {"num_classes": num_classes, "class_names": class_names}
            | {name: None if group is None else plain(asdict(group)) for name, group in groups.items()}
        )
        self.optimization = optimization
        if num_classes < 2:
            raise ValueError(
                f"num_classes is {num_classes}, but segmentation needs two classes at least: binary data has two, "
                "background (0) and foreground (1)"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        net = (
            model
            if model is not None
            else build_smp_model(
                network.arch, network.encoder_name, network.encoder_weights, num_classes, **network.model_kwargs
            )
        )
        student = SegmentationNetwork(
            net, network.pad_multiple, network.channels_last, network.encoder_trainable_blocks
        )
        self.method = MaskMatchStep(
            student,
            Teacher(
                student,
                pseudo_labels.teacher,
                pseudo_labels.ema_momentum,
                pseudo_labels.scales,
                pseudo_labels.flip,
                experimental.pseudo_label_fusion,
                experimental.pseudo_label_scale_reference,
            ),
            PseudoLabelThreshold(
                pseudo_labels.threshold_rule, pseudo_labels.threshold, num_classes, pseudo_labels.threshold_momentum
            ),
            LossWeights(
                weights.sup,
                weights.strong,
                0.0 if masking is None else masking.weight,
                weights.fp,
                weights.unsup_rampup_steps,
                experimental.masked_rampup_steps,
            ),
            PatchMasking(
                *((masking.patch_size, masking.ratio) if masking is not None else (32, 0.7)),
                experimental.mask_ratio_max,
                experimental.masked_view,
                experimental.masked_loss_on,
                "pixel" if masking is None else masking.space,
            ),
            sup_loss,
            cutmix_prob=views.cutmix_prob,
            strong_views=views.strong_views,
            fp_dropout=views.fp_dropout,
            teacher_pass=pseudo_labels.teacher_pass,
            student_forward=views.student_forward,
            norm_stats=views.norm_stats,
            masked_norm=experimental.masked_norm,
            strong_feature_dropout=views.strong_feature_dropout,
        )
        self.eval_protocol = EvalProtocol(
            evaluation.mode, evaluation.crop_size or 320, evaluation.scales, evaluation.flip
        )
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        # the confusion matrix summed over the set (synced under DDP); IoU and mIoU are computed from it
        self.val_iou = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.test_iou = self.val_iou.clone()
        self.val_iou_teacher = self.val_iou.clone()  # an EMA teacher is scored beside the student, as UniMatch V2
        self.val_locality = LocalityScores(num_classes, evaluation.boundary_width, evaluation.small_object_share)
        self.test_locality = self.val_locality.clone()
        scales = pseudo_labels.scales
        other_scales = [f"pseudo_scale_{s:g}" for s in scales if len(scales) > 1 and s != 1.0]
        self.pseudo_monitor = PseudoLabelMonitor(num_classes, ["pseudo", "pseudo_single_scale", *other_scales])
        self.health, self.health_every = PseudoLabelHealth(num_classes), pseudo_labels.health_every
        self.health_warnings = HealthWarnings()
        self._seed = 0
        self._restored_seed: int | None = None  # the run's seed, from a checkpoint being resumed
        self._resume_step: int | None = None  # the optimiser step a fit resumes from, whose LR schedule is rebuilt

    @property
    def network(self) -> SegmentationNetwork:
        """The student (``method.network``)."""
        return self.method.network

    @property
    def teacher(self) -> Teacher:
        """The teacher (``method.teacher``)."""
        return self.method.teacher

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
        if not self.method.weights.uses_unlabeled:
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
        if self.method.weights.unsup_rampup_steps and len(out.losses) > 1:
            ramp = rampup_factor(self.global_step, self.method.weights.unsup_rampup_steps)
            self.log("train/unsup_ramp", ramp, batch_size=batch_size)
        self.log("train/loss", out.total, prog_bar=True, batch_size=batch_size)
        return out.total

    def on_fit_start(self) -> None:
        self._seed = self._restored_seed if self._restored_seed is not None else torch.initial_seed()
        if self.hparams.network.get("encoder_trainable_blocks") is not None:  # frozen modules in eval on purpose
            warnings.filterwarnings("ignore", EVAL_MODE_WARNING)  # Lightning's, between on_fit_start and on_train_start

    def on_train_start(self) -> None:
        warnings.filters[:] = [f for f in warnings.filters if getattr(f[1], "pattern", None) != EVAL_MODE_WARNING]
        self.teacher.last_step = self.global_step  # a checkpoint's EMA weights already follow its step
        if self._resume_step is not None:
            self._rebuild_schedule(self._resume_step)
            self._resume_step = None
        loaders = self.trainer.train_dataloader
        loaders = getattr(loaders, "iterables", loaders)  # a CombinedLoader's dict of loaders
        if self.method.weights.uses_unlabeled and isinstance(loaders, dict) and "unlabeled" not in loaders:
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
        traceback; keep the run's seed for a resume; leave the LR schedule of a resumed fit to
        :meth:`_rebuild_schedule`."""
        self._restored_seed = checkpoint.get("maskmatch_seed")
        if self._restored_seed is not None:
            self._seed = self._restored_seed  # strategies that restore after setup call on_fit_start first
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        if fitting and checkpoint.get("lr_schedulers") and _own_schedule(self):
            # not restored as saved: a LambdaLR state (before 2026-12-07) or a schedule over another step count
            self._resume_step = int(checkpoint.get("global_step", 0))
            checkpoint["lr_schedulers"] = []
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(PARTS_BEFORE_STEP)]:
            state[f"method.{key}"] = state.pop(key)  # saved before the step had a module of its own
        ours = {f"method.threshold.{name}": value for name, value in self.method.threshold.state_dict().items()}
        for key in [k for k in state if k.startswith("method.threshold.") and k not in ours]:
            del state[key]  # adaptive-threshold state, loaded into a model that does not adapt
        for key, value in ours.items():
            state.setdefault(key, value)  # a checkpoint from before (or without) adaptive thresholds: start afresh
        theirs = checkpoint.get("hyper_parameters", {})
        theirs = group_flat_knobs(theirs) if is_flat(theirs) else theirs
        ours = {"num_classes": self.hparams.num_classes, **self.hparams.network}
        found = {"num_classes": theirs.get("num_classes"), **(theirs.get("network") or {})}
        different = [
            f"{key}: checkpoint {found[key]!r} vs this model {ours[key]!r}"
            for key in ("num_classes", "arch", "encoder_name")
            if found.get(key) is not None and found[key] != ours[key]
        ]
        if different:
            raise ValueError(
                f"the checkpoint was trained with another network or class count ({'; '.join(different)}): "
                f"load it with the config and data it was trained with"
            )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> MaskMatchModule:
        """Lightning's ``load_from_checkpoint``; a checkpoint written with the flat knobs of earlier
        versions has them converted into the groups (:func:`maskmatch_pl.compat.group_flat_knobs`)."""
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        hparams = checkpoint.get("hyper_parameters", {})
        if is_flat(hparams):
            grouped = group_flat_knobs({k: v for k, v in hparams.items() if not k.startswith("_")})
            kwargs = {**{k: v for k, v in grouped.items() if k != "model"}, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.optimization
        optimizer = build_optimizer(self.network, hp.optimizer, hp.lr, hp.lr_multi, hp.weight_decay, hp.momentum)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._schedule(optimizer), "interval": "step"}}

    def _rebuild_schedule(self, step: int) -> None:
        """Put the LR schedule and the optimiser's LRs where this fit's schedule is at optimiser ``step``.

        For a resume with the same settings this is the saved state to the bit (the same products of
        the same factors); a checkpoint of an earlier version (``LambdaLR``) or a fit with another
        ``max_steps``, ``warmup_steps`` or ``poly_power`` gets the new settings' LR at ``step``, as the
        earlier ``LambdaLR`` gave."""
        scheduler, optimizer = self.lr_schedulers(), self.optimizers(use_pl_optimizer=False)
        scheduler.load_state_dict(schedule_state_after(self._schedule, optimizer, step))
        saved, rebuilt = [group["lr"] for group in optimizer.param_groups], scheduler.get_last_lr()
        for group, lr in zip(optimizer.param_groups, rebuilt):
            group["lr"] = lr
        if any(abs(a - b) > 1e-9 * max(abs(a), abs(b)) for a, b in zip(saved, rebuilt)):
            rank_zero_info(
                f"LR schedule rebuilt for this fit at step {step} (warm-up {self.optimization.warmup_steps}, poly "
                f"{self.optimization.poly_power} over {int(self.trainer.estimated_stepping_batches)} steps): LR "
                f"{[f'{lr:.3g}' for lr in rebuilt]}, the checkpoint had {[f'{lr:.3g}' for lr in saved]}"
            )

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The poly LR schedule with warm-up over the fit's optimiser steps (:func:`~.optim.poly_schedule`)."""
        hp = self.optimization
        return poly_schedule(optimizer, int(self.trainer.estimated_stepping_batches), hp.poly_power, hp.warmup_steps)

    # ------------------------------------------------------------------ evaluation
    def _unpadded_probabilities(
        self, batch: dict[str, Any], whole: bool = False, network: nn.Module | None = None
    ) -> Iterator[tuple[list[int], int, int, torch.Tensor]]:
        """``(indices, height, width, probabilities)`` of ``network`` (default: the student) per group of
        equally sized images of the batch, each group predicted at its own size
        (:func:`~maskmatch_pl.evaluation.size_groups`): the result does not depend on the batch size. A
        failure names the images."""
        for indices, height, width in size_groups(batch):
            images = batch["image"][indices, :, :height, :width]
            try:
                probs = self.eval_protocol.probabilities(
                    self.network if network is None else network, images, whole=whole
                )
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
        if stage == "val" and self.teacher.ema is not None:
            for indices, height, width, probs in self._unpadded_probabilities(batch, network=self.teacher.ema):
                self.val_iou_teacher.update(
                    probs.argmax(1), self.eval_protocol.region(batch["mask"][indices, :height, :width])
                )
        return scored

    @torch.no_grad()
    def preview(self, images: torch.Tensor, seed: int = 0) -> dict[str, Any]:
        """What training would make of ``images`` (``B x 3 x H x W``, as stored, not rescaled): the
        teacher's ``pseudo_label`` (``B x H x W``, 255 where the confidence is below ``threshold``,
        a float: tau) and the ``masked`` view (``B x 3 x H x W``, patches drawn from ``seed``)."""
        stored_size = torch.ones(len(images), device=images.device)
        targets = self.teacher.pseudo_labels(images, view_scale=stored_size)
        tau = self.method.threshold.tau
        return {
            "pseudo_label": targets.pseudo_label.masked_fill(targets.confidence < tau, IGNORE_INDEX),
            "masked": self.method.masking(images, torch.Generator().manual_seed(seed)),
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
        whose problems are counted in the progress bar (``pl_vanished``, ``pl_takeover``) and warned
        about, one line per check, when :class:`~maskmatch_pl.health.HealthWarnings` reports them."""
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
        thresholds = self.method.threshold.thresholds()
        if isinstance(thresholds, torch.Tensor):
            logged.update({f"health/threshold_{name}": value for name, value in zip(self.class_names, thresholds)})
        self.log_dict({key: value.float() for key, value in logged.items() if not value.isnan()})
        for kind in ("vanished", "takeover", "no_confident"):
            count = sum(problem.kind == kind for problem in problems)
            self.log(f"pl_{kind}", float(count), prog_bar=True)
        planned = self.trainer.estimated_stepping_batches
        progress = self.global_step / planned if 0 < planned < float("inf") else 1.0
        if reported := self.health_warnings.check(problems, progress):
            rule = self.method.threshold.kind
            rank_zero_warn(warning_message(reported, self.global_step, remedy(rule, reported)))
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
        if self.teacher.ema is not None:
            self.log("val/mIoU_teacher", mean_iou(iou_from_confusion(self.val_iou_teacher.compute()).float()))
            self.val_iou_teacher.reset()
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
