"""Missing-modality protocols: small, named, seeded objects with one job each.

A protocol turns the availability of the data (``[N, M]`` bool, all True for
complete data) into the availability the model sees. ``RandomMissing`` drops
a fraction ``rate`` of all (utterance, modality) entries, keeping at least one
modality per utterance; ``FixedCondition`` keeps one subset of modalities for
every utterance. :func:`fixed_mask` draws a mask once from a seed and a
purpose name, so test masks are identical across methods, epochs and reruns.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from imer.errors import ConfigError


class MissingProtocol(Protocol):
    name: str

    def apply(self, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the availability the model sees (a subset of ``available``)."""
        ...


def max_missing_rate(num_modalities: int) -> float:
    """Largest achievable missing fraction when each utterance keeps one modality."""
    return (num_modalities - 1) / num_modalities


def missing_fraction(mask: np.ndarray) -> float:
    """Realised fraction of missing (utterance, modality) entries."""
    return float(1.0 - np.asarray(mask, dtype=bool).mean()) if mask.size else 0.0


@dataclass(frozen=True)
class RandomMissing:
    """Drop a fraction ``rate`` of entries uniformly; every utterance keeps >= 1 modality.

    The count of dropped entries is exact (``round(rate * N * M)`` missing in
    total, counting entries already absent from the data). A rate above
    ``(M - 1) / M`` cannot be reached: a warning says so, and the realised
    fraction (reported in ``metrics.json``) is that maximum.
    """

    rate: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"missing rate must be in [0, 1], got {self.rate}")

    @property
    def name(self) -> str:
        return f"rate={self.rate:g}"

    def apply(self, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        available = np.asarray(available, dtype=bool)
        n, m = available.shape
        limit = max_missing_rate(m)
        if self.rate > limit + 1e-9:
            warnings.warn(
                f"missing rate {self.rate:g} is above the achievable maximum {limit:.3f} for {m} modalities "
                f"(every utterance keeps one); the realised rate is {limit:.3f}",
                stacklevel=2,
            )
        keeper_score = np.where(available, rng.random((n, m)), -1.0)
        keeper = np.zeros_like(available)
        keeper[np.arange(n), keeper_score.argmax(axis=1)] = True
        candidates = available & ~keeper
        to_drop = int(round(self.rate * n * m)) - int((~available).sum())
        to_drop = max(0, min(to_drop, int(candidates.sum())))
        drop_score = np.where(candidates, rng.random((n, m)), np.inf).ravel()
        dropped = np.zeros(n * m, dtype=bool)
        if to_drop:
            dropped[np.argpartition(drop_score, to_drop - 1)[:to_drop]] = True
        return available & ~dropped.reshape(n, m)


@dataclass(frozen=True)
class FixedCondition:
    """Keep exactly the modalities ``kept`` (by index) for every utterance."""

    kept: tuple[int, ...]
    label: str

    @property
    def name(self) -> str:
        return self.label

    def apply(self, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        available = np.asarray(available, dtype=bool)
        keep = np.zeros(available.shape[1], dtype=bool)
        keep[list(self.kept)] = True
        result = available & keep[None, :]
        if not result.any(axis=1).all():
            raise ConfigError(f"condition '{self.label}' leaves some utterances with no modality (they lack {self.label} in the data)")
        return result


def condition_label(modalities: list[str], kept: tuple[int, ...]) -> str:
    """Short name of a subset: first letters (``at``), or names joined by ``+`` if letters clash."""
    letters = [m[0] for m in modalities]
    if len(set(letters)) == len(letters):
        return "".join(letters[i] for i in kept)
    return "+".join(modalities[i] for i in kept)


def all_conditions(modalities: list[str]) -> list[FixedCondition]:
    """Every non-empty subset of modalities, singles first, full set last."""
    out = []
    for size in range(1, len(modalities) + 1):
        for kept in itertools.combinations(range(len(modalities)), size):
            out.append(FixedCondition(kept, condition_label(modalities, kept)))
    return out


def parse_condition(text: str, modalities: list[str]) -> FixedCondition:
    """``"at"`` (first letters), ``"audio,text"`` (names) or ``"full"`` -> :class:`FixedCondition`."""
    text = text.strip()
    if text in ("full", "all"):
        kept = tuple(range(len(modalities)))
        return FixedCondition(kept, condition_label(modalities, kept))
    for cond in all_conditions(modalities):
        if cond.label == text:
            return cond
    names = [t.strip() for t in text.replace("+", ",").split(",") if t.strip()]
    if names and all(nm in modalities for nm in names):
        kept = tuple(sorted({modalities.index(nm) for nm in names}))
        return FixedCondition(kept, condition_label(modalities, kept))
    choices = ", ".join(c.label for c in all_conditions(modalities))
    raise ConfigError(f"unknown condition '{text}' for modalities {modalities}; use one of {choices}, full, or names like audio,text")


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (same parts -> same seed, on any machine)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def fixed_mask(protocol: MissingProtocol, available: np.ndarray, seed: int, purpose: str) -> np.ndarray:
    """The mask for ``purpose`` (e.g. ``"test"``), a pure function of its arguments."""
    rng = np.random.default_rng(derive_seed("mask", purpose, protocol.name, seed, available.shape))
    return protocol.apply(available, rng)
