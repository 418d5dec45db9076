"""Modality dropout: early fusion trained with whole modalities randomly removed.

Utterance-level. During training every available modality of an utterance is
dropped with probability ``drop_prob`` (at least one available modality is
always kept), so the network learns to predict from any subset; at evaluation
nothing is dropped. Dropped and missing modalities are treated identically:
their embedding is exactly zero and their availability bit is 0. This is the
simple robustness baseline of the incomplete-modality literature (ModDrop,
Neverova et al., TPAMI 2016; the "modality dropout" rows of MPLMM's tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imer.fields import AT_LEAST_1, BELOW_1, option
from imer.layers import MLP, ModalityEmbedding
from imer.layers.modality_masking import drop_modalities
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


@dataclass
class ModalityDropoutConfig(ModelConfig):
    """``drop_prob``: chance that an available modality is removed in training."""

    drop_prob: float = option(0.3, "chance that an available modality is removed in training (one always stays)", range=BELOW_1)
    layers: int = option(2, "layers of the MLP head", range=AT_LEAST_1)


@register_model("modality-dropout")
class ModalityDropout(IMERModel):
    config_class = ModalityDropoutConfig
    uses_context = False

    def __init__(self, config: ModalityDropoutConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        m = len(spec.modalities)
        self.embed = ModalityEmbedding(spec.dim_of, config.hidden, config.dropout)
        self.head = MLP(config.hidden * m + m, config.hidden, spec.output_size, layers=config.layers, dropout=config.dropout)

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        used = drop_modalities(available, self.config.drop_prob) if self.training else available
        z = torch.relu(self.embed(features, used))
        fused = torch.cat([z.flatten(-2), used.to(z.dtype)], dim=-1)
        return ModelOutput(prediction=scores(self.head(fused), self.spec.task), aux={"used_available": used})
