"""The grid of a sweep: its cells (dataset × variant × missing rate × fold × seed, plus search trials) and the
settings they share; each cell is one run folder under the sweep directory (:attr:`Cell.relpath`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imer.config import dataset_label
from imer.errors import ConfigError
from imer.experiments.spec import ExperimentFile, SearchSpec, Variant, overrides_for, variants_table


def exact(value: float) -> str:
    """``value`` as short as ``:g`` prints it when that reads back as the same number, else every digit it needs
    (0.1 -> ``0.1``, 1.0 -> ``1``, 0.1000001 -> ``0.1000001``): two cells never share a folder or a label."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    dataset: str
    variant: str
    method: str
    rate: float
    seed: int
    fold: int | None = None
    dataset_id: str = ""
    trial: int | None = None  # a trial of the hyper-parameter search stage (run under search/)

    @property
    def relpath(self) -> Path:
        """Run directory relative to the sweep directory."""
        base = Path("runs") / (self.dataset_id or self.dataset) / self.variant
        if self.trial is not None:
            base = Path("search") / base / f"trial={self.trial}"
        base = base / f"rate={exact(self.rate)}"
        if self.fold is not None:
            base = base / f"fold={self.fold}"
        return base / f"seed={self.seed}"

    @property
    def label(self) -> str:
        fold = f" fold={self.fold}" if self.fold is not None else ""
        trial = f" search trial {self.trial}" if self.trial is not None else ""
        return f"{self.dataset_id or self.dataset}/{self.variant}{trial} rate={exact(self.rate)}{fold} seed={self.seed}"


@dataclass
class SweepSpec:
    """The grid and the settings shared by all its cells.

    ``variants`` are the rows of the grid; ``methods`` is the command-line
    shorthand (every method a variant of the same name). ``epochs`` is the
    budget of variants without their own; ``overrides`` apply to every variant
    (``METHOD:key=value`` to one method's variants), before the variant's own.
    """

    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    folds: list[int] | None = None
    epochs: int | None = None
    data_dir: str | None = None
    overrides: list[str] = field(default_factory=list)
    conditions: bool = False
    threads: int = 1
    log_to: str | None = None
    budget: float = 1.0  # fraction of every variant's epochs and whole-epoch stage lengths (imer sweep --budget)
    device: str = "cpu"  # where every cell trains and evaluates (imer sweep --device); not a setting that changes numbers
    experiment: ExperimentFile | None = None
    search: SearchSpec | None = None
    chosen: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # frozen search winners: dataset id -> variant -> overrides

    def __post_init__(self) -> None:
        self.variants = [v if isinstance(v, Variant) else Variant.from_dict(v) for v in self.variants]
        if isinstance(self.experiment, dict):
            self.experiment = ExperimentFile(**self.experiment)
        if isinstance(self.search, dict):
            self.search = SearchSpec.from_dict(self.search)
        names = {v.name for v in self.variants}
        self.variants += [Variant(m, m) for m in self.methods if m not in names]
        self.methods = []
        if len({v.name for v in self.variants}) != len(self.variants):
            raise ConfigError("variant names must be unique in a sweep")

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def cells(self) -> list[Cell]:
        """All cells, dataset-major (so early results fill whole table rows first)."""
        folds: list[int | None] = list(self.folds) if self.folds else [None]
        labels = {d: dataset_label(d) for d in self.datasets}
        return [
            Cell(d, v.name, v.method, float(r) + 0.0, int(s), f, labels[d])
            for d in self.datasets
            for v in self.variants
            for r in self.rates
            if v.rates is None or float(r) in v.rates
            for f in folds
            for s in self.seeds
            if v.seeds is None or int(s) in v.seeds
        ]

    def search_cells(self) -> list[Cell]:
        """The search stage: every searched variant × trial on each dataset, at the search's seed and rate (first fold)."""
        if self.search is None:
            return []
        labels = {d: dataset_label(d) for d in self.datasets}
        folds = self.search.cv_folds if self.search.protocol == "cv" else [self.folds[0] if self.folds else None]
        return [Cell(d, v.name, v.method, self.search.rate, self.search.seed, fold, labels[d], trial=k)
                for d in self.datasets for v in self.variants if v.name in self.search.variants
                for k in range(len(self.search.trials(v.name))) for fold in folds]

    def searched_root(self, name: str) -> str | None:
        """The variant whose search decides ``name``'s settings (itself or a base), None when it is not searched."""
        if self.search is None:
            return None
        variant = self.variant(name)
        while variant.name not in self.search.variants and variant.base is not None:
            variant = self.variant(variant.base)
        return variant.name if variant.name in self.search.variants else None

    def waiting(self, cell: Cell) -> bool:
        """A grid cell whose variant's search has no frozen choice yet."""
        root = self.searched_root(cell.variant)
        return cell.trial is None and root is not None and root not in self.chosen.get(cell.dataset_id or cell.dataset, {})

    def run_overrides(self, cell: Cell) -> list[str]:
        """Overrides of a cell, in order: spec ``set``, the variant's (base first), then the trial's or the frozen winner's."""
        variant = self.variant(cell.variant)
        items = overrides_for(cell.method, self.overrides) + list(variant.overrides)
        if cell.trial is not None:
            assert self.search is not None
            return items + self.search.trial_overrides() + list(self.search.trials(cell.variant)[cell.trial])
        root = self.searched_root(cell.variant)
        if root is not None:
            assert self.search is not None
            items += self.search.grid_overrides() + self.chosen[cell.dataset_id or cell.dataset][root]
        return items

    def settings(self) -> dict[str, Any]:
        """What must agree between runs of one sweep directory for its numbers to be comparable."""
        return {"epochs": self.epochs, "overrides": list(self.overrides), **({"budget": self.budget} if self.budget != 1.0 else {})}

    def build_settings(self, variant: Variant) -> dict[str, Any]:
        """The ``build_run_config`` settings every cell of ``variant`` shares: data folder, epochs, budget, threads, device."""
        return {"data.data_dir": self.data_dir, "train.epochs": variant.epochs or self.epochs,
                "train.budget": self.budget if self.budget != 1.0 else None, "train.threads": self.threads, "train.device": self.device}

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["variants"] = variants_table(self.variants)
        return values


def parse_list(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    """``"a,b,c"`` -> ``[kind(a), kind(b), kind(c)]`` (empty items dropped, order kept, duplicates removed)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
    return list(dict.fromkeys(values))
