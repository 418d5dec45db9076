"""Training-time removal of observed modalities (modality dropout, sub-conditions)."""

from __future__ import annotations

import torch
from torch import Tensor


def drop_modalities(available: Tensor, drop_prob: float) -> Tensor:
    """Randomly remove available modalities, keeping at least one per utterance.

    ``available`` is ``[..., M]`` bool. One available modality per utterance
    (chosen uniformly) is protected; every other available one is dropped
    independently with probability ``drop_prob``. Rows without any available
    modality (padding) stay empty. Uses the global torch RNG, which the
    trainer seeds.
    """
    noise = torch.rand(available.shape, device=available.device)
    protected_score = torch.where(available, noise, torch.full_like(noise, -1.0))
    protected = torch.nn.functional.one_hot(protected_score.argmax(dim=-1), available.shape[-1]).bool() & available
    dropped = (torch.rand(available.shape, device=available.device) < drop_prob) & ~protected
    return available & ~dropped


def zero_missing(features: dict[str, Tensor], available: Tensor, modalities: tuple[str, ...]) -> list[Tensor]:
    """Each modality's features with every missing entry replaced by exactly 0."""
    zero = torch.zeros(())
    return [torch.where(available[..., j : j + 1], features[m], zero.to(features[m].dtype)) for j, m in enumerate(modalities)]
