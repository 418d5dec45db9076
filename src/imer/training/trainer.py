"""The training loop shared by every method.

Seeded; fresh training masks every epoch; validation (only) after every
epoch with the best epoch chosen by a validation metric; per-epoch metrics
appended to ``history.jsonl``; optional early stopping on that metric; a
resume checkpoint every ``checkpoint_every`` epochs or ``checkpoint_minutes``
minutes, at the first epoch of every stage and at the end, so an interrupted
run resumes to the same result. The test split is not touched during
training unless ``eval_test_each_epoch`` (per-epoch test curves) or the
``test-published`` selection rule asks for it. Methods with stages hook in
through ``model.on_epoch_start(epoch)``; the loop itself is never copied.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from imer.config.schema import TrainConfig
from imer.data.batching import SplitBatcher
from imer.data.missing import derive_seed, missing_fraction
from imer.errors import IMERError
from imer.evaluation.metrics import MetricAccumulator, is_better
from imer.io import dumps, loads
from imer.models.base import IMERModel
from imer.runfolder.folder import RunFolder


class TrainingError(IMERError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class EvalSet:
    """A split to evaluate with its fixed availability mask."""

    batcher: SplitBatcher
    available: np.ndarray


@dataclass
class FitResult:
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    best_valid: dict[str, Any]
    best_test: dict[str, Any] | None
    train_missing_fraction: float
    seconds_per_epoch: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    fit: dict[str, Any] | None = None  # the chosen candidate of a convex fit (e.g. its regularisation)


@dataclass
class CheckpointPolicy:
    """When the resume checkpoint is written: every ``every`` epochs or ``minutes`` minutes
    (0 disables either), and always at the first epoch of a stage and at the last epoch."""

    every: int
    minutes: float

    def due(self, epoch: int, last_epoch: bool, new_stage: bool, seconds_since: float) -> bool:
        by_epoch = self.every > 0 and (epoch + 1) % self.every == 0
        by_time = self.minutes > 0 and seconds_since >= 60.0 * self.minutes
        return last_epoch or new_stage or by_epoch or by_time


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam / AdamW (fused kernels) or SGD (multi-tensor ``foreach``) over all parameters.

    Same update rule as the plain per-parameter loop, computed by one fused
    kernel over all parameters: on CPU, Adam's step took 35 instead of 164 ms
    for ComP's 9.7 M parameters (docs/benchmarks.md).
    """
    params = [p for p in model.parameters()]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9, foreach=True)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's tensors (cheaper than deep-copying the module tree)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.inference_mode()
def predict_split(model: IMERModel, evalset: EvalSet, batch_size: int, device: torch.device) -> MetricAccumulator:
    """Run the model over a split in eval mode (no autograd); returns the filled accumulator."""
    model.eval()
    acc = MetricAccumulator(model.spec.task, model.spec.num_classes, list(model.modalities))
    for batch in evalset.batcher.batches(evalset.available, batch_size, bucket=1):
        batch = batch.to(device)
        out = model(batch.features, batch.available, batch.mask, batch.speakers)
        keep = batch.mask
        per = None
        if out.modality_predictions:
            per = {m: p[keep].float().cpu().numpy() for m, p in out.modality_predictions.items()}
        acc.update(
            batch.labels[keep].cpu().numpy(),
            out.prediction[keep].float().cpu().numpy(),
            batch.available[keep].cpu().numpy(),
            batch.index[keep].cpu().numpy(),
            per,
        )
    return acc


