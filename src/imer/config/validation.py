"""Check every field of a run config (type and range) before any work starts.

Every field is checked against its dataclass annotation and the range,
choices or pattern its declaration names (:func:`imer.fields.option`): the
run config's sections (:mod:`imer.config.schema`) and the method's options
(its ``ModelConfig`` dataclass in :mod:`imer.models`) alike; data options
against the loader's signature. Errors are :class:`~imer.errors.ConfigError`
whose message starts with the field, e.g. ``train.lr: must be a number > 0, got 'fast'``.

Stage lengths: a model option declared with ``stage=True`` counts epochs.
It may be given as a fraction of the budget (``0 < x < 1``, e.g.
``stage_epoch = 0.5`` with ``train.epochs = 40`` means 20), resolved here to
whole epochs so models only ever see integers. A stage length that leaves a
later stage no epoch at all is warned about loudly.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from imer.config.schema import SECTIONS, RunConfig, run_fields
from imer.data.registry import dataset_options
from imer.errors import ConfigError
from imer.evaluation.metrics import select_metrics
from imer.fields import check_range, check_value  # noqa: F401  (check_range: imported from here too)
from imer.models import DataSpec, create_model
from imer.models.registry import get_model_class


# ----------------------------------------------------------------------------- types
def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against ``annotation`` (int -> float widened, integral float -> int); ConfigError otherwise."""
    ok, result = _match(value, annotation)
    if not ok:
        raise ConfigError(f"{where}: must be {_describe(annotation)}, got {value!r}")
    return result


def _match(value: Any, ann: Any) -> tuple[bool, Any]:
    if ann is Any or ann is object:
        return True, value
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(ann)
        for arg in sorted(args, key=lambda a: a is str):  # try str last so 7 stays an int where int is allowed
            ok, result = _match(value, arg)
            if ok:
                return True, result
        return False, value
    if ann is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(ann), value
    if ann is bool:
        return isinstance(value, bool), value
    if ann is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= 2**53:
            return True, int(value)  # 2.0 -> 2; a float past 2**53 is no exact integer, and is shown as written (1e+20)
        return False, value
    if ann is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if ann is str:
        if isinstance(value, str):
            return True, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, value
    if origin in (list, tuple, Sequence, typing.Sequence) or ann in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        if not args:
            return True, value
        items = [_match(v, args[0]) for v in value]
        return all(ok for ok, _ in items), [r for _, r in items]
    if origin in (dict, Mapping, typing.Mapping) or ann in (dict,):
        if not isinstance(value, Mapping):
            return False, value
        args = typing.get_args(ann)
        if len(args) != 2:
            return True, dict(value)
        pairs = [(_match(k, args[0]), _match(v, args[1])) for k, v in value.items()]
        return all(a[0] and b[0] for a, b in pairs), {a[1]: b[1] for a, b in pairs}
    return True, value


def _describe(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in typing.get_args(ann))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "unset (none)"}
    if ann in names:
        return names[ann]
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = typing.get_args(ann)
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin in (dict, Mapping, typing.Mapping):
        return "a table like {name=\"value\"} (TOML inline table or JSON object)"
    return getattr(ann, "__name__", str(ann))


