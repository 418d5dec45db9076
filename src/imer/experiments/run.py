"""One run from one config: data -> masks -> model -> trainer -> run folder (:mod:`imer.runfolder`).

:func:`train` checks the config, prepares the folder (refusing to mix or lose
runs), loads and standardises the data, draws the fixed valid/test masks,
builds the method, records the run's inputs, fits, evaluates the selected
epoch and records ``metrics.json``; each step is a function below.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imer.config import RESUME_FREE, RunConfig, check_select_metric, config_hash, dataset_label, validate_run_config
from imer.data import (
    FixedCondition,
    MultimodalDataset,
    RandomMissing,
    SplitBatcher,
    Standardizer,
    derive_seed,
    fixed_mask,
    load_dataset,
    missing_fraction,
    parse_condition,
)
from imer.errors import ConfigError, DataError, IMERError
from imer.evaluation.metrics import METRICS, MetricAccumulator, headline_metrics, is_better, task_metrics
from imer.experiments.environment import environment_info, feature_manifest, peak_memory_mb
from imer.experiments.loading import dataset_fingerprint, resolve_device
from imer.models import DataSpec, IMERModel, create_model, get_model_class
from imer.runfolder import RunFolder
from imer.runfolder.folder import locked
from imer.runfolder.predictions import prediction_rows
from imer.training.threads import configure_threads
from imer.training.tracking import tracking_hooks
from imer.training.trainer import EvalSet, FitResult, Trainer, predict_split


@dataclass
class PreparedData:
    """A dataset cut into standardised split batchers, plus what produced them."""

    dataset: MultimodalDataset
    indices: dict[str, np.ndarray]
    scaler: Standardizer
    batchers: dict[str, SplitBatcher]
    spec: DataSpec


def spec_of(dataset: MultimodalDataset) -> DataSpec:
    return DataSpec(tuple(dataset.modalities), tuple(dataset.dims.values()), dataset.task, dataset.num_classes)


def prepare_data(config: RunConfig, dataset: MultimodalDataset | None = None, scaler: Standardizer | None = None) -> PreparedData:
    """Load and split the data of ``config``; fit the scaler on train unless one is given."""
    dataset = dataset or load_dataset(config.data.name, config.data.data_dir, **config.data.options)
    if config.data.dev_folds:
        dataset = dataset.development_folds(config.data.dev_folds, config.data.split_seed)
    fold = config.data.fold
    if fold is None and dataset.fold is not None:
        fold = dataset.folds[0]
        config.data.fold = fold
    indices = dataset.split_indices(fold, config.data.valid_fraction, config.data.split_seed, config.data.holdout, config.data.refit)
    scaler = scaler or Standardizer.fit(dataset.features, indices["train"], dataset.available)
    scaled = scaler.transform(dataset.features, dataset.available)
    by_group = get_model_class(config.method).reads_dialogues(config.model)
    batchers = {}
    for split, idx in indices.items():
        batchers[split] = SplitBatcher(
            {m: x[idx] for m, x in scaled.items()},
            dataset.labels[idx],
            dataset.group_ids[idx] if by_group else None,
            dataset.order[idx],
            dataset.speakers[idx] if dataset.speakers is not None else None,
        )
    return PreparedData(dataset, indices, scaler, batchers, spec_of(dataset))


def evaluation_protocol(config: RunConfig, modalities: list[str], rate: float | None = None, condition: str | None = None) -> RandomMissing | FixedCondition:
    """The protocol for valid/test masks: a fixed condition, else the test rate."""
    where = "--condition" if condition is not None else "missing.test_condition"
    condition = condition if condition is not None else (config.missing.test_condition if rate is None else None)
    if condition:
        try:
            return parse_condition(condition, modalities)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return RandomMissing(config.missing.effective_test_rate if rate is None else rate)


def split_mask(config: RunConfig, data: PreparedData, split: str, protocol: RandomMissing | FixedCondition) -> np.ndarray:
    """The fixed mask of ``split``: same dataset, fold, protocol and mask seed -> same mask for every method."""
    seed = config.missing.mask_seed if config.missing.mask_seed is not None else config.seed
    purpose = f"{data.dataset.name}/fold={config.data.fold}/{split}"
    return fixed_mask(protocol, data.dataset.available[data.indices[split]], seed, purpose)


def default_select_metric(task: str) -> str:
    return headline_metrics(task)[0]


def train(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    dataset: MultimodalDataset | None = None,
    overwrite: bool = False,
    variant: str | None = None,
    hooks: list[Callable[[dict[str, Any]], None]] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run; writes the run directory and returns ``metrics.json``'s content.

    A folder that already holds a run (``metrics.json`` or ``checkpoint.pt``) is
    refused unless ``resume`` (continue it) or ``overwrite`` (replace it) is given.
    Warnings raised on the way are listed in ``metrics.json`` under ``warnings``.
    ``config`` is not changed (the resolved copy is saved as ``config.json``).
    ``dataset`` trains on an in-memory dataset instead of loading
    ``config.data.name``; ``run_spec.json`` then records its fingerprint, so a
    later evaluation can check it gets the same data. ``variant`` is the name
    the run is reported under (default: the method). ``hooks`` are called with
    every epoch's history record (see :mod:`imer.training.tracking`).
    ``progress=False`` silences the per-epoch progress (``None``: as
    ``config.train.progress`` says).
    """
    if progress is not None:
        config = replace(config, train=replace(config.train, progress=bool(progress)))
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return _train(copy.deepcopy(config), Path(out_dir), resume, dataset, overwrite, caught, variant, hooks)
    finally:
        _reemit(caught)  # shown (or recorded by a caller) once the run's own record is complete


