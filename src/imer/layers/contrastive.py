"""Masked multi-positive contrastive losses (InfoNCE / SupCon family).

One formulation serves both of PROMISE's levels: every vector is an anchor;
its positives are the other valid vectors with the same group id, and its
denominator runs over all other valid vectors. With group = sample index this
is a multi-positive InfoNCE over views (FNCL); with group = class label it is
the supervised contrastive loss (CCCL). Invalid vectors (padding, missing
modalities) take no part at all. Masking uses a large finite negative instead
of ``-inf`` so that rows with no valid partner give finite values and finite
(zero) gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_MASKED_LOGIT = -1.0e4


def multi_positive_contrastive(embeddings: Tensor, groups: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Mean multi-positive contrastive loss over anchors that have a positive.

    For anchor ``a`` with positive set ``P(a)`` (same group, valid, not ``a``)::

        l_a = -1/|P(a)| * sum_{p in P(a)} log( exp(s_ap / t) / sum_{b != a, valid} exp(s_ab / t) )

    with ``s`` the cosine similarity. Leading dimensions are independent
    problems (e.g. one per modality); the result averages ``l_a`` over all
    anchors of all problems that have at least one positive (0 if none do).

    Args:
        embeddings: ``[..., V, D]`` vectors (normalised here).
        groups: ``[..., V]`` integer group ids; equal id = positive pair.
        valid: ``[..., V]`` bool; False entries are ignored as anchors and partners.
        temperature: softmax temperature ``t`` (> 0).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(embeddings, dim=-1)
    logits = z @ z.transpose(-1, -2) / temperature  # [..., V, V]
    v = z.shape[-2]
    not_self = ~torch.eye(v, dtype=torch.bool, device=z.device)
    partner = valid.unsqueeze(-1) & valid.unsqueeze(-2) & not_self
    positive = partner & (groups.unsqueeze(-1) == groups.unsqueeze(-2))
    logits = torch.where(partner, logits, torch.full((), _MASKED_LOGIT, dtype=logits.dtype, device=z.device))
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    n_pos = positive.sum(dim=-1)
    per_anchor = -torch.where(positive, log_prob, torch.zeros((), dtype=log_prob.dtype)).sum(dim=-1) / n_pos.clamp(min=1)
    has_pos = n_pos > 0
    return torch.where(has_pos, per_anchor, torch.zeros((), dtype=per_anchor.dtype)).sum() / has_pos.sum().clamp(min=1)
