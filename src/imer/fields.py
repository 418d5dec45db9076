"""One config field, one declaration: its type (the annotation), default, range or choices, and help.

Run options (:mod:`imer.config.schema`) and every method's options (the
``ModelConfig`` dataclasses in :mod:`imer.models`) are declared with
:func:`option`; validation, ``--set`` parsing, ``imer list --options`` and
docs/options.md read the declarations. This module sits below both, so
models need not import the config package (which imports models).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imer.errors import ConfigError

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Range:
    """Allowed interval of a number (``None`` = unbounded); ``low_open``/``high_open`` exclude the ends."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "finite"


POSITIVE = Range(0, None, low_open=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1)
BELOW_1 = Range(0, 1, high_open=True)
FRACTION = Range(0, 1, low_open=True, high_open=True)
SEED = Range(0, MAX_SEED)
FINITE = Range(None)


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING, range: Range | None = None,
           choices: tuple[str, ...] | None = None, pattern: tuple[str, str] | None = None, run_local: bool = False,
           resume_free: bool = False, stage: bool = False, **extra: Any) -> Any:
    """A config field with its checks and help.

    ``range``: allowed interval of a number (of each item of a list); ``choices``: allowed strings;
    ``pattern``: (regex, what it admits) for a string. ``run_local``: never
    changes a run's numbers (left out of the config hash, not compared by the
    report); ``resume_free``: may differ between an interrupted run and its resumption.
    ``stage``: a method option that is a stage length in epochs, given as whole epochs or as a fraction of
    ``train.epochs`` (``0 < x < 1``, resolved to whole epochs when the run config is built).
    ``extra``: further metadata a method reads (e.g. ComP's ``switch``).
    """
    meta = {"help": help, "range": range, "choices": choices, "pattern": pattern, "run_local": run_local, "resume_free": resume_free,
            "stage": stage, **extra}
    return field(default=default, default_factory=factory, metadata=meta)


def check_range(value: Any, rng: Range, where: str) -> None:
    """A number outside ``rng`` is a :class:`ConfigError` naming ``where``; other values pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not rng.admits(value):
        raise ConfigError(f"{where}: must be {rng.text()}, got {value!r}")


def check_value(value: Any, meta: Mapping[str, Any], where: str) -> None:
    """``value`` (already of its field's type) against the field's declared range or choices; a list item by item."""
    for item in value if isinstance(value, list) else [value]:
        if meta.get("range") is not None:
            check_range(item, meta["range"], where)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where}: must be finite, got {item!r}")
        if meta.get("choices") and item not in meta["choices"]:
            raise ConfigError(f"{where}: unknown value {item!r}; choose one of {', '.join(meta['choices'])}")


def check_declared(obj: Any, prefix: str = "") -> None:
    """Every field of dataclass ``obj`` that is set against its declared range or choices (``prefix`` names it in messages)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is not None:
            check_value(value, f.metadata, f"{prefix}{f.name}")


def flagged(cls: Any, flag: str) -> tuple[str, ...]:
    """Names of the fields of dataclass ``cls`` whose declaration sets ``flag`` (e.g. ``stage``), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(flag))
