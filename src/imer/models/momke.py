"""MoMKE: Mixture of Modality Knowledge Experts (Xu, Jiang, Liang, ACM MM 2024).

Conversation-level, two stages.

1. ``experts`` (epochs ``< stage_epochs``): every modality has an expert, a
   masked Transformer over the dialogue's utterances of that modality, with
   its own head; each expert is trained alone on its own modality (task loss
   on the utterances where the modality is observed). Unimodal knowledge.
2. ``mixture``: every modality's tokens are encoded by *all* experts (its own
   expert gives the unimodal representation, the others carry the knowledge
   learned from the other modalities, which together form the joint
   representation). A per-modality router (a small MLP on the modality's
   projected input) gives softmax weights over the experts; the modality's
   representation is the weighted sum. The modalities' mixed representations
   are concatenated (missing ones zero), passed through a residual
   projection and a head. Everything is trained with the task loss.

In stage 1 the prediction is the mean of the available experts' heads (so
validation-based selection has something to judge); the experts' heads are
always exposed as ``modality_predictions``. The stage lives in a buffer so a
saved best state carries the stage it was trained in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imer.fields import AT_LEAST_1, BELOW_1, NON_NEGATIVE, option
from imer.layers import MaskedTransformer, ModalityEmbedding, masked_mean
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model

STAGES = ("experts", "mixture")


@dataclass
class MoMKEConfig(ModelConfig):
    """Defaults of the public MoMKE CMU-MOSI script: hidden 256, depth 4, 2 heads,
    dropout 0.5, MLP ratio 1, 150 of 300 epochs in stage 1 (Adam lr 1e-4, L2 1e-5, batch 32).
    """

    hidden: int = option(256, "width of the experts", range=AT_LEAST_1)
    dropout: float = option(0.5, "dropout probability", range=BELOW_1)
    depth: int = option(4, "Transformer layers of each expert", range=AT_LEAST_1)
    heads: int = option(2, "attention heads", range=AT_LEAST_1)
    mlp_ratio: int = option(1, "feed-forward width as a multiple of hidden", range=AT_LEAST_1)
    stage_epochs: int = option(150, "epochs of stage 1 (each expert alone on its modality) before the mixture", range=NON_NEGATIVE, stage=True)


@register_model("momke")
class MoMKE(IMERModel):
    config_class = MoMKEConfig
    uses_context = True

    def __init__(self, config: MoMKEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        m, h = len(spec.modalities), config.hidden
        self.embed = ModalityEmbedding(spec.dim_of, h, config.dropout, packed=config.packed)
        self.experts = nn.ModuleList([MaskedTransformer(h, config.depth, config.heads, config.dropout, ff_mult=config.mlp_ratio, packed=config.packed) for _ in range(m)])
        self.expert_heads = nn.ModuleList([nn.Linear(h, spec.output_size) for _ in range(m)])
        self.routers = nn.ModuleList(
            [nn.Sequential(nn.Linear(h, h * config.mlp_ratio), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(h * config.mlp_ratio, m)) for _ in range(m)]
        )
        self.fuse = nn.Linear(m * h, m * h)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(m * h, spec.output_size)
        self.register_buffer("stage_index", torch.tensor(0 if config.stage_epochs > 0 else 1))

    def stage(self) -> str:
        return STAGES[int(self.stage_index)]

    def on_epoch_start(self, epoch: int) -> None:
        self.stage_index.fill_(0 if epoch < self.config.stage_epochs else 1)

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        valid = available & mask.unsqueeze(-1)  # [B, L, M]
        tokens = self.embed(features, valid)  # [B, L, M, H], 0 where missing
        b, length, m, h = tokens.shape
        # every modality's sequence as its own row: [M*B, L, H] with validity [M*B, L]
        rows = tokens.permute(2, 0, 1, 3).reshape(m * b, length, h)
        row_valid = valid.permute(2, 0, 1).reshape(m * b, length)
        zero = torch.zeros((), dtype=tokens.dtype)
        if self.stage() == "experts":
            own = torch.stack([self.experts[j](rows[j * b : (j + 1) * b], row_valid[j * b : (j + 1) * b]) for j in range(m)], dim=2)
            mixed = None
        else:
            by_expert = torch.stack([expert(rows, row_valid) for expert in self.experts], dim=-2)  # [M*B, L, E, H]
            by_expert = by_expert.reshape(m, b, length, m, h).permute(1, 2, 0, 3, 4)  # [B, L, M(modality), E, H]
            own = torch.diagonal(by_expert, dim1=2, dim2=3).permute(0, 1, 3, 2)  # [B, L, M, H]
            weights = torch.stack([torch.softmax(self.routers[j](tokens[:, :, j]), dim=-1) for j in range(m)], dim=2)  # [B, L, M, E]
            mixed = torch.where(valid.unsqueeze(-1), (weights.unsqueeze(-1) * by_expert).sum(dim=3), zero)
        per_modality = {mod: scores(self.expert_heads[j](own[:, :, j]), self.spec.task) for j, mod in enumerate(self.modalities)}
        if mixed is None:
            stacked = torch.stack([per_modality[mod] for mod in self.modalities], dim=2)
            if self.spec.task == "classification":
                prediction = masked_mean(torch.softmax(stacked, dim=-1), valid, dim=2).clamp(min=1e-8).log()
            else:
                prediction = masked_mean(stacked.unsqueeze(-1), valid, dim=2).squeeze(-1)
            return ModelOutput(prediction=prediction, modality_predictions=per_modality)
        joint = mixed.flatten(-2)
        hidden = joint + self.drop(torch.relu(self.fuse(joint)))
        prediction = scores(self.head(hidden), self.spec.task)
        return ModelOutput(prediction=prediction, modality_predictions=per_modality, aux={"router_weights": weights})

    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        if self.stage() == "experts":
            assert out.modality_predictions is not None
            return {
                f"expert_{m}": self.task_loss(out.modality_predictions[m], labels, mask & available[..., j])
                for j, m in enumerate(self.modalities)
            }
        return {"task": self.task_loss(out.prediction, labels, mask)}
