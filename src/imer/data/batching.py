"""Turn a split of a dataset into padded batches of whole groups.

A batch holds ``B`` groups (dialogues/videos, or single utterances for
utterance-level models) padded to the longest group *in that batch*. All
gathering is one vectorised index into pre-built tensors: a table
``[groups, longest]`` of utterance positions is made once per split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor


@dataclass
class Batch:
    """One padded batch; the shared input of every model.

    Attributes:
        features: modality -> ``[B, L, d_m]`` float; zero where missing or padded.
        available: ``[B, L, M]`` bool, True where the modality is observed.
        mask: ``[B, L]`` bool, True at real utterances (False = padding).
        labels: ``[B, L]`` class index (long) or score (float); 0 at padding.
        index: ``[B, L]`` position of the utterance in the split, -1 at padding.
        speakers: ``[B, L]`` speaker code per utterance (-1 padding), or None.
    """

    features: dict[str, Tensor]
    available: Tensor
    mask: Tensor
    labels: Tensor
    index: Tensor
    speakers: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device)
            elif isinstance(value, dict):
                value = {k: v.to(device) for k, v in value.items()}
            moved[f.name] = value
        return Batch(**moved)


class SplitBatcher:
    """Batches of one split: features ``[n, d]`` per modality, rows already standardised.

    Args:
        features: modality -> ``[n, d_m]`` array for the split's utterances.
        labels: ``[n]`` labels.
        groups: ``[n]`` group id per utterance; ``None`` makes every utterance its own group.
        order: ``[n]`` position in the group (sorts utterances inside a group).
        speakers: optional ``[n]`` speaker labels (coded per group in order of appearance).
    """

    def __init__(
        self,
        features: dict[str, np.ndarray],
        labels: np.ndarray,
        groups: np.ndarray | None,
        order: np.ndarray | None = None,
        speakers: np.ndarray | None = None,
    ) -> None:
        self.modalities = list(features)
        self.features = {m: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32) for m, x in features.items()}
        self.labels = torch.as_tensor(labels)
        n = len(labels)
        if groups is None:
            self.table = np.arange(n, dtype=np.int64)[:, None]
        else:
            self.table = _group_table(np.asarray(groups), np.asarray(order if order is not None else np.zeros(n)))
        self.lengths = (self.table >= 0).sum(axis=1)
        self.speakers = None if speakers is None else torch.as_tensor(_speaker_codes(np.asarray(speakers), self.table))

    @property
    def num_groups(self) -> int:
        return int(self.table.shape[0])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, available: np.ndarray, batch_size: int, rng: np.random.Generator | None = None, bucket: int = 0) -> Iterator[Batch]:
        """Yield batches under availability ``available`` (``[n, M]``); shuffled if ``rng`` is given.

        ``bucket`` > 0 groups dialogues of similar length: with ``rng`` see
        :func:`bucketed_order`; without (evaluation) the groups go in order of
        length, which changes no prediction (models are batch-independent).
        """
        available_t = torch.as_tensor(np.asarray(available, dtype=bool))
        if rng is None:
            groups = np.argsort(self.lengths, kind="stable") if bucket > 0 else np.arange(self.num_groups)
            order = [groups[start : start + batch_size] for start in range(0, self.num_groups, batch_size)]
        elif bucket > 0:
            order = bucketed_order(self.lengths, batch_size, bucket, rng)
        else:
            groups = rng.permutation(self.num_groups)
            order = [groups[start : start + batch_size] for start in range(0, self.num_groups, batch_size)]
        for chosen in order:
            longest = int(self.lengths[chosen].max())
            yield self._gather(torch.as_tensor(self.table[chosen, :longest]), available_t)

    def _gather(self, index: Tensor, available_all: Tensor) -> Batch:
        mask = index >= 0
        safe = index.clamp(min=0)
        available = available_all[safe] & mask[..., None]
        features = {}
        for j, m in enumerate(self.modalities):
            x = self.features[m][safe]
            features[m] = torch.where(available[..., j : j + 1], x, torch.zeros((), dtype=x.dtype))
        labels = torch.where(mask, self.labels[safe], torch.zeros((), dtype=self.labels.dtype))
        speakers = None if self.speakers is None else torch.where(mask, self.speakers[safe], -1)
        return Batch(features, available, mask, labels, torch.where(mask, index, -1), speakers)


def bucketed_order(lengths: np.ndarray, batch_size: int, pool_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded length-bucketed batches: little padding, still shuffled every epoch.

    The groups are permuted; each run of ``pool_batches * batch_size`` of them
    is sorted by length (ties in the random order) and cut into batches; the
    batches are then shuffled. Every group appears exactly once; which groups
    share a batch changes from epoch to epoch within a pool's length ranks.
    """
    perm = rng.permutation(len(lengths))
    pool = pool_batches * batch_size
    batches = []
    for start in range(0, len(perm), pool):
        chunk = perm[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _group_table(groups: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``[G, longest]`` utterance positions per group sorted by ``order``, -1 padded."""
    names, inverse = np.unique(groups, return_inverse=True)
    sort = np.lexsort((order, inverse))
    counts = np.bincount(inverse, minlength=len(names))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(sort)) - np.repeat(starts, counts)
    table = np.full((len(names), int(counts.max())), -1, dtype=np.int64)
    table[inverse[sort], rank] = sort
    return table


def _speaker_codes(speakers: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per-utterance speaker index within its group (0 = first speaker to appear)."""
    codes = np.full(len(speakers), -1, dtype=np.int64)
    _, global_codes = np.unique(speakers, return_inverse=True)
    for row in table:
        row = row[row >= 0]
        local = {}
        for pos in row:
            local.setdefault(global_codes[pos], len(local))
        codes[row] = [local[global_codes[p]] for p in row]
    return codes
