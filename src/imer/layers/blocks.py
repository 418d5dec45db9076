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

    def project(self, modality: str, x: Tensor) -> Tensor:
        """The embedding of present entries ``x`` ``[..., d_m]`` of ``modality`` (no masking)."""
        return self.dropout(self.proj[modality](x))

    def forward(self, features: Mapping[str, Tensor], available: Tensor) -> Tensor:
        """``[B, L, M, hidden]`` embeddings, zero where ``available`` is False."""
        out = []
        for j, m in enumerate(self.modalities):
            keep = available[..., j : j + 1]
            if self.packed and keep.dim() == 3:
                out.append(on_valid(lambda x, m=m: self.project(m, x), features[m], keep))
                continue
            x = torch.where(keep, features[m], torch.zeros((), dtype=features[m].dtype))
            out.append(torch.where(keep, self.dropout(self.proj[m](x)), torch.zeros((), dtype=x.dtype)))
        return torch.stack(out, dim=-2)



def dialogue_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Per modality, the mean of the *observed* utterance representations of each dialogue.

    ``values`` ``[B, L, M, H]`` (one representation per utterance and
    modality), ``valid`` ``[B, L, M]`` (observed and not padding). Returns
    ``[B, L, M, H + 1]``: for every position of dialogue ``b`` the mean of
    ``values[b, j, m]`` over the utterances ``j`` where ``m`` is observed (the
    utterance itself included), followed by the bit "``m`` observed somewhere
    in the dialogue". Only observed entries enter the mean, so a missing
    modality's values never reach the output; a dialogue where ``m`` is never
    observed gives exactly 0. Computed from the same per-utterance
    representations a model learns on every utterance, it adds no parameters:
    the video-level signal a linear model gets from the dialogue mean of its
    inputs (``w . mean(x) = mean(w . x)``).
    """
    mean = masked_mean(values.transpose(1, 2), valid.transpose(1, 2), dim=2)  # [B, M, H]
    seen = valid.any(dim=1).to(values.dtype).unsqueeze(-1)  # [B, M, 1]
    return torch.cat([mean, seen], dim=-1).unsqueeze(1).expand(-1, values.shape[1], -1, -1)
