"""The one adapter between the method and a segmentation network.

Everything smp-specific lives here: building a model by name, padding inputs to the
encoder's output stride, and the encoder/decoder split used for feature perturbation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


def build_smp_model(
    arch: str, encoder_name: str, encoder_weights: str | None, num_classes: int, **kwargs: Any
) -> nn.Module:
    """Any segmentation-models-pytorch architecture by name (``smp.create_model``).

    ``encoder_weights="packaged"`` loads ImageNet weights shipped in a pip package (see
    :mod:`maskmatch_pl.pretrained`); ``None`` is random init; other names download from the hub.
    """
    import segmentation_models_pytorch as smp

    if arch.lower() == "dpt":  # smp's DPT cannot take a patch-14 encoder (DINOv2): the same parts, any patch
        from .vit import PatchDPT

        return PatchDPT(encoder_name, num_classes, encoder_weights, **kwargs)
    packaged = encoder_weights == "packaged"
    model = smp.create_model(
        arch=arch,
        encoder_name=encoder_name,
        encoder_weights=None if packaged else encoder_weights,
        classes=num_classes,
        **kwargs,
    )
    if packaged:
        from .pretrained import load_packaged_encoder_weights

        load_packaged_encoder_weights(model, encoder_name)
    return model


def _norm_layers(net: nn.Module, tracking_only: bool = True) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``net`` (only those with running statistics if ``tracking_only``)."""
    return [
        m
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.track_running_stats or not tracking_only)
    ]


@contextmanager
def frozen_norm_statistics(net: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers still normalise with the batch's statistics (train
    mode) but leave their running statistics, used in eval mode, as they are."""
    norms = _norm_layers(net)
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]  # the count drives momentum=None
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(count)


@contextmanager
def running_norm_statistics(net: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers that keep running statistics normalise with them (as in
    eval mode) and leave them as they are, while every other layer (dropout) stays in its mode;
    layers without running statistics keep using the batch's."""
    norms = [m for m in _norm_layers(net) if m.training]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()


@contextmanager
def per_view_norm_statistics(net: nn.Module, sizes: Sequence[int], update_stats: Sequence[bool]) -> Iterator[None]:
    """Within the block, a train-mode forward of ``sum(sizes)`` images normalises each
    consecutive chunk of ``sizes`` images with that chunk's own batch statistics, and only the
    chunks flagged in ``update_stats`` move the running statistics: the BatchNorm result of one
    forward per chunk, while every other layer runs on the whole batch at once."""
    total, sizes, flags = sum(sizes), list(sizes), list(update_stats)

    def chunked(norm: nn.modules.batchnorm._BatchNorm):  # noqa: ANN202 - a forward
        original = norm.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not norm.training or x.shape[0] != total:
                return original(x)
            outputs = []
            for chunk, flag in zip(x.split(sizes), flags):
                with nullcontext() if flag else frozen_norm_statistics(norm):
                    outputs.append(original(chunk))
            return torch.cat(outputs)

        return forward

    norms = _norm_layers(net, tracking_only=False)  # layers without running statistics normalise per view too
    saved = [norm.__dict__.get("forward") for norm in norms]
    for norm in norms:
        norm.forward = chunked(norm)
    try:
        yield
    finally:
        for norm, forward in zip(norms, saved):
            del norm.forward
            if forward is not None:
                norm.forward = forward


NormStats = Literal["all", "labeled", "unmasked"]


def updates_running_stats(policy: NormStats, view: str) -> bool:
    """Whether the train-mode forward of ``view`` (``labeled``, ``strong``, ``strong2``, ``masked``, ``fp``, or
    ``weak`` in the joint teacher pass) moves the BatchNorm running statistics under ``policy``: ``all`` every
    view (the reference), ``unmasked`` every view but the masked one, ``labeled`` the labeled batch alone."""
    if policy not in ("all", "labeled", "unmasked"):
        raise ValueError(f"views.norm_stats must be 'all', 'labeled' or 'unmasked', got {policy!r}")
    return policy == "all" or view == "labeled" or (policy == "unmasked" and view != "masked")


