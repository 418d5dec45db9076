"""One run from one config: data -> masks -> model -> trainer -> run directory.

A run directory holds ``config.json``, ``environment.json``, ``metrics.json``,
``history.jsonl``, ``model.safetensors`` (best weights), ``scaler.npz``,
``masks.npz`` (the fixed valid/test masks), ``predictions_test.csv`` and
``checkpoint.pt`` (resume state, written every ``train.checkpoint_every`` epochs or
``train.checkpoint_minutes`` minutes, at stage starts and at the end, for ``--resume``), and
``features.json`` (which extractor made each modality) when the dataset's feature origin is known.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import imer
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
from imer.evaluation.metrics import headline_metrics, is_better, task_metrics
from imer.experiments.config import RunConfig
from imer.experiments.predictions import prediction_rows, write_predictions
from imer.experiments.spec import config_hash, dataset_label
from imer.experiments.validation import check_select_metric
from imer.io import atomic_write, read_json, write_json
from imer.models import DataSpec, IMERModel, create_model, get_model_class
from imer.training.checkpoint import load_weights, save_weights
from imer.training.threads import configure_threads
from imer.training.tracking import tracking_hooks
from imer.training.trainer import CheckpointPolicy, EvalSet, Trainer, predict_split


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


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the imer source tree (``+dirty`` with uncommitted changes); None outside a checkout.

    Read once per process, at its first run: Python keeps the code it imported, so a long sweep whose
    checkout moves on (``--workers 1`` runs every cell in one process) still records the code it ran.
    """
    root = Path(imer.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far, in MB (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024)


def environment_info() -> dict[str, Any]:
    """Versions and machine, written next to every result."""
    return {
        "imer": imer.__version__,
        "commit": source_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "openmp": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS") if k in os.environ},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def feature_manifest(config: RunConfig, dataset: MultimodalDataset) -> dict[str, Any] | None:
    """The dataset's feature manifest: carried by the data (``imer features build``) or known for a built-in dataset."""
    from imer.features.manifest import builtin_manifest

    return dataset.manifest if dataset.manifest is not None else builtin_manifest(config.data.name)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} asked for, but no GPU is visible; use --device cpu")
    return torch.device(name)


def default_select_metric(task: str) -> str:
    return headline_metrics(task)[0]


# Every file a run folder may hold; --overwrite removes them before training again.
RUN_FILES = ("config.json", "run_spec.json", "environment.json", "metrics.json", "history.jsonl", "model.safetensors", "scaler.npz",
             "masks.npz", "predictions_test.csv", "checkpoint.pt", "conditions.json", "error.json")
SIGN_METRICS = ("acc2", "f1", "acc2_with_zero", "acc7")


def train(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    dataset: MultimodalDataset | None = None,
    overwrite: bool = False,
    variant: str | None = None,
    hooks: list[Callable[[dict[str, Any]], None]] | None = None,
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
    """
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


def prepare_out(out: Path, config: RunConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to lose or mix a run already in ``out`` (see :func:`train`); check a resume is consistent."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run in --out, or replace it, not both")
    finished, interrupted = (out / "metrics.json").is_file(), (out / "checkpoint.pt").is_file()
    if not resume and (finished or interrupted):
        if not overwrite:
            held = "a finished run (metrics.json)" if finished else "an interrupted run (checkpoint.pt)"
            raise IMERError(f"{out}: already holds {held}; pass --resume to continue it, --overwrite to replace it, or choose another --out")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if not resume:
        return
    if finished and not interrupted:
        raise IMERError(f"{out}: the finished run has no checkpoint.pt to continue from; pass --overwrite to train it again, or choose another --out")
    if (out / "config.json").is_file():
        _check_same_run(read_json(out / "config.json", "run config"), config, out)
    if interrupted:
        from imer.training.checkpoint import load_checkpoint

        done = int(load_checkpoint(out / "checkpoint.pt")["epoch"]) + 1
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
            if select in SIGN_METRICS:
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
    started = time.perf_counter()
    config.validate(check_data=dataset is None)
    device = _device(config.train.device)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    prepare_out(out, config, resume, overwrite)
    configure_threads(config.train.threads)
    torch.manual_seed(config.seed)
    data = prepare_data(config, dataset)
    modalities = data.dataset.modalities
    eval_protocol = evaluation_protocol(config, modalities)
    masks = {s: split_mask(config, data, s, eval_protocol) for s in ("valid", "test")}
    train_protocol = RandomMissing(config.missing.rate)
    train_available = data.dataset.available[data.indices["train"]]

    def train_mask(epoch: int) -> np.ndarray:
        return train_protocol.apply(train_available, np.random.default_rng(derive_seed("train-mask", config.seed, epoch)))

    select = config.train.select_metric or default_select_metric(data.spec.task)
    check_training_data(config, data, select)
    model = create_model(config.method, data.spec, config.model)
    config.model = _config_values(model)
    dataset_id = data.dataset.name if dataset is not None else dataset_label(config.data.name)
    write_json(out / "config.json", config.to_dict())
    run_spec = {
        "modalities": modalities,
        "dims": list(data.spec.dims),
        "task": data.spec.task,
        "num_classes": data.spec.num_classes,
        "class_names": data.dataset.class_names,
        "uses_context": model.uses_context,
    }
    if dataset is not None:
        run_spec["in_memory_data"] = {"name": data.dataset.name, "utterances": len(data.dataset), "fingerprint": dataset_fingerprint(data.dataset)}
    write_json(out / "run_spec.json", run_spec)
    write_json(out / "environment.json", environment_info())
    manifest = feature_manifest(config, data.dataset)
    if manifest is not None:
        write_json(out / "features.json", manifest)
    data.scaler.save(out / "scaler.npz")
    with atomic_write(out / "masks.npz", "wb") as fh:
        np.savez(fh, **{f"{s}_available": m for s, m in masks.items()}, **{f"{s}_index": data.indices[s] for s in masks})

    trainer = Trainer(
        model,
        epochs=config.train.epochs,
        batch_size=config.train.batch_size,
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        optimizer=config.train.optimizer,
        grad_clip=config.train.grad_clip,
        select_metric=select,
        selection=config.train.selection,
        seed=config.seed,
        device=device,
        run_dir=out,
        progress=config.train.progress,
        eval_test_each_epoch=config.train.eval_test_each_epoch,
        patience=config.train.patience,
        checkpoint=CheckpointPolicy(config.train.checkpoint_every, config.train.checkpoint_minutes),
        bucket=config.train.bucket,
        hooks=list(hooks or []) + tracking_hooks(config.train.log_to, out, config.to_dict(), variant or config.method),
    )
    if not resume and (out / "history.jsonl").exists():
        (out / "history.jsonl").unlink()
    sets = {s: EvalSet(data.batchers[s], masks[s]) for s in ("valid", "test")}
    try:
        result = trainer.fit(data.batchers["train"], train_mask, sets["valid"], sets["test"], resume=resume)
    finally:
        for hook in trainer.hooks:
            if hasattr(hook, "close"):
                hook.close()

    model.load_state_dict(result.best_state)
    model.on_epoch_start(result.best_epoch)
    save_weights(out / "model.safetensors", model.state_dict())
    test_acc = predict_split(model, sets["test"], config.train.batch_size, trainer.device)
    valid_metrics = predict_split(model, sets["valid"], config.train.batch_size, trainer.device).compute()
    test_metrics = test_acc.compute()
    index, labels, preds, available = test_acc.ordered()
    write_predictions(out / "predictions_test.csv", prediction_rows(
        data.spec.task, preds, data.dataset.utterance_ids[data.indices["test"]][index], modalities, available, data.dataset.class_names, labels))
    baseline, baseline_name = constant_baseline(data, select)
    if config.train.selection == "valid" and not is_better(select, float(valid_metrics[select]), baseline):
        warnings.warn(
            f"train.select_metric: the selected epoch {result.best_epoch} scores {select} = {valid_metrics[select]:.4f} on validation, "
            f"no better than a constant prediction ({baseline_name}: {baseline:.4f}); the model may have learned nothing this metric "
            f"can see. On imbalanced data select by a metric a constant cannot win (e.g. --set train.select_metric="
            f"{'ua' if data.spec.task == 'classification' else 'mae'}), see docs/protocol.md",
            stacklevel=2,
        )
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
            "constant_baseline": {"valid": baseline, "prediction": baseline_name},
        },
        "missing": {
            "train_rate": config.missing.rate,
            "test_protocol": eval_protocol.name,
        },
        "missing_fraction": {"train": result.train_missing_fraction, "valid": missing_fraction(masks["valid"]), "test": missing_fraction(masks["test"])},
        "valid": valid_metrics,
        "test": test_metrics,
        "test_by_pattern": test_acc.by_pattern(),
        "seconds_per_epoch": result.seconds_per_epoch,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_memory_mb(),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "warnings": sorted({" ".join(str(w.message).split()) for w in caught}),
    }
    if result.fit is not None:
        metrics["fit"] = result.fit
    write_json(out / "metrics.json", metrics)
    return metrics


# Fields that may differ between an interrupted run and its resumption (more epochs extend a run).
_RESUME_FREE = {("train", "progress"), ("train", "threads"), ("train", "device"), ("train", "epochs"), ("train", "checkpoint_every"),
                ("train", "checkpoint_minutes"), ("data", "data_dir")}


def _check_same_run(saved: dict[str, Any], config: RunConfig, out: Path) -> None:
    """Refuse to resume a run with a config that would change its numbers."""
    current = config.to_dict()
    for section in ("method", "seed", "data", "missing", "train"):
        a, b = saved.get(section), current.get(section)
        if isinstance(a, dict):
            diff = sorted(k for k in set(a) | set(b) if (section, k) not in _RESUME_FREE and a.get(k) != b.get(k) and not (section == "data" and k == "fold" and b.get(k) is None))
            if diff:
                raise IMERError(f"{out}: cannot resume, {section}.{diff[0]} differs from the interrupted run ({a.get(diff[0])!r} vs {b.get(diff[0])!r}); use the same settings, or --overwrite to start again")
        elif a != b:
            raise IMERError(f"{out}: cannot resume, {section} differs from the interrupted run ({a!r} vs {b!r}); use the same settings, or --overwrite to start again")
    saved_model = saved.get("model", {})
    changed = sorted(k for k, v in config.model.items() if k in saved_model and saved_model[k] != v)
    if changed:
        raise IMERError(f"{out}: cannot resume, model.{changed[0]} differs from the interrupted run ({saved_model[changed[0]]!r} vs {config.model[changed[0]]!r}); use the same settings, or --overwrite to start again")


def dataset_fingerprint(dataset: MultimodalDataset) -> str:
    """SHA-256 (16 hex digits) of a dataset's arrays: the same data gives the same fingerprint."""
    import hashlib

    digest = hashlib.sha256()
    parts = [dataset.labels, dataset.available, dataset.utterance_ids, dataset.group_ids, dataset.order]
    parts += [dataset.split if dataset.split is not None else np.array([]), dataset.fold if dataset.fold is not None else np.array([])]
    for m, x in dataset.features.items():
        digest.update(m.encode())
        parts.append(np.where(np.isfinite(x), x, 0))
    for array in parts:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _config_values(model: IMERModel) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(model.config)


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate or predict."""

    config: RunConfig
    model: IMERModel
    scaler: Standardizer
    spec: DataSpec
    class_names: list[str] | None


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild a trained model from its run directory (safetensors weights, JSON config).

    Every file is checked before use: a missing, truncated, crafted or
    mismatched file raises :class:`DataError` naming it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found (give the --out folder of `imer train`)")
    for name in ("config.json", "run_spec.json", "model.safetensors", "scaler.npz", "metrics.json"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir}: not a finished run directory ({name} missing); train it to the end or --resume it")
    raw = read_json(run_dir / "config.json", "run config")
    if not isinstance(raw, dict):
        raise DataError(f"{run_dir / 'config.json'}: not a run config (expected a JSON object)")
    try:
        config = RunConfig.from_dict(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run's own warnings were shown when it was trained
            config.validate(check_data=False)  # the data is checked when (and if) it is loaded
    except ConfigError as exc:
        raise DataError(f"{run_dir / 'config.json'}: {exc}") from None
    spec, class_names = _read_run_spec(run_dir / "run_spec.json")
    model = create_model(config.method, spec, config.model)
    _load_matching_weights(model, run_dir / "model.safetensors")
    try:
        best_epoch = int(read_json(run_dir / "metrics.json", "run metrics")["selection"]["best_epoch"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{run_dir / 'metrics.json'}: no selection.best_epoch; the run folder is damaged, train again") from None
    model.on_epoch_start(best_epoch)
    model.eval()
    scaler = Standardizer.load(run_dir / "scaler.npz", list(spec.modalities), spec.dim_of)
    return LoadedRun(config, model, scaler, spec, class_names)


def _read_run_spec(path: Path) -> tuple[DataSpec, list[str] | None]:
    info = read_json(path, "run spec")
    try:
        modalities = [str(m) for m in info["modalities"]]
        dims = [int(d) for d in info["dims"]]
        task, num_classes = str(info["task"]), int(info["num_classes"])
        class_names = None if info.get("class_names") is None else [str(c) for c in info["class_names"]]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: lacks modalities, dims, task or num_classes; the run folder is damaged, train again") from None
    if len(dims) != len(modalities) or min(dims, default=0) < 1 or task not in ("classification", "regression") or num_classes < 1:
        raise DataError(f"{path}: inconsistent modalities/dims/task/num_classes; the run folder is damaged, train again")
    return DataSpec(tuple(modalities), tuple(dims), task, num_classes), class_names


def _load_matching_weights(model: IMERModel, path: Path) -> None:
    """Load weights after checking every tensor's name and shape against the model built from the config."""
    weights = load_weights(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        name = (missing or extra)[0]
        raise DataError(f"{path}: weights do not fit the run's config (tensor '{name}' {'missing' if missing else 'unexpected'}); "
                        "config.json and model.safetensors come from different runs")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise DataError(f"{path}: weights do not fit the run's config (tensor '{name}' has shape {tuple(weights[name].shape)}, "
                            f"the model expects {tuple(tensor.shape)}); config.json and model.safetensors come from different runs")
    model.load_state_dict(weights)
