"""Late fusion: one head per modality, trained on its own; predictions averaged.

Utterance-level. Each head sees only its modality and is trained with its own
task loss on utterances where that modality is present. The fused prediction
averages the available heads: class probabilities for classification (the
output is the log of that mean), scores for regression. Its unimodal heads
give the per-modality accuracies of the "balance" view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imer.fields import AT_LEAST_1, option
from imer.layers import MLP, masked_mean
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


@dataclass
class LateFusionConfig(ModelConfig):
    layers: int = option(2, "layers of each modality's MLP", range=AT_LEAST_1)


@register_model("late-fusion")
class LateFusion(IMERModel):
    config_class = LateFusionConfig
    uses_context = False

    def __init__(self, config: LateFusionConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.heads = nn.ModuleDict(
            {m: MLP(d, config.hidden, spec.output_size, layers=config.layers, dropout=config.dropout) for m, d in spec.dim_of.items()}
        )

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        per_modality = {}
        for j, m in enumerate(self.modalities):
            keep = available[..., j : j + 1]
            x = torch.where(keep, features[m], torch.zeros((), dtype=features[m].dtype))
            per_modality[m] = scores(self.heads[m](x), self.spec.task)
        stacked = torch.stack([per_modality[m] for m in self.modalities], dim=2)  # [B, L, M, C] or [B, L, M]
        if self.spec.task == "classification":
            fused = masked_mean(torch.softmax(stacked, dim=-1), available, dim=2).clamp(min=1e-8).log()
        else:
            fused = masked_mean(stacked.unsqueeze(-1), available, dim=2).squeeze(-1)
        return ModelOutput(prediction=fused, modality_predictions=per_modality)

    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        assert out.modality_predictions is not None
        return {
            f"task_{m}": self.task_loss(out.modality_predictions[m], labels, mask & available[..., j])
            for j, m in enumerate(self.modalities)
        }
