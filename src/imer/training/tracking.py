"""Optional experiment tracking: each epoch's history record sent to TensorBoard or MLflow.

Off by default (``train.log_to`` / ``--log-to``). A sink is a trainer hook: the
trainer calls it with the same record it appends to ``history.jsonl``, so the
tracked curves and the run folder never disagree. Scalars are flattened to
``loss/total``, ``valid/acc2``, ``test/modality_acc/audio``, ``seconds``, ...
(lists such as the confusion matrix are left out). When the run is over,
:meth:`finish` adds the hyper-parameters (the flattened config) and the final
metrics of ``metrics.json`` (``final/test/acc2``, ``final/valid/...``,
``final/best_epoch``), so runs can be compared by their settings. Each sink is
an optional extra: ``pip install 'imer[tensorboard]'`` or ``'imer[mlflow]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imer.errors import ConfigError
from imer.io import flatten

SINKS = ("tensorboard", "mlflow")


def flatten_scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested record as ``a/b/c`` -> value (booleans, None and lists dropped)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
            out[name] = float(value)
    return out


def final_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The final numbers of ``metrics.json`` to track: test and valid metrics at the selected epoch, the selected epoch, cost."""
    chosen = {"test": metrics.get("test", {}), "valid": metrics.get("valid", {}), "best_epoch": metrics["selection"]["best_epoch"],
              "wall_seconds": metrics.get("wall_seconds")}
    return {f"final/{k}": v for k, v in flatten_scalars(chosen).items()}


def hyper_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config as TensorBoard accepts it: numbers, strings and booleans (anything else as its text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}


class TensorBoardSink:
    """Scalars per epoch into ``<run_dir>/tensorboard`` (``tensorboard --logdir <run_dir>``), then hyper-parameters and final metrics."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.config = config
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log-to tensorboard needs TensorBoard: pip install 'imer[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def __call__(self, record: dict[str, Any]) -> None:
        for name, value in flatten_scalars(record).items():
            self.writer.add_scalar(name, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def finish(self, metrics: dict[str, Any]) -> None:
        # the HPARAMS tab and the final metrics as scalars at the selected epoch, in the same folder as the curves
        self.writer.add_hparams(hyper_parameters(self.config), final_scalars(metrics), run_name=".",
                                global_step=int(metrics["selection"]["best_epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    """One MLflow run per imer run: flattened config as params, scalars per epoch as metrics.

    The tracking server comes from ``MLFLOW_TRACKING_URI`` (MLflow's default otherwise),
    the experiment from ``MLFLOW_EXPERIMENT_NAME`` (default ``imer``).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], name: str) -> None:
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("--log-to mlflow needs MLflow: pip install 'imer[mlflow]'") from None
        import os

        self.client = MlflowClient()
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "imer")
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        run = self.client.create_run(experiment_id, run_name=name, tags={"imer.run_dir": str(Path(run_dir).resolve())})
        self.run_id = run.info.run_id
        self._metric = mlflow.entities.Metric
        params = [mlflow.entities.Param(k, str(v)[:250]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def __call__(self, record: dict[str, Any]) -> None:
        import time

        stamp = int(time.time() * 1000)
        step = int(record["epoch"])
        metrics = [self._metric(k, v, stamp, step) for k, v in flatten_scalars(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, metrics: dict[str, Any]) -> None:
        import time

        stamp, step = int(time.time() * 1000), int(metrics["selection"]["best_epoch"])
        self.client.log_batch(self.run_id, metrics=[self._metric(k, v, stamp, step) for k, v in final_scalars(metrics).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)



def tracking_hooks(log_to: str | None, run_dir: Path, config: dict[str, Any], name: str) -> list[Callable[[dict[str, Any]], None]]:
    """The sink named by ``log_to`` (none when it is None), ready to pass to the trainer."""
    if log_to is None:
        return []
    if log_to == "tensorboard":
        return [TensorBoardSink(run_dir, config)]
    if log_to == "mlflow":
        return [MLflowSink(run_dir, config, name)]
    raise ConfigError(f"unknown tracking sink {log_to!r}; use {' or '.join(SINKS)}")
