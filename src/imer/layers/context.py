"""Context from the other utterances of a dialogue, weighted by how near they are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def neighbour_means(values: Tensor, valid: Tensor, scales: Sequence[float], include_self: bool = False) -> Tensor:
    """Per modality and scale, the distance-weighted mean of the *other* utterances' observed representations.

    ``values`` ``[B, L, M, H]``, ``valid`` ``[B, L, M]`` (observed and not
    padding). Utterance ``j`` weighs ``exp(-|i - j| / s)`` in the context of
    utterance ``i`` for a scale ``s > 0`` (a few neighbours for small ``s``)
    and 1 for ``s = 0`` (the whole dialogue). Returns ``[B, L, M, S * (H + 1)]``:
    for each scale the weighted mean followed by ``log(1 + weight mass)``, which
    tells the model how much context stands behind the mean (0 where no other
    utterance has the modality, and then the mean is exactly 0 too). Only
    observed entries enter, so a missing modality's values never reach the
    output; the utterance itself is left out unless ``include_self``, so the
    context means the same whether or not its own modality was observed.
    """
    length = values.shape[1]
    position = torch.arange(length, device=values.device, dtype=values.dtype)
    distance = (position[:, None] - position[None, :]).abs()  # [L, L]
    weight_valid = valid.to(values.dtype)  # [B, L, M]
    masked = values * weight_valid.unsqueeze(-1)
    outputs = []
    for scale in scales:
        kernel = torch.exp(-distance / scale) if scale > 0 else torch.ones_like(distance)
        if not include_self:
            kernel = kernel * (1.0 - torch.eye(length, device=values.device, dtype=values.dtype))
        mass = torch.einsum("ij,bjm->bim", kernel, weight_valid)  # [B, L, M]
        total = torch.einsum("ij,bjmh->bimh", kernel, masked)
        mean = total / mass.clamp(min=1e-6).unsqueeze(-1)
        outputs += [mean, torch.log1p(mass).unsqueeze(-1)]
    return torch.cat(outputs, dim=-1)
