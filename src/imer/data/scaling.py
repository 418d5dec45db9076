"""Per-dimension standardisation fitted on the training part (observed values only).

Feature sets come at very different scales (bc-LSTM MOSI audio reaches 376,
text about 1). The statistics are stored with the model and applied again at
prediction time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imer.errors import DataError
from imer.io import atomic_write


@dataclass
class Standardizer:
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], rows: np.ndarray, available: np.ndarray) -> "Standardizer":
        """Fit on ``rows`` where each modality is observed (``available[:, j]``)."""
        mean, std = {}, {}
        for j, (m, x) in enumerate(features.items()):
            observed = x[rows][available[rows, j]]
            if len(observed) == 0:
                mean[m] = np.zeros(x.shape[1], dtype=np.float32)
                std[m] = np.ones(x.shape[1], dtype=np.float32)
                continue
            mu = observed.mean(axis=0, dtype=np.float64)
            sd = observed.std(axis=0, dtype=np.float64)
            mean[m] = mu.astype(np.float32)
            std[m] = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        return cls(mean, std)

    @classmethod
    def identity(cls, dims: dict[str, int]) -> "Standardizer":
        return cls({m: np.zeros(d, np.float32) for m, d in dims.items()}, {m: np.ones(d, np.float32) for m, d in dims.items()})

    def transform(self, features: dict[str, np.ndarray], available: np.ndarray) -> dict[str, np.ndarray]:
        """Standardised copies; entries of absent modalities become 0 (they may hold NaN)."""
        out = {}
        for j, (m, x) in enumerate(features.items()):
            if m not in self.mean:
                raise DataError(f"modality '{m}' was not seen in training (known: {list(self.mean)})")
            if x.shape[1] != self.mean[m].shape[0]:
                raise DataError(f"modality '{m}' has dim {x.shape[1]}, the model was trained with {self.mean[m].shape[0]}")
            z = (x - self.mean[m]) / self.std[m]
            out[m] = np.where(available[:, j : j + 1], z, 0.0).astype(np.float32)
        return out

    def save(self, path: str | Path) -> None:
        arrays = {f"mean_{m}": v for m, v in self.mean.items()} | {f"std_{m}": v for m, v in self.std.items()}
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path, modalities: list[str]) -> "Standardizer":
        with np.load(path, allow_pickle=False) as npz:
            return cls({m: npz[f"mean_{m}"] for m in modalities}, {m: npz[f"std_{m}"] for m in modalities})
