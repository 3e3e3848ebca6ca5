"""Teachers: the EMA (mean-teacher) weight update."""

from __future__ import annotations

import torch
from torch import nn


def ema_momentum(step: int, momentum: float) -> float:
    """Momentum of the EMA teacher at optimiser ``step`` (0-based), with the usual warm-up
    ``min(1 - 1 / (step + 1), momentum)`` so that early teachers follow the student closely."""
    return min(1.0 - 1.0 / (step + 1), momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, in place.

    Floating-point parameters and buffers (e.g. BatchNorm running statistics) are averaged;
    integer buffers (``num_batches_tracked``) are copied from the student.
    """
    teacher_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        target = teacher_state[name]
        if target.dtype.is_floating_point:
            target.mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)
        else:
            target.copy_(value)
