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

    [variants.comp-published]
    method = "comp"
    config = "published"                      # a packaged preset (configs/<method>/<name>.toml) or a config file

    [search]                                  # equal hyper-parameter search on validation, frozen before the grid
    seed = 0
    rate = 0.4
    grid = { "train.lr" = [1e-4, 1e-3], dropout = [0.3, 0.5] }

    [report]
    metrics = ["mae", "corr"]                 # extra per-metric tables
    compare = ["comp"]                        # paired significance vs the best baseline

``set`` is either a table (TOML values, keys as in ``--set``) or a list of
``key=value`` strings. Every run records its variant name and
:func:`config_hash` (the resolved config minus seed, fold and run-local
settings), so ``imer report`` can refuse to average runs whose settings differ.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imer.config.build import build_run_config
from imer.config.schema import SEED, UNIT, Range
from imer.config.validation import check_range
from imer.errors import ConfigError
from imer.experiments.crossval import REFIT_OVERRIDES, fold_overrides
from imer.io import MAX_NESTING, check_nesting
from imer.models import list_models

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+=-]*$")
SPEC_KEYS = {"name", "description", "datasets", "missing_rates", "seeds", "folds", "epochs", "data_dir", "conditions",
             "methods", "set", "variants", "report", "threads", "search"}
VARIANT_KEYS = {"method", "base", "set", "epochs", "missing_rates", "seeds", "description", "config"}
REPORT_KEYS = {"metrics", "title", "compare", "baseline"}
SEARCH_KEYS = {"seed", "rate", "metric", "grid", "grids", "variants", "protocol", "folds"}
PROTOCOLS = ("valid", "cv")


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
    config: str | None = None  # a packaged preset name (``published``) or a config file, applied before the overrides

    def settings(self) -> dict[str, Any]:
        """What determines this variant's numbers (used to refuse mixing runs in one sweep directory)."""
        values = {"method": self.method, "overrides": list(self.overrides), "epochs": self.epochs}
        if self.config is not None:
            values["config"] = self.config
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Variant":
        values = dict(values)
        for key in ("overrides", "rates", "seeds"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


# A search grid's trials and a sweep's cells are counted before any is built; more are refused.
MAX_TRIALS = 1000
MAX_CELLS = 100_000

_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def typed(value: Any, kind: type, where: str, low: int | None = None) -> Any:
    """``value`` when it is of ``kind`` (None passes; ints count as numbers, bools as nothing else), else :class:`ConfigError`.

    Never converts: ``seeds = [1.7]`` is an error, not seed 1.
    """
    if value is None:
        return None
    ok = isinstance(value, bool) if kind is bool else (
        not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind))
    if not ok:
        raise ConfigError(f"{where}: must be {_KINDS[kind]}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{where}: must be finite, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{where}: must be >= {low}, got {value!r}")
    return value