class Trainer:
    """Fit a model with validation-based selection, checkpoints and resume."""

    def __init__(
        self,
        model: IMERModel,
        train: TrainConfig,
        *,
        select_metric: str,
        seed: int = 0,
        device: str | torch.device = "cpu",
        run_dir: str | Path | None = None,
        hooks: list[Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        """Settings come from ``train`` (epochs, optimiser, selection rule, patience, checkpoints, bucketing);
        ``select_metric`` is ``train.select_metric`` resolved for the data's task, ``device`` ``train.device`` resolved.
        ``run_dir`` receives ``history.jsonl`` and ``checkpoint.pt`` (none without it)."""
        self.model = model
        self.epochs, self.batch_size = train.epochs, train.batch_size
        self.grad_clip = train.grad_clip
        self.select_metric, self.selection = select_metric, train.selection
        self.seed = seed
        self.device = torch.device(device)
        self.folder = RunFolder(run_dir) if run_dir else None
        self.progress = train.progress
        self.eval_test_each_epoch = train.eval_test_each_epoch or train.selection == "test-published"
        self.patience = train.patience
        self.checkpoint_policy = CheckpointPolicy(train.checkpoint_every, train.checkpoint_minutes)
        self.bucket = train.bucket if model.uses_context else 0
        self.hooks = list(hooks or [])  # called with each epoch's history record, after it is logged
        self.model.to(self.device)
        self.optimizer = make_optimizer(model, train.optimizer, train.lr, train.weight_decay)

    def fit(
        self,
        train: SplitBatcher,
        train_mask: Callable[[int], np.ndarray],
        valid: EvalSet,
        test: EvalSet | None = None,
        resume: bool = False,
    ) -> FitResult:
        """Train for ``epochs``; ``train_mask(epoch)`` gives that epoch's training availability."""
        if self.model.convex_mask_draws():
            return self._fit_convex(train, train_mask, valid, test)
        start, best, history = 0, {"epoch": -1, "score": None, "valid": None, "test": None, "state": None}, []
        if resume and self.folder is not None and self.folder.interrupted:
            start, best, history = self._restore()
        elapsed: list[float] = [h["seconds"] for h in history]
        stopped_early = self._patience_exhausted(len(history) - 1, best) if history else False
        epochs = range(start, self.epochs) if not stopped_early else range(0)
        plain = self.progress and not sys.stderr.isatty()  # logs and pipes get one line per epoch, no carriage returns
        bar = tqdm(epochs, desc="epochs", disable=not self.progress or plain, leave=False, initial=start, total=self.epochs)
        last_saved = time.monotonic()
        for epoch in bar:
            t0 = time.perf_counter()
            self.model.on_epoch_start(epoch)
            available = train_mask(epoch)
            losses = self._train_epoch(train, available, epoch)
            seconds = time.perf_counter() - t0
            valid_metrics, test_metrics, score = self._evaluate_epoch(valid, test)
            diagnostics = self._diagnostics(valid, test if self.eval_test_each_epoch else None)
            if self.selection == "last" or is_better(self.select_metric, score, best["score"]):
                best = {"epoch": epoch, "score": score, "valid": valid_metrics, "test": test_metrics, "state": copy_state(self.model)}
            record = {
                "epoch": epoch,
                "stage": self.model.stage(),
                "seconds": seconds,
                "train_missing_fraction": missing_fraction(available),
                "loss": losses,
                "valid": valid_metrics,
            }
            if test_metrics is not None:
                record["test"] = test_metrics
            if diagnostics:
                record["diagnostics"] = diagnostics
            new_stage = not history or history[-1]["stage"] != record["stage"]
            history.append(record)
            elapsed.append(seconds)
            self._log(record)
            stopped_early = self._patience_exhausted(epoch, best)
            last_epoch = epoch == self.epochs - 1 or stopped_early
            if self.checkpoint_policy.due(epoch, last_epoch, new_stage, time.monotonic() - last_saved):
                self._checkpoint(epoch, best, history)
                last_saved = time.monotonic()
            bar.set_postfix({"epoch": epoch, "loss": f"{losses['total']:.3f}", f"valid_{self.select_metric}": f"{score:.3f}", "best epoch": best["epoch"]})
            if plain:  # epochs are numbered from 0 here as in history.jsonl and metrics.json; "(k of N)" counts them
                print(f"epoch {epoch} ({epoch + 1} of {self.epochs}): loss {losses['total']:.4f}, valid {self.select_metric} {score:.4f}, "
                      f"best epoch {best['epoch']}, {seconds:.1f}s", file=sys.stderr, flush=True)
            if stopped_early:
                break
        bar.close()
        if best["state"] is None:
            raise TrainingError("no epoch was trained (epochs <= resumed epoch?)")
        return FitResult(
            best_epoch=best["epoch"],
            best_state=best["state"],
            best_valid=best["valid"],
            best_test=best["test"],
            train_missing_fraction=float(np.mean([h["train_missing_fraction"] for h in history])),
            seconds_per_epoch=float(np.mean(elapsed)) if elapsed else 0.0,
            history=history,
            stopped_early=stopped_early,
        )

    def _patience_exhausted(self, epoch: int, best: dict[str, Any]) -> bool:
        """Early stopping: ``patience`` epochs in a row without a better selection score."""
        return self.patience > 0 and epoch - best["epoch"] >= self.patience

    def _fit_convex(self, train: SplitBatcher, train_mask: Callable[[int], np.ndarray], valid: EvalSet, test: EvalSet | None) -> FitResult:
        """Methods fitted by a convex solver: each regularisation candidate is scored on validation like an epoch.

        The fit takes seconds, so it is always redone from scratch (no checkpoint; ``--resume`` refits).
        """
        if self.folder is not None:
            self.folder.clear_history()
        t0 = time.perf_counter()
        masks = [train_mask(k) for k in range(self.model.convex_mask_draws())]
        best, history = {"epoch": -1, "score": None}, []
        if self.progress:
            print(f"convex fit on {len(masks)} training mask draw(s): each regularisation candidate is one 'epoch' of history.jsonl "
                  "(numbered from 0), scored on validation; the first one includes building the features", file=sys.stderr, flush=True)
        for k, candidate in enumerate(self.model.convex_fits(train, masks)):
            seconds = time.perf_counter() - t0
            valid_metrics, test_metrics, score = self._evaluate_epoch(valid, test)
            if self.selection == "last" or is_better(self.select_metric, score, best["score"]):
                best = {"epoch": k, "score": score, "valid": valid_metrics, "test": test_metrics, "state": copy_state(self.model), "fit": candidate}
            record = {"epoch": k, "stage": "convex", "seconds": seconds, "train_missing_fraction": float(np.mean([missing_fraction(m) for m in masks])), "fit": candidate, "loss": {}, "valid": valid_metrics}
            if test_metrics is not None:
                record["test"] = test_metrics
            history.append(record)
            self._log(record)
            if self.progress:
                settings = ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}" for key, value in candidate.items())
                print(f"epoch {k} (candidate: {settings}): valid {self.select_metric} {score:.4f}, best epoch {best['epoch']}, {seconds:.1f}s",
                      file=sys.stderr, flush=True)
            t0 = time.perf_counter()
        if best["score"] is None:
            raise TrainingError("the convex fit produced no candidate (empty regularisation grid?)")
        return FitResult(
            best_epoch=best["epoch"],
            best_state=best["state"],
            best_valid=best["valid"],
            best_test=best["test"],
            train_missing_fraction=history[0]["train_missing_fraction"],
            seconds_per_epoch=float(np.mean([h["seconds"] for h in history])),
            history=history,
            fit=best["fit"],
        )

    def _evaluate_epoch(self, valid: EvalSet, test: EvalSet | None) -> tuple[dict[str, float], dict[str, float] | None, float]:
        """Validation metrics, test metrics (only when asked for every epoch) and the selection score."""
        valid_metrics = predict_split(self.model, valid, self.batch_size, self.device).compute()
        test_metrics = None
        if test is not None and self.eval_test_each_epoch:
            test_metrics = predict_split(self.model, test, self.batch_size, self.device).compute()
        judged = test_metrics if self.selection == "test-published" else valid_metrics
        if self.select_metric not in judged:
            raise TrainingError(f"selection metric '{self.select_metric}' is not computed for this task; available: {sorted(judged)}")
        return valid_metrics, test_metrics, float(judged[self.select_metric])

    @torch.inference_mode()
    def _diagnostics(self, valid: EvalSet, test: EvalSet | None) -> dict[str, Any]:
        self.model.eval()
        found = {}
        for name, evalset in (("valid", valid), ("test", test)):
            if evalset is not None:
                values = self.model.epoch_diagnostics(evalset.batcher, evalset.available)
                if values:
                    found[name] = values
        return found

    def _train_epoch(self, train: SplitBatcher, available: np.ndarray, epoch: int) -> dict[str, float]:
        self.model.train()
        rng = np.random.default_rng(derive_seed("shuffle", self.seed, epoch))
        sums: dict[str, float] = {}
        steps = 0
        for batch in train.batches(available, self.batch_size, rng, bucket=self.bucket):
            batch = batch.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)  # before the forward: the old gradients' memory is free for its activations
            out = self.model(batch.features, batch.available, batch.mask, batch.speakers)
            terms = self.model.loss(out, batch.labels, batch.mask, batch.available)
            total = sum(terms.values())
            if not torch.isfinite(total):
                bad = [k for k, v in terms.items() if not torch.isfinite(v)]
                raise TrainingError(f"epoch {epoch}: loss became non-finite (terms {bad}); try a lower learning rate")
            total.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            steps += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["total"] = sums.get("total", 0.0) + float(total.detach())
            del out, terms, total  # the outputs' tensors would otherwise live through the next batch's forward
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def _log(self, record: dict[str, Any]) -> None:
        """Append an epoch's record to ``history.jsonl`` and hand it to every hook (tracking sinks)."""
        for hook in self.hooks:
            hook(record)
        if self.folder is not None:
            self.folder.append_history(record)

    def _checkpoint(self, epoch: int, best: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if self.folder is None:
            return
        self.folder.save_checkpoint(
            {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "best_epoch": best["epoch"],
                "best_score": best["score"],
                "best_valid": dumps(best["valid"]),
                "best_test": dumps(best["test"]),
                "best_state": best["state"],
                "history": dumps(history),
            },
        )

    def _restore(self) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        state = self.folder.load_checkpoint()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history = loads(state["history"])
        best = {
            "epoch": int(state["best_epoch"]),
            "score": state["best_score"],
            "valid": loads(state["best_valid"]),
            "test": loads(state["best_test"]),
            "state": state["best_state"],
        }
        self.folder.write_history(history)
        return int(state["epoch"]) + 1, best, history