def _reemit(caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for w in caught:
        if str(w.message) not in seen:
            seen.add(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def prepare_out(folder: RunFolder, config: RunConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to lose or mix a run already in ``folder`` (see :func:`train`); check a resume is consistent."""
    out = folder.path
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run in --out, or replace it, not both")
    finished, interrupted = folder.finished, folder.interrupted
    if not resume and (finished or interrupted):
        if not overwrite:
            held = "a finished run (metrics.json)" if finished else "an interrupted run (checkpoint.pt)"
            raise IMERError(f"{out}: already holds {held}; pass --resume to continue it, --overwrite to replace it, or choose another --out")
        folder.clear()
    if not resume:
        return
    if finished and not interrupted:
        raise IMERError(f"{out}: the finished run has no checkpoint.pt to continue from; pass --overwrite to train it again, or choose another --out")
    if folder.has("config.json"):
        _check_same_run(folder.read("config.json", "run config"), config, out)
    if interrupted:
        done = int(folder.load_checkpoint()["epoch"]) + 1
        if done > config.train.epochs:
            raise ConfigError(
                f"train.epochs: the run in {out} has already trained {done} epochs, more than the {config.train.epochs} asked for; "
                f"resume with --epochs {done} or more, or start again with --overwrite"
            )


def check_training_data(config: RunConfig, data: PreparedData, select: str) -> None:
    """Refuse data a run cannot learn from honestly (checked once the data is loaded, before training)."""
    dataset = data.dataset
    check_select_metric(select, dataset.task)
    train_available = dataset.available[data.indices["train"]]
    never = [m for j, m in enumerate(dataset.modalities) if not train_available[:, j].any()]
    if never:
        raise DataError(
            f"dataset '{dataset.name}': modality '{never[0]}' is absent in every training utterance, so its part of the model "
            f"would never be trained and would still be used at test time; remove it from the dataset (e.g. rebuild it without x_{never[0]})"
        )
    if dataset.task == "regression":
        low, high = float(dataset.labels.min()), float(dataset.labels.max())
        if low >= 0 or high <= 0:
            problem = (f"dataset '{dataset.name}': regression labels lie in [{low:g}, {high:g}], but acc2, f1 and acc7 read the sign "
                       "of a label as its class (negative < 0 < positive)")
            if METRICS[select].reads_sign:
                raise DataError(f"{problem}; centre the labels (e.g. subtract the scale's midpoint: 1..5 -> -2..2) or select by --set train.select_metric=mae")
            warnings.warn(f"{problem}; those metrics are meaningless for this data (selection uses {select})", stacklevel=2)


def constant_baseline(data: PreparedData, metric: str) -> tuple[float, str]:
    """The best validation ``metric`` any constant prediction reaches (majority class, always positive, ...)."""
    dataset = data.dataset
    labels = dataset.labels[data.indices["valid"]]
    n = len(labels)
    if dataset.task == "classification":
        names = dataset.class_names or [str(c) for c in range(dataset.num_classes)]
        candidates = [(np.tile(np.eye(dataset.num_classes)[c], (n, 1)), f"always '{names[c]}'") for c in range(dataset.num_classes)]
    else:
        train_labels = dataset.labels[data.indices["train"]]
        values = (1.0, -1.0, float(train_labels.mean()), float(np.median(train_labels)))
        candidates = [(np.full(n, v), f"always {v:.3g}") for v in values]
    best: tuple[float, str] | None = None
    for prediction, name in candidates:
        score = float(task_metrics(dataset.task, labels, prediction, dataset.num_classes)[metric])
        if best is None or is_better(metric, score, best[0]):
            best = (score, name)
    assert best is not None
    return best


def selection_protocol(config: RunConfig) -> str:
    """The protocol that chose this run's settings and epoch: ``valid``, ``test-published``, ``cv`` (a refit) or ``cv-fold``."""
    if config.data.refit:
        return "cv"
    if config.data.holdout == "valid":
        return "cv-fold"
    return config.train.selection


def _train(config: RunConfig, out: Path, resume: bool, dataset: MultimodalDataset | None, overwrite: bool, caught: list,
           variant: str | None, hooks: list[Callable[[dict[str, Any]], None]] | None) -> dict[str, Any]:
    """The steps of a run: check, prepare the folder and the data, build, record the inputs, fit, evaluate, record."""
    started = time.perf_counter()
    validate_run_config(config, check_data=dataset is None)
    device = resolve_device(config.train.device)  # before anything is written
    folder = RunFolder(out)
    folder.claim()
    with locked(out):
        return _train_steps(config, folder, device, started, resume, dataset, overwrite, caught, variant, hooks)


def _train_steps(config: RunConfig, folder: RunFolder, device: torch.device, started: float, resume: bool,
                 dataset: MultimodalDataset | None, overwrite: bool, caught: list, variant: str | None,
                 hooks: list[Callable[[dict[str, Any]], None]] | None) -> dict[str, Any]:
    out = folder.path
    prepare_out(folder, config, resume, overwrite)
    configure_threads(config.train.threads)
    torch.manual_seed(config.seed)
    data = prepare_data(config, dataset)
    eval_protocol = evaluation_protocol(config, data.dataset.modalities)
    sets = {s: EvalSet(data.batchers[s], split_mask(config, data, s, eval_protocol)) for s in ("valid", "test")}
    select = config.train.select_metric or default_select_metric(data.spec.task)
    check_training_data(config, data, select)
    model = create_model(config.method, data.spec, config.model)
    config.model = asdict(model.config)
    _record_inputs(folder, config, data, model, sets, in_memory=dataset is not None)
    trainer = Trainer(model, config.train, select_metric=select, seed=config.seed, device=device, run_dir=out,
                      hooks=list(hooks or []) + tracking_hooks(config.train.log_to, out, config.to_dict(), variant or config.method))
    if not resume:
        folder.clear_history()
    try:
        result = _fit(trainer, config, data, sets["valid"], sets["test"], resume)
        valid_metrics, test_acc = _evaluate_best(folder, model, result, config, data, sets, trainer.device)
        baseline = constant_baseline(data, select)
        _warn_if_constant_wins(config, data, select, result.best_epoch, valid_metrics, baseline)
        dataset_id = data.dataset.name if dataset is not None else dataset_label(config.data.name)
        metrics = {
            "method": config.method,
            "variant": variant or config.method,
            "config_hash": config_hash(config.to_dict(), dataset_id),
            "dataset": data.dataset.name,
            "dataset_id": dataset_id,
            "seed": config.seed,
            "fold": config.data.fold,
            "task": data.spec.task,
            "selection": {
                "rule": config.train.selection,
                "protocol": selection_protocol(config),
                "metric": select,
                "best_epoch": result.best_epoch,
                "epochs": config.train.epochs,
                "epochs_run": len(result.history),
                "patience": config.train.patience,
                "stopped_early": result.stopped_early,
                "constant_baseline": {"valid": baseline[0], "prediction": baseline[1]},
            },
            "missing": {"train_rate": config.missing.rate, "test_protocol": eval_protocol.name},
            "missing_fraction": {"train": result.train_missing_fraction, "valid": missing_fraction(sets["valid"].available),
                                 "test": missing_fraction(sets["test"].available)},
            "valid": valid_metrics,
            "test": test_acc.compute(),
            "test_by_pattern": test_acc.by_pattern(),
            "seconds_per_epoch": result.seconds_per_epoch,
            "wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_memory_mb(),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "warnings": sorted({" ".join(str(w.message).split()) for w in caught}),
        }
        if result.fit is not None:
            metrics["fit"] = result.fit
        folder.write("metrics.json", metrics)
        for hook in trainer.hooks:
            if hasattr(hook, "finish"):
                hook.finish(metrics)  # tracking sinks: hyper-parameters and final metrics
        return metrics
    finally:
        for hook in trainer.hooks:  # tracking sinks are closed whatever happens
            if hasattr(hook, "close"):
                hook.close()


def _record_inputs(folder: RunFolder, config: RunConfig, data: PreparedData, model: IMERModel, sets: dict[str, EvalSet], in_memory: bool) -> None:
    """Everything a run folder holds before training: the marker, config, data spec, environment, feature origin, scaler, fixed masks."""
    folder.mark()
    folder.write("config.json", config.to_dict())
    run_spec = {
        "modalities": data.dataset.modalities,
        "dims": list(data.spec.dims),
        "task": data.spec.task,
        "num_classes": data.spec.num_classes,
        "class_names": data.dataset.class_names,
        "uses_context": model.uses_context,
    }
    if data.spec.task == "regression":  # `imer predict` keeps new scores inside it
        train_labels = data.dataset.labels[data.indices["train"]]
        run_spec["label_range"] = [float(train_labels.min()), float(train_labels.max())]
    if in_memory:
        run_spec["in_memory_data"] = {"name": data.dataset.name, "utterances": len(data.dataset), "fingerprint": dataset_fingerprint(data.dataset)}
    folder.write("run_spec.json", run_spec)
    folder.write("environment.json", environment_info())
    manifest = feature_manifest(config, data.dataset)
    if manifest is not None:
        folder.write("features.json", manifest)
    folder.save_scaler(data.scaler)
    folder.save_masks({s: e.available for s, e in sets.items()}, data.indices)


def _fit(trainer: Trainer, config: RunConfig, data: PreparedData, valid: EvalSet, test: EvalSet, resume: bool) -> FitResult:
    """Train with fresh training masks every epoch (seeded by run seed and epoch)."""
    train_protocol = RandomMissing(config.missing.rate)
    train_available = data.dataset.available[data.indices["train"]]

    def train_mask(epoch: int) -> np.ndarray:
        return train_protocol.apply(train_available, np.random.default_rng(derive_seed("train-mask", config.seed, epoch)))

    return trainer.fit(data.batchers["train"], train_mask, valid, test, resume=resume)


def _evaluate_best(folder: RunFolder, model: IMERModel, result: FitResult, config: RunConfig, data: PreparedData,
                   sets: dict[str, EvalSet], device: torch.device) -> tuple[dict[str, Any], MetricAccumulator]:
    """Restore the selected epoch, save its weights and test predictions; its validation metrics and test accumulator."""
    model.load_state_dict(result.best_state)
    model.on_epoch_start(result.best_epoch)
    folder.save_weights(model.state_dict())
    test_acc = predict_split(model, sets["test"], config.train.batch_size, device)
    valid_metrics = predict_split(model, sets["valid"], config.train.batch_size, device).compute()
    index, labels, preds, available = test_acc.ordered()
    folder.save_predictions(prediction_rows(data.spec.task, preds, data.dataset.utterance_ids[data.indices["test"]][index],
                                            data.dataset.modalities, available, data.dataset.class_names, labels))
    return valid_metrics, test_acc


def _warn_if_constant_wins(config: RunConfig, data: PreparedData, select: str, best_epoch: int, valid_metrics: dict[str, Any],
                           baseline: tuple[float, str]) -> None:
    score, name = baseline
    if config.train.selection == "valid" and not is_better(select, float(valid_metrics[select]), score):
        warnings.warn(
            f"train.select_metric: the selected epoch {best_epoch} scores {select} = {valid_metrics[select]:.4f} on validation, "
            f"no better than a constant prediction ({name}: {score:.4f}); the model may have learned nothing this metric "
            f"can see. On imbalanced data select by a metric a constant cannot win (e.g. --set train.select_metric="
            f"{'ua' if data.spec.task == 'classification' else 'mae'}), see docs/protocol.md",
            stacklevel=3,
        )


def _check_same_run(saved: dict[str, Any], config: RunConfig, out: Path) -> None:
    """Refuse to resume a run with a config that would change its numbers."""
    current = config.to_dict()
    for section in ("method", "seed", "data", "missing", "train"):
        a, b = saved.get(section), current.get(section)
        if isinstance(a, dict):
            diff = sorted(k for k in set(a) | set(b) if f"{section}.{k}" not in RESUME_FREE and a.get(k) != b.get(k) and not (section == "data" and k == "fold" and b.get(k) is None))
            if diff:
                raise IMERError(f"{out}: cannot resume, {section}.{diff[0]} differs from the interrupted run ({a.get(diff[0])!r} vs {b.get(diff[0])!r}); use the same settings, or --overwrite to start again")
        elif a != b:
            raise IMERError(f"{out}: cannot resume, {section} differs from the interrupted run ({a!r} vs {b!r}); use the same settings, or --overwrite to start again")
    saved_model = saved.get("model", {})
    changed = sorted(k for k, v in config.model.items() if k in saved_model and saved_model[k] != v)
    if changed:
        raise IMERError(f"{out}: cannot resume, model.{changed[0]} differs from the interrupted run ({saved_model[changed[0]]!r} vs {config.model[changed[0]]!r}); use the same settings, or --overwrite to start again")