def forward_views(
    network: nn.Module,
    views: Sequence[torch.Tensor],
    concat: bool = False,
    update_stats: Sequence[bool] | None = None,
    per_view_stats: bool = False,
) -> list[torch.Tensor]:
    """Logits for each batch of ``views``: the BatchNorm policy of the student forwards.

    ``concat``: all views in one forward; BatchNorm then normalises them with shared statistics,
    unless ``per_view_stats``, which gives each view its own (the result of one forward per
    view, with the other layers batched: :func:`per_view_norm_statistics`). Otherwise one
    forward per view, each with its own batch statistics. ``update_stats[i]`` False keeps the
    i-th view out of the running statistics (those used in eval mode) when each view has its
    own statistics; default: every view updates them.
    """
    views = list(views)
    flags = list(update_stats) if update_stats is not None else [True] * len(views)
    if concat and len(views) > 1 and len({tuple(v.shape[1:]) for v in views}) == 1:
        sizes = [len(v) for v in views]
        context = per_view_norm_statistics(network, sizes, flags) if per_view_stats else nullcontext()
        with context:
            return list(network(torch.cat(views)).split(sizes))
    return [network(v) if flag else frozen_forward(network, v) for v, flag in zip(views, flags)]


def frozen_forward(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``network(images)`` with the BatchNorm running statistics left alone."""
    with frozen_norm_statistics(network):
        return network(images)


def maybe_frozen(network: nn.Module, freeze: bool):  # noqa: ANN201 - a context manager
    """:func:`frozen_norm_statistics` when ``freeze``, else a context that changes nothing."""
    return frozen_norm_statistics(network) if freeze else nullcontext()


def _encoder_stride(net: nn.Module) -> int:
    """The output stride of an smp encoder (its deepest feature map is the input / this); 1 if unknown."""
    stride = getattr(getattr(net, "encoder", None), "output_stride", None)
    return stride if isinstance(stride, int) and stride > 0 else 1


def _output_stride(net: nn.Module) -> int:
    """What inputs must be a multiple of: the encoder's stride, unless the network takes any size."""
    return _encoder_stride(net) if getattr(net, "requires_divisible_input_shape", True) else 1


def freeze_encoder(net: nn.Module, trainable_blocks: int | None) -> list[nn.Module]:
    """Stop gradients into ``net.encoder`` but for its last ``trainable_blocks`` blocks; return the frozen modules.

    ``None``: the whole encoder trains. ``0``: none of it (any encoder). ``N > 0``: the last ``N`` of a timm ViT's
    ``blocks`` and its final ``norm`` (which the DPT head applies to every block it reads) train, the patch and
    position embeddings and the earlier blocks do not. Frozen parameters get
    ``requires_grad=False``, so no optimiser holds them or their state, and autograd records nothing for a frozen
    prefix of the network (its activations are not kept); the frozen modules stay in eval mode
    (:class:`SegmentationNetwork`), so that BatchNorm running statistics in a frozen CNN encoder do not move either.

    Raises:
        ValueError: ``net`` has no ``encoder``; ``N > 0`` on an encoder without ``blocks`` (a CNN: 0 or null);
            ``N`` negative or above the number of blocks.
    """
    if trainable_blocks is None:
        return []
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"network.encoder_trainable_blocks={trainable_blocks} needs a network with an `encoder` submodule "
            f"(smp models, DPT); {type(net).__name__} has none: freeze your own layers with requires_grad_(False)"
        )
    blocks = getattr(encoder, "blocks", None)
    if trainable_blocks and not isinstance(blocks, nn.Sequential | nn.ModuleList):
        raise ValueError(
            f"network.encoder_trainable_blocks={trainable_blocks}: the last-N-blocks setting needs a ViT encoder "
            f"(timm's `blocks`); {type(encoder).__name__} has none: use 0 (frozen) or null (trained)"
        )
    if trainable_blocks < 0 or (blocks is not None and trainable_blocks > len(blocks)):
        raise ValueError(
            f"network.encoder_trainable_blocks must be null or 0..{len(blocks) if blocks is not None else 0}, "
            f"got {trainable_blocks}"
        )
    encoder.requires_grad_(False)
    if trainable_blocks:
        norm = getattr(encoder, "norm", None)
        trained = [*blocks[len(blocks) - trainable_blocks :], *([norm] if isinstance(norm, nn.Module) else [])]
        for module in trained:
            module.requires_grad_(True)
        return [m for m in encoder.children() if m is not blocks and m is not norm] + list(
            blocks[: len(blocks) - trainable_blocks]
        )
    return [encoder]


