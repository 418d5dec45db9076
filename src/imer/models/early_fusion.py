"""Early fusion: project each modality, fuse the available ones, classify with an MLP.

Utterance-level (no dialogue context). Fusion is either the concatenation of
the per-modality embeddings (absent ones exactly zero) with the availability
bits appended, or their masked mean.

``context_mean`` (opt-in, off by default) adds a video-level input: per
modality the mean of its observed utterance embeddings over the utterance's
dialogue (:func:`imer.layers.dialogue_mean`, no new parameters),
concatenated to the fused vector. The model then reads whole dialogues (``uses_context``), but
each utterance is still predicted by the same MLP; only this mean connects
utterances. It is the input that separates the linear baseline from
utterance-level models on CMU-MOSI (docs/results/minilm.md).
``context_source = "own"`` is the alternative design compared there: the
video mean of each modality's *raw* observed features, embedded by a projection
of its own (separate parameters) instead of averaging the shared embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from imer.fields import AT_LEAST_1, option
from imer.layers import MLP, ModalityEmbedding, dialogue_mean, masked_mean
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


@dataclass
class EarlyFusionConfig(ModelConfig):
    fusion: str = option("concat", "how the modality embeddings are fused: concatenated or averaged over the available ones",
                         choices=("concat", "mean"))
    layers: int = option(2, "layers of the MLP head", range=AT_LEAST_1)
    context_mean: bool = option(False, "the MLP also reads each modality's mean over the dialogue's observed utterances")
    context_source: str = option("shared", "what context_mean averages: the shared embeddings, or the raw features with a projection of their own",
                                 choices=("shared", "own"))


@register_model("early-fusion")
class EarlyFusion(IMERModel):
    config_class = EarlyFusionConfig
    uses_context = False

    def __init__(self, config: EarlyFusionConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        m = len(spec.modalities)
        self.embed = ModalityEmbedding(spec.dim_of, config.hidden, config.dropout)
        fused = config.hidden * m + m if config.fusion == "concat" else config.hidden
        self.uses_context = config.context_mean
        if config.context_mean:
            fused += m * (config.hidden + 1)
        if config.context_mean and config.context_source == "own":
            self.context_embed = ModalityEmbedding(spec.dim_of, config.hidden, config.dropout)
        self.head = MLP(fused, config.hidden, spec.output_size, layers=config.layers, dropout=config.dropout)

    @classmethod
    def reads_dialogues(cls, options: Mapping[str, Any]) -> bool:
        return bool(options.get("context_mean", False))

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        z = torch.relu(self.embed(features, available))
        if self.config.fusion == "concat":
            fused = torch.cat([z.flatten(-2), available.to(z.dtype)], dim=-1)
        else:
            fused = masked_mean(z, available, dim=-2)
        if self.config.context_mean:
            valid = available & mask.unsqueeze(-1)
            context = self._own_context(features, valid) if self.config.context_source == "own" else dialogue_mean(z, valid)
            fused = torch.cat([fused, context.flatten(-2)], dim=-1)
        return ModelOutput(prediction=scores(self.head(fused), self.spec.task))

    def _own_context(self, features: dict[str, Tensor], valid: Tensor) -> Tensor:
        """``[B, L, M, H + 1]``: own embedding of each modality's raw video mean, plus the observed-somewhere bit."""
        length = valid.shape[1]
        seen = valid.any(dim=1)  # [B, M]
        means = {m: masked_mean(features[m], valid[..., j], dim=1).unsqueeze(1).expand(-1, length, -1) for j, m in enumerate(self.spec.modalities)}
        context = torch.relu(self.context_embed(means, seen.unsqueeze(1).expand(-1, length, -1)))
        return torch.cat([context, seen.to(context.dtype).unsqueeze(1).unsqueeze(-1).expand(-1, length, -1, -1)], dim=-1)
