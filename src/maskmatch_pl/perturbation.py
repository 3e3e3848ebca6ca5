"""UniMatch V2's Complementary Dropout (Yang et al., TPAMI 2025; github LiheYoung/UniMatch-V2,
``model/semseg/dpt.py``, the ``comp_drop`` branch): the two strong views of an image are decoded from
encoder features whose channels are dropped by complementary masks, so that between them they see
every channel once; half the images are left unperturbed. Hand-written: the method's own formula."""

from __future__ import annotations

import torch


def complementary_channel_masks(
    batch_size: int,
    channels: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    unperturbed_share: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel masks of the two strong views: ``(first, second)``, each ``batch_size x channels``.

    ``first`` is ``2 x Bernoulli(0.5)`` per image and channel (inverted dropout at rate 0.5: a kept
    channel is doubled), ``second = 2 - first`` (the channels the first view drops, doubled); the rows
    of ``int(batch_size x unperturbed_share)`` images drawn without replacement are all ones in both
    (those images' views are not perturbed). Both views are scaled so that their mean is the identity.

    Args:
        batch_size: images per strong view ``B`` (UniMatch V2 concatenates the two views: its ``bs // 2``).
        channels: the encoder's width ``D``; one mask per image applies to every block the decoder reads.
        generator: the step's generator (CutMix boxes and patch masks draw from it too); CPU.
        device: where the masks are returned.
        unperturbed_share: share of the images left unperturbed (UniMatch V2: ``dropout_prob = 0.5``).

    Raises:
        ValueError: ``unperturbed_share`` outside [0, 1].
    """
    if not 0.0 <= unperturbed_share <= 1.0:
        raise ValueError(f"unperturbed_share must be in [0, 1], got {unperturbed_share}")
    first = torch.bernoulli(torch.full((batch_size, channels), 0.5), generator=generator) * 2.0
    unperturbed = torch.randperm(batch_size, generator=generator)[: int(batch_size * unperturbed_share)]
    first[unperturbed] = 1.0
    second = 2.0 - first
    return first.to(device), second.to(device)
