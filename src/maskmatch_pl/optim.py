"""Optimiser as the reference: SGD, a higher LR for the decoder/head, poly decay per step (torch's
schedulers: ``LinearLR`` warm-up times ``PolynomialLR``)."""

from __future__ import annotations

from collections.abc import Callable
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
) -> torch.optim.lr_scheduler.ChainedScheduler:
    """:func:`poly_factor` from torch's schedulers, stepped once per optimiser step: ``LinearLR``
    from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps (left out for 0 or 1),
    times ``PolynomialLR`` over ``total_steps``. Equal to :func:`poly_factor` up to float
    rounding (tests/test_optim.py)."""
    parts: list[torch.optim.lr_scheduler.LRScheduler] = []
    if warmup_steps > 1:
        parts.append(
            torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1
            )
        )
    parts.append(torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(int(total_steps), 1), power=power))
    return torch.optim.lr_scheduler.ChainedScheduler(parts, optimizer)


def schedule_state_after(
    build: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler],
    optimizer: torch.optim.Optimizer,
    steps: int,
) -> dict:
    """The state the schedule ``build(optimizer)`` has after ``steps`` optimiser steps, computed on
    a stand-in optimiser with ``optimizer``'s base LRs (``initial_lr``; nothing of ``optimizer``
    changes). A resume rebuilds its schedule this way (``MaskMatchModule._rebuild_schedule``); the
    cost grows with ``steps`` (each a scheduler step on one-element parameters)."""
    groups = [
        {"params": [torch.zeros(1, requires_grad=True)], "lr": group.get("initial_lr", group["lr"])}
        for group in optimizer.param_groups
    ]
    stand_in = torch.optim.SGD(groups, lr=groups[0]["lr"])
    schedule = build(stand_in)
    for _ in range(int(steps)):
        stand_in.step()  # no gradients: changes nothing, but the scheduler expects a step before its own
        schedule.step()
    return schedule.state_dict()
