"""A finished run folder back in memory: config, model with its best weights, scaler, data spec."""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imer.config import RunConfig, config_from_dict, validate_run_config
from imer.data import MultimodalDataset, Standardizer
from imer.errors import ConfigError, DataError
from imer.models import DataSpec, IMERModel, create_model
from imer.runfolder import RunFolder


def dataset_fingerprint(dataset: MultimodalDataset) -> str:
    """SHA-256 (16 hex digits) of a dataset's arrays: the same data gives the same fingerprint."""
    digest = hashlib.sha256()
    parts = [dataset.labels, dataset.available, dataset.utterance_ids, dataset.group_ids, dataset.order]
    parts += [dataset.split if dataset.split is not None else np.array([]), dataset.fold if dataset.fold is not None else np.array([])]
    for m, x in dataset.features.items():
        digest.update(m.encode())
        parts.append(np.where(np.isfinite(x), x, 0))
    for array in parts:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def resolve_device(name: str, where: str = "train.device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (a GPU when one is visible) as a torch device; a GPU asked for and absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"{where}: must be cpu, cuda, cuda:N, mps or auto, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{where}: {name} asked for, but no GPU is visible; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"{where}: {name} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where}: mps asked for, but this machine has no Apple GPU; use --device cpu")
    return torch.device(name)


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate or predict (its model on ``device``)."""

    config: RunConfig
    model: IMERModel
    scaler: Standardizer
    spec: DataSpec
    class_names: list[str] | None
    label_range: tuple[float, float] | None = None  # regression: the training labels' [min, max], predictions are clipped to it
    device: torch.device = torch.device("cpu")


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Rebuild a trained model from its run directory (safetensors weights, JSON config), on ``device`` (see :func:`resolve_device`).

    Every file is checked before use: a missing, truncated, crafted or
    mismatched file raises :class:`DataError` naming it.
    """
    target = resolve_device(device, "--device")
    folder = RunFolder(run_dir)
    folder.check_finished()
    raw = folder.read_config()
    try:
        config = config_from_dict(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run's own warnings were shown when it was trained
            validate_run_config(config, check_data=False)  # the data is checked when (and if) it is loaded
    except ConfigError as exc:
        raise DataError(f"{folder.file('config.json')}: {exc}") from None
    spec, class_names = folder.read_spec()
    model = create_model(config.method, spec, config.model)
    _load_matching_weights(model, folder)
    model.on_epoch_start(folder.best_epoch())
    model.to(target).eval()
    return LoadedRun(config, model, folder.load_scaler(spec), spec, class_names,
                     folder.label_range() if spec.task == "regression" else None, target)


def _load_matching_weights(model: IMERModel, folder: RunFolder) -> None:
    """Load weights after checking every tensor's name and shape against the model built from the config."""
    path = folder.file("model.safetensors")
    weights = folder.load_weights()
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
        if weights[name].dtype != tensor.dtype:
            raise DataError(f"{path}: tensor '{name}' is {str(weights[name].dtype).replace('torch.', '')}, the model's is "
                            f"{str(tensor.dtype).replace('torch.', '')}; the run folder is damaged, train again")
        if tensor.is_floating_point() and bool(torch.isfinite(tensor).all()) and not bool(torch.isfinite(weights[name]).all()):
            raise DataError(f"{path}: tensor '{name}' holds NaN or infinite values; the run folder is damaged (or the run diverged), train again")
    model.load_state_dict(weights)
