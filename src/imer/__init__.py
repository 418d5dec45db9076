"""imer: incomplete multimodal emotion recognition (ComP, PROMISE, baselines, honest protocols).

The Python API mirrors the CLI::

    import imer
    config = imer.build_run_config("early-fusion", "cmu-mosi", overrides=["data.data_dir=../shared/data", "missing.rate=0.4"])
    metrics = imer.train(config, "runs/ef")
    imer.evaluate("runs/ef", condition="t")
    rows = imer.predict("runs/ef", "new.npz")
    table = imer.results("sweeps/mosi")          # pandas.DataFrame, one row per run

and works in memory::

    ds = imer.Dataset.from_arrays({"audio": xa, "text": xt}, labels)
    model = imer.fit("comp", ds, missing_rate=0.3)
    model.predict({"audio": xa, "text": xt}); model.save("runs/m"); imer.load("runs/m")
"""

from __future__ import annotations

import os
import sys
from typing import Any

from imer.training.threads import machine_load, openmp_wait_environment
from imer.version import __version__  # noqa: F401  (imer.__version__)

# OpenMP threads that spin while waiting made 2 torch threads 10-12x slower than 1 on a busy 2-core machine;
# passive waiting made them 1.6x faster, and a short spin before sleeping helps only on an idle machine
# (docs/benchmarks.md). OpenMP reads these when torch loads it, so they are set here, before imer imports
# torch, unless the user chose a policy or imported torch first.
os.environ.update(openmp_wait_environment(os.environ, "torch" in sys.modules, machine_load()))

_API = {
    "build_run_config": "imer.config",
    "RunConfig": "imer.config",
    "train": "imer.experiments.run",
    "load_run": "imer.experiments.run",
    "evaluate": ("imer.experiments.inference", "evaluate_run"),
    "evaluate_conditions": "imer.experiments.inference",
    "predict": "imer.experiments.inference",
    "load_dataset": "imer.data",
    "list_datasets": "imer.data",
    "make_synthetic": "imer.data",
    "create_model": "imer.models",
    "list_models": "imer.models",
    "Dataset": ("imer.data", "MultimodalDataset"),
    "fit": "imer.experiments.estimator",
    "load": "imer.experiments.estimator",
    "Model": "imer.experiments.estimator",
    "results": "imer.reports.runs",
    "load_spec": "imer.experiments.spec",
}

__all__ = sorted(_API)


def __dir__() -> list[str]:
    """What ``dir(imer)`` shows: the API and the version, not the modules this file imports."""
    return [*__all__, "__version__"]


def __getattr__(name: str) -> Any:
    """Import API functions lazily, so ``import imer`` (and ``imer --help``) stays fast."""
    if name not in _API:
        raise AttributeError(f"module 'imer' has no attribute {name!r}")
    import importlib

    target = _API[name]
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)
