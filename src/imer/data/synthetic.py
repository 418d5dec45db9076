"""A deterministic synthetic dataset: the embedded default and the fast test bed.

Dialogues of utterances with a label each (classification or regression).
Every modality sees the label through its own random projection with its
own signal strength, so one modality is strong, one medium and one weak and
the imbalance that ComP targets is real. Labels can be correlated along a
dialogue (a sticky Markov chain for classes, AR(1) for scores), and each
dialogue adds its own offset (a speaker/recording effect), so context helps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from imer.data.dataset import MultimodalDataset
from imer.data.registry import register_dataset
from imer.errors import ConfigError

DEFAULT_DIMS = {"audio": 24, "text": 32, "video": 28}
DEFAULT_STRENGTH = {"audio": 0.5, "text": 0.9, "video": 0.25}


def make_synthetic(
    task: str = "classification",
    num_groups: int = 120,
    min_len: int = 4,
    max_len: int = 16,
    num_classes: int = 4,
    dims: Mapping[str, int] | None = None,
    strength: Mapping[str, float] | None = None,
    label_correlation: float = 0.5,
    group_offset: float = 0.5,
    latent_dim: int = 8,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> MultimodalDataset:
    """Generate a synthetic dataset; the same arguments always give the same data."""
    sizes = {"num_groups": (num_groups, 3, 10**6), "min_len": (min_len, 1, 10**4), "max_len": (max_len, min_len, 10**4),
             "num_classes": (num_classes, 2, 1000), "latent_dim": (latent_dim, 1, 4096), "seed": (seed, 0, 2**32 - 1)}
    sizes.update({f"dims.{m}": (d, 0, 10**5) for m, d in (dims or {}).items()})  # a width of 0 is named by the dataset check
    for name, (value, low, high) in sizes.items():
        if value < low:
            raise ConfigError(f"data.options.{name}: must be >= {low} for the synthetic data, got {value}")
        if value > high:
            raise ConfigError(f"data.options.{name}: must be <= {high} for the synthetic data (a larger one would not fit in memory), got {value}")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) > 1 + 1e-9:
        raise ConfigError(f"data.options.split_fractions: must be 3 non-negative fractions (train, valid, test) summing to <= 1, got {list(split_fractions)}")
    dims = dict(dims or DEFAULT_DIMS)
    strength = {m: float((strength or DEFAULT_STRENGTH).get(m, 1.0)) for m in dims}
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=num_groups)
    n = int(lengths.sum())
    group_index = np.repeat(np.arange(num_groups), lengths)
    order = np.concatenate([np.arange(k) for k in lengths])
    starts = order == 0

    if task == "classification":
        draws = rng.integers(0, num_classes, size=n)
        stay = rng.random(n) < label_correlation
        labels = draws.copy()
        for i in np.flatnonzero(stay & ~starts):
            labels[i] = labels[i - 1]
        class_codes = rng.normal(size=(num_classes, latent_dim))
        latent_signal = class_codes[labels]
        class_names = [f"class{c}" for c in range(num_classes)]
    elif task == "regression":
        noise = rng.normal(size=n)
        scores = np.empty(n)
        rho = label_correlation
        for i in range(n):
            scores[i] = noise[i] * 1.5 if starts[i] else rho * scores[i - 1] + np.sqrt(1 - rho**2) * noise[i] * 1.5
        labels = np.clip(np.round(scores, 1), -3.0, 3.0)
        direction = rng.normal(size=latent_dim)
        latent_signal = labels[:, None] / 1.5 * direction[None, :] + 0.3 * np.tanh(labels)[:, None]
        class_names = None
    else:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")

    features = {}
    for m, d in dims.items():
        projection = rng.normal(size=(latent_dim, d)) / np.sqrt(latent_dim)
        offsets = rng.normal(scale=group_offset, size=(num_groups, d))
        latent = strength[m] * latent_signal + rng.normal(size=(n, latent_dim))
        features[m] = latent @ projection + offsets[group_index] + 0.1 * rng.normal(size=(n, d))

    permuted = rng.permutation(num_groups)
    n_train = int(round(split_fractions[0] * num_groups))
    n_valid = int(round(split_fractions[1] * num_groups))
    group_split = np.empty(num_groups, dtype=object)
    group_split[permuted[:n_train]] = "train"
    group_split[permuted[n_train : n_train + n_valid]] = "valid"
    group_split[permuted[n_train + n_valid :]] = "test"
    group_names = np.array([f"dlg{g:04d}" for g in range(num_groups)])
    return MultimodalDataset(
        name="synthetic" if task == "classification" else "synthetic-reg",
        features=features,
        labels=labels,
        task=task,  # type: ignore[arg-type]
        utterance_ids=np.array([f"{group_names[g]}_{k}" for g, k in zip(group_index, order)]),
        group_ids=group_names[group_index],
        order=order,
        split=group_split[group_index].astype(str),
        speakers=np.where(order % 2 == 0, "A", "B"),
        class_names=class_names,
        source=f"synthetic(seed={seed})",
    )


@register_dataset("synthetic", needs_data_dir=False, description="built-in synthetic dialogues, 4 classes, strong/medium/weak modalities", options=make_synthetic)
def load_synthetic(**options) -> MultimodalDataset:
    """The built-in classification dataset (options are passed to :func:`make_synthetic`)."""
    return make_synthetic(task="classification", **options)


@register_dataset("synthetic-reg", needs_data_dir=False, description="built-in synthetic dialogues, regression in [-3, 3]", options=make_synthetic)
def load_synthetic_regression(**options) -> MultimodalDataset:
    """The built-in regression dataset (options are passed to :func:`make_synthetic`)."""
    return make_synthetic(task="regression", **options)
