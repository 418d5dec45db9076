"""Dataset loaders by name, and where the data root comes from.

``load_dataset("cmu-mosi", data_dir=...)`` dispatches to the loader registered
under that name; a name that is a path to an existing file is read as a
``custom`` dataset. The data root is ``data_dir`` if given, else the
``IMER_DATA`` environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imer.data.dataset import MultimodalDataset
from imer.errors import ConfigError, DataError

Loader = Callable[..., MultimodalDataset]
_LOADERS: dict[str, tuple[Loader, bool, str]] = {}


def register_dataset(name: str, needs_data_dir: bool, description: str) -> Callable[[Loader], Loader]:
    """Register ``loader(data_dir, **options)`` under ``name``."""

    def wrap(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"dataset '{name}' registered twice")
        _LOADERS[name] = (loader, needs_data_dir, description)
        return loader

    return wrap


def list_datasets() -> dict[str, str]:
    """Registered dataset names with a one-line description."""
    return {name: desc for name, (_, _, desc) in sorted(_LOADERS.items())}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data root: ``data_dir`` or ``$IMER_DATA``; a clear error if neither is usable."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("IMER_DATA")
    if not chosen:
        raise DataError("no data folder given: pass --data-dir PATH or set IMER_DATA (a folder holding cmu-mosi-bclstm/ and gcnet-meta/)")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: data folder not found")
    return path


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options: Any) -> MultimodalDataset:
    """Load a dataset by registered name, or a ``custom`` file by path."""
    if name not in _LOADERS:
        if Path(name).expanduser().exists() or name.endswith(".npz"):
            from imer.data.custom import load_custom

            return load_custom(Path(name).expanduser())
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(_LOADERS)} (or a path to a .npz custom dataset)")
    loader, needs_dir, _ = _LOADERS[name]
    if needs_dir:
        return loader(resolve_data_dir(data_dir), **options)
    return loader(**options)
