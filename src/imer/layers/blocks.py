"""Small masked building blocks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from imer.layers.packing import on_valid


class MLP(nn.Sequential):
    """``in -> hidden (-> hidden ...) -> out`` with ReLU and dropout between layers."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0) -> None:
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            modules.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                modules += [nn.ReLU(), nn.Dropout(dropout)]
        super().__init__(*modules)


def masked_mean(values: Tensor, weight: Tensor, dim: int) -> Tensor:
    """Mean of ``values`` over ``dim`` counting only entries where ``weight`` is True.

    ``weight`` has ``values``' shape without the trailing feature dim. Entries
    with no weight anywhere along ``dim`` give 0 (never NaN).
    """
    w = weight.to(values.dtype).unsqueeze(-1)
    total = (torch.where(w > 0, values, torch.zeros((), dtype=values.dtype)) * w).sum(dim=dim)
    return total / w.sum(dim=dim).clamp(min=1.0)


class ModalityEmbedding(nn.Module):
    """Per-modality linear projection to ``hidden``; missing entries become exactly 0.

    The input of a missing modality is replaced by 0 *before* the projection
    and the projection's output is zeroed there too, so neither the feature
    values nor the bias of an absent modality reach the rest of the model.
    ``packed=True`` projects only the available entries (see
    :func:`imer.layers.packing.on_valid`): worth it for dialogue batches, where
    padding and missing entries are many; for utterance batches (``L = 1``) the
    gather costs more than it saves (measured), so the default is ``False``.
    """

    def __init__(self, dims: Mapping[str, int], hidden: int, dropout: float = 0.0, packed: bool = False) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.dropout = nn.Dropout(dropout)
        self.packed = packed

    def forward(self, features: Mapping[str, Tensor], available: Tensor) -> Tensor:
        """``[B, L, M, hidden]`` embeddings, zero where ``available`` is False."""
        out = []
        for j, m in enumerate(self.modalities):
            keep = available[..., j : j + 1]
            if self.packed and keep.dim() == 3:
                out.append(on_valid(lambda x, m=m: self.dropout(self.proj[m](x)), features[m], keep))
                continue
            x = torch.where(keep, features[m], torch.zeros((), dtype=features[m].dtype))
            out.append(torch.where(keep, self.dropout(self.proj[m](x)), torch.zeros((), dtype=x.dtype)))
        return torch.stack(out, dim=-2)
