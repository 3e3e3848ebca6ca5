"""Flat knobs of maskmatch-pl before the grouped ``MaskMatchModule`` (checkpoints and configs
written until 2026-12-07), and their place in the groups: :func:`group_flat_knobs` converts them.
Loading an old checkpoint converts its hyperparameters this way (``MaskMatchModule.load_from_checkpoint``
and the CLI's ``--ckpt_path``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FLAT_KNOBS: dict[str, tuple[str, str]] = {
    "arch": ("network", "arch"),
    "encoder_name": ("network", "encoder_name"),
    "encoder_weights": ("network", "encoder_weights"),
    "model_kwargs": ("network", "model_kwargs"),
    "pad_multiple": ("network", "pad_multiple"),
    "channels_last": ("network", "channels_last"),
    "conf_threshold": ("pseudo_labels", "threshold"),
    "pseudo_label_threshold": ("pseudo_labels", "threshold_rule"),
    "threshold_momentum": ("pseudo_labels", "threshold_momentum"),
    "pseudo_label_scales": ("pseudo_labels", "scales"),
    "pseudo_label_flip": ("pseudo_labels", "flip"),
    "teacher": ("pseudo_labels", "teacher"),
    "ema_momentum": ("pseudo_labels", "ema_momentum"),
    "teacher_pass": ("pseudo_labels", "teacher_pass"),
    "health_every": ("pseudo_labels", "health_every"),
    "masked_weight": ("masking", "weight"),
    "mask_ratio": ("masking", "ratio"),
    "mask_patch_size": ("masking", "patch_size"),
    "mask_space": ("masking", "space"),
    "sup_weight": ("weights", "sup"),
    "strong_weight": ("weights", "strong"),
    "fp_weight": ("weights", "fp"),
    "unsup_rampup_steps": ("weights", "unsup_rampup_steps"),
    "strong_views": ("views", "strong_views"),
    "cutmix_prob": ("views", "cutmix_prob"),
    "fp_dropout": ("views", "fp_dropout"),
    "strong_feature_dropout": ("views", "strong_feature_dropout"),
    "student_forward": ("views", "student_forward"),
    "norm_stats": ("views", "norm_stats"),
    "sup_loss": ("sup_loss", "kind"),
    "ohem_thresh": ("sup_loss", "ohem_thresh"),
    "ohem_min_kept": ("sup_loss", "ohem_min_kept"),
    "optimizer": ("optimization", "optimizer"),
    "lr": ("optimization", "lr"),
    "lr_multi": ("optimization", "lr_multi"),
    "weight_decay": ("optimization", "weight_decay"),
    "momentum": ("optimization", "momentum"),
    "poly_power": ("optimization", "poly_power"),
    "warmup_steps": ("optimization", "warmup_steps"),
    "eval_mode": ("evaluation", "mode"),
    "eval_crop_size": ("evaluation", "crop_size"),
    "eval_scales": ("evaluation", "scales"),
    "eval_flip": ("evaluation", "flip"),
    "boundary_width": ("evaluation", "boundary_width"),
    "small_object_share": ("evaluation", "small_object_share"),
    "pseudo_label_fusion": ("experimental", "pseudo_label_fusion"),
    "pseudo_label_scale_reference": ("experimental", "pseudo_label_scale_reference"),
    "mask_ratio_max": ("experimental", "mask_ratio_max"),
    "masked_view": ("experimental", "masked_view"),
    "masked_loss_on": ("experimental", "masked_loss_on"),
    "masked_norm": ("experimental", "masked_norm"),
    "masked_rampup_steps": ("experimental", "masked_rampup_steps"),
}
KEPT = ("num_classes", "class_names", "model")  # the same name in both forms


def is_flat(hparams: Mapping[str, Any]) -> bool:
    """Whether ``hparams`` use the flat names (an old checkpoint or config)."""
    return any(key in FLAT_KNOBS and not isinstance(hparams[key], Mapping) for key in hparams)


def group_flat_knobs(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The grouped form of flat ``hparams`` (``{"mask_ratio": 0.5}`` -> ``{"masking": {"ratio": 0.5}}``).

    ``masked_weight: 0`` becomes ``masking: None`` (no masked view). Raises ValueError naming any key
    that is neither a flat knob nor one of ``num_classes``, ``class_names``, ``model``.
    """
    groups = {group for group, _ in FLAT_KNOBS.values()} | {"sup_loss"}
    unknown = [key for key in hparams if key not in FLAT_KNOBS and key not in KEPT and key not in groups]
    if unknown:
        raise ValueError(f"not a maskmatch-pl knob: {', '.join(sorted(unknown))}")
    grouped: dict[str, Any] = {key: hparams[key] for key in KEPT if key in hparams}
    for key, value in hparams.items():
        if key in FLAT_KNOBS:
            group, name = FLAT_KNOBS[key]
            grouped.setdefault(group, {})[name] = list(value) if isinstance(value, tuple) else value
    # the flat versions knew one rule: a fixed tau (the grouped default, prior_lowered, came later)
    grouped.setdefault("pseudo_labels", {}).setdefault("threshold_rule", "fixed")
    masking = grouped.get("masking", {})
    if masking.get("weight", 0.5) == 0:
        grouped["masking"] = None
    return grouped


def module_from_flat_knobs(**knobs: Any) -> Any:
    """A ``MaskMatchModule`` from knobs in the flat spelling of earlier versions (``mask_ratio=0.5``);
    the benchmarks' variant tables are written this way. Raises ValueError for an unknown knob."""
    from .module import MaskMatchModule

    return MaskMatchModule(**group_flat_knobs(knobs))
