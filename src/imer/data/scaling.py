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
from imer.io import atomic_write, read_npz

# Feature columns whose training spread is at most this are left unscaled (std 1); a stored std this small is damage.
STD_FLOOR = 1e-8


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
            std[m] = np.where(sd > STD_FLOOR, sd, 1.0).astype(np.float32)
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
            with np.errstate(over="ignore", invalid="ignore"):  # far-out inputs become inf here; predict refuses them by name
                z = (x - self.mean[m]) / self.std[m]
                out[m] = np.where(available[:, j : j + 1], z, 0.0).astype(np.float32)
        return out

    def save(self, path: str | Path) -> None:
        arrays = {f"mean_{m}": v for m, v in self.mean.items()} | {f"std_{m}": v for m, v in self.std.items()}
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path, modalities: list[str], dims: dict[str, int] | None = None) -> "Standardizer":
        """Read a saved scaler; :class:`DataError` if a modality's statistics are missing, misshapen or not finite."""
        arrays = read_npz(path, "scaler file")
        stats: dict[str, dict[str, np.ndarray]] = {"mean": {}, "std": {}}
        for kind in stats:
            for m in modalities:
                x = arrays.get(f"{kind}_{m}")
                width = (dims or {}).get(m, x.shape[-1] if x is not None and x.ndim == 1 else -1)
                if x is None or x.shape != (width,) or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
                    raise DataError(f"{path}: '{kind}_{m}' is missing or not a finite float vector of width {width}; the run folder is damaged, train again")
                stats[kind][m] = x.astype(np.float32)
        if (np.concatenate(list(stats["std"].values())) < np.float32(STD_FLOOR)).any():  # fitting stores float32(sd > floor)
            raise DataError(f"{path}: a standard deviation is below {STD_FLOOR:g} (fitting never stores one); the run folder is damaged, train again")
        return cls(stats["mean"], stats["std"])
