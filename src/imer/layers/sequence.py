"""A Transformer encoder over utterance sequences that is safe with any mask."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def safe_key_padding(valid: Tensor) -> tuple[Tensor, Tensor]:
    """Key padding mask for ``valid`` (``[..., L]`` bool) that never masks a whole row.

    A row with no valid key would give NaN in softmax attention; such rows are
    left unmasked and ``any_valid`` (``[..., 1]``) tells callers to zero their output.
    """
    any_valid = valid.any(dim=-1, keepdim=True)
    return ~(valid | ~any_valid), any_valid


class MaskedTransformer(nn.Module):
    """Pre-norm Transformer encoder; queries attend only to keys where ``valid`` is True.

    Rows whose keys are all invalid (a modality missing in a whole dialogue)
    would give NaN in a plain softmax; here their output is defined as 0. The
    output is also 0 at every invalid query position, so invalid inputs never
    leak into valid outputs.
    """

    def __init__(self, hidden: int, depth: int, heads: int, dropout: float, ff_mult: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=ff_mult * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.ModuleList([_clone(layer) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x``: ``[B, L, H]``; ``valid``: ``[B, L]`` bool -> ``[B, L, H]``."""
        key_padding, _ = safe_key_padding(valid)
        keep = valid.unsqueeze(-1)
        h = torch.where(keep, x, torch.zeros((), dtype=x.dtype))
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=key_padding)
            h = torch.where(keep, h, torch.zeros((), dtype=h.dtype))
        return torch.where(keep, self.norm(h), torch.zeros((), dtype=h.dtype))


def _clone(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer)
