"""GCNet: Graph Completion Network (Lian et al., TPAMI 2023).

Conversation-level. The zero-filled features of all modalities of an
utterance are concatenated and encoded along the dialogue by a two-layer
BiLSTM. Two graph networks then pass messages between the utterances of a
dialogue: a *temporal* graph (edges within ``window_past`` / ``window_future``
utterances, relations past / now / future) and a *speaker* graph (same edges,
relations same / different speaker; only built when speakers are given, so
without them the model uses temporal edges only). Each graph network is an
R-GCN layer followed by a GraphConv layer, whose output is concatenated with
its input and fused along the dialogue by a BiLSTM. The two graph
representations are summed and feed a classifier and a linear decoder that
reconstructs every modality's features. The objective is the task loss plus
``recon_weight`` times the reconstruction MSE.

GCNet trains on complete data masked on the fly and reconstructs the hidden
features. Here the features of a modality missing under the protocol are
unknown, so the reconstruction loss is computed on observed entries only; to
keep its *completion* role, training additionally hides observed modalities
with probability ``hide_prob`` (at least one kept), and the decoder must
recover them from the graph context. Graphs are dense masked adjacency
tensors (see ``imer.layers.graph``), so padding never sends messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from imer.fields import AT_LEAST_1, BELOW_1, FINITE, NON_NEGATIVE, option
from imer.layers import dialogue_mean
from imer.layers.graph import GraphConv, RelationalGraphConv, speaker_relations, temporal_relations, window_edges
from imer.layers.modality_masking import drop_modalities, zero_missing
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


@dataclass
class GCNetConfig(ModelConfig):
    """Defaults of the public GCNet code: D_e = 100, graph hidden = D_e / 2, windows 6 / 6, dropout 0.5.

    ``hidden`` is the per-direction size of the BiLSTM encoder (GCNet's D_e);
    ``graph_hidden`` 0 means ``hidden // 2``. ``hide_prob`` is the extra
    training-time masking of observed modalities that gives the
    reconstruction targets (0 disables it). ``context_mean`` (opt-in,
    diagnostic) lets the classifier also read the mean of the final
    representations over the dialogue (:func:`imer.layers.dialogue_mean`),
    an explicit video-level summary next to what the LSTM/graph layers learn.
    ``availability_bits`` (opt-in, diagnostic) appends the utterance's
    availability bits to the encoder input, so a missing modality (zeros) is
    no longer indistinguishable from an average one (standardised zeros).
    """

    hidden: int = option(100, "per-direction size of the BiLSTM encoder (D_e)", range=AT_LEAST_1)
    dropout: float = option(0.5, "dropout probability", range=BELOW_1)
    graph_hidden: int = option(0, "width of the graph layers (0 = hidden // 2)", range=NON_NEGATIVE)
    window_past: int = option(6, "temporal graph edges to this many past utterances (negative = all)", range=FINITE)
    window_future: int = option(6, "temporal graph edges to this many future utterances (negative = all)", range=FINITE)
    recon_weight: float = option(1.0, "weight of the reconstruction loss", range=NON_NEGATIVE)
    hide_prob: float = option(0.2, "extra training-time masking of observed modalities, the reconstruction targets (0 = off)", range=BELOW_1)
    context_mean: bool = option(False, "diagnostic: the classifier also reads the mean of the final representations over the dialogue")
    availability_bits: bool = option(False, "diagnostic: append the utterance's availability bits to the encoder input")


def packed_bilstm(lstm: nn.LSTM, x: Tensor, mask: Tensor) -> Tensor:
    """Run a batch-first (Bi)LSTM over the valid prefix of each row; 0 at padding.

    Packing makes the backward direction start at each dialogue's own last
    utterance, so outputs do not depend on how much padding the batch adds.
    """
    lengths = mask.sum(dim=1).clamp(min=1).cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return torch.where(mask.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype))


class GraphBranch(nn.Module):
    """R-GCN -> GraphConv, concatenated with the input and fused by a BiLSTM."""

    def __init__(self, in_dim: int, graph_hidden: int, num_relations: int, dropout: float) -> None:
        super().__init__()
        self.rgcn = RelationalGraphConv(in_dim, graph_hidden, num_relations)
        self.conv = GraphConv(graph_hidden, graph_hidden)
        fused = in_dim + graph_hidden
        self.fusion = nn.LSTM(fused, fused, num_layers=2, bidirectional=True, dropout=dropout, batch_first=True)
        self.out = nn.Linear(2 * fused, fused)

    def forward(self, h: Tensor, relations: Tensor, mask: Tensor) -> Tensor:
        """``h``: ``[B, L, D]``; ``relations``: ``[B, R, L, L]`` -> ``[B, L, D + graph_hidden]``."""
        g = self.conv(self.rgcn(h, relations), relations.any(dim=1))
        z = packed_bilstm(self.fusion, torch.cat([h, g], dim=-1), mask)
        return torch.where(mask.unsqueeze(-1), torch.relu(self.out(z)), torch.zeros((), dtype=z.dtype))


@register_model("gcnet")
class GCNet(IMERModel):
    config_class = GCNetConfig
    uses_context = True

    def __init__(self, config: GCNetConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        graph_hidden = config.graph_hidden or max(config.hidden // 2, 1)
        encoded = 2 * config.hidden
        inputs = sum(spec.dims) + (len(spec.dims) if config.availability_bits else 0)
        self.encoder = nn.LSTM(inputs, config.hidden, num_layers=2, bidirectional=True, dropout=config.dropout, batch_first=True)
        self.temporal = GraphBranch(encoded, graph_hidden, 3, config.dropout)
        self.speaker = GraphBranch(encoded, graph_hidden, 2, config.dropout)
        represented = encoded + graph_hidden
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(2 * represented + 1 if config.context_mean else represented, spec.output_size)
        self.decoder = nn.Linear(represented, sum(spec.dims))

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        used = available & mask.unsqueeze(-1)
        if self.training and self.config.hide_prob > 0:
            used = drop_modalities(used, self.config.hide_prob)
        x = torch.cat(zero_missing(features, used, self.modalities), dim=-1)
        if self.config.availability_bits:
            x = torch.cat([x, used.to(x.dtype)], dim=-1)
        h = packed_bilstm(self.encoder, x, mask)
        edges = window_edges(mask, self.config.window_past, self.config.window_future)
        hidden = self.temporal(h, temporal_relations(edges), mask)
        if speakers is not None:
            hidden = hidden + self.speaker(h, speaker_relations(edges, speakers), mask)
        hidden = self.drop(hidden)
        recon = torch.split(self.decoder(hidden), list(self.spec.dims), dim=-1)
        observed = zero_missing(features, available & mask.unsqueeze(-1), self.modalities)
        aux = {f"recon_{m}": r for m, r in zip(self.modalities, recon)}
        aux.update({f"target_{m}": t for m, t in zip(self.modalities, observed)})
        aux["used_available"] = used
        if self.config.context_mean:
            hidden = torch.cat([hidden, dialogue_mean(hidden.unsqueeze(2), mask.unsqueeze(-1)).squeeze(2)], dim=-1)
        return ModelOutput(prediction=scores(self.classifier(hidden), self.spec.task), aux=aux)

    def reconstruction_error(self, out: ModelOutput, weight: Tensor) -> Tensor:
        """Mean squared reconstruction error over the (utterance, modality) entries where ``weight`` is True.

        ``weight`` (``[B, L, M]`` bool) must select observed entries only: the
        targets of unobserved ones are zeros, not features.
        """
        errors = torch.stack(
            [(out.aux[f"recon_{m}"] - out.aux[f"target_{m}"]).pow(2).mean(dim=-1) for m in self.modalities], dim=-1
        )
        return torch.where(weight, errors, torch.zeros((), dtype=errors.dtype)).sum() / weight.sum().clamp(min=1)

    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        terms = {"task": self.task_loss(out.prediction, labels, mask)}
        if self.config.recon_weight > 0:
            terms["recon"] = self.config.recon_weight * self.reconstruction_error(out, available & mask.unsqueeze(-1))
        return terms
