"""The typed run config: what determines a run's numbers, section by section."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


# Run-config fields (dotted) that never change a run's numbers or name the cell rather than the setting: the config
# hash leaves them out and the report does not compare them.
RUN_LOCAL = frozenset({"seed", "data.fold", "data.data_dir", "train.threads", "train.progress", "train.device", "train.log_to",
                       "train.checkpoint_every", "train.checkpoint_minutes"})


@dataclass
class DataConfig:
    """Which data, which fold, and how the validation part is carved.

    ``dev_folds = K > 0`` selects settings without the test set: the test part
    is dropped and the train + valid groups are dealt into K seeded folds;
    ``fold`` is then the held-out fold (see ``MultimodalDataset.development_folds``).
    """

    name: str = "synthetic"
    data_dir: str | None = None
    fold: int | None = None
    valid_fraction: float = 0.15
    split_seed: int = 0
    dev_folds: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MissingConfig:
    """Missing-modality protocol: train rate, and test rate or fixed test condition."""

    rate: float = 0.0
    test_rate: float | None = None
    test_condition: str | None = None
    mask_seed: int | None = None

    @property
    def effective_test_rate(self) -> float:
        return self.rate if self.test_rate is None else self.test_rate


@dataclass
class TrainConfig:
    """Optimisation, model selection and run mechanics.

    ``threads``: torch intra-op threads (None = the cores available, see
    :mod:`imer.training.threads`). ``eval_test_each_epoch``: also evaluate the
    test split after every epoch (per-epoch test curves in ``history.jsonl``;
    off by default: selection never needs it). ``patience``: early stopping
    after that many epochs without a better validation score (0 = off).
    ``checkpoint_every`` / ``checkpoint_minutes``: resume checkpoint interval in
    epochs / minutes of training (0 = off; also written at the first epoch of
    each stage and at the end). By default once a minute: an interruption loses
    at most a minute, and writing costs at most a fraction of a percent of the run.
    ``bucket``: length-bucketed batches for dialogue methods, pooled over
    this many batches (0 = plain shuffling).
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    grad_clip: float = 0.0
    select_metric: str | None = None
    selection: str = "valid"
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    eval_test_each_epoch: bool = False
    patience: int = 0
    checkpoint_every: int = 0
    checkpoint_minutes: float = 1.0
    bucket: int = 8
    log_to: str | None = None


@dataclass
class RunConfig:
    """Everything that determines a run's numbers."""

    method: str = "early-fusion"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
