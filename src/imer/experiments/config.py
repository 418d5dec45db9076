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
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imer.errors import ConfigError
from imer.models.registry import build_config, get_model_class

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    """Which data, which fold, and how the validation part is carved."""

    name: str = "synthetic"
    data_dir: str | None = None
    fold: int | None = None
    valid_fraction: float = 0.15
    split_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MissingConfig:
    """Missing-modality protocol: train rate, and test rate or fixed test condition."""

    rate: float = 0.0
    test_rate: float | None = None
    test_condition: str | None = None
    mask_seed: int | None = None

    @property
    def effective_test_rate(self) -> float:
        return self.rate if self.test_rate is None else self.test_rate


@dataclass
class TrainConfig:
    """Optimisation and model selection."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    grad_clip: float = 0.0
    select_metric: str | None = None
    selection: str = "valid"
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    eval_test_each_epoch: bool = True
    log_to: str | None = None


@dataclass
class RunConfig:
    """Everything that determines a run's numbers."""

    method: str = "early-fusion"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        config = cls()
        merge_into(config, values)
        return config

    def validate(self) -> None:
        build_config(self.method, self.model)
        if self.train.selection not in ("valid", "test-published"):
            raise ConfigError(f"train.selection must be 'valid' or 'test-published', got {self.train.selection!r}")
        if self.train.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"train.optimizer must be adam, adamw or sgd, got {self.train.optimizer!r}")
        if self.train.log_to not in (None, "tensorboard", "mlflow"):
            raise ConfigError(f"train.log_to must be tensorboard or mlflow, got {self.train.log_to!r}")
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")


_SECTIONS = ("data", "missing", "train")


def merge_into(config: RunConfig, values: dict[str, Any], source: str = "config") -> None:
    """Merge a nested mapping into ``config``; unknown keys are an error naming ``source``."""
    for key, value in values.items():
        if key in ("method", "seed"):
            setattr(config, key, value)
        elif key == "model":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'model' must be a table of options")
            config.model.update(value)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' must be a table")
            section = getattr(config, key)
            names = {f.name for f in dataclasses.fields(section)}
            for sub, sub_value in value.items():
                if sub not in names:
                    raise ConfigError(f"{source}: unknown option '{key}.{sub}'; known: {sorted(names)}")
                if sub == "options":
                    section.options.update(sub_value)
                else:
                    setattr(section, sub, sub_value)
        else:
            raise ConfigError(f"{source}: unknown section '{key}'; use method, seed, data, missing, train, model")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A ``.toml`` or ``.json`` config file as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse config ({exc})") from None


def packaged_defaults(method: str, dataset: str) -> list[Path]:
    """The shipped config files that apply to ``method`` on ``dataset``, in merge order."""
    folder = CONFIG_ROOT / method
    return [p for p in (folder / "default.toml", folder / f"{Path(dataset).stem}.toml") if p.is_file()]


def parse_value(text: str) -> Any:
    """``--set`` values: JSON literals (numbers, true/false/null, lists), else the raw string."""
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_override(config: RunConfig, assignment: str) -> None:
    """Apply one ``key=value`` override (see module docstring)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key, value = key.strip(), parse_value(raw.strip())
    parts = key.split(".")
    if parts[0] in ("method", "seed") and len(parts) == 1:
        setattr(config, key, value)
        return
    if parts[0] == "model" and len(parts) == 2:
        _check_model_field(config.method, parts[1])
        config.model[parts[1]] = value
        return
    if parts[0] == "data" and len(parts) == 3 and parts[1] == "options":
        config.data.options[parts[2]] = value
        return
    if parts[0] in _SECTIONS and len(parts) == 2:
        merge_into(config, {parts[0]: {parts[1]: value}}, source="--set")
        return
    if len(parts) == 1:
        model_fields = {f.name for f in dataclasses.fields(get_model_class(config.method).config_class)}
        if key in model_fields:
            config.model[key] = value
            return
        for section in _SECTIONS:
            if key in {f.name for f in dataclasses.fields(getattr(config, section))}:
                setattr(getattr(config, section), key, value)
                return
    raise ConfigError(f"--set: unknown key '{key}' for method '{config.method}' (try model.<field>, train.<field>, missing.<field>, data.<field>)")


def _check_model_field(method: str, name: str) -> None:
    fields_ = {f.name for f in dataclasses.fields(get_model_class(method).config_class)}
    if name not in fields_:
        raise ConfigError(f"method '{method}' has no option '{name}'; its options: {sorted(fields_)}")


def build_run_config(
    method: str,
    dataset: str,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    **flags: Any,
) -> RunConfig:
    """Assemble a run config from all layers; ``flags`` are ``section.field`` -> value (None = not given)."""
    config = RunConfig(method=method)
    config.data.name = dataset
    for path in packaged_defaults(method, dataset):
        merge_into(config, read_config_file(path), source=str(path))
    if config_file:
        values = read_config_file(config_file)
        merge_into(config, values, source=str(config_file))
        if values.get("method", method) != method:
            raise ConfigError(f"{config_file}: is for method '{values['method']}', not '{method}'")
    for dotted, value in flags.items():
        if value is None:
            continue
        section, _, name = dotted.partition("__")
        if name:
            setattr(getattr(config, section), name, value)
        else:
            setattr(config, section, value)
    for assignment in overrides or []:
        apply_override(config, assignment)
    config.data.name = dataset if config.data.name in (None, "") else config.data.name
    config.validate()
    return config
