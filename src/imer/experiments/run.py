"""One run from one config: data -> masks -> model -> trainer -> run directory.

A run directory holds ``config.json``, ``environment.json``, ``metrics.json``,
``history.jsonl``, ``model.safetensors`` (best weights), ``scaler.npz``,
``masks.npz`` (the fixed valid/test masks), ``predictions_test.csv`` and
``checkpoint.pt`` (last epoch, for ``--resume``), and ``features.json`` (which
extractor made each modality) when the dataset's feature origin is known.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
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
from imer.errors import ConfigError, IMERError
from imer.evaluation.metrics import headline_metrics
from imer.experiments.config import RunConfig
from imer.io import atomic_write, read_json, write_json
from imer.models import DataSpec, IMERModel, create_model, get_model_class
from imer.training.checkpoint import load_weights, save_weights
from imer.training.trainer import EvalSet, Trainer, predict_split


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
    fold = config.data.fold
    if fold is None and dataset.fold is not None:
        fold = dataset.folds[0]
        config.data.fold = fold
    indices = dataset.split_indices(fold, config.data.valid_fraction, config.data.split_seed)
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
    condition = condition if condition is not None else (config.missing.test_condition if rate is None else None)
    if condition:
        return parse_condition(condition, modalities)
    return RandomMissing(config.missing.effective_test_rate if rate is None else rate)


def split_mask(config: RunConfig, data: PreparedData, split: str, protocol: RandomMissing | FixedCondition) -> np.ndarray:
    """The fixed mask of ``split``: same dataset, fold, protocol and mask seed -> same mask for every method."""
    seed = config.missing.mask_seed if config.missing.mask_seed is not None else config.seed
    purpose = f"{data.dataset.name}/fold={config.data.fold}/{split}"
    return fixed_mask(protocol, data.dataset.available[data.indices[split]], seed, purpose)


def environment_info() -> dict[str, Any]:
    """Versions and machine, written next to every result."""
    return {
        "imer": imer.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
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
        raise ConfigError("train.device is cuda but no GPU is visible; use --set device=cpu")
    return torch.device(name)


def default_select_metric(task: str) -> str:
    return headline_metrics(task)[0]


def train(config: RunConfig, out_dir: str | Path, resume: bool = False, dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Train and evaluate one run; writes the run directory and returns ``metrics.json``'s content."""
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "metrics.json").exists() and not resume:
        raise IMERError(f"{out}: already holds a finished run (metrics.json); choose another --out or pass --resume")
    if resume and (out / "config.json").exists():
        _check_same_run(read_json(out / "config.json"), config, out)
    if config.train.threads:
        torch.set_num_threads(int(config.train.threads))
    torch.manual_seed(config.seed)
    data = prepare_data(config, dataset)
    modalities = data.dataset.modalities
    eval_protocol = evaluation_protocol(config, modalities)
    masks = {s: split_mask(config, data, s, eval_protocol) for s in ("valid", "test")}
    train_protocol = RandomMissing(config.missing.rate)
    train_available = data.dataset.available[data.indices["train"]]

    def train_mask(epoch: int) -> np.ndarray:
        return train_protocol.apply(train_available, np.random.default_rng(derive_seed("train-mask", config.seed, epoch)))

    model = create_model(config.method, data.spec, config.model)
    config.model = _config_values(model)
    select = config.train.select_metric or default_select_metric(data.spec.task)
    write_json(out / "config.json", config.to_dict())
    write_json(out / "run_spec.json", {
        "modalities": modalities,
        "dims": list(data.spec.dims),
        "task": data.spec.task,
        "num_classes": data.spec.num_classes,
        "class_names": data.dataset.class_names,
        "uses_context": model.uses_context,
    })
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
        device=_device(config.train.device),
        run_dir=out,
        progress=config.train.progress,
        eval_test_each_epoch=config.train.eval_test_each_epoch,
    )
    if not resume and (out / "history.jsonl").exists():
        (out / "history.jsonl").unlink()
    sets = {s: EvalSet(data.batchers[s], masks[s]) for s in ("valid", "test")}
    result = trainer.fit(data.batchers["train"], train_mask, sets["valid"], sets["test"], resume=resume)

    model.load_state_dict(result.best_state)
    model.on_epoch_start(result.best_epoch)
    save_weights(out / "model.safetensors", model.state_dict())
    test_acc = predict_split(model, sets["test"], config.train.batch_size, trainer.device)
    valid_metrics = predict_split(model, sets["valid"], config.train.batch_size, trainer.device).compute()
    test_metrics = test_acc.compute()
    _write_predictions(out / "predictions_test.csv", data, test_acc)
    metrics = {
        "method": config.method,
        "dataset": data.dataset.name,
        "seed": config.seed,
        "fold": config.data.fold,
        "task": data.spec.task,
        "selection": {"rule": config.train.selection, "metric": select, "best_epoch": result.best_epoch, "epochs": config.train.epochs},
        "missing": {
            "train_rate": config.missing.rate,
            "test_protocol": eval_protocol.name,
        },
        "missing_fraction": {"train": result.train_missing_fraction, "valid": missing_fraction(masks["valid"]), "test": missing_fraction(masks["test"])},
        "valid": valid_metrics,
        "test": test_metrics,
        "seconds_per_epoch": result.seconds_per_epoch,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    if result.fit is not None:
        metrics["fit"] = result.fit
    write_json(out / "metrics.json", metrics)
    return metrics


# Fields that may differ between an interrupted run and its resumption (more epochs extend a run).
_RESUME_FREE = {("train", "progress"), ("train", "threads"), ("train", "device"), ("train", "epochs"), ("data", "data_dir")}


def _check_same_run(saved: dict[str, Any], config: RunConfig, out: Path) -> None:
    """Refuse to resume a run with a config that would change its numbers."""
    current = config.to_dict()
    for section in ("method", "seed", "data", "missing", "train"):
        a, b = saved.get(section), current.get(section)
        if isinstance(a, dict):
            diff = sorted(k for k in set(a) | set(b) if (section, k) not in _RESUME_FREE and a.get(k) != b.get(k) and not (section == "data" and k == "fold" and b.get(k) is None))
            if diff:
                raise IMERError(f"{out}: cannot resume, {section}.{diff[0]} differs from the interrupted run ({a.get(diff[0])!r} vs {b.get(diff[0])!r})")
        elif a != b:
            raise IMERError(f"{out}: cannot resume, {section} differs from the interrupted run ({a!r} vs {b!r})")
    saved_model = saved.get("model", {})
    changed = sorted(k for k, v in config.model.items() if k in saved_model and saved_model[k] != v)
    if changed:
        raise IMERError(f"{out}: cannot resume, model.{changed[0]} differs from the interrupted run")


def _config_values(model: IMERModel) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(model.config)


def _write_predictions(path: Path, data: PreparedData, acc) -> None:
    index, labels, preds, available = acc.ordered()
    ids = data.dataset.utterance_ids[data.indices["test"]][index]
    class_names = data.dataset.class_names
    with atomic_write(path) as fh:
        writer = csv.writer(fh)
        if data.spec.task == "classification":
            probs = _softmax(preds)
            writer.writerow(["utterance_id", "label", "prediction", *[f"p_{c}" for c in class_names], *[f"has_{m}" for m in data.dataset.modalities]])
            for i, row in enumerate(probs):
                writer.writerow([ids[i], class_names[labels[i]], class_names[int(row.argmax())], *[f"{p:.6f}" for p in row], *available[i].astype(int)])
        else:
            writer.writerow(["utterance_id", "label", "score", *[f"has_{m}" for m in data.dataset.modalities]])
            for i in range(len(ids)):
                writer.writerow([ids[i], f"{labels[i]:.4f}", f"{float(preds[i]):.6f}", *available[i].astype(int)])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate or predict."""

    config: RunConfig
    model: IMERModel
    scaler: Standardizer
    spec: DataSpec
    class_names: list[str] | None


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild a trained model from its run directory (safetensors weights, JSON config)."""
    run_dir = Path(run_dir)
    for name in ("config.json", "model.safetensors", "scaler.npz", "metrics.json"):
        if not (run_dir / name).is_file():
            raise IMERError(f"{run_dir}: not a finished run directory ({name} missing)")
    config = RunConfig.from_dict(read_json(run_dir / "config.json"))
    info = read_json(run_dir / "run_spec.json") if (run_dir / "run_spec.json").exists() else None
    if info is None:
        raise IMERError(f"{run_dir}: run_spec.json missing")
    spec = DataSpec(tuple(info["modalities"]), tuple(info["dims"]), info["task"], info["num_classes"])
    model = create_model(config.method, spec, config.model)
    model.load_state_dict(load_weights(run_dir / "model.safetensors"))
    model.on_epoch_start(int(read_json(run_dir / "metrics.json")["selection"]["best_epoch"]))
    model.eval()
    scaler = Standardizer.load(run_dir / "scaler.npz", list(spec.modalities))
    return LoadedRun(config, model, scaler, spec, info.get("class_names"))
