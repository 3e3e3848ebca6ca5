"""The teacher: the network that turns weak views into pseudo-labels.

``shared``: the student's own weights, predicting in eval mode without gradient (FixMatch /
UniMatch). ``ema``: a copy whose weights follow the student's by an exponential moving
average (mean teacher), updated once per optimiser step and saved in checkpoints. Either way
the prediction is fused over input scales (and flips): MaskMatch's multi-scale pseudo-labels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .multiscale import Fusion, check_fusion, fuse_probabilities, image_scale_probabilities, scale_probabilities
from .network import frozen_norm_statistics
from .targets import PseudoLabels

TeacherKind = Literal["shared", "ema"]
ScaleReference = Literal["view", "image"]


def ema_momentum(step: int, momentum: float) -> float:
    """Momentum of the EMA teacher at optimiser ``step`` (0-based), with the usual warm-up
    ``min(1 - 1 / (step + 1), momentum)`` so that early teachers follow the student closely."""
    return min(1.0 - 1.0 / (step + 1), momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, in place.

    Floating-point parameters and buffers (e.g. BatchNorm running statistics) are averaged;
    integer buffers (``num_batches_tracked``) are copied from the student. Written here rather
    than with ``torch.optim.swa_utils.AveragedModel``: with ``use_buffers`` that one averages
    the integer buffers too and wraps the copy (``module.*``, ``n_averaged`` in checkpoints), and
    Lightning's ``WeightAveraging`` swaps the average into the student, which a teacher must not.
    """
    teacher_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        target = teacher_state[name]
        if target.dtype.is_floating_point:
            target.mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)
        else:
            target.copy_(value)


class Teacher(nn.Module):
    """Multi-scale pseudo-labels from the student's weights (``shared``) or an EMA copy (``ema``).

    Args:
        student: the network being trained (``B x 3 x H x W`` images to logits).
        kind: ``shared`` or ``ema``.
        momentum: EMA momentum, warmed up as :func:`ema_momentum`.
        scales, flip: input scales (and horizontal flips, averaged within each scale) whose softmax is fused.
        fusion: how the scales' probabilities combine: ``mean`` (our reading of the abstract) or ``geometric``
            (:func:`~maskmatch_pl.multiscale.fuse_probabilities`).
        reference: what the scales are relative to: ``view`` (the weak view as it comes, the
            reference implementation) or ``image`` (the image's stored size: a view the data
            pipeline rescaled by ``s`` is predicted at ``scale / s``, which needs the views'
            ``view_scale``; :func:`~maskmatch_pl.multiscale.image_scale_probabilities`).

    Only the EMA copy is a submodule (``teacher.ema.*`` in checkpoints): a shared teacher
    holds a reference to the student, not a second registration of its weights.
    """

    def __init__(
        self,
        student: nn.Module,
        kind: TeacherKind = "shared",
        momentum: float = 0.996,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        fusion: Fusion = "mean",
        reference: ScaleReference = "view",
    ) -> None:
        super().__init__()
        if kind not in ("shared", "ema"):
            raise ValueError(f"teacher must be 'shared' or 'ema', got {kind!r}")
        if not scales or min(scales) <= 0:
            raise ValueError(f"pseudo-label scales must be positive numbers, got {list(scales)}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1], got {momentum}")
        check_fusion(fusion)
        if reference not in ("view", "image"):
            raise ValueError(f"pseudo_label_scale_reference must be 'view' or 'image', got {reference!r}")
        self.kind, self.momentum, self.scales, self.flip, self.fusion = kind, momentum, tuple(scales), flip, fusion
        self.reference = reference
        self._student = (student,)  # a tuple: not registered as a submodule
        self.ema = copy.deepcopy(student).requires_grad_(False).eval() if kind == "ema" else None
        self.last_step = -1  # the optimiser step the EMA weights last followed

    @property
    def network(self) -> nn.Module:
        """The network that predicts: the EMA copy, or the student itself."""
        return self.ema if self.ema is not None else self._student[0]

    @torch.no_grad()
    def scale_probabilities(
        self,
        images: torch.Tensor,
        scales: Sequence[float] | None = None,
        view_scale: torch.Tensor | None = None,
        flip: bool | None = None,
    ) -> list[torch.Tensor]:
        """Float32 probabilities in eval mode, one ``B x C x H x W`` tensor per scale (flips averaged in
        unless ``flip`` overrides the teacher's own setting). With ``reference='image'`` the scales
        are divided by each view's ``view_scale`` (required)."""
        flip = self.flip if flip is None else flip
        network = self.network
        was_training = network.training
        network.eval()
        try:
            if self.reference == "image":
                if view_scale is None:
                    raise ValueError(
                        "pseudo_label_scale_reference='image' needs each weak view's rescale factor: 'view_scale' "
                        "in the unlabeled batch (maskmatch_pl's data module provides it)"
                    )
                return image_scale_probabilities(network, images, scales or self.scales, view_scale, flip)
            return scale_probabilities(network, images, scales or self.scales, flip)
        finally:
            network.train(was_training and self.ema is None)

    def probabilities(self, images: torch.Tensor, view_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The fused prediction: :meth:`scale_probabilities` combined by the teacher's ``fusion`` rule."""
        return self.fuse(self.scale_probabilities(images, view_scale=view_scale))

    def fuse(self, per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale probabilities combined by the teacher's ``fusion`` rule (:func:`fuse_probabilities`)."""
        return fuse_probabilities(per_scale, self.fusion)

    def pseudo_labels(
        self, images: torch.Tensor, ignore_mask: torch.Tensor | None = None, view_scale: torch.Tensor | None = None
    ) -> PseudoLabels:
        """Pseudo-labels and confidences of weak views, fused over the teacher's scales."""
        return PseudoLabels.from_probabilities(self.probabilities(images, view_scale), ignore_mask)

    @torch.no_grad()
    def joint_scale_probabilities(self, weak: torch.Tensor, weak_logits: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale probabilities for the reference's teacher pass (UniMatch ``fixmatch.py``):
        scale 1 is the detached softmax of ``weak_logits``, which the shared network computed in
        train mode together with the labeled batch; other scales (and flips) are train-mode
        passes without gradient that leave the BatchNorm running statistics alone."""
        if self.ema is not None:
            raise ValueError("the joint teacher pass needs teacher='shared': an EMA teacher has weights of its own")
        if self.reference != "view":
            raise ValueError("the joint teacher pass predicts the weak view as it comes: it needs reference='view'")
        network = self._student[0]
        others = [scale for scale in self.scales if scale != 1.0]
        with frozen_norm_statistics(network):
            extra = iter(scale_probabilities(network, weak, others, self.flip) if others else [])
            own = weak_logits.detach().float().softmax(dim=1)
            if self.flip:
                own = (own + network(weak.flip(-1)).flip(-1).float().softmax(dim=1)) / 2
        return [own if scale == 1.0 else next(extra) for scale in self.scales]

    def update(self, student: nn.Module, step: int) -> None:
        """Follow the student after optimiser ``step`` (1-based: the number of steps taken):
        once per step, whatever the number of micro-batches (gradient accumulation)."""
        if self.ema is not None and step > self.last_step:
            self.last_step = step
            ema_update(self.ema, student, ema_momentum(step - 1, self.momentum))

    def train(self, mode: bool = True) -> Teacher:
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()  # the EMA teacher always predicts in eval mode
        return self