def typed_list(values: Any, kind: type, where: str) -> list[Any]:
    """A non-empty list whose items are all of ``kind`` (see :func:`typed`)."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: must be a non-empty list, got {values!r}")
    return [typed(v, kind, where) for v in values]


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
        base_name = typed(table.get("base"), str, f"{where}: [variants.{name}] base")
        typed(table.get("method"), str, f"{where}: [variants.{name}] method")
        own = overrides_from(table.get("set"), f"{where}: [variants.{name}]")
        if base_name is not None:
            if base_name not in raw:
                raise ConfigError(f"{where}: variant '{name}' has base '{base_name}', which is not a variant of this spec")
            base = build(base_name, chain + (name,))
            method = table.get("method", base.method)
            if method != base.method:
                raise ConfigError(f"{where}: variant '{name}' uses method '{method}' but its base '{base_name}' is '{base.method}'")
            overrides, epochs = base.overrides + own, table.get("epochs", base.epochs)
            config = table.get("config", base.config)
        else:
            method = table.get("method", name)
            overrides, epochs, config = own, table.get("epochs"), table.get("config")
        if method not in list_models():
            raise ConfigError(f"{where}: variant '{name}': unknown method '{method}' (registered: {', '.join(list_models())}); "
                              "name the method with method = \"...\"")
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
            raise ConfigError(f"{where}: variant '{name}': epochs must be a positive integer, got {epochs!r}")
        if config is not None and (not isinstance(config, str) or not config):
            raise ConfigError(f"{where}: variant '{name}': config must be a preset name or a file path, got {config!r}")
        rates = table.get("missing_rates")
        seeds = table.get("seeds")
        variant = Variant(name, method, tuple(overrides), epochs, base_name,
                          tuple(float(r) for r in typed_list(rates, float, f"{where}: [variants.{name}] missing_rates")) if rates is not None else None,
                          tuple(typed_list(seeds, int, f"{where}: [variants.{name}] seeds")) if seeds is not None else None,
                          typed(table.get("description", ""), str, f"{where}: [variants.{name}] description"), config)
        resolved[name] = variant
        return variant

    return [build(name, ()) for name in raw]


def overrides_for(method: str, overrides: Iterable[str]) -> list[str]:
    """``--set`` items that apply to ``method``: plain ``key=value`` and ``<method>:key=value``."""
    out = []
    for item in overrides:
        scope, sep, rest = item.partition(":")
        if sep and "=" not in scope:
            if scope == method:
                out.append(rest)
        else:
            out.append(item)
    return out


def override_key(assignment: str) -> str:
    """The field an override sets, with the optional ``model.`` prefix dropped (``model.dropout=0.3`` -> ``dropout``)."""
    key = assignment.split("=", 1)[0].strip()
    return key[len("model."):] if key.startswith("model.") else key


@dataclass(frozen=True)
class SearchSpec:
    """An equal hyper-parameter search on validation, run before the grid and frozen in ``search.json``.

    Every searched variant is trained once per trial (the product of its grid's
    values, keys in spec order) at one ``seed`` and one ``rate`` on each
    dataset; the trial with the best validation ``metric`` wins (ties: the
    earlier trial). ``grid`` is shared; ``grids[variant]`` replaces it for one
    variant (same number of trials). Variants with a ``base`` inherit their
    base's winner; ``variants`` names the searched ones (default: every
    variant without a base).

    ``protocol = "cv"`` (docs/protocol.md) runs every trial on each of
    ``folds`` development folds (train + valid videos, the held-out fold as
    validation), chooses the trial *and* the epoch budget by the fold-averaged
    validation curve, and the grid cells refit on all development videos for
    exactly that budget (``data.refit``, ``train.selection = "last"``).
    """

    rate: float
    seed: int = 0
    metric: str | None = None
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    grids: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...] = ()
    variants: tuple[str, ...] = ()
    protocol: str = "valid"
    folds: int = 0

    def grid_of(self, variant: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        return dict(self.grids).get(variant, self.grid)

    def trials(self, variant: str) -> list[tuple[str, ...]]:
        """The trials of ``variant``: override lists in grid order (first key slowest)."""
        grid = self.grid_of(variant)
        return [tuple(f"{k}={json.dumps(v)}" for k, v in zip([k for k, _ in grid], values))
                for values in itertools.product(*[vals for _, vals in grid])]

    def settings(self, variant: str) -> dict[str, Any]:
        """What a frozen choice depends on: a rerun with other settings is refused."""
        values = {"seed": self.seed, "rate": self.rate, "metric": self.metric, "trials": [list(t) for t in self.trials(variant)]}
        if self.protocol != "valid":
            values.update(protocol=self.protocol, folds=self.folds)
        return values

    @property
    def cv_folds(self) -> list[int | None]:
        """The development folds each trial runs on (``[None]``: the dataset's own validation part)."""
        return list(range(1, self.folds + 1)) if self.protocol == "cv" else [None]

    def trial_overrides(self) -> list[str]:
        """What a search run of this protocol adds to its trial's overrides."""
        return fold_overrides(self.folds) if self.protocol == "cv" else []

    def grid_overrides(self) -> list[str]:
        """What a grid cell of this protocol adds before the frozen choice."""
        return list(REFIT_OVERRIDES) if self.protocol == "cv" else []

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SearchSpec":
        def grid(pairs):
            return tuple((str(k), tuple(v)) for k, v in pairs)

        return cls(float(values["rate"]), int(values.get("seed", 0)), values.get("metric"), grid(values.get("grid", ())),
                   tuple((str(n), grid(g)) for n, g in values.get("grids", ())), tuple(values.get("variants", ())),
                   str(values.get("protocol", "valid")), int(values.get("folds", 0)))


def _grid_from(value: Any, where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: a search grid is a non-empty table of key = [values]")
    for key, values in value.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid key '{key}' needs a non-empty list of values")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"{where}: grid key '{key}' lists a value twice")
    trials = math.prod(len(v) for v in value.values())
    if trials > MAX_TRIALS:
        sizes = " x ".join(str(len(v)) for v in value.values())
        raise ConfigError(f"{where}: {sizes} = {trials} trials, more than the {MAX_TRIALS} a search may run; search fewer keys or values")
    return tuple((str(k), tuple(v)) for k, v in value.items())


def search_from(table: Any, variants: list[Variant], overrides: list[str], where: str) -> SearchSpec:
    """Read and check a spec's ``[search]`` table against its variants."""
    where = f"{where}: [search]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - SEARCH_KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; known: {sorted(SEARCH_KEYS)}")
    if not isinstance(table.get("rate"), (int, float)) or isinstance(table.get("rate"), bool):
        raise ConfigError(f"{where}: 'rate' (the missing rate of the search runs) must be a number")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where}: 'seed' must be an integer")
    metric = table.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError(f"{where}: 'metric' must be a metric name such as \"acc2\"")
    by_name = {v.name: v for v in variants}
    names = table.get("variants", [v.name for v in variants if v.base is None])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: 'variants' must be a list of variant names")
    for name in names:
        if name not in by_name:
            raise ConfigError(f"{where}: variant '{name}' is not a variant of this spec")
        if by_name[name].base is not None:
            raise ConfigError(f"{where}: variant '{name}' has a base; it inherits the choice of its base's search")
    shared = _grid_from(table["grid"], f"{where} grid") if "grid" in table else ()
    own = table.get("grids", {})
    if not isinstance(own, dict):
        raise ConfigError(f"{where}: 'grids' must hold one table per variant ([search.grids.<variant>])")
    grids = []
    for name, grid in own.items():
        if name not in names:
            raise ConfigError(f"{where}: grids.{name}: '{name}' is not a searched variant")
        grids.append((name, _grid_from(grid, f"{where} grids.{name}")))
    protocol = table.get("protocol", "valid")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: 'protocol' must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    folds = table.get("folds", 5 if protocol == "cv" else 0)
    if protocol == "cv" and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 2):
        raise ConfigError(f"{where}: 'folds' (development folds of the cv protocol) must be an integer >= 2, got {folds!r}")
    if protocol != "cv" and "folds" in table:
        raise ConfigError(f"{where}: 'folds' belongs to protocol = \"cv\"")
    search = SearchSpec(float(table["rate"]), seed, metric, shared, tuple(grids), tuple(names), protocol, folds if protocol == "cv" else 0)
    counts = {name: len(search.trials(name)) for name in names}
    missing = [n for n, c in counts.items() if not search.grid_of(n)]
    if missing:
        raise ConfigError(f"{where}: no grid for variant(s) {missing}; give grid = {{...}} or [search.grids.<variant>]")
    if len(set(counts.values())) > 1:
        raise ConfigError(f"{where}: every searched variant needs the same number of trials, got {counts}")
    for variant in variants:
        root = variant
        while root.name not in names and root.base is not None:
            root = by_name[root.base]
        if root.name not in names:
            if protocol == "cv":
                raise ConfigError(f"{where}: variant '{variant.name}' is not searched; under protocol = \"cv\" every variant's budget "
                                  "comes from the cross-validation (list it in 'variants')")
            continue
        keys = {k for k, _ in search.grid_of(root.name)}
        fixed = {override_key(o) for o in overrides_for(variant.method, overrides) + list(variant.overrides)} & keys
        if fixed:
            raise ConfigError(f"{where}: variant '{variant.name}' sets {sorted(fixed)}, which the search chooses for '{root.name}'; "
                              "remove it from its set (or from the search)")
    return search


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
    except RecursionError:
        raise ConfigError(f"{path}: lists or tables nested more than {MAX_NESTING} levels deep; a spec needs at most 4") from None
    where = str(path)
    check_nesting(data, where)
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    for key in ("datasets", "missing_rates", "seeds"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list")
    report = data.get("report", {})
    if not isinstance(report, dict) or set(report) - REPORT_KEYS:
        raise ConfigError(f"{where}: [report] may hold only {sorted(REPORT_KEYS)}")
    tables = data.get("variants", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: 'variants' must be tables [variants.<name>], got {tables!r}")
    methods = typed_list(data["methods"], str, f"{where}: methods") if "methods" in data else []
    variants = resolve_variants(methods, tables, where)
    if not variants:
        raise ConfigError(f"{where}: no variants; list methods = [...] or add [variants.<name>] tables")
    _check_report(report, variants, where)
    overrides = list(overrides_from(data.get("set"), where))
    kwargs = {
        "variants": variants,
        "datasets": typed_list(data["datasets"], str, f"{where}: datasets"),
        "rates": [float(r) for r in typed_list(data["missing_rates"], float, f"{where}: missing_rates")],
        "seeds": typed_list(data["seeds"], int, f"{where}: seeds"),
        "folds": typed_list(data["folds"], int, f"{where}: folds") if data.get("folds") else None,
        "epochs": typed(data.get("epochs"), int, f"{where}: epochs", low=1),
        "data_dir": typed(data.get("data_dir"), str, f"{where}: data_dir"),
        "overrides": overrides,
        "conditions": typed(data.get("conditions", False), bool, f"{where}: conditions"),
    }
    if "search" in data:
        kwargs["search"] = search_from(data["search"], variants, overrides, where)
    if "threads" in data:
        kwargs["threads"] = typed(data["threads"], int, f"{where}: threads", low=1)
    meta = ExperimentFile(path=path.as_posix(), name=typed(data.get("name", path.stem), str, f"{where}: name"),
                          description=typed(data.get("description", ""), str, f"{where}: description"), report=report)
    return kwargs, meta


def _check_report(report: dict[str, Any], variants: list[Variant], where: str) -> None:
    """``[report] compare`` / ``baseline`` must name variants of the spec."""
    names = {v.name for v in variants}
    compare = report.get("compare", [])
    if not isinstance(compare, list) or not all(isinstance(c, str) and c in names for c in compare):
        raise ConfigError(f"{where}: [report] compare must be a list of variant names of this spec, got {compare!r}")
    baseline = report.get("baseline", "best")
    if not isinstance(baseline, str) or (baseline not in ("best", "both") and baseline not in names):
        raise ConfigError(f"{where}: [report] baseline must be \"best\" (chosen on test), \"both\" (on test and on validation) "
                          f"or a variant name of this spec, got {baseline!r}")


def filter_names(names: list[str], pattern: str | None) -> list[str]:
    """Names matching a shell-style pattern (``comp*``); all of them without a pattern."""
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def variants_table(variants: list[Variant]) -> list[dict[str, Any]]:
    """Variants as plain records (for ``sweep.json`` and the report)."""
    return [asdict(v) for v in variants]


def validate_sweep(spec: Any) -> None:
    """Build (and so check) the config of every method × dataset of a sweep, and of every search trial, before any cell runs.

    The grid is counted first: more than :data:`MAX_CELLS` cells are refused before any is built.
    """
    cells = len(spec.datasets) * len(spec.variants) * len(spec.rates) * len(spec.seeds) * len(spec.folds or [None])
    if cells > MAX_CELLS:
        raise ConfigError(f"sweep: {len(spec.datasets)} datasets x {len(spec.variants)} variants x {len(spec.rates)} rates x "
                          f"{len(spec.seeds)} seeds x {len(spec.folds or [None])} folds = {cells} cells, more than {MAX_CELLS}; "
                          "split the grid over several sweeps")
    check_range(spec.budget, Range(0, 1, low_open=True), "--budget")
    if spec.budget != 1.0 and spec.search is not None and spec.search.protocol == "cv":
        raise ConfigError("--budget: not with a cross-validated search ([search] protocol = \"cv\"): its refit takes its epochs "
                          "from the search runs, which would shorten them twice")
    for rate in spec.rates + ([spec.search.rate] if spec.search is not None else []):
        check_range(rate, UNIT, "--missing-rates")
    for seed in spec.seeds:
        check_range(seed, SEED, "--seeds")
    for dataset in spec.datasets:
        for variant in spec.variants:
            base = overrides_for(variant.method, spec.overrides) + list(variant.overrides)
            trials = spec.search.trials(variant.name) if spec.search is not None and variant.name in spec.search.variants else [()]
            for fold in spec.folds or [None]:
                for trial in trials:
                    try:
                        build_run_config(variant.method, dataset, config_file=variant.config, overrides=base + list(trial),
                                         settings={**spec.build_settings(variant), "data.fold": fold})
                    except ConfigError as exc:
                        name = variant.method if variant.name == variant.method else f"variant '{variant.name}' ({variant.method})"
                        where = f" (search trial {' '.join(trial)})" if trial else ""
                        raise ConfigError(f"{name} on {dataset}{where}: {exc}") from None
