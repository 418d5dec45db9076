"""PROMISE: prompt attention + hierarchical contrastive learning (an interpretation).

Chen et al., AAAI 2026 (arXiv 2511.10997) published no code; only the
abstract and framework figure could be read. ``docs/methods/promise.md``
separates what the paper states from the choices made here. Utterance-level.

Pipeline for one utterance with available set ``S``:

1. Per-modality encoders ``e_m`` (stage 1: trained on observed data through
   unimodal heads, the rest of the model sees them detached; stage 2: frozen,
   or fine-tuned if ``frozen_encoder=False``).
2. Prompt attention. Every modality ``m`` has a pool ``P_m`` of ``k``
   learnable prompts; each missing-pattern has an embedding. The generated
   representation of ``m`` is attention with queries ``P_m + pattern`` over
   the encodings of ``S \\ {m}``. It is computed for every modality -- the
   generated one replaces a missing modality, and for an available one it is
   the "as if missing" generation used by the similarity diagnostic. An
   available modality's prompted copy is ``e_m`` refined by attention over
   ``P_m + pattern``. ``prompts=False``: one learned query per modality, no
   pool, no pattern, no refinement (plain cross-attention generation).
3. Classifier: a cross-modal Transformer over the ``M`` modality tokens, then
   per modality a Transformer over (its token, its cross-modal output),
   summed over modalities, pooled, FC.
4. Losses: task + ``lambda_1`` FNCL (instance level: all views of a sample --
   real encodings, tokens, fused vector, and the tokens/fused vector of an
   extra, randomly more-masked copy -- are positives; other samples
   negatives) + ``lambda_2`` CCCL (label level: supervised contrastive within
   each modality's tokens) + unimodal task losses while the encoders train.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imer.data.batching import SplitBatcher
from imer.fields import AT_LEAST_1, BELOW_1, NON_NEGATIVE, POSITIVE, UNIT, option
from imer.layers import MLP, MaskedTransformer, dialogue_mean
from imer.layers.sequence import safe_key_padding
from imer.layers.contrastive import multi_positive_contrastive
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model

_MAX_PATTERN_MODALITIES = 12


@dataclass
class PromiseConfig(ModelConfig):
    """PROMISE options (defaults are our choices; the paper gives none that we could read).

    ``heads`` must divide ``hidden``. ``proj_dim`` 0 contrasts the representations themselves, so that a generated
    token is pulled towards the real token it stands in for. ``context_mean`` makes the model read whole dialogues
    (:func:`imer.layers.dialogue_mean`); off = the paper's utterance-level model.
    """

    hidden: int = option(64, "width of encodings, prompts and classifier", range=AT_LEAST_1)
    dropout: float = option(0.2, "dropout in encoders, attention and heads", range=BELOW_1)
    heads: int = option(4, "attention heads (must divide hidden)", range=AT_LEAST_1)
    prompt_pool: int = option(8, "k: learnable prompts per modality", range=AT_LEAST_1)
    temperature: float = option(0.2, "tau of both contrastive losses", range=POSITIVE)
    lambda_1: float = option(0.1, "weight of FNCL (instance-level contrast)", range=NON_NEGATIVE)
    lambda_2: float = option(0.1, "weight of CCCL (label-level contrast)", range=NON_NEGATIVE)
    encoder_epochs: int = option(5, "stage-1 length: encoders train on observed data, then are frozen (or fine-tuned)",
                                 range=NON_NEGATIVE, stage=True)
    unimodal_weight: float = option(1.0, "weight of the unimodal heads' task losses (stage 1, and stage 2 when fine-tuned)",
                                    range=NON_NEGATIVE)
    extra_mask_rate: float = option(0.5, "chance that FNCL's more-masked copy drops each available modality (one always stays)",
                                    range=UNIT)
    cccl_bins: str = option("sign", "regression classes of CCCL: sign (-, 0, +) or 7 (rounded score in -3..3)", choices=("sign", "7"))
    proj_dim: int = option(0, "output size of a contrastive projection head (0 = none)", range=NON_NEGATIVE)
    fusion_depth: int = option(1, "layers of the cross-modal Transformer", range=AT_LEAST_1)
    fncl: bool = option(True, "ablation switch: the instance-level contrast")
    cccl: bool = option(True, "ablation switch: the label-level contrast")
    prompts: bool = option(True, "prompted generation (false: plain cross-attention, no pools, no pattern embedding, no prompted copy)")
    frozen_encoder: bool = option(True, "freeze the encoders in stage 2 (false: fine-tune them)")
    context_mean: bool = option(False, "opt-in: the head also reads each modality's mean over the dialogue's observed utterances")


class _Encoder(nn.Module):
    """Per-modality encoder: linear -> LayerNorm -> GELU -> linear -> LayerNorm (finite on raw inputs)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _attend(attention: nn.MultiheadAttention, query: Tensor, keys: Tensor, key_valid: Tensor) -> Tensor:
    """Attention whose rows without any valid key give 0 instead of NaN."""
    key_padding, any_valid = safe_key_padding(key_valid)
    out, _ = attention(query, keys, keys, key_padding_mask=key_padding, need_weights=False)
    return torch.where(any_valid.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype))


