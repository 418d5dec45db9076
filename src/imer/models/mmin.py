"""MMIN: Missing Modality Imagination Network (Zhao, Li, Jin, ACL 2021).

Utterance-level, two stages.

1. ``pretrain`` (epochs ``< pretrain_epochs``): teacher encoders (one per
   modality) and a fusion classifier on their concatenation are trained on
   the available data (MMIN's "utt_fusion" model; MMIN trains it on complete
   data, which an incomplete training set does not have).
2. ``imagine``: the teachers are frozen and give the imagination targets.
   Student encoders (initialised from the teachers) embed the available
   modalities; their concatenation (missing blocks zero) goes through a
   forward cascaded residual autoencoder (CRA: ``n_blocks`` autoencoders, each
   adding a residual correction to the running reconstruction) that imagines
   the full multimodal representation; a backward CRA maps the imagination
   back to the incomplete input (cycle consistency). The classifier reads the
   concatenated latent codes of the forward CRA.

Loss (stage 2): task + ``mse_weight`` * MSE(imagined, teacher representation)
+ ``cycle_weight`` * MSE(backward reconstruction, incomplete input).
MMIN expands each complete training sample into all missing conditions; here
the data are already incomplete, so each training utterance is expanded into
``conditions`` copies: the given one plus ``conditions - 1`` random
sub-conditions that drop further *available* modalities (at least one kept).
The imagination loss is computed only for modalities observed in the given
data, the only ones whose teacher targets exist.

The stage is stored in a buffer so that a saved best state carries the stage
it was trained in (the trainer reloads the best epoch's state after training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imer.fields import AT_LEAST_1, BELOW_1, NON_NEGATIVE, option
from imer.layers import MLP
from imer.layers.modality_masking import drop_modalities, zero_missing
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model

STAGES = ("pretrain", "imagine")


@dataclass
class MMINConfig(ModelConfig):
    """Defaults of the public MMIN scripts (IEMOCAP): embedding 128 per modality,
    AE layers 256,128,64, 5 blocks, no dropout in the AEs, classifier 128,128,
    dropout 0.5, mse_weight 4, cycle_weight 2 (Adam lr 2e-4, weight decay 1e-5,
    batch 128, gradient clipping 5).
    """

    hidden: int = option(128, "embedding width per modality", range=AT_LEAST_1)
    dropout: float = option(0.5, "dropout of the encoders and the classifier", range=BELOW_1)
    ae_layers: list[int] = option(factory=lambda: [256, 128, 64], help="layer widths of each autoencoder block", range=AT_LEAST_1)
    n_blocks: int = option(5, "blocks of the cascaded residual autoencoder", range=AT_LEAST_1)
    cls_hidden: int = option(128, "width of the classifier", range=AT_LEAST_1)
    cls_layers: int = option(3, "layers of the classifier", range=AT_LEAST_1)
    mse_weight: float = option(4.0, "weight of the imagination (forward reconstruction) loss", range=NON_NEGATIVE)
    cycle_weight: float = option(2.0, "weight of the cycle (backward reconstruction) loss", range=NON_NEGATIVE)
    ae_dropout: float = option(0.0, "dropout in the autoencoders", range=BELOW_1)
    pretrain_epochs: int = option(20, "epochs of teacher pretraining (stage 1; the teachers give the imagination targets)", range=AT_LEAST_1, stage=True)
    conditions: int = option(3, "copies of each training utterance: the given condition plus conditions - 1 random sub-conditions", range=AT_LEAST_1)
    drop_prob: float = option(0.5, "chance that a sub-condition drops each further available modality (one always stays)", range=BELOW_1)


class ModalityEncoders(nn.Module):
    """One MLP encoder per modality (two hidden layers, linear output) -> ``[B, L, M, hidden]``, 0 where missing."""

    def __init__(self, dims: dict[str, int], hidden: int, dropout: float) -> None:
        super().__init__()
        self.nets = nn.ModuleDict({m: _stack([d, hidden, hidden, hidden], dropout, last_activation=False) for m, d in dims.items()})

    def forward(self, features: dict[str, Tensor], available: Tensor) -> Tensor:
        modalities = tuple(self.nets)
        out = torch.stack([self.nets[m](x) for m, x in zip(modalities, zero_missing(features, available, modalities))], dim=-2)
        return torch.where(available.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype))


class ResidualAutoencoder(nn.Module):
    """Cascaded residual autoencoder: each block reads input + running correction.

    ``x_in <- x_in + out``; ``z = enc(x_in)``; ``out = dec(z)``; returns the
    final ``x_in + out`` and the concatenated latent codes of all blocks.
    """

    def __init__(self, dim: int, layers: list[int], n_blocks: int, dropout: float) -> None:
        super().__init__()
        self.encoders = nn.ModuleList([_stack([dim, *layers], dropout) for _ in range(n_blocks)])
        self.decoders = nn.ModuleList([_stack([*reversed(layers), dim], dropout, last_activation=False) for _ in range(n_blocks)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_in, out, latents = x, torch.zeros_like(x), []
        for encoder, decoder in zip(self.encoders, self.decoders):
            x_in = x_in + out
            z = encoder(x_in)
            out = decoder(z)
            latents.append(z)
        return x_in + out, torch.cat(latents, dim=-1)


def _stack(dims: list[int], dropout: float, last_activation: bool = True) -> nn.Sequential:
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        modules.append(nn.Linear(a, b))
        if last_activation or i < len(dims) - 2:
            modules += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*modules)


@register_model("mmin")
class MMIN(IMERModel):
    config_class = MMINConfig
    uses_context = False

    def __init__(self, config: MMINConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        m, h = len(spec.modalities), config.hidden
        self.teacher = ModalityEncoders(spec.dim_of, h, config.dropout)
        self.teacher_head = MLP(m * h, config.cls_hidden, spec.output_size, layers=config.cls_layers, dropout=config.dropout)
        self.student = ModalityEncoders(spec.dim_of, h, config.dropout)
        self.forward_cra = ResidualAutoencoder(m * h, list(config.ae_layers), config.n_blocks, config.ae_dropout)
        self.backward_cra = ResidualAutoencoder(m * h, list(config.ae_layers), config.n_blocks, config.ae_dropout)
        self.head = MLP(config.n_blocks * config.ae_layers[-1], config.cls_hidden, spec.output_size, layers=config.cls_layers, dropout=config.dropout)
        self.register_buffer("stage_index", torch.tensor(0))

    def stage(self) -> str:
        return STAGES[int(self.stage_index)]

    def on_epoch_start(self, epoch: int) -> None:
        """Switch to imagination after ``pretrain_epochs``: freeze teachers, start students from them."""
        new = 0 if epoch < self.config.pretrain_epochs else 1
        if new == 1 and int(self.stage_index) == 0:
            self.student.load_state_dict(self.teacher.state_dict())
        self.stage_index.fill_(new)
        for p in [*self.teacher.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(new == 0)

    def train(self, mode: bool = True) -> "MMIN":
        """Frozen teachers stay in eval mode (no dropout) so their targets are deterministic."""
        super().train(mode)
        if self.stage() == "imagine":
            self.teacher.eval()
        return self

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        available = available & mask.unsqueeze(-1)
        if self.stage() == "pretrain":
            z = self.teacher(features, available)
            return ModelOutput(prediction=scores(self.teacher_head(z.flatten(-2)), self.spec.task))
        k = self.config.conditions if self.training else 1
        conditions = [available] + [drop_modalities(available, self.config.drop_prob) for _ in range(k - 1)]
        sub = torch.cat(conditions, dim=0)  # [K*B, L, M]
        repeated = {m: x.repeat(k, *([1] * (x.dim() - 1))) for m, x in features.items()}
        incomplete = self.student(repeated, sub).flatten(-2)
        imagined, latent = self.forward_cra(incomplete)
        logits = scores(self.head(latent), self.spec.task)
        batch = available.shape[0]
        aux = {"all_predictions": logits, "imagined": imagined, "incomplete": incomplete, "sub_available": sub}
        if self.training:
            with torch.no_grad():
                aux["teacher"] = self.teacher(features, available).flatten(-2).repeat(k, *([1] * (available.dim() - 1)))
            aux["cycle"] = self.backward_cra(imagined)[0]
        return ModelOutput(prediction=logits[:batch], aux=aux)

    def imagination_error(self, out: ModelOutput, available: Tensor, mask: Tensor) -> Tensor:
        """MSE between imagined and teacher representations, on modalities observed in the given data."""
        k = out.aux["imagined"].shape[0] // available.shape[0]
        m = len(self.modalities)
        observed = (available & mask.unsqueeze(-1)).repeat(k, *([1] * (available.dim() - 1)))
        diff = (out.aux["imagined"] - out.aux["teacher"]).pow(2).unflatten(-1, (m, -1)).mean(dim=-1)  # [K*B, L, M]
        return torch.where(observed, diff, torch.zeros((), dtype=diff.dtype)).sum() / observed.sum().clamp(min=1)

    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        if self.stage() == "pretrain":
            return {"task": self.task_loss(out.prediction, labels, mask)}
        k = out.aux["all_predictions"].shape[0] // labels.shape[0]
        rows = mask.repeat(k, 1)
        terms = {"task": self.task_loss(out.aux["all_predictions"], labels.repeat(k, 1), rows)}
        if "teacher" in out.aux:
            terms["imagination"] = self.config.mse_weight * self.imagination_error(out, available, mask)
            cycle = F.mse_loss(out.aux["cycle"], out.aux["incomplete"].detach(), reduction="none").mean(dim=-1)
            terms["cycle"] = self.config.cycle_weight * (cycle * rows).sum() / rows.sum().clamp(min=1)
        return terms
