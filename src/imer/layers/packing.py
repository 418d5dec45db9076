"""Run utterance-wise work on real entries only: pack ``[B, L, ...]`` to ``[N, ...]`` and back.

A batch of dialogues is padded to its longest dialogue, and under a missing
protocol a modality is absent at many of the remaining positions. Everything
that acts on one utterance at a time (linear layers, MLPs, layer norms,
dropout, heads) gives the same values at the valid positions whether it runs
on the padded ``[B, L, ...]`` tensor or on the ``N`` valid rows alone, so
methods run it on the packed rows. Attention is the one place that needs
sequences: :meth:`Packing.to_rows` lays the valid entries of each dialogue
out left-aligned in ``[R, Lc, ...]`` (only the ``R`` dialogues with at least
one valid entry, ``Lc`` = the most valid entries of any of them), with
:attr:`Packing.row_padding` as the key padding mask. For attention without
positional encodings that is the same computation as the padded one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class Packing:
    """Positions of the True entries of a ``[B, L]`` validity mask and their compact per-row layout."""

    def __init__(self, valid: Tensor) -> None:
        self.shape = tuple(valid.shape)
        flat_valid = valid.reshape(-1)
        self.index = flat_valid.nonzero().squeeze(-1)  # [N] positions in the flattened [B*L]
        counts = valid.sum(dim=1)
        rows = counts > 0
        self.row_lengths = counts[rows]  # [R]
        self.row_width = int(self.row_lengths.max()) if self.row_lengths.numel() else 0
        row_id = torch.cumsum(rows.long(), dim=0) - 1  # [B] compact row of each dialogue
        rank = torch.cumsum(valid.long(), dim=1) - 1  # [B, L] place among the row's valid entries
        self.row_index = (row_id[:, None] * self.row_width + rank).reshape(-1)[self.index]  # [N] in [R*Lc]
        self.row_padding = torch.arange(self.row_width, device=valid.device)[None, :] >= self.row_lengths[:, None]  # [R, Lc]

    @property
    def count(self) -> int:
        """``N``, the number of valid entries."""
        return int(self.index.numel())

    def pack(self, x: Tensor) -> Tensor:
        """``[B, L, ...]`` -> ``[N, ...]``: the valid entries, row-major."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, flat: Tensor) -> Tensor:
        """``[N, ...]`` -> ``[B, L, ...]`` with exact zeros at invalid positions (differentiable)."""
        out = flat.new_zeros(self.shape[0] * self.shape[1], *flat.shape[1:])
        return out.index_copy_(0, self.index, flat).reshape(*self.shape, *flat.shape[1:])

    def to_rows(self, flat: Tensor) -> Tensor:
        """``[N, ...]`` -> ``[R, Lc, ...]``: each non-empty row's valid entries left-aligned, zeros after."""
        rows = len(self.row_lengths)
        out = flat.new_zeros(rows * self.row_width, *flat.shape[1:])
        return out.index_copy_(0, self.row_index, flat).reshape(rows, self.row_width, *flat.shape[1:])

    def from_rows(self, rows: Tensor) -> Tensor:
        """Inverse of :meth:`to_rows`: ``[R, Lc, ...]`` -> ``[N, ...]``."""
        return rows.reshape(-1, *rows.shape[2:]).index_select(0, self.row_index)

    def apply(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn`` (utterance-wise) on the valid entries of ``x`` ``[B, L, ...]``; exact 0 elsewhere."""
        return self.unpack(fn(self.pack(x)))


class ModalityPacking:
    """A batch's real utterances and, per modality, its present entries, with the maps between them.

    Multimodal dialogue methods run each modality's utterance-wise layers on
    that modality's present entries (``modality[j]``, a :class:`Packing` of
    ``valid[..., j]``, whose row layout also serves attention over the
    dialogue) and combine modalities per utterance on the ``N`` real
    utterances (``utterances``, a :class:`Packing` of ``mask``). ``rows_of[j]``
    says which of the ``N`` utterances each of modality ``j``'s ``N_j`` entries
    belongs to; :meth:`stack` and :meth:`select` move tensors between the two.
    """

    def __init__(self, available: Tensor, mask: Tensor) -> None:
        self.valid = available & mask.unsqueeze(-1)  # [B, L, M]
        self.utterances = Packing(mask)
        self.valid_rows = self.utterances.pack(self.valid)  # [N, M]
        self.modality = [Packing(self.valid[..., j]) for j in range(self.valid.shape[-1])]
        rank = torch.cumsum(mask.reshape(-1).long(), dim=0) - 1  # utterance number of each [B*L] position
        self.rows_of = [rank.index_select(0, packing.index) for packing in self.modality]  # [N_j] each
        m = len(self.modality)
        self._stack_index = torch.cat([rows * m + j for j, rows in enumerate(self.rows_of)])

    @property
    def count(self) -> int:
        """``N``, the number of real utterances."""
        return self.utterances.count

    def stack(self, per_modality: list[Tensor]) -> Tensor:
        """``[N_j, ...]`` per modality -> ``[N, M, ...]`` per utterance, exact 0 where a modality is absent."""
        flat = torch.cat(per_modality)
        out = flat.new_zeros(self.count * len(per_modality), *flat.shape[1:]).index_copy_(0, self._stack_index, flat)
        return out.reshape(self.count, len(per_modality), *flat.shape[1:])

    def select(self, j: int, rows: Tensor) -> Tensor:
        """``[N, ...]`` per utterance -> ``[N_j, ...]`` at the utterances where modality ``j`` is present."""
        return rows.index_select(0, self.rows_of[j])


def on_valid(fn: Callable[[Tensor], Tensor], x: Tensor, valid: Tensor, packed: bool = True) -> Tensor:
    """``where(valid, fn(x), 0)`` for an utterance-wise ``fn``; ``packed`` runs ``fn`` on the valid entries only.

    ``valid`` is ``[B, L]`` or ``[B, L, 1]`` bool. ``packed=False`` is the padded
    reference computation (kept to measure and test the packed one against).
    """
    valid = valid.squeeze(-1) if valid.dim() == x.dim() else valid
    if packed:
        return Packing(valid).apply(fn, x)
    y = fn(x)
    return torch.where(valid.unsqueeze(-1), y, torch.zeros((), dtype=y.dtype))