class SegmentationNetwork(nn.Module):
    """Wraps a network that maps ``B x 3 x H x W`` images to ``B x C x H x W`` logits.

    Inputs whose size the network cannot take are padded on the bottom/right with zeros (the
    mean colour after normalisation) to a multiple of ``pad_multiple`` (and never down to a 1 x 1
    deepest feature map, :meth:`padded_size`) and the logits are cropped back, so any input size
    works. ``pad_multiple`` defaults to an smp encoder's output stride, and to 1 for other networks.

    ``encoder_trainable_blocks`` freezes the encoder, or all but its last blocks (:func:`freeze_encoder`).

    With ``channels_last`` the weights are stored and the images fed in the channels-last
    memory format (``B x H x W x C`` in memory), which oneDNN's CPU convolutions and tensor
    cores run faster; the values computed are the same up to floating-point summation order.
    """

    def __init__(
        self,
        net: nn.Module,
        pad_multiple: int | None = None,
        channels_last: bool = False,
        encoder_trainable_blocks: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        own_multiple = getattr(net, "input_multiple", None)  # a network that states what it needs (PatchDPT)
        self.pad_multiple = pad_multiple or own_multiple or _output_stride(net)
        self.feature_stride = own_multiple or _encoder_stride(net)
        self.channels_last = channels_last
        self._frozen = tuple(freeze_encoder(net, encoder_trainable_blocks))  # a tuple: not registered twice
        if self._frozen:
            self.train(self.training)

    def train(self, mode: bool = True) -> SegmentationNetwork:
        """``nn.Module.train``, but a frozen part of the encoder (:func:`freeze_encoder`) stays in eval mode."""
        super().train(mode)
        for module in self._frozen if hasattr(self, "_frozen") else ():
            module.eval()
        return self

    @property
    def encoder(self) -> nn.Module | None:
        return getattr(self.net, "encoder", None)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an input of ``height x width`` is padded to: multiples of ``pad_multiple``,
        and wide enough that the encoder's deepest feature map (input / its output stride) has two
        values, never 1 x 1: a normalisation layer cannot normalise one value (GroupNorm refuses it
        in every mode, BatchNorm in training)."""
        multiple, stride = self.pad_multiple, self.feature_stride
        padded_h, padded_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
        if stride > 1 and -(-padded_h // stride) * -(-padded_w // stride) < 2:
            padded_w = -(-(stride + 1) // multiple) * multiple
        return padded_h, padded_w

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input: padded as :meth:`padded_size` says, in the memory format of its weights."""
        height, width = images.shape[-2:]
        padded_h, padded_w = self.padded_size(height, width)
        pad_h, pad_w = padded_h - height, padded_w - width
        images = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        logits = self.net(self._pad(images))
        if isinstance(logits, (tuple, list)):  # smp models with an auxiliary classification head
            logits = logits[0]
        return logits[..., :height, :width]

    @property
    def supports_feature_perturbation(self) -> bool:
        if callable(getattr(self.net, "forward_perturbed", None)):  # its own feature split (PatchDPT, yours)
            return True
        return all(hasattr(self.net, name) for name in ("encoder", "decoder", "segmentation_head"))

    def check_feature_perturbation(self) -> None:
        """Raise a ``TypeError`` that says what is missing if the network has no encoder/decoder split."""
        if not self.supports_feature_perturbation:
            raise TypeError(
                f"feature perturbation (weights.fp > 0) needs a network with `encoder`, `decoder` and "
                f"`segmentation_head` attributes such that `segmentation_head(decoder(encoder(x)))` gives the "
                f"logits, as smp models have, or a `forward_perturbed(images, dropout)` method that returns "
                f"logits decoded from dropped-out features; {type(self.net).__name__} has neither. Set "
                f"`weights.fp: 0` or pass a network that provides them."
            )

    def forward_perturbed(self, images: torch.Tensor, dropout: float = 0.5) -> torch.Tensor:
        """UniMatch's feature-perturbation stream: logits decoded from the encoder features of
        ``images`` with ``Dropout2d(dropout)`` applied to every feature map (the first,
        input-resolution stage of smp encoders excepted)."""
        self.check_feature_perturbation()
        height, width = images.shape[-2:]
        if hasattr(self.net, "forward_perturbed"):  # a network with its own feature split (PatchDPT)
            return self.net.forward_perturbed(self._pad(images), dropout)[..., :height, :width]
        features = self.net.encoder(self._pad(images))
        perturbed = [features[0]] + [F.dropout2d(f, dropout, training=True) for f in features[1:]]
        return self.net.segmentation_head(self.net.decoder(perturbed))[..., :height, :width]

    @property
    def channel_mask_width(self) -> int | None:
        """The channel count ``D`` of the features :meth:`forward_channel_masked` scales (the ViT's
        width), or None for a network without ``forward_channel_masked``."""
        if not callable(getattr(self.net, "forward_channel_masked", None)):
            return None
        return int(getattr(self.net.encoder, "embed_dim", self.net.encoder.num_features))

    def forward_channel_masked(self, images: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` decoded from encoder features scaled by ``channel_mask`` (``B x D``):
        UniMatch V2's Complementary Dropout (:mod:`maskmatch_pl.perturbation`).

        Raises:
            TypeError: the network has no ``forward_channel_masked`` (``arch: DPT`` on a ViT has).
        """
        self.check_channel_masks()
        height, width = images.shape[-2:]
        return self.net.forward_channel_masked(self._pad(images), channel_mask)[..., :height, :width]

    def check_channel_masks(self) -> None:
        """Raise a ``TypeError`` that says what is missing if the network cannot take channel masks."""
        self._require(
            "forward_channel_masked", "Complementary Dropout (views.strong_feature_dropout: complementary)",
            "views.strong_feature_dropout: none",
        )  # fmt: skip

    def _require(self, method: str, feature: str, fallback: str) -> None:
        if not callable(getattr(self.net, method, None)):
            raise TypeError(
                f"{feature} needs a network with a `{method}` method, as arch DPT on a timm ViT has; "
                f"{type(self.net).__name__} has none. Set {fallback}."
            )

    @property
    def token_patch_size(self) -> int | None:
        """The patch size of a network that can run the masked view in token space
        (:meth:`forward_token_masked`), or None."""
        if not callable(getattr(self.net, "forward_token_masked", None)):
            return None
        return int(self.net.patch_size)

    def forward_token_masked(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Logits of the masked view of ``images`` (``B x 3 x H x W``) computed in token space: the
        patches hidden in ``visible`` (``B x 1 x H x W`` bool, the pixel mask of
        :func:`~maskmatch_pl.masking.random_patch_mask`) are dropped from the encoder's tokens
        (``PatchDPT.forward_token_masked``) instead of painted grey. The padding takes the visibility of
        the patch at the border it extends, so that a token across the image's border is wholly hidden or
        wholly visible.

        Raises:
            TypeError: the network cannot drop tokens (only ``arch: DPT`` on a timm ViT can).
            ValueError: the mask's patches are not whole tokens.
        """
        self.check_token_masking()
        height, width = images.shape[-2:]
        padded = self._pad(images)
        pad_h, pad_w = padded.shape[-2] - height, padded.shape[-1] - width
        if pad_h or pad_w:
            visible = F.pad(visible.float(), (0, pad_w, 0, pad_h), mode="replicate") > 0.5
        tokens = self.net.token_visibility(visible)
        return self.net.forward_token_masked(padded, tokens)[..., :height, :width]

    def check_token_masking(self) -> None:
        """Raise a ``TypeError`` that says what is missing if the network cannot drop patch tokens."""
        self._require(
            "forward_token_masked", "the masked view in token space (masking.space: token)", "masking.space: pixel"
        )
