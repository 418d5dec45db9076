"""One typed config describes a run; it is built from layered sources.

Order (later wins): dataclass defaults -> ``configs/<method>/default.toml`` ->
``configs/<method>/<dataset>.toml`` -> ``--config FILE`` -> explicit CLI flags
-> ``--set key=value``. A ``--set`` key is ``section.field`` (``train.lr``,
``model.hidden``, ``missing.rate``, ``data.options.feature_dir``) or a bare
field name, looked up in the method's model config first, then in ``train``,
``missing`` and ``data``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imer.config.schema import SECTIONS, RunConfig
from imer.config.validation import validate_data_config, validate_run_config
from imer.data.registry import is_custom_path, needs_data_dir
from imer.errors import ConfigError
from imer.fields import flagged
from imer.io import MAX_NESTING, check_nesting, resolved
from imer.models.registry import get_model_class

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def merge_into(config: RunConfig, values: dict[str, Any], source: str = "config") -> None:
    """Merge a nested mapping into ``config``; unknown keys are an error naming ``source``."""
    for key, value in values.items():
        if key in ("method", "seed"):
            setattr(config, key, value)
        elif key == "model":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'model' must be a table of options")
            config.model.update(value)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' must be a table")
            section = getattr(config, key)
            names = {f.name for f in dataclasses.fields(section)}
            for sub, sub_value in value.items():
                if sub not in names:
                    raise ConfigError(f"{source}: unknown option '{key}.{sub}'; known: {sorted(names)}")
                if sub == "options":
                    if not isinstance(sub_value, dict):
                        raise ConfigError(f"{source}: '{key}.options' must be a table of loader options")
                    section.options.update(sub_value)
                else:
                    setattr(section, sub, sub_value)
        else:
            raise ConfigError(f"{source}: unknown section '{key}'; use method, seed, data, missing, train, model")


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A run config from a nested mapping such as a run's ``config.json`` (not validated)."""
    config = RunConfig()
    merge_into(config, values)
    return config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A ``.toml`` or ``.json`` config file as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a config is TOML (or JSON) with sections data, missing, train, model") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"{path}: not valid {kind} ({exc}); a config has sections like [train] with lines like lr = 1e-4") from None
    except RecursionError:
        raise ConfigError(f"{path}: lists or tables nested more than {MAX_NESTING} levels deep; imer's settings need at most 4") from None
    check_nesting(values, str(path))
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a table of sections (data, missing, train, model), not {type(values).__name__}")
    return values


def packaged_defaults(method: str, dataset: str) -> list[Path]:
    """The shipped config files that apply to ``method`` on ``dataset``, in merge order."""
    folder = CONFIG_ROOT / method
    return [p for p in (folder / "default.toml", folder / f"{Path(dataset).stem}.toml") if p.is_file()]


def resolve_config_file(method: str, config_file: str | Path) -> Path:
    """``config_file`` as given if it exists, else a packaged preset of that name (``configs/<method>/<name>.toml``)."""
    path = Path(config_file)
    preset = CONFIG_ROOT / method / f"{path.name}.toml"
    if not path.exists() and path.name == str(config_file) and not path.suffix and preset.is_file():
        return preset
    return path


def parse_value(text: str) -> Any:
    """``--set`` values: a TOML or JSON value (numbers, true/false, "strings", [lists], {inline="tables"}),
    ``none``/``null`` for unset (:func:`apply_override` keeps the word for a plain ``str`` option), else the raw text as a string."""
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        value = tomllib.loads(f"value = {text}")["value"]
        if isinstance(value, (bool, int, float, str, list, dict)):
            return check_nesting(value, f"--set value {text[:40]!r}")
    except tomllib.TOMLDecodeError:
        pass
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}...: nested more than {MAX_NESTING} levels deep") from None
    try:
        return check_nesting(json.loads(text), f"--set value {text[:40]!r}")
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}...: nested more than {MAX_NESTING} levels deep") from None
    except ValueError:
        return text


