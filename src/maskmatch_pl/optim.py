"""Optimiser as the reference: SGD, a higher LR for the decoder/head, poly decay per step."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def parameter_groups(network: nn.Module, lr: float, lr_multi: float) -> list[dict]:
    """Encoder parameters at ``lr``, all others (decoder, head) at ``lr * lr_multi``.

    A network without an ``encoder`` attribute gets one group at ``lr``.
    """
    encoder = getattr(network, "encoder", None)
    trainable = [p for p in network.parameters() if p.requires_grad]
    if not isinstance(encoder, nn.Module):
        return [{"params": trainable, "lr": lr}]
    encoder_ids = {id(p) for p in encoder.parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) in encoder_ids], "lr": lr},
        {"params": [p for p in trainable if id(p) not in encoder_ids], "lr": lr * lr_multi},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    network: nn.Module,
    name: Literal["sgd", "adamw"] = "sgd",
    lr: float = 1e-3,
    lr_multi: float = 10.0,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) as the reference, or AdamW, over :func:`parameter_groups`."""
    groups = parameter_groups(network, lr, lr_multi)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def poly_factor(step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """LR factor at optimiser ``step`` (0-based): ``(1 - t / total_steps) ** power`` (the
    reference's poly decay), times a linear warm-up ``(t + 1) / warmup_steps`` over the first
    ``warmup_steps`` steps (0: none, as the reference)."""
    total_steps = max(int(total_steps), 1)
    decay = (1.0 - min(step, total_steps) / total_steps) ** power
    return decay * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else decay


def poly_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`poly_factor` as a scheduler stepped per iteration (``LambdaLR``: the warm-up is
    not in ``PolynomialLR``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_factor(step, total_steps, power, warmup_steps)
    )
