"""Early fusion: project each modality, fuse the available ones, classify with an MLP.

Utterance-level (no dialogue context). Fusion is either the concatenation of
the per-modality embeddings (absent ones exactly zero) with the availability
bits appended, or their masked mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imer.layers import MLP, ModalityEmbedding, masked_mean
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


@dataclass
class EarlyFusionConfig(ModelConfig):
    fusion: str = "concat"
    layers: int = 2


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
        self.head = MLP(fused, config.hidden, spec.output_size, layers=config.layers, dropout=config.dropout)

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        z = torch.relu(self.embed(features, available))
        if self.config.fusion == "concat":
            fused = torch.cat([z.flatten(-2), available.to(z.dtype)], dim=-1)
        else:
            fused = masked_mean(z, available, dim=-2)
        return ModelOutput(prediction=scores(self.head(fused), self.spec.task))
