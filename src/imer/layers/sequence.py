"""A Transformer encoder over utterance sequences that is safe with any mask."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
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
        """The encoder on packed valid entries ``[N, H]`` (see :class:`Packing`) -> ``[N, H]``.

        Each layer's attention is ``nn.MultiheadAttention``'s function written out:
        the input and output projections run on the ``N`` packed entries, only
        the scaled dot products (with dropout on the attention weights) on the
        left-aligned rows.
        """
        if packing.count == 0:  # nothing to attend over; every parameter still gets its (zero) gradient, as in the padded computation
            return self.norm(h) + 0.0 * sum(p.sum() for p in self.parameters())
        attend = (~packing.row_padding)[:, None, None, :]  # [R, 1, 1, Lc]
        for layer in self.layers:
            h = h + layer.dropout1(self._attention(layer.self_attn, layer.norm1(h), packing, attend))
            h = h + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h))))))
        return self.norm(h)

    def _attention(self, attn: nn.MultiheadAttention, x: Tensor, packing: Packing, attend: Tensor) -> Tensor:
        """Multi-head self-attention of packed ``x`` ``[N, H]`` within each row of ``packing`` -> ``[N, H]``."""
        qkv = packing.to_rows(F.linear(x, attn.in_proj_weight, attn.in_proj_bias))  # [R, Lc, 3H]
        q, k, v = qkv.unflatten(-1, (3, attn.num_heads, -1)).permute(2, 0, 3, 1, 4)  # each [R, heads, Lc, H / heads]
        dropout = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=dropout).transpose(1, 2).flatten(-2)
        return attn.out_proj(packing.from_rows(out))