def apply_override(config: RunConfig, assignment: str) -> None:
    """Apply one ``key=value`` override (see module docstring)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = parse_value(raw.strip())
    if value is None and _declared_type(config, key.strip()) is str:  # a string option whose value is the word "none" / "null"
        value = raw.strip()
    if isinstance(value, float) and math.isinf(value) and "inf" not in raw.lower():
        raise ConfigError(f"--set {key.strip()}: {raw.strip()} is beyond the largest number a float holds (about 1.8e308)")
    set_option(config, key.strip(), value)


def set_option(config: RunConfig, key: str, value: Any) -> None:
    """Set the option ``key`` (a ``--set`` key: ``train.lr``, ``model.hidden``, ``data.options.NAME`` or a bare field name) to ``value``."""
    parts = key.split(".")
    if key == "method" and value != config.method:
        raise ConfigError(f"--set: method is chosen with --method (here '{config.method}'), not --set method={value}")
    if parts[0] in ("method", "seed") and len(parts) == 1:
        setattr(config, key, value)
        return
    if parts[0] == "data" and len(parts) == 3 and parts[1] == "options":
        config.data.options[parts[2]] = value
        return
    home = _home(config, key)
    if home is None:
        raise ConfigError(f"--set: unknown key '{key}' for method '{config.method}' (try model.<field>, train.<field>, missing.<field>, data.<field>)")
    section, name = home
    if section == "model":
        if len(parts) == 2:
            _check_model_field(config.method, name)
        config.model[name] = value
    elif len(parts) == 2:
        merge_into(config, {section: {name: value}}, source="--set")
    else:
        setattr(getattr(config, section), name, value)


def _config_class(config: RunConfig, section: str) -> type:
    """The dataclass behind ``section``: the method's model config for ``model``, else the run config's section."""
    return get_model_class(config.method).config_class if section == "model" else type(getattr(config, section))


def _home(config: RunConfig, key: str) -> tuple[str, str] | None:
    """The (section, field) a ``--set`` key names, section ``model`` or one of SECTIONS; a bare name is looked up in
    the model config first, then in SECTIONS. None for other keys (a bare name no section has, deeper paths)."""
    parts = key.split(".")
    if len(parts) == 2 and (parts[0] == "model" or parts[0] in SECTIONS):
        return parts[0], parts[1]
    if len(parts) == 1:
        for section in ("model", *SECTIONS):
            if key in {f.name for f in dataclasses.fields(_config_class(config, section))}:
                return section, key
    return None


def _declared_type(config: RunConfig, key: str) -> Any:
    """The type hint of the field a ``--set`` key names (found as :func:`set_option` finds it), or None for no field."""
    home = _home(config, key)
    return typing.get_type_hints(_config_class(config, home[0])).get(home[1]) if home else None


def _check_model_field(method: str, name: str) -> None:
    fields_ = {f.name for f in dataclasses.fields(get_model_class(method).config_class)}
    if name not in fields_:
        raise ConfigError(f"model.{name}: method '{method}' has no option '{name}'; its options: {', '.join(sorted(fields_))}")


def build_run_config(
    method: str,
    dataset: str,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    in_memory: bool = False,
) -> RunConfig:
    """Assemble a run config from all layers.

    ``overrides`` are ``--set`` strings (``key=value``); ``settings`` the same keys with typed values, applied before
    them (command-line flags such as ``--missing-rate``: ``{"missing.rate": 0.4}``; None = not given).
    ``in_memory``: ``dataset`` names a dataset given as an object (``imer.fit``), so it is not checked as a loader name.
    """
    config = RunConfig(method=method)
    config.data.name = dataset
    for path in packaged_defaults(method, dataset):
        merge_into(config, read_config_file(path), source=str(path))
    if config_file:
        config_file = resolve_config_file(method, config_file)
        values = read_config_file(config_file)
        merge_into(config, values, source=str(config_file))
        if values.get("method", method) != method:
            raise ConfigError(f"{config_file}: is for method '{values['method']}', not '{method}'")
    for key, value in (settings or {}).items():
        if value is not None:
            set_option(config, key, value)
    for assignment in overrides or []:
        apply_override(config, assignment)
    config.data.name = dataset if config.data.name in (None, "") else config.data.name
    budget = (settings or {}).get("train.budget") or 1.0
    if config.train.budget != budget:
        raise ConfigError(f"train.budget: set by imer sweep --budget only (got {config.train.budget} from a config file or --set); "
                          "it records the fraction of the budget a run was given")
    if budget != 1.0:
        scale_to_budget(config)
    resolve_paths(config)
    validate_run_config(config, check_data=not in_memory)
    return config


def scale_to_budget(config: RunConfig) -> None:
    """Cut ``train.epochs`` and every whole-epoch stage length (options declared ``stage=True``, >= 1) to ``train.budget`` of their value.

    Each stays at least 1 epoch (0 stays 0); a stage given as a fraction of the
    budget follows the scaled epochs by itself.
    """
    fraction = config.train.budget
    config.train.epochs = max(1, round(config.train.epochs * fraction))
    cls = get_model_class(config.method).config_class
    defaults = dataclasses.asdict(cls())
    for name in flagged(cls, "stage"):
        value = config.model.get(name, defaults[name])
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
            config.model[name] = max(1, round(value * fraction))


_PATH_OPTION = ("_file", "_dir", "_path")


def resolve_paths(config: RunConfig) -> None:
    """Make every data path absolute, so a run folder keeps working from any directory.

    Covers ``data.data_dir`` (``$IMER_DATA`` is recorded when the dataset needs a
    data folder and none was given), a custom dataset path in ``data.name``, and
    data options whose name ends in ``_file``, ``_dir`` or ``_path``.
    """
    def absolute(value: str) -> str:
        return str(resolved(value))

    if isinstance(config.data.data_dir, str) and config.data.data_dir:
        config.data.data_dir = absolute(config.data.data_dir)
    elif config.data.data_dir is None and os.environ.get("IMER_DATA") and needs_data_dir(config.data.name):
        config.data.data_dir = absolute(os.environ["IMER_DATA"])
    if isinstance(config.data.name, str) and is_custom_path(config.data.name):
        config.data.name = absolute(config.data.name)
    for key, value in config.data.options.items():
        if key.endswith(_PATH_OPTION) and isinstance(value, str) and value:
            config.data.options[key] = absolute(value)


def build_data_config(
    dataset: str,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
) -> RunConfig:
    """A config whose ``data`` section is built like ``imer train``'s (for ``imer data info``/``convert``).

    Only the ``[data]`` section of ``config_file`` and ``data.*`` overrides apply;
    the data section is fully validated, nothing else is.
    """
    config = RunConfig()
    config.data.name = dataset
    if config_file:
        values = read_config_file(config_file)
        merge_into(config, {"data": values.get("data", {})}, source=str(config_file))
    if data_dir is not None:
        config.data.data_dir = data_dir
    for assignment in overrides or []:
        if not assignment.strip().startswith("data."):
            raise ConfigError(f"--set: {assignment!r} is not a data setting; here only data.* applies (e.g. data.options.feature_dir=PATH)")
        apply_override(config, assignment)
    config.data.name = dataset
    resolve_paths(config)
    validate_data_config(config)
    return config
