"""Linear: a regularised linear model on observed features and their dialogue means.

Input of each utterance: every modality's features (absent = 0), the
availability bits, and per modality the mean of that modality's observed
features over the utterance's dialogue (zeros plus a "none observed" bit when
no utterance of the dialogue has it). One ``torch.nn.Linear`` maps it to the
output; its weights are fitted by a convex solver, not by gradient epochs:
``ridge`` (least squares on the score, or on one-hot classes) in closed form,
or ``logistic`` (the sign of the score, or the classes) with scikit-learn's
L-BFGS. The regularisation strength is chosen on the validation split with
its fixed masks, over ``grid``. The training split is stacked under
``mask_draws`` seeded training masks. For ``logistic`` on a regression task
the decision function is multiplied by a non-negative factor fitted by least
squares on the training scores, so acc2 is that of the classifier and MAE /
correlation are on the label scale. Regression outputs are clipped to the
range of the training scores (a linear map is unbounded: a very positive
sentence could score 4 on a [-3, 3] scale); clipping never changes a sign, so
acc2 and F1 are untouched and MAE can only improve.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from imer.fields import AT_LEAST_1, POSITIVE, option
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model

if TYPE_CHECKING:
    from imer.data.batching import SplitBatcher

OBJECTIVES = ("ridge", "logistic")


@dataclass
class LinearConfig(ModelConfig):
    """``grid``: penalty per training row (ridge alpha / n, logistic 1 / (C n)), on standardised inputs."""

    objective: str = option("logistic", "ridge (closed form) or logistic (L-BFGS)", choices=OBJECTIVES)
    grid: list[float] = option(factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
                               help="regularisation strengths tried on validation (a non-empty list)", range=POSITIVE)
    mask_draws: int = option(10, "seeded training masks the training split is stacked under", range=AT_LEAST_1)
    dialogue_mean: bool = option(True, "also read each modality's mean of observed features over the dialogue")
    max_iter: int = option(500, "iterations of the logistic solver", range=AT_LEAST_1)


@register_model("linear")
class Linear(IMERModel):
    config_class = LinearConfig
    uses_context = True

    def __init__(self, config: LinearConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if not config.grid:
            raise ValueError("linear: grid must be a non-empty list of positive strengths")
        per_block = sum(spec.dims) + len(spec.modalities)
        self.linear = nn.Linear(per_block * (2 if config.dialogue_mean else 1), spec.output_size)
        self.register_buffer("score_range", torch.tensor([-torch.inf, torch.inf]))

    def design(self, features: dict[str, Tensor], available: Tensor, mask: Tensor) -> Tensor:
        """``[B, L, D]`` inputs of the linear map; absent modalities' values never enter."""
        seen = available & mask[..., None]
        bits = seen.to(self.linear.weight.dtype)
        xs = [torch.where(seen[..., j : j + 1], features[m], torch.zeros((), dtype=bits.dtype)) for j, m in enumerate(self.modalities)]
        parts = [*xs, bits]
        if self.config.dialogue_mean:
            count = bits.sum(dim=1, keepdim=True)  # [B, 1, M] observed utterances per dialogue
            means = [x.sum(dim=1, keepdim=True) / count[..., j : j + 1].clamp(min=1.0) for j, x in enumerate(xs)]
            length = mask.shape[1]
            parts += [mu.expand(-1, length, -1) for mu in means]
            parts.append((count == 0).to(bits.dtype).expand(-1, length, -1))
        return torch.cat(parts, dim=-1)

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        prediction = scores(self.linear(self.design(features, available, mask)), self.spec.task)
        if self.spec.task == "regression":
            prediction = prediction.clamp(float(self.score_range[0]), float(self.score_range[1]))
        return ModelOutput(prediction=prediction)

    @classmethod
    def budget_overrides(cls, epoch: int, record: Mapping[str, Any]) -> list[str]:
        """The refit of the ``cv`` protocol fits the chosen strength alone."""
        return [f"grid=[{float(record['fit']['strength'])!r}]"]

    def convex_mask_draws(self) -> int:
        return self.config.mask_draws

    @torch.no_grad()
    def convex_fits(self, train: "SplitBatcher", masks: list[np.ndarray]) -> Iterator[dict[str, Any]]:
        """Set the weights for each strength of ``grid`` in turn (strongest first) and yield its description."""
        rows, labels = [], []
        for available in masks:
            for batch in train.batches(available, batch_size=max(train.num_groups, 1)):
                rows.append(self.design(batch.features, batch.available, batch.mask)[batch.mask])
                labels.append(batch.labels[batch.mask])
        x = torch.cat(rows).double().numpy()
        y = torch.cat(labels).numpy()
        center = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        z = (x - center) / scale
        if self.spec.task == "regression":
            self.score_range.copy_(torch.tensor([float(y.min()), float(y.max())]))
        grid = sorted(self.config.grid, reverse=True)
        fit = self._ridge if self.config.objective == "ridge" else self._logistic
        for strength, (coef, intercept, extra) in zip(grid, fit(z, y, grid)):
            weight = coef / scale  # back to the unscaled design: w z + b = (w / s) x + (b - w mu / s)
            bias = intercept - weight @ center
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=self.linear.weight.dtype))
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=self.linear.bias.dtype))
            yield {"objective": self.config.objective, "strength": float(strength), "train_rows": int(len(y)), **extra}

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """Ridge targets: the score ``[n, 1]`` or one-hot classes ``[n, C]``."""
        if self.spec.task == "classification":
            return np.eye(self.spec.num_classes)[y.astype(np.int64)]
        return y.astype(np.float64)[:, None]

    def _ridge(self, z: np.ndarray, y: np.ndarray, grid: list[float]) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
        """Closed form for each strength from one eigendecomposition of the (centred) Gram matrix."""
        targets = self._targets(y)
        mean_t = targets.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(z.T @ z)
        projected = eigvec.T @ (z.T @ (targets - mean_t))
        for strength in grid:
            coef = eigvec @ (projected / (eigval + strength * len(z))[:, None])
            yield coef.T, mean_t, {}

    def _logistic(self, z: np.ndarray, y: np.ndarray, grid: list[float]) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
        """L-BFGS logistic regression on the classes, or on the sign of non-zero scores plus a score scale."""
        # imported here: scikit-learn costs 1.5 s and 170 MB of RSS at import, and only this solver needs it
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        regression = self.spec.task == "regression"
        use = y != 0 if regression else np.ones(len(y), dtype=bool)
        target = (y[use] > 0).astype(np.int64) if regression else y.astype(np.int64)
        solver = LogisticRegression(max_iter=self.config.max_iter, warm_start=True)
        for strength in grid:
            solver.set_params(C=1.0 / (strength * int(use.sum())))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # the iteration count is recorded instead
                solver.fit(z[use], target)
            coef, intercept = solver.coef_, solver.intercept_
            extra: dict[str, Any] = {"iterations": int(np.max(solver.n_iter_))}
            if regression:
                decision = z @ coef[0] + intercept[0]
                factor = max(0.0, float(decision @ y) / max(float(decision @ decision), 1e-12))
                coef, intercept = coef * factor, intercept * factor
                extra["score_scale"] = factor
            else:
                coef, intercept = self._class_logits(solver.classes_, coef, intercept)
            yield coef, intercept, extra

    def _class_logits(self, classes: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One logit row per class of the task: two seen classes give sklearn's single row as logits (0, f),
        which have the same softmax; a class absent from training gets a constant, very low logit."""
        full_coef = np.zeros((self.spec.num_classes, coef.shape[1]))
        full_intercept = np.full(self.spec.num_classes, -30.0)
        if len(classes) == 2 and coef.shape[0] == 1:
            full_coef[classes[1]], full_intercept[classes[1]], full_intercept[classes[0]] = coef[0], intercept[0], 0.0
        else:
            full_coef[classes], full_intercept[classes] = coef, intercept
        return full_coef, full_intercept

