"""Context fusion: early fusion of an utterance's own modalities with what its neighbours in the dialogue say.

imer's own method (issue 24; design and ablations in docs/methods/context-fusion.md). The evidence of record on
leak-free CMU-MOSI shows every deep method at chance on utterances that kept only their audio, while the linear
model, which reads the video's mean text, is well above it; and an utterance's sentiment is closer to its
neighbours' than to its video's mean. So each utterance is predicted from:

* its own observed modalities, projected and concatenated with the availability bits (early fusion, the
  strongest simple design where text is present);
* per modality, distance-weighted means over the *other* utterances of the dialogue of what that modality says
  there (:func:`imer.layers.context.neighbour_means`, weights ``exp(-|i - j| / s)`` per scale of
  ``context_scales``, ``0`` = the whole dialogue, each with its weight mass). ``context_source``: ``score`` (the
  default) averages each modality's own prediction (a linear head on its embedding, trained by the unimodal
  loss), ``embedding`` the embeddings, ``both`` both. An utterance without text thus reads the sentiment of the
  text around it.

An MLP maps the concatenation to the output; ``skip`` adds a linear map of the context straight to it, so the
context does not have to pass the MLP's dropout. ``sign_weight`` (base config) adds the logistic loss of the
score's sign, the surrogate of binary accuracy. ``members > 1`` averages independently trained copies (each
its own loss). ``drop_prob`` removes each observed modality of an utterance
with that chance in training (at least one stays), as modality dropout does,
so the context path is trained on more single-modality utterances. Nothing but observed values and availability bits ever enters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imer.fields import AT_LEAST_1, BELOW_1, NON_NEGATIVE, UNIT, option
from imer.layers import MLP, ModalityEmbedding
from imer.layers.context import neighbour_means
from imer.layers.modality_masking import drop_modalities
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


SOURCES = ("score", "embedding", "both")


@dataclass
class ContextFusionConfig(ModelConfig):
    """``context_scales``: neighbourhood widths in utterances (0 = whole dialogue, at least one scale);
    ``context_source``: what is averaged (``score``, ``embedding``, ``both``); ``unimodal_weight``: the loss of each
    modality's own head; ``skip``: a linear path from the context to the output; ``members``: averaged copies."""

    hidden: int = option(64, "width of the modality embeddings and the MLP", range=AT_LEAST_1)
    dropout: float = option(0.5, "dropout probability", range=BELOW_1)
    layers: int = option(2, "layers of the MLP", range=AT_LEAST_1)
    context_scales: list[float] = option(factory=lambda: [1.0, 0.0], help="neighbourhood widths in utterances (0 = whole dialogue; at least one)",
                                         range=NON_NEGATIVE)
    members: int = option(1, "independently trained copies whose outputs are averaged", range=AT_LEAST_1)
    drop_prob: float = option(0.0, "chance that an observed modality is removed in training (one always stays)", range=UNIT)
    context_source: str = option("score", "what the neighbours' means average: unimodal scores, embeddings or both", choices=SOURCES)
    unimodal_weight: float = option(1.0, "loss weight of each modality's own head", range=NON_NEGATIVE)
    skip: bool = option(True, "a linear path from the context to the output")
    sign_weight: float = option(1.0, "weight of the sign loss added to the regression loss (0 = off)", range=NON_NEGATIVE)


class _Member(nn.Module):
    """One embedding + context + MLP predictor."""

    def __init__(self, config: ContextFusionConfig, spec: DataSpec) -> None:
        super().__init__()
        m = len(spec.modalities)
        self.scales = list(config.context_scales)
        self.embed = ModalityEmbedding(spec.dim_of, config.hidden, config.dropout)
        self.source = config.context_source
        width = {"embedding": config.hidden, "score": spec.output_size, "both": config.hidden + spec.output_size}[self.source]
        if self.source != "embedding":
            self.unimodal = nn.ModuleList([nn.Linear(config.hidden, spec.output_size) for _ in spec.modalities])
        fused = config.hidden * m + m + m * len(self.scales) * (width + 1)
        self.head = MLP(fused, config.hidden, spec.output_size, layers=config.layers, dropout=config.dropout)
        self.skip = nn.Linear(m * len(self.scales) * (width + 1), spec.output_size) if config.skip else None

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        valid = available & mask.unsqueeze(-1)
        z = torch.relu(self.embed(features, valid))  # [B, L, M, H], 0 where not observed
        parts = [z.flatten(-2), valid.to(z.dtype)]
        uni = None
        source = z
        if self.source != "embedding":
            uni = torch.stack([head(z[..., j, :]) for j, head in enumerate(self.unimodal)], dim=-2)  # [B, L, M, C]
            source = uni if self.source == "score" else torch.cat([z, uni], dim=-1)
        context = neighbour_means(source, valid, self.scales).flatten(-2)
        out = self.head(torch.cat([*parts, context], dim=-1))
        if self.skip is not None:
            out = out + self.skip(context)
        return out, uni


@register_model("context-fusion")
class ContextFusion(IMERModel):
    config_class = ContextFusionConfig
    uses_context = True

    def __init__(self, config: ContextFusionConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if not config.context_scales:
            raise ValueError("context-fusion: context_scales needs at least one scale (0 = whole dialogue)")
        self.members = nn.ModuleList([_Member(config, spec) for _ in range(config.members)])

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        if self.training and self.config.drop_prob > 0:
            available = drop_modalities(available, self.config.drop_prob)
        results = [member(features, available, mask) for member in self.members]
        outputs = torch.stack([output for output, _ in results])  # [K, B, L, C]
        if self.spec.task == "classification" and len(results) > 1:  # the mean of the members' probabilities, as logits
            prediction = torch.logsumexp(outputs.log_softmax(-1), dim=0) - math.log(len(results))
        else:
            prediction = outputs.mean(dim=0)
        aux = {"members": outputs if self.spec.task == "classification" else outputs.squeeze(-1), "available": available}
        modality_predictions = None
        if results[0][1] is not None:
            aux["unimodal"] = torch.stack([unimodal for _, unimodal in results])  # [K, B, L, M, C]
            mean = aux["unimodal"].mean(dim=0)
            modality_predictions = {m: scores(mean[..., j, :], self.spec.task) for j, m in enumerate(self.modalities)}
        return ModelOutput(prediction=scores(prediction, self.spec.task), modality_predictions=modality_predictions, aux=aux)

    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        """Each member learns on its own (the mean of their task losses): an ensemble, not one wide network.

        The unimodal heads learn where their modality was used (after training-time ``drop_prob``).
        """
        terms = {"task": torch.stack([self.task_loss(p, labels, mask) for p in out.aux["members"]]).mean()}
        if "unimodal" in out.aux and self.config.unimodal_weight > 0:
            used = out.aux["available"]
            unimodal = [self.task_loss(scores(member[..., j, :], self.spec.task), labels, mask & used[..., j])
                        for member in out.aux["unimodal"] for j in range(len(self.modalities))]
            terms["unimodal"] = self.config.unimodal_weight * torch.stack(unimodal).mean()
        return terms
