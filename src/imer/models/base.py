"""The contract every method follows.

A method is a :class:`IMERModel` subclass in its own file under
``imer/models/``, with a typed :class:`ModelConfig` dataclass, registered by
name with :func:`imer.models.registry.register_model`. Every model has the
same forward signature::

    out = model(features, available, mask, speakers=None)

``features`` maps modality -> ``[B, L, d_m]``; ``available`` is ``[B, L, M]``
bool; ``mask`` is ``[B, L]`` bool (False = padding); ``speakers`` is an
optional ``[B, L]`` long. ``L`` is the dialogue length for context models
(``uses_context = True``) and 1 for utterance models. The output is a
:class:`ModelOutput`; ``model.loss(out, labels, mask, available)`` returns the
named loss terms that the trainer sums. A missing modality's feature values
must never influence any output.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imer.fields import AT_LEAST_1, BELOW_1, NON_NEGATIVE, check_declared, option

if TYPE_CHECKING:
    import numpy as np

    from imer.data.batching import SplitBatcher


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data: modalities, dims and task."""

    modalities: tuple[str, ...]
    dims: tuple[int, ...]
    task: str
    num_classes: int

    @property
    def output_size(self) -> int:
        return self.num_classes if self.task == "classification" else 1

    @property
    def dim_of(self) -> dict[str, int]:
        return dict(zip(self.modalities, self.dims))


@dataclass
class ModelConfig:
    """Fields shared by every method's config; subclasses add their own, each declared with
    :func:`imer.fields.option` (type, default, range or choices, help; a subclass redeclares a field to change its default).

    ``packed``: run utterance-wise layers on the present entries only
    (:mod:`imer.layers.packing`); the same function as the padded computation
    (``packed=false``, kept as the reference that tests and benchmarks compare with).
    """

    hidden: int = option(128, "width of the hidden layers", range=AT_LEAST_1)
    dropout: float = option(0.3, "dropout probability", range=BELOW_1)
    regression_loss: str = option("mse", "task loss of regression data", choices=("mse", "l1"))
    packed: bool = option(True, "utterance-wise layers on the present entries only (false: the padded reference computation)")
    sign_weight: float = option(0.0, "weight of the sign loss added to the regression loss (0 = off)", range=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_declared(self)  # declared ranges and choices, also for a config built in Python


@dataclass
class ModelOutput:
    """Predictions plus auxiliary outputs.

    Attributes:
        prediction: ``[B, L, C]`` logits (classification) or ``[B, L]`` scores.
        modality_predictions: each modality's own head (same shapes), for
            methods with unimodal heads; feeds ``modality_acc``.
        aux: any further tensors a method wants to expose (fusion weights,
            reconstructions, generated representations ...).
    """

    prediction: Tensor
    modality_predictions: dict[str, Tensor] | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)