def _hints(cls: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: skip type checks for that class
        return {}


# ----------------------------------------------------------------------------- sections
def _check_section(obj: Any, section: str) -> None:
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name == "options":
            continue
        where = f"{section}.{f.name}" if section else f.name
        value = coerce(getattr(obj, f.name), hints.get(f.name, Any), where)
        setattr(obj, f.name, value)
        if value is not None:
            check_value(value, f.metadata, where)


def _check_top(config: RunConfig) -> None:
    fields = run_fields()
    if not isinstance(config.method, str) or not config.method:
        raise ConfigError(f"method: must be a method name (see `imer list`), got {config.method!r}")
    config.seed = coerce(config.seed, int, "seed")
    check_value(config.seed, fields["seed"].metadata, "seed")
    if not isinstance(config.data.name, str) or not config.data.name:
        raise ConfigError(f"data.name: must be a dataset name or a path to a .npz file, got {config.data.name!r}")
    pattern, admitted = fields["train.device"].metadata["pattern"]
    if not re.match(pattern, str(config.train.device)):
        raise ConfigError(f"train.device: must be {admitted}, got {config.train.device!r}")
    if not isinstance(config.data.options, dict):
        raise ConfigError(f"data.options: must be a table of loader options, got {config.data.options!r}")
    if not isinstance(config.model, dict):
        raise ConfigError(f"model: must be a table of method options, got {config.model!r}")


def check_data_options(config: RunConfig) -> None:
    """``data.options`` against the loader's parameters (name and type)."""
    params = dataset_options(config.data.name)
    for key, value in list(config.data.options.items()):
        where = f"data.options.{key}"
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ConfigError(f"{where}: dataset '{config.data.name}' has no option '{key}' (its options: {known})")
        config.data.options[key] = coerce(value, params[key], where)


def check_model(config: RunConfig) -> None:
    """Model options: known names, types, declared ranges and choices, stage lengths; then a trial build of the method.

    Fills ``config.model`` with every option (defaults included, stage fractions resolved).
    """
    cls = get_model_class(config.method).config_class
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(config.model) - set(known))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: method '{config.method}' has no option '{unknown[0]}'; its options: {', '.join(sorted(known))}")
    defaults = dataclasses.asdict(cls())
    for name, f in known.items():
        where = f"model.{name}"
        value = config.model.get(name, defaults[name])
        if f.metadata.get("stage") and isinstance(value, float) and 0 < value < 1:
            value = max(1, int(round(value * config.train.epochs)))
        value = coerce(value, hints.get(name, Any), where)
        config.model[name] = value  # the complete, resolved options: what the run will use
        if value is not None:
            check_value(value, f.metadata, where)
        if f.metadata.get("stage"):
            _warn_unreachable_stage(config, name, value)
    _trial_build(config)


def _warn_unreachable_stage(config: RunConfig, name: str, value: int) -> None:
    if config.model.get("single_stage") is True or not isinstance(value, int):
        return
    if 0 < config.train.epochs <= value:
        warnings.warn(
            f"model.{name}={value} but train.epochs={config.train.epochs}: the stage after it never starts and the run "
            f"trains stage 1 only; lower it or give a fraction of the budget, e.g. --set model.{name}=0.5",
            stacklevel=3,
        )


def _trial_build(config: RunConfig) -> None:
    """Build the method on a tiny data spec, so option combinations a method refuses fail now, not after loading data."""
    spec = DataSpec(("audio", "text", "video"), (4, 4, 4), "classification", 2)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            create_model(config.method, spec, config.model)
        except ConfigError:
            raise
        except (ValueError, AssertionError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"model: method '{config.method}' cannot be built with these options: {str(exc).splitlines()[0]}") from None


def validate_run_config(config: RunConfig, check_data: bool = True) -> None:
    """Check and normalise ``config`` in place; the first problem raises :class:`ConfigError` naming the field.

    ``check_data=False`` leaves out the dataset name and its options (a dataset given in memory).
    """
    _check_top(config)
    for section in SECTIONS:
        _check_section(getattr(config, section), section)
    _check_protocol(config)
    if check_data:
        check_data_options(config)
    check_model(config)


def _check_protocol(config: RunConfig) -> None:
    """Combinations of the ``cv`` protocol's fields (docs/protocol.md) that would select on data they should not."""
    if config.data.refit and config.train.selection != "last":
        raise ConfigError(f"data.refit: the refit trains on the validation part too, so it cannot select an epoch there; "
                          f"use train.selection = \"last\" with the budget chosen by cross-validation (got '{config.train.selection}')")
    if config.train.selection == "last" and config.train.patience:
        raise ConfigError("train.patience: early stopping needs a selection on validation; train.selection = \"last\" keeps the final epoch")
    if config.data.holdout == "valid" and not config.data.dev_folds:
        raise ConfigError("data.holdout: 'valid' makes a held-out development fold the validation part; it needs data.dev_folds")


def validate_data_config(config: RunConfig) -> None:
    """Check the ``data`` section alone (``imer data info``/``convert``)."""
    if not isinstance(config.data.options, dict):
        raise ConfigError(f"data.options: must be a table of loader options, got {config.data.options!r}")
    _check_section(config.data, "data")
    check_data_options(config)


def check_select_metric(metric: str, task: str) -> None:
    """``train.select_metric`` must be computed for the data's task (known once the data is loaded)."""
    if metric not in select_metrics(task):
        raise ConfigError(f"train.select_metric: '{metric}' is not computed for {task}; choose one of {', '.join(select_metrics(task))}")
