"""The grouped knobs of :class:`~maskmatch_pl.MaskMatchModule`, one frozen dataclass per part.

Each group is what a config's ``model:`` section nests (``model.masking.ratio``), checked when it is
built by the checks of the method's components it becomes (``PseudoLabelThreshold``, ``PatchMasking``,
``LossWeights``, ...), so each rule lives in one place and its error names the grouped knob. Options kept only to
reproduce measured results live in :mod:`maskmatch_pl.experimental`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .cutmix import check_cutmix_prob
from .evaluation import EvalMode
from .locality import check_locality_options
from .losses import LossWeights
from .masking import PatchMasking
from .network import NormStats
from .thresholds import ThresholdKind, check_threshold_options


def plain(value: Any) -> Any:
    """Knob values as plain Python: jsonargparse namespaces as dicts, tuples as lists (recursively), so that
    saved hyperparameters read back as written and values from a config and a checkpoint compare equal."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return list(value) if isinstance(value, tuple) else value


def _at_least(value: float, low: float, name: str) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _in_unit(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Network:
    """The student network, built with ``smp.create_model`` unless ``model`` is given.

    Args:
        arch: smp architecture (DeepLabV3Plus, FPN, Unet, ...; DPT takes a timm ViT of any patch size).
        encoder_name: smp or timm encoder (resnet50, tu-tf_efficientnet_lite0, tu-vit_small_patch14_dinov2...).
        encoder_weights: null (random init), packaged (ImageNet weights inside a pip package) or imagenet (downloads).
        model_kwargs: more keyword arguments for smp.create_model (decoder_channels, ...).
        pad_multiple: pad inputs to a multiple of this many pixels (default: the encoder's output stride).
        channels_last: keep weights and images in the channels-last memory format (same model, often faster).
        encoder_trainable_blocks: null (encoder trained), 0 (frozen: no gradient or optimiser state), N (ViT's last N).
    """

    arch: str = "DeepLabV3Plus"
    encoder_name: str = "resnet50"
    encoder_weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pad_multiple: int | None = None
    channels_last: bool = False
    encoder_trainable_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.pad_multiple is not None:
            _at_least(self.pad_multiple, 1, "network.pad_multiple")
        if self.encoder_trainable_blocks is not None:
            _at_least(self.encoder_trainable_blocks, 0, "network.encoder_trainable_blocks")


@dataclass(frozen=True)
class PseudoLabeling:
    """The teacher and its pseudo-labels on the weak view.

    Args:
        threshold: confidence a pseudo-label needs to reach a loss (tau; 0 for Cityscapes, as UniMatch).
        threshold_rule: prior_lowered (tau, lowered for the classes the teacher predicts under their labeled
            share; the default, benchmarks/RESULTS.md "Threshold rules"), fixed (tau for every class, the
            reference's), freematch or freematch_prior (class-wise, arXiv:2205.07246).
        threshold_momentum: EMA momentum of the class-wise thresholds.
        scales: input scales whose teacher softmax is averaged (MaskMatch's multi-scale ensembling).
        flip: also average the teacher's prediction of the flipped weak view.
        teacher: shared (the student's weights, eval mode, no gradient) or ema (a moving average, saved).
        ema_momentum: momentum of the EMA teacher, warmed up as min(1 - 1/(t+1), m).
        teacher_pass: eval (eval-mode teacher) or joint (the reference's: shares the labeled train-mode forward).
        health_every: every this many steps the teacher also sees the flipped view for the health monitor (0: never).
    """

    threshold: float = 0.95
    threshold_rule: ThresholdKind = "prior_lowered"
    threshold_momentum: float = 0.99
    scales: Sequence[float] = (0.75, 1.0, 1.25)
    flip: bool = False
    teacher: Literal["shared", "ema"] = "shared"
    ema_momentum: float = 0.996
    teacher_pass: Literal["eval", "joint"] = "eval"
    health_every: int = 10

    def __post_init__(self) -> None:
        check_threshold_options(self.threshold_rule, self.threshold, self.threshold_momentum)
        _at_least(self.health_every, 0, "pseudo_labels.health_every")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))