class IMERModel(nn.Module):
    """Base class: stores config and data spec, provides the task loss."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    uses_context: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__()
        self.config = config
        self.spec = spec

    @classmethod
    def reads_dialogues(cls, options: Mapping[str, Any]) -> bool:
        """Whether a model built with config values ``options`` needs whole dialogues per batch.

        ``uses_context`` by default; utterance-level methods with an opt-in
        dialogue-context input (e.g. ``context_mean``) override it.
        """
        return cls.uses_context

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.spec.modalities

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        raise NotImplementedError

    def task_loss(self, prediction: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
        """Mean task loss over positions where ``weight`` (``[B, L]`` bool) is True."""
        if self.spec.task == "classification":
            per = F.cross_entropy(prediction.reshape(-1, prediction.shape[-1]), labels.reshape(-1).long(), reduction="none")
        elif self.config.regression_loss == "l1":
            per = (prediction.reshape(-1) - labels.reshape(-1).float()).abs()
        else:
            per = (prediction.reshape(-1) - labels.reshape(-1).float()).pow(2)
        w = weight.reshape(-1).to(per.dtype)
        if self.spec.task == "regression" and self.config.sign_weight > 0:
            per = per + self.config.sign_weight * sign_loss(prediction.reshape(-1), labels.reshape(-1).float())
        return (per * w).sum() / w.sum().clamp(min=1.0)

    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        """Named loss terms (already weighted); the trainer minimises their sum.

        Contract with the trainer: for every training batch it calls ``forward``,
        then ``loss`` on that same output, then ``backward`` on the summed terms,
        in this order and nothing in between. A method may therefore pass
        information from ``loss`` to its own backward pass: ComP's gradient
        modulator puts a weight tensor into ``out.aux`` during ``forward`` (read
        lazily by a custom autograd function, ``GradScale``) and fills it in place
        in ``loss`` once the unimodal errors are known, so the coming backward
        scales each modality's prompt gradients. Such in-place writes must only
        touch tensors that no loss term depends on, and evaluation never calls
        ``loss``, so predictions do not depend on it.
        """
        return {"task": self.task_loss(out.prediction, labels, mask)}

    @classmethod
    def budget_overrides(cls, epoch: int, record: Mapping[str, Any]) -> list[str]:
        """``--set`` items that make a refit train exactly to ``epoch`` (its ``history.jsonl`` line is ``record``).

        The ``cv`` protocol chooses a budget on the development folds and refits
        with it (docs/protocol.md): for epoch-trained methods the epoch count;
        convex methods override this to fix their chosen candidate.
        """
        return [f"train.epochs={epoch + 1}"]

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods with stages (e.g. ComP's warm-up); epochs count from 0.

        The stage must be a pure function of ``epoch``: the trainer calls this at
        the start of every epoch, and again with the selected epoch after the best
        weights are loaded (also when a saved run is reloaded), so a model always
        predicts in the stage its weights were selected in.
        """

    def epoch_diagnostics(self, batcher: "SplitBatcher", available: "np.ndarray") -> dict:
        """Optional per-epoch measurements on an evaluation split, logged in ``history.jsonl``.

        Called by the trainer in eval mode without gradients after each epoch's
        validation, for the valid and test splits with their fixed masks.
        Methods override it (e.g. PROMISE's generation similarity); default: none.
        """
        return {}

    def stage(self) -> str:
        """Name of the current training stage (logged with every epoch)."""
        return "main"

    def convex_mask_draws(self) -> int:
        """Training-mask draws a convex method is fitted on at once; 0 = trained by gradient epochs.

        A method returning ``K > 0`` is fitted by :meth:`convex_fits` instead
        of the trainer's epochs, on the training split stacked under the
        masks of epochs ``0 .. K-1`` (the same seeded draws a deep method sees
        first), so it meets the same missingness distribution.
        """
        return 0

    def convex_fits(self, train: "SplitBatcher", masks: list["np.ndarray"]) -> Iterator[dict[str, Any]]:
        """Fit in closed form / by a convex solver, once per regularisation candidate.

        Sets the weights of each candidate in turn and yields a JSON-able
        description of it (e.g. ``{"strength": 0.01}``); the trainer scores
        each candidate on validation exactly like an epoch and keeps the best.
        """
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient epochs")


def sign_loss(score: Tensor, label: Tensor) -> Tensor:
    """Logistic loss of the score's sign against the label's sign, per element; 0 where the label is 0.

    ``log(1 + exp(-sign(y) * s))``: the surrogate of binary accuracy (acc2)
    that logistic regression minimises. Added to the regression loss with
    weight ``sign_weight``; the squared/absolute error keeps the score on the
    label's scale for MAE, correlation and acc7.
    """
    return F.softplus(-torch.sign(label) * score) * (label != 0).to(score.dtype)


def scores(prediction: Tensor, task: str) -> Tensor:
    """Regression predictions as ``[B, L]`` (drops a trailing size-1 output dim)."""
    return prediction.squeeze(-1) if task == "regression" and prediction.dim() == 3 else prediction
