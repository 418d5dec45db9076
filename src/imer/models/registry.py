"""Methods by name: ``@register_model`` on the class, ``create_model`` to build one.

Every module in ``imer/models/`` is imported on first use, so adding a method
is one new file with a registered class plus a config file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imer.errors import ConfigError
from imer.models.base import DataSpec, IMERModel, ModelConfig

_MODELS: dict[str, type[IMERModel]] = {}
_DISCOVERED = False
_INFRASTRUCTURE = {"base", "registry"}


def register_model(name: str) -> Callable[[type[IMERModel]], type[IMERModel]]:
    """Class decorator: make the method available as ``name``."""

    def wrap(cls: type[IMERModel]) -> type[IMERModel]:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"method '{name}' registered twice")
        cls.method_name = name
        _MODELS[name] = cls
        return cls

    return wrap


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _INFRASTRUCTURE and not info.name.startswith("_"):
            importlib.import_module(f"imer.models.{info.name}")
    _DISCOVERED = True


def list_models() -> list[str]:
    """Registered method names, sorted."""
    _discover()
    return sorted(_MODELS)


def get_model_class(name: str) -> type[IMERModel]:
    _discover()
    if name not in _MODELS:
        raise ConfigError(f"unknown method '{name}'; registered: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def build_config(name: str, values: Mapping[str, Any] | None = None) -> ModelConfig:
    """The typed config of method ``name`` from a mapping; unknown keys are an error."""
    cls = get_model_class(name).config_class
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"method '{name}' has no option(s) {unknown}; its options: {sorted(known)}")
    return cls(**values)


def create_model(name: str, spec: DataSpec, config: ModelConfig | Mapping[str, Any] | None = None) -> IMERModel:
    """Build method ``name`` for data ``spec`` from a config object or mapping."""
    if not isinstance(config, ModelConfig):
        config = build_config(name, config)
    return get_model_class(name)(config, spec)