@dataclass(frozen=True)
class Masking:
    """MaskMatch's masked view (null in a config: no masked view, FixMatch or UniMatch).

    Args:
        weight: weight of the masked-view consistency loss.
        ratio: share of the patches hidden.
        patch_size: side of a square patch, in pixels of the training crop (a multiple of the ViT patch in token space).
        space: pixel (patches painted the mean colour) or token (ViT: hidden patches never enter the encoder).
    """

    weight: float = 0.5
    ratio: float = 0.7
    patch_size: int = 32
    space: Literal["pixel", "token"] = "pixel"

    def __post_init__(self) -> None:
        LossWeights(masked=self.weight)  # the components' own checks, which name these knobs
        PatchMasking(patch_size=self.patch_size, ratio=self.ratio, space=self.space)


@dataclass(frozen=True)
class Weights:
    """Weights of the labeled and the unlabeled losses (0 switches a term off and skips its compute).

    Args:
        sup: weight of the labeled loss.
        strong: weight of the strong-view consistency loss (the mean over strong views).
        fp: weight of UniMatch's feature-perturbation loss.
        unsup_rampup_steps: the unlabeled weights grow linearly from 0 over this many optimiser steps.
    """

    sup: float = 0.5
    strong: float = 0.5
    fp: float = 0.0
    unsup_rampup_steps: int = 0

    def __post_init__(self) -> None:
        LossWeights(self.sup, self.strong, fp=self.fp, unsup_rampup_steps=self.unsup_rampup_steps)


@dataclass(frozen=True)
class Views:
    """The student's views and how they are forwarded.

    Args:
        strong_views: 1 (FixMatch) or 2 (UniMatch; the data module follows).
        cutmix_prob: probability that an unlabeled image gets a CutMix box from its partner.
        fp_dropout: Dropout2d rate of UniMatch's feature-perturbation stream.
        strong_feature_dropout: none or complementary (UniMatch V2 Complementary Dropout: two strong views, a ViT).
        student_forward: sequential (one forward per view), batched (one forward, same result) or concat (shared BN).
        norm_stats: which student forwards update the BatchNorm running statistics: labeled, all (reference), unmasked.
    """

    strong_views: Literal[1, 2] = 1
    cutmix_prob: float = 0.5
    fp_dropout: float = 0.5
    strong_feature_dropout: Literal["none", "complementary"] = "none"
    student_forward: Literal["sequential", "batched", "concat"] = "sequential"
    norm_stats: NormStats = "labeled"

    def __post_init__(self) -> None:
        check_cutmix_prob(self.cutmix_prob)
        _in_unit(self.fp_dropout, "views.fp_dropout")


@dataclass(frozen=True)
class Optimization:
    """The optimiser and its per-step schedule (the reference: SGD, decoder and head at lr x lr_multi, poly decay).

    Args:
        optimizer: sgd (the reference) or adamw.
        lr: learning rate of the encoder.
        lr_multi: the decoder and head train at lr x lr_multi.
        weight_decay: weight decay (decoupled for AdamW).
        momentum: SGD momentum.
        poly_power: power of the poly LR decay, stepped per optimiser step.
        warmup_steps: linear LR warm-up over this many optimiser steps before the decay (0: none).
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    lr_multi: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _at_least(self.warmup_steps, 0, "optimization.warmup_steps")
        if self.lr <= 0:
            raise ValueError(f"optimization.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Evaluation:
    """The validation / test / predict protocol and the locality scores.

    Args:
        mode: original (whole image), center_crop or sliding_window.
        crop_size: crop or window of the protocol (the CLI's default: data.crop_size; 320 in Python).
        scales: test-time scales whose softmax is averaged.
        flip: test-time horizontal flip.
        boundary_width: half-width in pixels of the band around class edges scored by val/boundary_mIoU.
        small_object_share: a ground-truth component below this share of its image is scored by val/small_object_mIoU.
    """

    mode: EvalMode = "original"
    crop_size: int | None = None
    scales: Sequence[float] = (1.0,)
    flip: bool = False
    boundary_width: int = 3
    small_object_share: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        check_locality_options(self.boundary_width, self.small_object_share)