@register_model("promise")
class Promise(IMERModel):
    config_class = PromiseConfig
    uses_context = False

    def __init__(self, config: PromiseConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        m, h = len(spec.modalities), config.hidden
        if h % config.heads:
            raise ValueError(f"promise: hidden ({h}) must be divisible by heads ({config.heads})")
        if config.prompts and m > _MAX_PATTERN_MODALITIES:
            raise ValueError(f"promise: pattern embeddings support at most {_MAX_PATTERN_MODALITIES} modalities")
        self.encoders = nn.ModuleDict({name: _Encoder(d, h, config.dropout) for name, d in spec.dim_of.items()})
        self.unimodal_heads = nn.ModuleDict({name: MLP(h, h, spec.output_size, layers=2, dropout=config.dropout) for name in spec.modalities})
        self.type_embedding = nn.Parameter(torch.randn(m, h) * 0.02)
        if config.prompts:
            self.pools = nn.Parameter(torch.randn(m, config.prompt_pool, h) * 0.02)
            self.pattern_embedding = nn.Embedding(2**m, h)
            nn.init.normal_(self.pattern_embedding.weight, std=0.02)
            self.refine = nn.MultiheadAttention(h, config.heads, dropout=config.dropout, batch_first=True)
            self.refine_norm = nn.LayerNorm(h)
        else:
            self.queries = nn.Parameter(torch.randn(m, 1, h) * 0.02)
        self.generator = nn.MultiheadAttention(h, config.heads, dropout=config.dropout, batch_first=True)
        self.generator_out = nn.Sequential(nn.Linear(h, h), nn.LayerNorm(h))
        self.cross_modal = MaskedTransformer(h, config.fusion_depth, config.heads, config.dropout)
        self.per_modality = nn.ModuleList([MaskedTransformer(h, 1, config.heads, config.dropout) for _ in spec.modalities])
        self.uses_context = config.context_mean
        self.head = MLP(h + (m * (h + 1) if config.context_mean else 0), h, spec.output_size, layers=2, dropout=config.dropout)
        self.projection = MLP(h, h, config.proj_dim, layers=2) if config.proj_dim > 0 else nn.Identity()
        self.register_buffer("_bits", 2 ** torch.arange(m), persistent=False)
        self._epoch = 0

    @classmethod
    def reads_dialogues(cls, options: Mapping[str, Any]) -> bool:
        return bool(options.get("context_mean", False))

    # ----- stages -------------------------------------------------------------------------
    def encoder_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters trained in stage 1 and frozen afterwards (encoders + unimodal heads)."""
        yield from self.encoders.parameters()
        yield from self.unimodal_heads.parameters()

    @property
    def encoder_stage(self) -> bool:
        return self._epoch < self.config.encoder_epochs

    @property
    def encoder_trainable(self) -> bool:
        return self.encoder_stage or not self.config.frozen_encoder

    def on_epoch_start(self, epoch: int) -> None:
        """Stage 1 for ``epoch < encoder_epochs``; then freeze encoders via ``requires_grad`` (optimizer untouched)."""
        self._epoch = epoch
        for p in self.encoder_parameters():
            p.requires_grad_(self.encoder_trainable)

    def epoch_diagnostics(self, batcher: SplitBatcher, available: np.ndarray) -> dict:
        """Generation similarity (see :func:`generation_similarity`), logged every epoch."""
        return {"generation_similarity": generation_similarity(self, batcher, available)}

    def stage(self) -> str:
        if self.encoder_stage:
            return "encoder"
        return "prompt-frozen" if self.config.frozen_encoder else "prompt-finetune"

    # ----- forward ------------------------------------------------------------------------
    def encode(self, features: dict[str, Tensor], available: Tensor) -> Tensor:
        """``[N, M, H]`` per-modality encodings, exactly 0 where a modality is missing."""
        out = []
        for j, name in enumerate(self.modalities):
            keep = available[:, j : j + 1]
            x = torch.where(keep, features[name], torch.zeros((), dtype=features[name].dtype))
            out.append(torch.where(keep, self.encoders[name](x), torch.zeros((), dtype=x.dtype)))
        return torch.stack(out, dim=1)

    def _pattern(self, available: Tensor) -> Tensor:
        """Missing-pattern id (bit j = modality j available) of ``[..., M]`` bools."""
        return (available.long() * self._bits).sum(dim=-1)

    def generate(self, encoded: Tensor, available: Tensor) -> tuple[Tensor, Tensor]:
        """Generate every modality from the *other* available ones.

        Returns ``generated [N, M, H]`` and ``has_source [N, M]`` (False where
        no other modality is available; the generation is 0 there).
        """
        n, m, h = encoded.shape
        eye = torch.eye(m, dtype=torch.bool, device=encoded.device)
        sources = available.unsqueeze(1) & ~eye  # [N, target, source]
        keys = (encoded + self.type_embedding).unsqueeze(1).expand(n, m, m, h).reshape(n * m, m, h)
        if self.config.prompts:
            pattern = self.pattern_embedding(self._pattern(sources))  # [N, M, H]: pattern with the target missing
            query = self.pools.unsqueeze(0) + pattern.unsqueeze(2)  # [N, M, k, H]
        else:
            query = self.queries.unsqueeze(0).expand(n, -1, -1, -1)
        k = query.shape[2]
        out = _attend(self.generator, query.reshape(n * m, k, h), keys, sources.reshape(n * m, m))
        generated = self.generator_out(out.reshape(n, m, k, h).mean(dim=2))
        has_source = sources.any(dim=-1)
        return torch.where(has_source.unsqueeze(-1), generated, torch.zeros((), dtype=generated.dtype)), has_source

    def prompt(self, encoded: Tensor, available: Tensor) -> Tensor:
        """Prompted copy of each available modality: its encoding refined by attention over its pool."""
        if not self.config.prompts:
            return encoded
        n, m, h = encoded.shape
        pool = self.pools.unsqueeze(0) + self.pattern_embedding(self._pattern(available))[:, None, None, :]  # [N, M, k, H]
        k = pool.shape[2]
        valid = torch.ones(n * m, k, dtype=torch.bool, device=encoded.device)
        refined = _attend(self.refine, encoded.reshape(n * m, 1, h), pool.reshape(n * m, k, h), valid).reshape(n, m, h)
        prompted = self.refine_norm(encoded + refined)
        return torch.where(available.unsqueeze(-1), prompted, torch.zeros((), dtype=prompted.dtype))

    def fuse(self, encoded: Tensor, available: Tensor, context: Tensor | None = None) -> dict[str, Tensor]:
        """Tokens (prompted if available, generated if missing), classifier representation and prediction.

        ``context`` (``[N, M * (H + 1)]``, with ``context_mean``) is appended to the head's input.
        """
        generated, has_source = self.generate(encoded, available)
        prompted = self.prompt(encoded, available)
        tokens = torch.where(available.unsqueeze(-1), prompted, generated)
        valid = available | has_source
        cross = self.cross_modal(tokens + self.type_embedding, valid)
        summed = 0
        for j, block in enumerate(self.per_modality):
            pair = torch.stack([tokens[:, j], cross[:, j]], dim=1)
            summed = summed + block(pair, valid[:, j : j + 1].expand(-1, 2))
        fused = summed.mean(dim=1)
        return {"tokens": tokens, "token_valid": valid, "generated": generated, "has_source": has_source, "prompted": prompted,
                "fused": fused, "prediction": self.head(fused if context is None else torch.cat([fused, context], dim=-1))}

    def more_masked(self, available: Tensor) -> Tensor:
        """A copy of ``available`` with each entry dropped w.p. ``extra_mask_rate``; one random available modality always kept."""
        draw = torch.rand(available.shape, device=available.device)
        keep_one = F.one_hot(torch.where(available, draw, -1.0).argmax(dim=-1), available.shape[-1]).bool()
        return available & ((draw >= self.config.extra_mask_rate) | keep_one)

    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        b, length, m = available.shape
        available = (available & mask.unsqueeze(-1)).reshape(b * length, m)
        flat = {name: x.reshape(b * length, -1) for name, x in features.items()}
        encoded = self.encode(flat, available)
        downstream = encoded.detach() if self.encoder_stage else encoded
        context = None
        if self.config.context_mean:
            context = dialogue_mean(downstream.reshape(b, length, m, -1), available.reshape(b, length, m)).reshape(b * length, -1)
        copy = None
        if self.training and self.config.fncl and self.config.lambda_1 > 0:
            copy_available = self.more_masked(available)
            if self.config.packed:  # one pass over both copies: half the (many, small) operations
                both_context = None if context is None else torch.cat([context, context])
                both = self.fuse(torch.cat([downstream, downstream]), torch.cat([available, copy_available]), both_context)
                main, copy = {k: v[: b * length] for k, v in both.items()}, {k: v[b * length :] for k, v in both.items()}
            else:
                main, copy = self.fuse(downstream, available, context), self.fuse(downstream, copy_available, context)
        else:
            main = self.fuse(downstream, available, context)
        unimodal = {
            name: scores(self.unimodal_heads[name](encoded[:, j]).reshape(b, length, -1), self.spec.task) for j, name in enumerate(self.modalities)
        }
        similarity = F.cosine_similarity(main["generated"], main["prompted"], dim=-1)
        aux = {
            "encoded": downstream.reshape(b, length, m, -1),
            "tokens": main["tokens"].reshape(b, length, m, -1),
            "token_valid": main["token_valid"].reshape(b, length, m),
            "fused": main["fused"].reshape(b, length, -1),
            "generated": main["generated"].reshape(b, length, m, -1),
            "prompted": main["prompted"].reshape(b, length, m, -1),
            "generation_valid": (available & main["has_source"]).reshape(b, length, m),
            "generation_cosine": similarity.reshape(b, length, m),
        }
        if copy is not None:
            aux["copy_tokens"] = copy["tokens"].reshape(b, length, m, -1)
            aux["copy_token_valid"] = copy["token_valid"].reshape(b, length, m)
            aux["copy_fused"] = copy["fused"].reshape(b, length, -1)
        prediction = scores(main["prediction"].reshape(b, length, -1), self.spec.task)
        return ModelOutput(prediction=prediction, modality_predictions=unimodal, aux=aux)

    # ----- losses -------------------------------------------------------------------------
    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        available = available & mask.unsqueeze(-1)
        terms = {"task": self.task_loss(out.prediction, labels, mask)}
        if self.encoder_trainable and self.config.unimodal_weight > 0:
            assert out.modality_predictions is not None
            unimodal = sum(self.task_loss(out.modality_predictions[name], labels, mask & available[..., j]) for j, name in enumerate(self.modalities))
            terms["unimodal"] = self.config.unimodal_weight * unimodal
        if self.config.fncl and self.config.lambda_1 > 0:
            terms["fncl"] = self.config.lambda_1 * self.fncl_loss(out.aux, mask, available)
        if self.config.cccl and self.config.lambda_2 > 0:
            terms["cccl"] = self.config.lambda_2 * self.cccl_loss(out.aux, labels, mask)
        return terms

    def fncl_loss(self, aux: dict[str, Tensor], mask: Tensor, available: Tensor) -> Tensor:
        """Instance level: all views of one utterance are positives, other utterances negatives."""
        n = mask.numel()
        views = [aux["encoded"].reshape(n, -1, aux["encoded"].shape[-1]), aux["tokens"].reshape(n, -1, aux["tokens"].shape[-1]), aux["fused"].reshape(n, 1, -1)]
        valid = [available.reshape(n, -1), aux["token_valid"].reshape(n, -1), mask.reshape(n, 1)]
        if "copy_tokens" in aux:
            views += [aux["copy_tokens"].reshape(n, -1, aux["copy_tokens"].shape[-1]), aux["copy_fused"].reshape(n, 1, -1)]
            valid += [aux["copy_token_valid"].reshape(n, -1), mask.reshape(n, 1)]
        z = self.projection(torch.cat(views, dim=1))  # [N, V, D]
        ok = torch.cat(valid, dim=1)
        sample = torch.arange(n, device=z.device).unsqueeze(1).expand_as(ok)
        return multi_positive_contrastive(z.reshape(-1, z.shape[-1]), sample.reshape(-1), ok.reshape(-1), self.config.temperature)

    def cccl_loss(self, aux: dict[str, Tensor], labels: Tensor, mask: Tensor) -> Tensor:
        """Label level: within each modality's tokens, same class positives, other classes negatives."""
        m = len(self.modalities)
        tokens = aux["tokens"].reshape(-1, m, aux["tokens"].shape[-1]).transpose(0, 1)  # [M, N, H]
        valid = (aux["token_valid"] & mask.unsqueeze(-1)).reshape(-1, m).transpose(0, 1)
        groups = self.contrastive_classes(labels).reshape(1, -1).expand(m, -1)
        return multi_positive_contrastive(self.projection(tokens), groups, valid, self.config.temperature)

    def contrastive_classes(self, labels: Tensor) -> Tensor:
        """Class ids for CCCL: labels for classification; sign or 7-way bin for regression."""
        if self.spec.task == "classification":
            return labels.long()
        if self.config.cccl_bins == "sign":
            return torch.sign(labels.float()).long()
        return torch.round(labels.float().clamp(-3.0, 3.0)).long()


@torch.no_grad()
def generation_similarity(model: Promise, batcher: SplitBatcher, available: np.ndarray, batch_size: int = 256, seed: int = 0) -> dict[str, dict[str, float]]:
    """How close each generated modality is to the real one of the same utterance.

    For every utterance where modality ``m`` is available together with at
    least one other modality, ``m`` is generated from the others (as if it
    were missing) and compared with its real prompted representation (the
    token it would replace). Returns per modality ``matched`` (mean cosine to
    the same utterance), ``shuffled`` (mean cosine to a random other
    utterance's real representation: the level that a non-specific generator
    reaches) and ``count``. Eval mode; independent of batch composition.
    """
    model.eval()
    generated: list[Tensor] = []
    real: list[Tensor] = []
    valid: list[Tensor] = []
    device = next(model.parameters()).device
    for batch in batcher.batches(available, batch_size):
        batch = batch.to(device)
        out = model(batch.features, batch.available, batch.mask, batch.speakers)
        keep = batch.mask
        generated.append(out.aux["generated"][keep])
        real.append(out.aux["prompted"][keep])
        valid.append(out.aux["generation_valid"][keep])
    g, r, ok = torch.cat(generated), torch.cat(real), torch.cat(valid)
    rng = np.random.default_rng(seed)
    result = {}
    for j, name in enumerate(model.modalities):
        rows = torch.nonzero(ok[:, j]).squeeze(-1)
        if rows.numel() == 0:
            result[name] = {"matched": float("nan"), "shuffled": float("nan"), "count": 0}
            continue
        perm = rows[torch.as_tensor(rng.permutation(rows.numel()))]
        matched = F.cosine_similarity(g[rows, j], r[rows, j], dim=-1).mean()
        shuffled = F.cosine_similarity(g[rows, j], r[perm, j], dim=-1).mean()
        result[name] = {"matched": float(matched), "shuffled": float(shuffled), "count": int(rows.numel())}
    return result
