"""The typed run config: what determines a run's numbers, section by section.

Every field is declared once, with its type, default, allowed range or
choices, and help text (:func:`imer.fields.option`, shared with the methods' options); validation (:mod:`imer.config.validation`),
``--set`` parsing, the config hash (``run_local``), resume checks
(``resume_free``), ``imer list --options`` and docs/options.md all read
them from here. Adding a run option is one line in its section below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from imer.evaluation.metrics import TASKS, select_metrics
from imer.fields import AT_LEAST_1, FINITE, FRACTION, NON_NEGATIVE, POSITIVE, SEED, UNIT, Range, option  # noqa: F401  (Range: imported from here too)

SECTIONS = ("data", "missing", "train")


@dataclass
class DataConfig:
    """Which data, which fold, and how the validation part is carved."""

    name: str = option("synthetic", "registered dataset name or path to a custom .npz file")
    data_dir: str | None = option(None, "data root (default: $IMER_DATA); stored resolved", run_local=True, resume_free=True)
    fold: int | None = option(None, "held-out fold of a fold dataset (default: its first)", range=FINITE, run_local=True)
    valid_fraction: float = option(0.15, "share of training groups carved out for validation where the data has no validation split",
                                   range=FRACTION)
    split_seed: int = option(0, "seed of that carving and of development folds", range=SEED)
    dev_folds: int = option(0, "K > 0: drop the test part and deal train + valid groups into K seeded folds; fold = the held-out one",
                            range=NON_NEGATIVE)
    holdout: str = option("test", "the part a held-out fold plays: test (validation carved from the other folds) or valid "
                          "(a cross-validation fold of the cv protocol)", choices=("test", "valid"))
    refit: bool = option(False, "train on train + valid (the cv protocol's refit, docs/protocol.md); needs train.selection = last")
    options: dict[str, Any] = option(factory=dict, help="the loader's own options (data.options.NAME=VALUE)")


@dataclass
class MissingConfig:
    """Missing-modality protocol: train rate, and test rate or fixed test condition."""

    rate: float = option(0.0, "fraction of (utterance, modality) entries missing in training; fresh masks every epoch", range=UNIT)
    test_rate: float | None = option(None, "rate of the fixed valid/test masks (default: rate)", range=UNIT)
    test_condition: str | None = option(None, "evaluate under one fixed subset of modalities instead, e.g. at")
    mask_seed: int | None = option(None, "seed of the fixed valid/test masks (default: the run seed)", range=SEED)

    @property
    def effective_test_rate(self) -> float:
        return self.rate if self.test_rate is None else self.test_rate


@dataclass
class TrainConfig:
    """Optimisation, model selection and run mechanics."""

    epochs: int = option(30, "epoch budget", range=AT_LEAST_1, resume_free=True)
    budget: float = option(1.0, "fraction of the method's epochs and whole-epoch stage lengths this run was given (imer sweep --budget; "
                           "recorded, set only by that flag)", range=Range(0, 1, low_open=True), run_local=True)
    batch_size: int = option(32, "batch size (utterances, or dialogues for context methods)", range=AT_LEAST_1)
    lr: float = option(1e-3, "learning rate", range=POSITIVE)
    weight_decay: float = option(0.0, "weight decay", range=NON_NEGATIVE)
    optimizer: str = option("adam", "optimiser", choices=("adam", "adamw", "sgd"))
    grad_clip: float = option(0.0, "gradient norm clipping (0 = off)", range=NON_NEGATIVE)
    select_metric: str | None = option(None, "validation metric of model selection (default: acc for classification, acc2 for regression)",
                                       choices=tuple(name for task in TASKS for name in select_metrics(task)))
    selection: str = option("valid", "selection rule: valid, the published code's (optimistic) test-set selection, or last "
                            "(the final epoch: the cv protocol's refit)", choices=("valid", "test-published", "last"))
    device: str = option("cpu", "torch device", pattern=(r"^(cpu|auto|mps|cuda(:\d+)?)$", "cpu, cuda, cuda:N, mps or auto"),
                         run_local=True, resume_free=True)
    threads: int | None = option(None, "torch intra-op threads (default: the cores available)", range=AT_LEAST_1, run_local=True,
                                 resume_free=True)
    progress: bool = option(True, "show a progress bar", run_local=True, resume_free=True)
    eval_test_each_epoch: bool = option(False, "also evaluate the test split after every epoch (per-epoch test curves in history.jsonl)")
    patience: int = option(0, "stop after this many epochs without a better validation score (0 = off)", range=NON_NEGATIVE)
    checkpoint_every: int = option(0, "resume checkpoint every N epochs (0 = off; also at each stage's first epoch and at the end)",
                                   range=NON_NEGATIVE, run_local=True, resume_free=True)
    checkpoint_minutes: float = option(1.0, "resume checkpoint every N minutes of training (0 = off)", range=NON_NEGATIVE, run_local=True,
                                       resume_free=True)
    bucket: int = option(8, "length-bucketed batches for dialogue methods, pooled over this many batches (0 = plain shuffling)",
                         range=NON_NEGATIVE)
    log_to: str | None = option(None, "also log every epoch to TensorBoard or MLflow", choices=("tensorboard", "mlflow"), run_local=True)


@dataclass
class RunConfig:
    """Everything that determines a run's numbers."""

    method: str = option("early-fusion", "the method (see `imer list`)")
    seed: int = option(0, "seeds initialisation, shuffling, training masks and test masks", range=SEED, run_local=True)
    data: DataConfig = option(factory=DataConfig)
    missing: MissingConfig = option(factory=MissingConfig)
    train: TrainConfig = option(factory=TrainConfig)
    model: dict[str, Any] = option(factory=dict, help="the method's options (model.NAME=VALUE; `imer list --options METHOD`)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_fields() -> dict[str, dataclasses.Field]:
    """Every option of a run config by dotted name (``seed``, ``train.lr``, ...), sections' fields in declaration order."""
    out = {f.name: f for f in dataclasses.fields(RunConfig) if f.name in ("method", "seed")}
    for section in SECTIONS:
        cls = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}[section]
        out.update({f"{section}.{f.name}": f for f in dataclasses.fields(cls)})
    return out


def _flagged(flag: str) -> frozenset[str]:
    return frozenset(name for name, f in run_fields().items() if f.metadata.get(flag))


# Fields that never change a run's numbers or name the cell rather than the setting: the config hash leaves them out and
# the report does not compare them.
RUN_LOCAL = _flagged("run_local")
# Fields that may differ between an interrupted run and its resumption (more epochs extend a run).
RESUME_FREE = _flagged("resume_free")
