"""Dense, batched graph layers over utterance sequences (used by GCNet).

A dialogue batch ``[B, L, D]`` is a batch of graphs whose nodes are the
utterances. Edges are dense boolean adjacency tensors ``[B, R, L, L]`` (one
slice per relation; ``adj[b, r, i, j]`` = node ``i`` receives from node ``j``
through relation ``r``), so message passing is a pair of ``einsum`` calls and
padding nodes are excluded simply by having no edges.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def window_edges(valid: Tensor, past: int, future: int) -> Tensor:
    """``[B, L, L]`` bool: node ``i`` receives from ``j`` when ``i - past <= j <= i + future``.

    A negative ``past``/``future`` means unlimited in that direction. Only
    pairs of valid nodes are connected; self loops are included.
    """
    length = valid.shape[1]
    pos = torch.arange(length, device=valid.device)
    offset = pos[None, :] - pos[:, None]  # j - i
    inside = torch.ones(length, length, dtype=torch.bool, device=valid.device)
    if past >= 0:
        inside &= offset >= -past
    if future >= 0:
        inside &= offset <= future
    return inside[None] & valid[:, :, None] & valid[:, None, :]


def temporal_relations(edges: Tensor) -> Tensor:
    """Split window edges into relations past / now / future: ``[B, 3, L, L]``."""
    length = edges.shape[-1]
    pos = torch.arange(length, device=edges.device)
    offset = pos[None, :] - pos[:, None]
    kinds = torch.stack([offset < 0, offset == 0, offset > 0])  # [3, L, L]
    return edges[:, None] & kinds[None]


def speaker_relations(edges: Tensor, speakers: Tensor) -> Tensor:
    """Split window edges into relations same speaker / different speaker: ``[B, 2, L, L]``."""
    same = speakers[:, :, None] == speakers[:, None, :]
    return torch.stack([edges & same, edges & ~same], dim=1)


class RelationalGraphConv(nn.Module):
    """R-GCN layer (Schlichtkrull et al., 2018) on dense relation adjacencies.

    ``h'_i = W_0 h_i + sum_r (1 / |N_r(i)|) sum_{j in N_r(i)} W_r h_j``
    (mean aggregation per relation, as in the usual R-GCN implementations).
    """

    def __init__(self, in_dim: int, out_dim: int, num_relations: int) -> None:
        super().__init__()
        self.root = nn.Linear(in_dim, out_dim)
        self.weight = nn.Parameter(torch.empty(num_relations, in_dim, out_dim))
        nn.init.uniform_(self.weight, -1.0 / math.sqrt(in_dim), 1.0 / math.sqrt(in_dim))

    def forward(self, h: Tensor, adj: Tensor) -> Tensor:
        """``h``: ``[B, L, D]``; ``adj``: ``[B, R, L, L]`` bool -> ``[B, L, out]``."""
        a = adj.to(h.dtype)
        a = a / a.sum(dim=-1, keepdim=True).clamp(min=1.0)
        messages = torch.einsum("brij,bjd->brid", a, h)
        return self.root(h) + torch.einsum("brid,rde->bie", messages, self.weight)


class GraphConv(nn.Module):
    """Graph convolution of Morris et al. (2019): ``h'_i = W_1 h_i + W_2 sum_{j in N(i)} h_j``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.root = nn.Linear(in_dim, out_dim)
        self.neighbour = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, h: Tensor, adj: Tensor) -> Tensor:
        """``h``: ``[B, L, D]``; ``adj``: ``[B, L, L]`` bool -> ``[B, L, out]``."""
        return self.root(h) + self.neighbour(torch.einsum("bij,bjd->bid", adj.to(h.dtype), h))
