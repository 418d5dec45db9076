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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from imer.layers import MLP, ModalityEmbedding, dialogue_mean, masked_mean
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


@dataclass
class EarlyFusionConfig(ModelConfig):
    fusion: str = "concat"
    layers: int = 2
    context_mean: bool = False


@register_model("early-fusion")
class EarlyFusion(IMERModel):
    config_class = EarlyFusionConfig
    uses_context = False

    def __init__(self, config: EarlyFusionConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if config.fusion not in ("concat", "mean"):
            raise ValueError(f"early-fusion: fusion must be 'concat' or 'mean', got {config.fusion!r}")
        m = len(spec.modalities)
        self.embed = ModalityEmbedding(spec.dim_of, config.hidden, config.dropout)
        fused = config.hidden * m + m if config.fusion == "concat" else config.hidden
        self.uses_context = config.context_mean
        if config.context_mean:
            fused += m * (config.hidden + 1)
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
            fused = torch.cat([fused, dialogue_mean(z, available & mask.unsqueeze(-1)).flatten(-2)], dim=-1)
        return ModelOutput(prediction=scores(self.head(fused), self.spec.task))
