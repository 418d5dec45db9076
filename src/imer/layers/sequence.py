"""A Transformer encoder over utterance sequences that is safe with any mask."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from imer.layers.packing import Packing


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

    ``packed=True`` (default) computes only the valid positions: layer norms,
    feed-forward blocks and dropout run on the packed valid entries, attention
    on each dialogue's valid entries laid out left-aligned (there are no
    positional encodings, so this is the same function; see
    :mod:`imer.layers.packing`). ``packed=False`` runs the padded ``[B, L]``
    tensor through ``nn.TransformerEncoderLayer`` (the reference).
    """

    def __init__(self, hidden: int, depth: int, heads: int, dropout: float, ff_mult: int = 2, packed: bool = True) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=ff_mult * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden)
        self.packed = packed

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x``: ``[B, L, H]``; ``valid``: ``[B, L]`` bool -> ``[B, L, H]``."""
        if self.packed:
            packing = Packing(valid)
            return packing.unpack(self.forward_packed(packing.pack(x), packing))
        key_padding, _ = safe_key_padding(valid)
        keep = valid.unsqueeze(-1)
        h = torch.where(keep, x, torch.zeros((), dtype=x.dtype))
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=key_padding)
            h = torch.where(keep, h, torch.zeros((), dtype=h.dtype))
        return torch.where(keep, self.norm(h), torch.zeros((), dtype=h.dtype))

    def forward_packed(self, h: Tensor, packing: Packing) -> Tensor:
        """The encoder on packed valid entries ``[N, H]`` (see :class:`Packing`) -> ``[N, H]``."""
        if packing.count == 0:  # nothing to attend over; every parameter still gets its (zero) gradient, as in the padded computation
            return self.norm(h) + 0.0 * sum(p.sum() for p in self.parameters())
        for layer in self.layers:
            rows = packing.to_rows(layer.norm1(h))
            attended, _ = layer.self_attn(rows, rows, rows, key_padding_mask=packing.row_padding, need_weights=False)
            h = h + layer.dropout1(packing.from_rows(attended))
            h = h + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h))))))
        return self.norm(h)
