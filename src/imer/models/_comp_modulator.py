"""ComP's dynamic gradient modulator: per-utterance weights and the autograd function that applies them.

Two directions (``CompConfig.modulator_direction``):

- ``weaker`` (imer's reading of the paper): a modality whose error on an
  utterance is above the mean error of the other present modalities gets a
  weight above 1, ``w = 1 + beta * (e_m - e_others) / (e_m + e_others)``.
- ``published``: the published code's formula, made numerically safe. For a
  pair (i, j) with ``W = e_i - e_j`` per utterance and ``S`` the sum of ``W``
  over the batch's utterances where both are present, ``w_ij = 1 - W / S``
  (the code's ``(S - W) / S``), clipped to ``[1 - beta, 1 + beta]``, and 1
  where ``S`` is 0; modality i's weight is the mean over the other present j.
  The published code divides by ``S`` unclipped (huge or negative weights
  when ``S`` is near 0 or negative) and averages over padded positions.

Both give exactly 1 for equal errors, for absent modalities and for
utterances with a single modality, and lie in ``[1 - beta, 1 + beta]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weaker_weights(errors: Tensor, present: Tensor, strength: float) -> Tensor:
    """``weaker`` direction; ``errors`` ``[..., M]`` (>= 0), ``present`` ``[..., M]`` bool -> weights ``[..., M]``."""
    zero = torch.zeros((), dtype=errors.dtype)
    errors = torch.where(present, errors, zero)
    p = present.to(errors.dtype)
    others_count = p.sum(-1, keepdim=True) - p
    others = (errors.sum(-1, keepdim=True) - errors) / others_count.clamp(min=1.0)
    denom = errors + others
    relative = torch.where(denom > 0, (errors - others) / denom.clamp(min=torch.finfo(errors.dtype).tiny), zero)
    weights = 1.0 + strength * relative.clamp(-1.0, 1.0)
    return torch.where(present & (others_count > 0), weights, torch.ones((), dtype=errors.dtype))


def published_weights(errors: Tensor, present: Tensor, strength: float) -> Tensor:
    """``published`` direction (see module docstring); the batch sum runs over all leading dims."""
    zero = torch.zeros((), dtype=errors.dtype)
    m = errors.shape[-1]
    diff = errors.unsqueeze(-1) - errors.unsqueeze(-2)  # [..., M, M]: W for pair (i, j)
    both = present.unsqueeze(-1) & present.unsqueeze(-2) & ~torch.eye(m, dtype=torch.bool, device=errors.device)
    diff = torch.where(both, diff, zero)
    total = diff.flatten(0, -3).sum(0)  # [M, M]: S per pair
    safe = torch.where(total != 0, total, torch.ones((), dtype=errors.dtype))
    ratio = torch.where(total != 0, diff / safe, zero)
    pair = torch.where(both, 1.0 - ratio.clamp(-strength, strength), zero)
    count = both.sum(-1)
    mean = pair.sum(-1) / count.clamp(min=1).to(errors.dtype)
    return torch.where(count > 0, mean, torch.ones((), dtype=errors.dtype))


def modulator_weights(errors: Tensor, present: Tensor, strength: float, direction: str = "weaker") -> Tensor:
    """Per-utterance, per-modality gradient weights from unimodal errors, in ``[1 - strength, 1 + strength]``."""
    if direction == "published":
        return published_weights(errors, present, strength)
    return weaker_weights(errors, present, strength)


class GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies (or, with ``inverse``, divides) the gradient by ``weight``.

    ``weight`` (broadcast over the last dim) is read when backward runs, not
    when forward runs, so the model's ``loss`` can fill it in after the
    forward pass (the modulator needs the unimodal errors, which exist only
    then). Dividing at a module's input undoes the scaling applied at its
    output for everything upstream, which limits the modulator to that module
    when the module acts on each position separately. With ``index``, ``x``
    holds packed rows and row ``i`` takes ``weight[index[i]]`` (``weight`` is
    then 1-D over the batch's flattened positions).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, inverse: bool = False, index: Tensor | None = None) -> Tensor:  # type: ignore[override]
        ctx.weight, ctx.inverse, ctx.index = weight, inverse, index
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        weight = ctx.weight if ctx.index is None else ctx.weight.index_select(0, ctx.index)
        weight = weight.unsqueeze(-1).to(grad.dtype)
        return (grad / weight if ctx.inverse else grad * weight), None, None, None
