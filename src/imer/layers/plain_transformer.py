"""A Transformer stack without LayerNorm or attention output projection (the block style of the ComP/MoMKE code).

Each layer computes ``a = attention(x)`` (query/key/value projections, no
output projection, no dropout on the attention weights), ``h = a + FF(a)``
with ``FF = Linear -> GELU -> Dropout -> Linear -> Dropout`` of width
``ff_mult * hidden``, and adds ``h`` to its input. There is no normalisation
anywhere. Masking follows :class:`imer.layers.MaskedTransformer`: keys are
masked where ``valid`` is False and every invalid position is held at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imer.layers.packing import Packing
from imer.layers.sequence import safe_key_padding


class _PlainLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, ff_mult: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, ff_mult * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * hidden, hidden), nn.Dropout(dropout)
        )

    def attention(self, qkv: Tensor, attend: Tensor) -> Tensor:
        """Query/key/value projections ``[B, L, 3H]``, ``attend`` ``[B, 1, 1, L]`` bool (True = key visible) -> ``[B, L, H]``."""
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # each [B, heads, L, H/heads]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2).flatten(-2)

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        """``x`` ``[B, L, H]``, ``attend`` ``[B, 1, 1, L]`` bool (True = key visible) -> the layer's update."""
        a = self.attention(self.qkv(x), attend)
        return a + self.ff(a)


class PlainTransformer(nn.Module):
    """``depth`` residual layers ``x <- x + (a + FF(a))``, ``a`` = masked multi-head attention over ``x``."""

    def __init__(self, hidden: int, depth: int, heads: int, dropout: float, ff_mult: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_PlainLayer(hidden, heads, dropout, ff_mult) for _ in range(depth)])

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x``: ``[B, L, H]``; ``valid``: ``[B, L]`` bool -> ``[B, L, H]``, 0 at invalid positions."""
        key_padding, _ = safe_key_padding(valid)
        attend = (~key_padding)[:, None, None, :]
        keep = valid.unsqueeze(-1)
        zero = torch.zeros((), dtype=x.dtype)
        h = torch.where(keep, x, zero)
        for layer in self.layers:
            h = torch.where(keep, h + layer(h, attend), zero)
        return h

    def forward_packed(self, h: Tensor, packing: Packing) -> Tensor:
        """The same stack on packed valid entries ``[N, H]`` (see :class:`Packing`) -> ``[N, H]``.

        Projections and feed-forward blocks run on the ``N`` entries; attention
        on each dialogue's entries laid out left-aligned. No positional
        encodings, so this is the function :meth:`forward` computes at the valid positions
        (with no valid entry, every parameter still gets its zero gradient).
        """
        attend = (~packing.row_padding)[:, None, None, :]
        for layer in self.layers:
            a = packing.from_rows(layer.attention(packing.to_rows(layer.qkv(h)), attend))
            h = h + a + layer.ff(a)
        return h
