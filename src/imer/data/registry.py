"""Dataset loaders by name, and where the data root comes from.

``load_dataset("cmu-mosi", data_dir=...)`` dispatches to the loader registered
under that name; a name that is a path to an existing file is read as a
``custom`` dataset. The data root is ``data_dir`` if given, else the
``IMER_DATA`` environment variable.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imer.data.custom import load_custom
from imer.data.dataset import MultimodalDataset
from imer.errors import ConfigError, DataError

Loader = Callable[..., MultimodalDataset]
_LOADERS: dict[str, tuple[Loader, bool, str]] = {}
_OPTIONS: dict[str, Callable[..., Any]] = {}
_CAVEATS: dict[str, str] = {}


def register_dataset(name: str, needs_data_dir: bool, description: str, options: Callable[..., Any] | None = None,
                     caveat: str = "") -> Callable[[Loader], Loader]:
    """Register ``loader(data_dir, **options)`` under ``name``; ``caveat``: what every report on it must say (e.g. a known leak).

    The loader's keyword parameters are its options (``--set data.options.NAME=VALUE``),
    checked by name and annotated type before loading; a loader that takes
    ``**options`` names the function whose parameters they are in ``options``.
    """

    def wrap(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"dataset '{name}' registered twice")
        _LOADERS[name] = (loader, needs_data_dir, description)
        _OPTIONS[name] = options or loader
        if caveat:
            _CAVEATS[name] = caveat
        return loader

    return wrap


def discover() -> None:
    """Import every module of ``imer/data`` (in name order), so each registers its loaders: adding a dataset is one new module."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_") and info.name != "registry":
            importlib.import_module(f"imer.data.{info.name}")


def dataset_options(name: str) -> dict[str, Any]:
    """Option name -> annotated type of dataset ``name`` (a custom ``.npz`` file has none)."""
    if name not in _LOADERS:
        if is_custom_path(name):
            return {}
        raise ConfigError(f"data.name: unknown dataset '{name}'; known: {', '.join(_LOADERS)} (or a path to a .npz custom dataset)")
    function = _OPTIONS[name]
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable annotation: accept any value for it
        hints = {}
    skip = {"data_dir", "task"} if _OPTIONS[name] is not _LOADERS[name][0] else {"data_dir"}
    return {
        p.name: hints.get(p.name, Any)
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip
    }


def dataset_caveat(name: str) -> str:
    """What reports on registered dataset ``name`` must say about it ("" for none, unknown names and files)."""
    return _CAVEATS.get(name, "")


def needs_data_dir(name: str) -> bool:
    """Whether registered dataset ``name`` reads from the data folder (False for unknown names and files)."""
    return name in _LOADERS and _LOADERS[name][1]


def is_custom_path(name: str) -> bool:
    """Whether a dataset name is a path to a custom ``.npz`` file rather than a registered name."""
    return name not in _LOADERS and (name.endswith(".npz") or Path(name).expanduser().exists())


def list_datasets() -> dict[str, str]:
    """Registered dataset names with a one-line description."""
    return {name: desc for name, (_, _, desc) in sorted(_LOADERS.items())}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data root: ``data_dir`` or ``$IMER_DATA``; a clear error if neither is usable."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("IMER_DATA")
    if not chosen:
        raise DataError("no data folder given: pass --data-dir PATH or set IMER_DATA (the folder that holds the dataset's folders, e.g. cmu-mosi-minilm/ and gcnet-meta/; see docs/data.md)")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: data folder not found; pass --data-dir PATH (or set IMER_DATA) to where the data is")
    return path


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options: Any) -> MultimodalDataset:
    """Load a dataset by registered name, or a ``custom`` file by path."""
    if name not in _LOADERS:
        if is_custom_path(name):
            return load_custom(Path(name).expanduser())
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(_LOADERS)} (or a path to a .npz custom dataset)")
    loader, needs_dir, _ = _LOADERS[name]
    if needs_dir:
        return loader(resolve_data_dir(data_dir), **options)
    return loader(**options)
