"""Experiments as data: named variants, spec files, dataset identity and config hashes.

A **variant** is a registered method plus overrides, under a name of its own
(``comp``, ``comp-no-prompts`` = ``comp`` + ``prompts=false``,
``gcnet@lr3e-4``), with its own epoch budget and optionally its own subset of
missing rates and seeds. A variant with a ``base`` inherits the base's method,
overrides and budget and adds its own on top; the report compares it with the
base in an ablation table.

A **spec file** (TOML, committed under ``experiments/``) holds one experiment:

.. code-block:: toml

    name = "mosi_comp"
    description = "ComP vs fusion baselines"
    datasets = ["cmu-mosi"]
    missing_rates = [0.1, 0.4, 0.7]
    seeds = [0, 1, 2]
    methods = ["early-fusion"]                # plain variants, named by their method
    set = { "train.threads" = 1 }             # every variant (METHOD:KEY=VALUE strings scope to a method)

    [variants.comp]
    epochs = 30
    set = { stage_epoch = 15, "train.batch_size" = 8, "train.lr" = 1e-4 }

    [variants.comp-no-prompts]
    base = "comp"
    set = { prompts = false }
    missing_rates = [0.4]                     # this variant runs at 0.4 only

    [report]
    metrics = ["mae", "corr"]                 # extra per-metric tables

``set`` is either a table (TOML values, keys as in ``--set``) or a list of
``key=value`` strings. Every run records its variant name and
:func:`config_hash` (the resolved config minus seed, fold and run-local
settings), so ``imer report`` can refuse to average runs whose settings differ.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imer.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+=-]*$")
SPEC_KEYS = {"name", "description", "datasets", "missing_rates", "seeds", "folds", "epochs", "data_dir", "conditions",
             "methods", "set", "variants", "report", "threads"}
VARIANT_KEYS = {"method", "base", "set", "epochs", "missing_rates", "seeds", "description"}
REPORT_KEYS = {"metrics", "title"}
# Config fields that never change a run's numbers (or identify the cell rather than the setting).
HASH_FREE = {("seed",), ("data", "fold"), ("data", "data_dir"), ("train", "threads"), ("train", "progress"), ("train", "device"),
             ("train", "log_to")}


@dataclass(frozen=True)
class Variant:
    """A named method + overrides, with its own budget and optional grid subset."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    epochs: int | None = None
    base: str | None = None
    rates: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None
    description: str = ""

    def settings(self) -> dict[str, Any]:
        """What determines this variant's numbers (used to refuse mixing runs in one sweep directory)."""
        return {"method": self.method, "overrides": list(self.overrides), "epochs": self.epochs}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Variant":
        values = dict(values)
        for key in ("overrides", "rates", "seeds"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def check_variant_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not VARIANT_NAME.match(name):
        raise ConfigError(f"{where}: variant name {name!r} must start with a letter or digit and use only letters, digits and _ . @ + = -")


def overrides_from(value: Any, where: str) -> tuple[str, ...]:
    """A spec's ``set``: a table ``{key = value}`` or a list of ``key=value`` strings -> ``key=value`` strings."""
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple(f"{k}={json.dumps(v)}" for k, v in value.items())
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: 'set' must be a table (key = value) or a list of 'key=value' strings")


def resolve_variants(plain: list[str], tables: dict[str, dict[str, Any]], where: str) -> list[Variant]:
    """Variants in spec order; ``base`` chains are resolved (method, overrides, epochs inherited)."""
    from imer.models import list_models

    raw: dict[str, dict[str, Any]] = {}
    for name in plain:
        raw[name] = {"method": name}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [variants.{name}] must be a table")
        unknown = sorted(set(table) - VARIANT_KEYS)
        if unknown:
            raise ConfigError(f"{where}: [variants.{name}] has unknown key(s) {unknown}; known: {sorted(VARIANT_KEYS)}")
        if name in raw:
            raise ConfigError(f"{where}: variant '{name}' is defined twice (in methods and in [variants])")
        raw[name] = table
    resolved: dict[str, Variant] = {}

    def build(name: str, chain: tuple[str, ...]) -> Variant:
        if name in resolved:
            return resolved[name]
        if name in chain:
            raise ConfigError(f"{where}: variant bases form a cycle: {' -> '.join(chain + (name,))}")
        check_variant_name(name, where)
        table = raw[name]
        base_name = table.get("base")
        own = overrides_from(table.get("set"), f"{where}: [variants.{name}]")
        if base_name is not None:
            if base_name not in raw:
                raise ConfigError(f"{where}: variant '{name}' has base '{base_name}', which is not a variant of this spec")
            base = build(base_name, chain + (name,))
            method = table.get("method", base.method)
            if method != base.method:
                raise ConfigError(f"{where}: variant '{name}' uses method '{method}' but its base '{base_name}' is '{base.method}'")
            overrides, epochs = base.overrides + own, table.get("epochs", base.epochs)
        else:
            method = table.get("method", name)
            overrides, epochs = own, table.get("epochs")
        if method not in list_models():
            raise ConfigError(f"{where}: variant '{name}': unknown method '{method}' (registered: {', '.join(list_models())}); "
                              "name the method with method = \"...\"")
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
            raise ConfigError(f"{where}: variant '{name}': epochs must be a positive integer, got {epochs!r}")
        rates = table.get("missing_rates")
        seeds = table.get("seeds")
        variant = Variant(name, method, tuple(overrides), epochs, base_name,
                          tuple(float(r) for r in rates) if rates is not None else None,
                          tuple(int(s) for s in seeds) if seeds is not None else None,
                          str(table.get("description", "")))
        resolved[name] = variant
        return variant

    return [build(name, ()) for name in raw]


@dataclass
class ExperimentFile:
    """What a spec file adds beyond the grid: where it came from and how to report it."""

    path: str
    name: str
    description: str = ""
    report: dict[str, Any] = field(default_factory=dict)


def load_spec(path: str | Path) -> tuple[dict[str, Any], ExperimentFile]:
    """Read a spec file; returns the keyword arguments of :class:`~imer.experiments.sweep.SweepSpec` and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment spec not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML spec ({exc})") from None
    where = str(path)
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    for key in ("datasets", "missing_rates", "seeds"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list")
    report = data.get("report", {})
    if not isinstance(report, dict) or set(report) - REPORT_KEYS:
        raise ConfigError(f"{where}: [report] may hold only {sorted(REPORT_KEYS)}")
    variants = resolve_variants(list(data.get("methods", [])), data.get("variants", {}), where)
    if not variants:
        raise ConfigError(f"{where}: no variants; list methods = [...] or add [variants.<name>] tables")
    kwargs = {
        "variants": variants,
        "datasets": [str(d) for d in data["datasets"]],
        "rates": [float(r) for r in data["missing_rates"]],
        "seeds": [int(s) for s in data["seeds"]],
        "folds": [int(f) for f in data["folds"]] if data.get("folds") else None,
        "epochs": data.get("epochs"),
        "data_dir": data.get("data_dir"),
        "overrides": list(overrides_from(data.get("set"), where)),
        "conditions": bool(data.get("conditions", False)),
    }
    if "threads" in data:
        kwargs["threads"] = int(data["threads"])
    meta = ExperimentFile(path=path.as_posix(), name=str(data.get("name", path.stem)), description=str(data.get("description", "")), report=report)
    return kwargs, meta


def filter_names(names: list[str], pattern: str | None) -> list[str]:
    """Names matching a shell-style pattern (``comp*``); all of them without a pattern."""
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def dataset_label(name: str) -> str:
    """The dataset's identity in run folders and reports.

    A registered dataset is its name. A file is ``<stem>-<first 8 hex digits of
    the SHA-256 of its content>``: readable, stable when the file moves, and
    different for two files with the same stem (``a/data.npz``, ``b/data.npz``).
    """
    if not (name.endswith(".npz") or "/" in name or "\\" in name):
        return name
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}: dataset file not found")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stem}-{digest.hexdigest()[:8]}"


def config_hash(config: dict[str, Any], dataset_id: str | None = None) -> str:
    """12 hex digits identifying a resolved run config, ignoring the seed, fold and run-local settings.

    Runs of one table cell must share it; ``dataset_id`` replaces a file path
    in ``data.name`` so a moved file keeps its hash.
    """
    values = copy.deepcopy(config)
    for path in HASH_FREE:
        holder = values
        for key in path[:-1]:
            holder = holder.get(key, {})
        if isinstance(holder, dict):
            holder.pop(path[-1], None)
    if dataset_id is not None and isinstance(values.get("data"), dict):
        values["data"]["name"] = dataset_id
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def variants_table(variants: list[Variant]) -> list[dict[str, Any]]:
    """Variants as plain records (for ``sweep.json`` and the report)."""
    return [asdict(v) for v in variants]
