"""ComP: cross-modal prompting for balanced incomplete multimodal emotion recognition.

He, Zhu, Zhang, AAAI 2026 (arXiv 2512.11239), implemented from the paper with
the published code's defects fixed (see ``docs/methods/comp.md``).

Per modality m, over the utterance sequence of one dialogue/video:

1. masked embedding ``z_m`` (absent modality -> exactly 0, bias included);
2. shared / private disentangling encoders ``s_m``, ``p_m`` with a decoder
   reconstructing ``z_m`` (reconstruction + disentangling losses);
3. progressive prompt generation: K learnable global prototypes per
   modality; each utterance attends over them (cosine similarity, softmax)
   and gets a prompt of ``prompt_size``; the prompts of the *other*
   modalities are appended to ``s_m`` and pass through Transformer block 1,
   whose output splits into a new code ``Z_m`` and carried prompts; prompts
   regenerated from ``Z`` are mixed with the carried ones by momentum
   (``P = lambda * carried + (1 - lambda) * new``) and ``[Z_m; P_others]``
   passes through block 2 and the modality's own head;
4. a coordinator gives softmax weights over the *available* modalities per
   utterance; the weighted concatenation goes through a residual MLP to the
   final prediction.

Training has two stages (pure function of the epoch): a unimodal warm-up for
``stage_epoch`` epochs (no prompts), then prompting. The dynamic gradient
modulator scales, per utterance and modality, the gradient that flows back
into the modality's prompt generator, with weights that :meth:`Comp.loss`
computes from the unimodal errors before the trainer calls ``backward``.

Every place where this implementation differs from the published code is a
switch in :class:`CompConfig` (imer's value is the default; the published one
is in ``configs/comp/published.toml``). The published code's defects are
switches too (``EXACT_CHOICES``, computed in :mod:`imer.models._comp_published`),
selected only by ``configs/comp/published-exact.toml``, the reproduction preset
that ``tests/test_comp_transplant.py`` proves equal to the published code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imer.errors import ConfigError
from imer.fields import AT_LEAST_1, BELOW_1, NON_NEGATIVE, POSITIVE, UNIT, Range, option
from imer.layers import MLP, MaskedTransformer, ModalityEmbedding, dialogue_mean
from imer.layers.dropout import use_fast_dropout
from imer.layers.packing import ModalityPacking, Packing, on_valid
from imer.layers.plain_transformer import PlainTransformer
from imer.models._comp_modulator import GradScale, modulator_weights
from imer.models._comp_published import PublishedMLP, batch_prototypes, draw_availability, every_position, published_js
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model

__all__ = ["Comp", "CompConfig", "GradScale", "bernoulli_js", "modulator_weights"]


def _switch(imer: str, published: str, help: str, exact: bool = False) -> Any:
    """A fidelity switch: imer's value (the default) or the published code's; ``exact``: a reproduction switch."""
    return option(imer, help, choices=(imer, published), switch="exact" if exact else "fidelity")


@dataclass
class CompConfig(ModelConfig):
    """ComP options. The single home of ComP's model defaults (the TOML files hold only train settings).

    Sizes and schedule are the paper's (CMU-MOSI, missing rate 0.7); the
    fidelity switches default to imer's choices, and their second value is
    the published code's (``configs/comp/published.toml`` selects all of them).

    Each field's one-line help is in its declaration below; the longer notes:

        block_style: ``prenorm`` (pre-LayerNorm, feed-forward 2 x hidden, dropout
            also on attention weights) or ``plain`` (no LayerNorm, no attention
            output projection, feed-forward 1 x hidden, no attention dropout).
        prompt_generator: ``query`` (a query projection before the cosine
            attention, FFN of width hidden) or ``plain`` (no query projection,
            FFN of width ``prompt_size``).
        level2_generator: ``shared`` (level 2 reuses the level-1 generator) or
            ``separate`` (its own FFN and projection, sharing only the prototypes).
        fusion_head: residual block before the final layer: ``mlp`` (2 layers,
            width hidden) or ``linear`` (one ReLU layer of the full width).
        reverse_target: ``normal`` (private code -> its own Linear -> N(0, 1)
            noise) or ``published`` (private code -> the modality's shared
            blocks and head -> noise 1.5 N(0, 1) clamped to [-3, 3]);
            classification always uses the complement cross-entropy.
        warmup: ``full`` (warm-up trains the prompt in/out projections, and the
            fusion head on detached outputs) or ``encoders`` (the blocks take the
            shared code directly; no fused loss; the warm-up's fused prediction
            is the mean of the available unimodal predictions).
        modulator_scope: ``upstream`` (the weight scales everything behind the
            prompt: generator, shared encoder, embedding, block 1) or
            ``generator`` (only the prompt generator's parameters).
        mlp_style / prototypes / sequence_length / prompt_mask / coordinator_mask /
            warmup_prediction / absent_positions / mask_draw / mask_rate / unimodal_loss /
            recon_loss / disentangle_loss / reverse_loss: reproduction switches
            (``EXACT_CHOICES``; the ``published-exact`` preset), each the published code's
            behaviour, defects included; documented one by one in ``docs/methods/comp.md``.
        context_mean: opt-in video-level input, an imer extension that is not
            in the paper: the final layer also reads, per modality, the mean of
            the stream outputs of that modality's observed utterances in the
            same video (:func:`imer.layers.dialogue_mean`), so an utterance that
            lost a modality can still use the video's other utterances of it.
            Off = the paper's model.
        packed (from :class:`ModelConfig`): the fast path (default): every
            utterance-wise part on packed rows (:meth:`Comp._forward_packed`)
            and :class:`imer.layers.dropout.FastDropout`; ``false`` is the padded
            reference computation with torch's dropout (same function, tested).
    """

    hidden: int = option(256, "width of every stream", range=AT_LEAST_1)
    dropout: float = option(0.5, "dropout probability", range=BELOW_1)
    depth: int = option(4, "Transformer layers per modality: block 1 has depth // 2, block 2 the rest", range=Range(2))
    heads: int = option(2, "attention heads", range=AT_LEAST_1)
    prompt_size: int = option(16, "size p of a prompt", range=AT_LEAST_1)
    num_prototypes: int = option(10, "K global prototypes per modality", range=AT_LEAST_1)
    momentum: float = option(0.3, "lambda: weight of the carried prompt in the level-2 mix", range=UNIT)
    stage_epoch: int = option(150, "epochs of unimodal warm-up before prompting starts", range=NON_NEGATIVE, stage=True)
    single_stage: bool = option(False, "skip the warm-up (prompting from epoch 0)")
    prompts: bool = option(True, "ablation switch: cross-modal prompts")
    modulator: bool = option(True, "ablation switch: the dynamic gradient modulator")
    coordinator: bool = option(True, "ablation switch: the coordinator (off = uniform weights over the available modalities)")
    disentangle: bool = option(True, "ablation switch: the shared/private disentangling losses")
    modulator_strength: float = option(0.5, "beta: modulator weights lie in [1 - beta, 1 + beta]", range=BELOW_1)
    temperature: float = option(0.1, "of the cosine-similarity softmax over prototypes (published: 1)", range=POSITIVE)
    unimodal_weight: float = option(1.0, "loss weight of the unimodal heads (published: 1)", range=NON_NEGATIVE)
    recon_weight: float = option(1.0, "loss weight of the reconstruction (published: 1)", range=NON_NEGATIVE)
    disentangle_weight: float = option(0.1, "loss weight of the disentangling terms (published: 1)", range=NON_NEGATIVE)
    reverse_weight: float = option(0.1, "loss weight of the reverse (private-code) term (published: 1)", range=NON_NEGATIVE)
    block_style: str = _switch("prenorm", "plain", "Transformer blocks: pre-LayerNorm, or no LayerNorm and no attention output projection")
    unimodal_head: str = _switch("mlp", "linear", "each modality's own head: 2-layer MLP or linear")
    prompt_generator: str = _switch("query", "plain", "a query projection before the cosine attention (FFN width hidden), or none (FFN width prompt_size)")
    level2_generator: str = _switch("shared", "separate", "level 2 reuses the level-1 generator, or has its own FFN and projection")
    carry_projection: str = _switch("linear", "mlp", "block 1's output projection")
    fusion_head: str = _switch("mlp", "linear", "residual block before the final layer: 2-layer MLP, or one ReLU layer of the full width")
    js_reduction: str = _switch("mean", "sum", "JS divergence of the shared codes: mean or sum over dims")
    private_shared_terms: str = _switch("once", "per_pair", "|cos(private, shared)| counted once per modality or once per pair")
    reverse_target: str = _switch("normal", "published", "target of the reverse term: N(0, 1) via its own Linear, or the published path and noise")
    recon_stages: str = _switch("both", "joint", "reconstruction loss in both stages or the joint stage only")
    warmup: str = _switch("full", "encoders", "what the warm-up trains: prompt projections and fusion head too, or the encoders only")
    modulator_direction: str = _switch("weaker", "published", "which modality the modulator favours (see _comp_modulator)")
    modulator_scope: str = _switch("upstream", "generator", "what the modulator scales: everything behind the prompt, or the generator only")
    context_mean: bool = option(False, "imer extension: the final layer also reads each modality's mean over the video's observed utterances")
    mlp_style: str = _switch("imer", "published", "reproduction switch (published-exact): MLPs as published", exact=True)
    prototypes: str = _switch("global", "batch", "reproduction switch: prototypes from the batch, as published", exact=True)
    sequence_length: int = option(0, "reproduction switch: fixed padded dialogue length (0 = the batch's longest)", range=NON_NEGATIVE)
    prompt_mask: str = _switch("zero", "none", "reproduction switch: prompts of absent modalities not zeroed", exact=True)
    coordinator_mask: str = _switch("available", "none", "reproduction switch: coordinator weights over every modality", exact=True)
    warmup_prediction: str = _switch("heads", "fusion", "reproduction switch: the warm-up's prediction from the fusion head", exact=True)
    absent_positions: str = _switch("zero", "computed", "reproduction switch: absent positions computed through the blocks", exact=True)
    mask_draw: str = _switch("given", "published", "reproduction switch: the published code's own availability draw", exact=True)
    mask_rate: float = option(0.0, "reproduction switch: missing rate of that draw", range=UNIT)
    unimodal_loss: str = _switch("present", "published", "reproduction switch: unimodal losses as published", exact=True)
    recon_loss: str = _switch("observed", "published", "reproduction switch: reconstruction loss as published", exact=True)
    disentangle_loss: str = _switch("observed", "published", "reproduction switch: disentangling loss as published", exact=True)
    reverse_loss: str = _switch("imer", "published", "reproduction switch: reverse loss as published", exact=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        exact = [name for name, (default, _) in EXACT_CHOICES.items() if getattr(self, name) != default]
        if (exact or self.sequence_length) and self.packed:
            raise ConfigError(f"comp: {(exact or ['sequence_length'])[0]} reproduces the published computation on padded batches; set packed=false")
        if self.prototypes == "batch" and not self.sequence_length:
            raise ConfigError("comp: prototypes=batch needs sequence_length (the published fixed padded length, 65 for CMU-MOSI)")
        if self.absent_positions == "computed" and self.block_style != "plain":
            raise ConfigError("comp: absent_positions=computed needs block_style=plain (the published blocks)")


# Fidelity switches: field -> (imer default, published code's value), read from the declarations. The tests and docs use this table.
CHOICES: dict[str, tuple[str, ...]] = {f.name: f.metadata["choices"] for f in fields(CompConfig) if f.metadata.get("switch") == "fidelity"}
# Reproduction switches: field -> (imer default, the published code's value). Only the ``published-exact`` preset
# selects them (never ``published``): each reproduces a defect of the published code, for the transplant test and
# the side-by-side run (docs/methods/comp.md, "published-exact"). All need ``packed=false``.
EXACT_CHOICES: dict[str, tuple[str, ...]] = {f.name: f.metadata["choices"] for f in fields(CompConfig) if f.metadata.get("switch") == "exact"}


class PromptGenerator(nn.Module):
    """Cosine attention of each utterance over K prototypes -> a prompt of ``prompt_size``.

    The prototypes are passed in (they belong to the modality's stream, so a
    separate level-2 generator can share them). Per-utterance only (no
    attention across utterances or dialogues), so a prompt never depends on
    the rest of the batch. Positions where ``valid`` is False get an all-zero prompt.
    """

    def __init__(self, hidden: int, prompt_size: int, temperature: float, dropout: float, style: str, mlp_style: str = "imer") -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden) if style == "query" else nn.Identity()
        self.ffn = _two_layer(mlp_style, hidden, hidden if style == "query" else prompt_size, prompt_size, dropout)
        self.skip = nn.Linear(hidden, prompt_size)
        self.temperature = temperature

    def forward(self, code: Tensor, prototypes: Tensor) -> tuple[Tensor, Tensor]:
        """``code`` ``[..., H]``, prototypes ``[K, H]`` -> prompt ``[..., p]`` and attention ``[..., K]``.

        With ``prototypes="batch"`` the rows are the whole batch's ``B * K`` prototypes.
        """
        sim = F.normalize(self.query(code), dim=-1) @ F.normalize(prototypes, dim=-1).T
        attention = torch.softmax(sim / self.temperature, dim=-1)
        return self.ffn(attention @ prototypes) + self.skip(code), attention


def bernoulli_js(a: Tensor, b: Tensor) -> Tensor:
    """Jensen-Shannon divergence between ``sigmoid(a)`` and ``sigmoid(b)`` as Bernoulli variables, per element.

    Computed from log-sigmoids, so it is finite for any logits (the published
    code's ``log(sigmoid(x))`` gives -inf once the sigmoid saturates).
    """
    log_p, log_np = F.logsigmoid(a), F.logsigmoid(-a)
    log_q, log_nq = F.logsigmoid(b), F.logsigmoid(-b)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    log_nm = torch.logaddexp(log_np, log_nq) - math.log(2.0)
    kl_pm = log_p.exp() * (log_p - log_m) + log_np.exp() * (log_np - log_nm)
    kl_qm = log_q.exp() * (log_q - log_m) + log_nq.exp() * (log_nq - log_nm)
    return 0.5 * (kl_pm + kl_qm)


def _masked_average(values: Tensor, weight: Tensor) -> Tensor:
    """Mean of ``values`` (any shape) over positions where ``weight`` (same shape, bool) holds; 0 if none."""
    w = weight.to(values.dtype)
    return (torch.where(weight, values, torch.zeros((), dtype=values.dtype)) * w).sum() / w.sum().clamp(min=1.0)


def _two_layer(style: str, in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Module:
    """A two-layer MLP: imer's (ReLU, dropout between the layers) or the published one (``mlp_style``)."""
    if style == "published":
        return PublishedMLP(in_dim, hidden, out_dim, dropout)
    return MLP(in_dim, hidden, out_dim, layers=2, dropout=dropout)


def _residual_head(config: CompConfig, width: int) -> nn.Module:
    """The residual block of the fusion head (its output is added to its input)."""
    if config.fusion_head == "linear":
        return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(config.dropout))
    return _two_layer(config.mlp_style, width, config.hidden, width, config.dropout)


class ModalityStream(nn.Module):
    """One modality's path: disentangling encoders, blocks 1 and 2 with prompt inputs, own head."""

    def __init__(self, config: CompConfig, num_modalities: int, output_size: int) -> None:
        super().__init__()
        h, extra = config.hidden, (num_modalities - 1) * config.prompt_size if config.prompts else 0
        self.extra = extra
        self.everywhere = config.absent_positions == "computed"
        style, drop = config.mlp_style, config.dropout
        if config.disentangle:
            self.shared = _two_layer(style, h, h, h, drop)
            self.private = _two_layer(style, h, h, h, drop)
            self.decoder = _two_layer(style, 2 * h, h, h, drop)
            if config.reverse_target == "normal":
                self.private_head = nn.Linear(h, output_size)
        first = config.depth // 2
        self.in1 = nn.Linear(h + extra, h)
        self.block1 = self._blocks(config, first)
        self.out1 = nn.Linear(h, h + extra) if config.carry_projection == "linear" else _two_layer(style, h, h, h + extra, drop)
        self.in2 = nn.Linear(h + extra, h)
        self.block2 = self._blocks(config, config.depth - first)
        self.head = _two_layer(style, h, h, output_size, drop) if config.unimodal_head == "mlp" else nn.Linear(h, output_size)
        if config.prompts:
            if config.prototypes == "batch":  # the published sequence-axis MLP: K prototypes per dialogue of the batch
                self.prototype_mlp = _two_layer(style, config.sequence_length, config.num_prototypes, config.num_prototypes, drop)
            else:
                self.prototypes = nn.Parameter(torch.randn(config.num_prototypes, h) / math.sqrt(h))
            self.generator = PromptGenerator(h, config.prompt_size, config.temperature, drop, config.prompt_generator, style)
            if config.level2_generator == "separate":
                self.generator2 = PromptGenerator(h, config.prompt_size, config.temperature, drop, config.prompt_generator, style)

    @staticmethod
    def _blocks(config: CompConfig, depth: int) -> nn.Module:
        if config.block_style == "plain":
            return PlainTransformer(config.hidden, depth, config.heads, config.dropout, ff_mult=1)
        return MaskedTransformer(config.hidden, depth, config.heads, config.dropout, packed=config.packed)

    def generate(self, code: Tensor, level: str, prototypes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Prompt and prototype attention at ``level`` ("1" or "2"), unmasked (``prototypes``: the batch's, if given)."""
        generator = self.generator2 if level == "2" and hasattr(self, "generator2") else self.generator
        return generator(code, self.prototypes if prototypes is None else prototypes)

    def run(self, blocks: nn.Module, x: Tensor, valid: Tensor) -> Tensor:
        """``blocks`` (block 1 or 2) on ``x`` ``[B, L, H]``: at the valid positions, or everywhere (``absent_positions``)."""
        return every_position(blocks, x, valid) if self.everywhere else blocks(x, valid)

    def unimodal(self, code: Tensor, valid: Tensor) -> Tensor:
        """Warm-up path without projections (``warmup="encoders"``): block 1 -> block 2 -> representation."""
        return self.run(self.block2, self.run(self.block1, code, valid), valid)


@register_model("comp")
class Comp(IMERModel):
    """ComP (see module docstring). ``aux`` exposes coordinator weights, prompts and losses' inputs."""

    config_class = CompConfig
    uses_context = True

    def __init__(self, config: CompConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if len(spec.modalities) < 2:
            raise ValueError("comp needs at least 2 modalities")
        m, h = len(spec.modalities), config.hidden
        self.embed = ModalityEmbedding(spec.dim_of, h, config.dropout, packed=config.packed)
        self.streams = nn.ModuleDict({name: ModalityStream(config, m, spec.output_size) for name in spec.modalities})
        if config.coordinator:
            self.coordinator = _two_layer(config.mlp_style, m * h, h, m, config.dropout)
        self.fusion = _residual_head(config, m * h)
        self.final = nn.Linear(m * h + (m * (h + 1) if config.context_mean else 0), spec.output_size)
        # True from stage 2 on; a buffer so the stage travels with saved weights and checkpoints.
        self.register_buffer("stage2", torch.tensor(self._stage2_at(0)))
        if config.packed:  # the fast path: packed rows and cheaper dropout masks (same functions)
            use_fast_dropout(self)

    # ----- schedule -------------------------------------------------------------------------
    def _stage2_at(self, epoch: int) -> bool:
        return self.config.single_stage or epoch >= self.config.stage_epoch

    @property
    def prompting(self) -> bool:
        """Whether prompts are generated and used now (stage 2 with prompts on)."""
        return self.config.prompts and bool(self.stage2)

    @property
    def direct_warmup(self) -> bool:
        """Warm-up without prompt projections and fusion head (``warmup="encoders"``), now."""
        return self.config.warmup == "encoders" and not bool(self.stage2)

    def on_epoch_start(self, epoch: int) -> None:
        """Stage 1 (unimodal warm-up) before ``stage_epoch``, stage 2 from it on."""
        self.stage2.fill_(self._stage2_at(epoch))

    def stage(self) -> str:
        return "joint" if bool(self.stage2) else "warmup"

    # ----- forward --------------------------------------------------------------------------
    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        if self.config.packed:
            return self._forward_packed(features, available, mask)
        return self._forward_padded(features, available, mask)

    def _forward_padded(self, features: dict[str, Tensor], available: Tensor, mask: Tensor) -> ModelOutput:
        """The reference computation on padded ``[B, L]`` tensors (``packed=false``).

        The reproduction switches act here only. With ``sequence_length`` the batch is first padded to that
        length and with ``mask_draw="published"`` a fresh availability is drawn (:meth:`_grid`); ``aux`` then
        holds ``[B, sequence_length]`` tensors, ``aux["grid_mask"]`` the padded utterance mask and
        ``aux["valid"]`` the availability used; predictions keep the batch's ``[B, L]``.
        """
        cfg, names = self.config, self.modalities
        length = mask.shape[1]
        features, available, mask, gridded = self._grid(features, available, mask)
        valid = available & mask.unsqueeze(-1)  # [B, L, M]
        if cfg.absent_positions == "computed":  # the published embedding: an absent entry is the projection of 0 (its bias)
            zero_in = {m: torch.where(valid[..., j : j + 1], features[m], torch.zeros((), dtype=features[m].dtype)) for j, m in enumerate(names)}
            z = torch.stack([self.embed.dropout(self.embed.proj[m](zero_in[m])) for m in names], dim=-2)
        else:
            z = self.embed(features, available)  # [B, L, M, H]
        aux: dict[str, Tensor] = {"valid": valid}
        if gridded:
            aux["grid_mask"] = mask
        codes, private = {}, {}
        for j, m in enumerate(names):
            stream, v = self.streams[m], valid[..., j : j + 1]
            if cfg.disentangle:
                codes[m] = self._on_positions(stream.shared, z[..., j, :], v)
                private[m] = self._on_positions(stream.private, z[..., j, :], v)
                aux[f"recon_{m}"] = self._on_positions(stream.decoder, torch.cat([codes[m], private[m]], dim=-1), v)
                if not bool(self.stage2):  # the reverse loss exists only in the warm-up
                    source = private[names[0]] if cfg.reverse_loss == "published" else private[m]  # published: the first modality's
                    aux[f"private_pred_{m}"] = scores(self._private_prediction(stream, source, valid[..., j]), self.spec.task)
            else:
                codes[m] = z[..., j, :]
        if cfg.disentangle:
            aux["z"], aux["shared"] = z, torch.stack([codes[m] for m in names], dim=2)
            aux["private"] = torch.stack([private[m] for m in names], dim=2)

        weights = torch.ones(valid.shape, dtype=z.dtype, device=z.device)  # modulator, filled by loss()
        if self.direct_warmup:
            outputs = {m: self.streams[m].unimodal(codes[m], valid[..., j]) for j, m in enumerate(names)}
        else:
            outputs = self._prompted(codes, valid, weights, aux)
        heads = {m: self._on_positions(self.streams[m].head, outputs[m], valid[..., j]) for j, m in enumerate(names)}
        per_modality = {m: scores(heads[m][:, :length], self.spec.task) for m in names}

        stacked = torch.stack([outputs[m] for m in names], dim=2)  # [B, L, M, H]
        if self.direct_warmup and cfg.warmup_prediction == "heads":  # no trained fusion yet: the mean of the available modalities' own predictions
            coord = self._uniform(valid, z.dtype)
            prediction = torch.stack([heads[m] for m in names], dim=2).mul(coord.unsqueeze(-1)).sum(2)
        else:
            if self.direct_warmup:  # published warm-up: the (untrained) fusion head on the present modalities' outputs
                coord = valid.to(z.dtype)
            else:
                if not bool(self.stage2):
                    stacked = stacked.detach()  # warm-up: the fusion head learns without training the encoders
                coord = self._coordinate(stacked, valid)
            fused = (coord.unsqueeze(-1) * stacked).flatten(-2)
            head_input = fused + self.fusion(fused)
            if cfg.context_mean:
                head_input = torch.cat([head_input, dialogue_mean(stacked, valid).flatten(-2)], dim=-1)
            prediction = self.final(head_input)
        aux["coordinator"], aux["modulator_weights"] = coord, weights
        return ModelOutput(prediction=scores(prediction[:, :length], self.spec.task), modality_predictions=per_modality, aux=aux)

    def _grid(self, features: dict[str, Tensor], available: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, bool]:
        """The batch as the published code sees it: padded to ``sequence_length`` and with its own mask draw.

        Unchanged (and ``False``) unless ``sequence_length`` or ``mask_draw="published"`` asks for it.
        """
        cfg = self.config
        if not cfg.sequence_length and cfg.mask_draw == "given":
            return features, available, mask, False
        batch, length = mask.shape
        if cfg.sequence_length:
            if length > cfg.sequence_length:
                raise ValueError(f"comp: a dialogue of {length} utterances is longer than sequence_length={cfg.sequence_length}")
            pad = cfg.sequence_length - length
            features = {m: torch.cat([x, x.new_zeros(batch, pad, x.shape[-1])], dim=1) for m, x in features.items()}
            available = torch.cat([available, available.new_zeros(batch, pad, available.shape[-1])], dim=1)
            mask = torch.cat([mask, mask.new_zeros(batch, pad)], dim=1)
        if cfg.mask_draw == "published":
            available = available & draw_availability(batch, mask.shape[1], len(self.modalities), cfg.mask_rate, mask.device)
        return features, available, mask, True

    def _on_positions(self, fn: nn.Module, x: Tensor, valid: Tensor) -> Tensor:
        """An utterance-wise ``fn``: zero at invalid positions, or everywhere as computed (``absent_positions``)."""
        if self.config.absent_positions == "computed":
            return fn(x)
        return on_valid(fn, x, valid, self.config.packed)

    def _forward_packed(self, features: dict[str, Tensor], available: Tensor, mask: Tensor) -> ModelOutput:
        """The same function on packed rows: each modality's stream on its present entries only
        (attention on each dialogue's present entries), coordinator and fusion on the real
        utterances; ``[B, L]`` layouts are rebuilt only for the outputs and ``aux``.

        Besides the padded ``aux`` entries, ``aux`` holds the packed tensors the loss
        uses (keys ``rows_*``; ``rows_index`` / ``rows_index_<m>`` are positions in the
        flattened ``[B * L]``).
        """
        cfg, names = self.config, self.modalities
        pk = ModalityPacking(available, mask)
        packs = pk.modality
        z = [self.embed.project(m, packs[j].pack(features[m])) for j, m in enumerate(names)]  # [N_j, H] each
        weights = torch.ones(pk.valid.shape, dtype=z[0].dtype, device=z[0].device)  # modulator, filled by loss()
        aux: dict[str, Tensor] = {"valid": pk.valid, "modulator_weights": weights, "rows_valid": pk.valid_rows, "rows_index": pk.utterances.index}
        codes, private = [], []
        for j, m in enumerate(names):
            stream = self.streams[m]
            aux[f"rows_index_{m}"] = packs[j].index
            if cfg.disentangle:
                codes.append(stream.shared(z[j]))
                private.append(stream.private(z[j]))
                recon = stream.decoder(torch.cat([codes[j], private[j]], dim=-1))
                aux[f"rows_recon_{m}"], aux[f"rows_z_{m}"] = recon, z[j]
                aux[f"recon_{m}"] = packs[j].unpack(recon)
                if not bool(self.stage2):
                    pred = self._private_prediction_packed(stream, private[j], packs[j])
                    aux[f"rows_private_pred_{m}"] = pred
                    aux[f"private_pred_{m}"] = scores(packs[j].unpack(pred), self.spec.task)
            else:
                codes.append(z[j])
        if cfg.disentangle:
            aux["rows_shared"], aux["rows_private"] = pk.stack(codes), pk.stack(private)
            unpack = pk.utterances.unpack
            aux["z"], aux["shared"], aux["private"] = unpack(pk.stack(z)), unpack(aux["rows_shared"]), unpack(aux["rows_private"])

        if self.direct_warmup:
            outputs = [self.streams[m].block2.forward_packed(self.streams[m].block1.forward_packed(codes[j], packs[j]), packs[j]) for j, m in enumerate(names)]
        else:
            outputs = self._prompted_packed(codes, pk, weights, aux)
        heads = [self.streams[m].head(outputs[j]) for j, m in enumerate(names)]  # [N_j, C] each
        per_modality = {m: scores(packs[j].unpack(heads[j]), self.spec.task) for j, m in enumerate(names)}
        for j, m in enumerate(names):
            aux[f"rows_head_{m}"] = heads[j]

        if self.direct_warmup:  # no trained fusion yet: the mean of the available modalities' own predictions
            coord = self._uniform(pk.valid_rows, z[0].dtype)
            prediction = pk.stack(heads).mul(coord.unsqueeze(-1)).sum(1)
        else:
            stacked = pk.stack(outputs)  # [N, M, H]
            if not bool(self.stage2):
                stacked = stacked.detach()  # warm-up: the fusion head learns without training the encoders
            coord = self._coordinate(stacked, pk.valid_rows)
            fused = (coord.unsqueeze(-1) * stacked).flatten(-2)
            head_input = fused + self.fusion(fused)
            if cfg.context_mean:
                context = dialogue_mean(pk.utterances.unpack(stacked), pk.valid)  # [B, L, M, H + 1]
                head_input = torch.cat([head_input, pk.utterances.pack(context).flatten(-2)], dim=-1)
            prediction = self.final(head_input)
        aux["rows_prediction"] = prediction
        aux["coordinator"] = pk.utterances.unpack(coord)
        return ModelOutput(prediction=scores(pk.utterances.unpack(prediction), self.spec.task), modality_predictions=per_modality, aux=aux)

    def _prompted_packed(self, codes: list[Tensor], pk: ModalityPacking, weights: Tensor, aux: dict[str, Tensor]) -> list[Tensor]:
        """:meth:`_prompted` on packed rows: prompts move between modalities through the utterances."""
        cfg, names = self.config, self.modalities
        packs, prompting = pk.modality, self.prompting
        others = [[i for i in range(len(names)) if i != j] for j in range(len(names))]
        if prompting:
            new_prompts = pk.stack(self._prompts_packed(codes, pk, weights, aux, "1"))  # [N, M, p]
        hidden, carried = [], []
        for j, m in enumerate(names):
            stream = self.streams[m]
            if prompting:
                x = torch.cat([codes[j], pk.select(j, new_prompts)[:, others[j]].flatten(-2)], dim=-1)
            else:
                x = self._with_prompts(codes[j], None, j)
            out = stream.out1(stream.block1.forward_packed(stream.in1(x), packs[j]))
            hidden.append(out[..., : cfg.hidden])
            carried.append(out[..., cfg.hidden :])
        if prompting:
            regenerated = pk.stack(self._prompts_packed(hidden, pk, weights, aux, "2"))  # [N, M, p]
        outputs = []
        for j, m in enumerate(names):
            stream = self.streams[m]
            if prompting:
                mixed = cfg.momentum * carried[j].unflatten(-1, (len(names) - 1, cfg.prompt_size)) + (1 - cfg.momentum) * pk.select(j, regenerated)[:, others[j]]
                other_valid = pk.select(j, pk.valid_rows)[:, others[j]].unsqueeze(-1)
                received = torch.where(other_valid, mixed, torch.zeros((), dtype=mixed.dtype))  # [N_j, M-1, p]
                aux[f"received_{m}"] = packs[j].unpack(received)
                x = torch.cat([hidden[j], received.flatten(-2)], dim=-1)
            else:
                x = self._with_prompts(hidden[j], None, j)
            outputs.append(stream.block2.forward_packed(stream.in2(x), packs[j]))
        return outputs

    def _prompts_packed(self, codes: list[Tensor], pk: ModalityPacking, weights: Tensor, aux: dict[str, Tensor], level: str) -> list[Tensor]:
        """:meth:`_prompts` on each modality's present entries; the modulator reads ``weights`` at their positions."""
        modulate, scoped = self.config.modulator, self.config.modulator_scope == "generator"
        by_position = weights.reshape(-1, weights.shape[-1])  # a view: loss() fills ``weights`` after this forward
        out = []
        for j, m in enumerate(self.modalities):
            index = pk.modality[j].index
            code = GradScale.apply(codes[j], by_position[:, j], True, index) if modulate and scoped else codes[j]
            prompt, attention = self.streams[m].generate(code, level)
            aux[f"prompt{level}_{m}"] = pk.modality[j].unpack(prompt)
            aux[f"prototype_attention{level}_{m}"] = pk.modality[j].unpack(attention)
            out.append(GradScale.apply(prompt, by_position[:, j], False, index) if modulate else prompt)
        return out

    def _private_prediction_packed(self, stream: ModalityStream, private: Tensor, packing: Packing) -> Tensor:
        """:meth:`_private_prediction` on one modality's present entries."""
        if self.config.reverse_target == "normal":
            return stream.private_head(private)
        if self.config.warmup == "encoders":
            return stream.head(stream.block2.forward_packed(stream.block1.forward_packed(private, packing), packing))
        out = stream.out1(stream.block1.forward_packed(stream.in1(self._with_prompts(private, None, 0)), packing))[..., : self.config.hidden]
        return stream.head(stream.block2.forward_packed(stream.in2(self._with_prompts(out, None, 0)), packing))

    def _prompted(self, codes: dict[str, Tensor], valid: Tensor, weights: Tensor, aux: dict[str, Tensor]) -> dict[str, Tensor]:
        """Blocks 1 and 2 with prompt inputs (zeros while not prompting) -> each modality's representation."""
        cfg, names = self.config, self.modalities
        zero = torch.zeros((), dtype=weights.dtype)
        prompting = self.prompting
        new_prompts = self._prompts(codes, valid, weights, aux, "1") if prompting else None
        hidden, carried = {}, {}
        for j, m in enumerate(names):
            stream, v = self.streams[m], valid[..., j]
            x = self._with_prompts(codes[m], new_prompts, j)
            out = self._on_positions(stream.out1, stream.run(stream.block1, self._on_positions(stream.in1, x, v), v), v)
            hidden[m], carried[m] = out[..., : cfg.hidden], out[..., cfg.hidden :]
        if prompting:
            regenerated = self._prompts(hidden, valid, weights, aux, "2")
        outputs = {}
        for j, m in enumerate(names):
            stream = self.streams[m]
            if prompting:
                others = torch.stack([regenerated[k] for i, k in enumerate(names) if i != j], dim=2)  # [B, L, M-1, p]
                mixed = cfg.momentum * carried[m].unflatten(-1, (len(names) - 1, cfg.prompt_size)) + (1 - cfg.momentum) * others
                other_valid = torch.cat([valid[..., :j], valid[..., j + 1 :]], dim=-1).unsqueeze(-1)
                # [B, L, M-1, p], others in order; published (prompt_mask="none"): absent modalities' prompts too
                aux[f"received_{m}"] = mixed if cfg.prompt_mask == "none" else torch.where(other_valid, mixed, zero)
                x = torch.cat([hidden[m], aux[f"received_{m}"].flatten(-2)], dim=-1)
            else:
                x = self._with_prompts(hidden[m], None, j)
            outputs[m] = stream.run(stream.block2, self._on_positions(stream.in2, x, valid[..., j]), valid[..., j])
        return outputs

    def _private_prediction(self, stream: ModalityStream, private: Tensor, valid: Tensor) -> Tensor:
        """The private path's prediction for the reverse loss: own Linear, or the shared blocks and head."""
        if self.config.reverse_target == "normal":
            return on_valid(stream.private_head, private, valid, self.config.packed)
        if self.config.warmup == "encoders":
            return stream.head(stream.unimodal(private, valid))
        x = self._with_prompts(private, None, 0)
        out = stream.out1(stream.run(stream.block1, stream.in1(x), valid))[..., : self.config.hidden]
        return stream.head(stream.run(stream.block2, stream.in2(self._with_prompts(out, None, 0)), valid))

    def _prompts(self, codes: dict[str, Tensor], valid: Tensor, weights: Tensor, aux: dict[str, Tensor], level: str) -> dict[str, Tensor]:
        """Every modality's prompt at one level; absent -> 0 (unless ``prompt_mask="none"``); the modulator scales their gradients.

        With ``prototypes="batch"`` the level-1 codes make the batch's prototypes (``aux["prototypes_<m>"]``),
        which level 2 reuses.
        """
        cfg = self.config
        modulate, scoped = cfg.modulator, cfg.modulator_scope == "generator"
        out = {}
        for j, m in enumerate(self.modalities):
            code = GradScale.apply(codes[m], weights[..., j], True) if modulate and scoped else codes[m]
            prototypes = None
            if cfg.prompts and cfg.prototypes == "batch":
                if level == "1":
                    aux[f"prototypes_{m}"] = batch_prototypes(self.streams[m].prototype_mlp, code)
                prototypes = aux[f"prototypes_{m}"]
            prompt, attention = self.streams[m].generate(code, level, prototypes)
            if cfg.prompt_mask == "zero":
                keep, zero = valid[..., j : j + 1], torch.zeros((), dtype=prompt.dtype)
                prompt, attention = torch.where(keep, prompt, zero), torch.where(keep, attention, zero)
            aux[f"prompt{level}_{m}"], aux[f"prototype_attention{level}_{m}"] = prompt, attention
            out[m] = GradScale.apply(prompt, weights[..., j]) if modulate else prompt
        return out

    def _with_prompts(self, code: Tensor, prompts: dict[str, Tensor] | None, j: int) -> Tensor:
        """``[code ; prompts of the other modalities]`` (zeros for absent ones or without prompts)."""
        if not self.config.prompts:
            return code
        if prompts is None:
            extra = (len(self.modalities) - 1) * self.config.prompt_size
            return torch.cat([code, code.new_zeros(*code.shape[:-1], extra)], dim=-1)
        others = [prompts[k] for i, k in enumerate(self.modalities) if i != j]
        return torch.cat([code, *others], dim=-1)

    @staticmethod
    def _uniform(valid: Tensor, dtype: torch.dtype) -> Tensor:
        """Equal weights over the available modalities (0 elsewhere)."""
        weights = valid.to(dtype)
        return weights / weights.sum(-1, keepdim=True).clamp(min=1.0)

    def _coordinate(self, stacked: Tensor, valid: Tensor) -> Tensor:
        """Softmax weights ``[B, L, M]`` over available modalities (0 for absent ones and padding)."""
        if not self.config.coordinator:
            return self._uniform(valid, stacked.dtype)
        logits = self.coordinator(stacked.flatten(-2))
        if self.config.coordinator_mask == "none":  # published: every modality weighed, absent ones too
            return torch.softmax(logits, dim=-1)
        logits = torch.where(valid, logits, torch.full((), -1e9, dtype=logits.dtype))
        weights = torch.softmax(logits, dim=-1)
        return torch.where(valid, weights, torch.zeros((), dtype=weights.dtype))

    # ----- losses ---------------------------------------------------------------------------
    def modality_errors(self, out: ModelOutput, labels: Tensor) -> Tensor:
        """Per-utterance error of each modality's own head, ``[B, L, M]``, detached.

        Regression ``|y_m - y|``; classification ``1 - p_m(true class)``.
        """
        assert out.modality_predictions is not None
        with torch.no_grad():
            errs = []
            for m in self.modalities:
                pred = out.modality_predictions[m]
                if self.spec.task == "classification":
                    p_true = torch.softmax(pred.float(), dim=-1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
                    errs.append(1.0 - p_true)
                else:
                    errs.append((pred.float() - labels.float()).abs())
            return torch.stack(errs, dim=-1)

    def loss(self, out: ModelOutput, labels: Tensor, mask: Tensor, available: Tensor) -> dict[str, Tensor]:
        """Stage-dependent loss terms; also fills the modulator weights used by the coming backward.

        A packed forward's output (``rows_*`` in ``aux``) gives the same terms from its packed rows. After a
        forward that padded the batch or drew its own masks (``aux["grid_mask"]``) the terms use that grid
        and that availability.
        """
        cfg, names = self.config, self.modalities
        assert out.modality_predictions is not None
        valid = available & mask.unsqueeze(-1)
        grid_mask, grid_valid, grid_labels = mask, valid, labels
        if "grid_mask" in out.aux:
            grid_mask, grid_valid = out.aux["grid_mask"], out.aux["valid"]
            valid = grid_valid[:, : mask.shape[1]]
            grid_labels = torch.cat([labels, labels.new_zeros(labels.shape[0], grid_mask.shape[1] - labels.shape[1])], dim=1)
        stage2 = bool(self.stage2)
        if cfg.modulator and self.prompting:
            errors = self.modality_errors(out, labels)
            out.aux["modulator_weights"][:, : errors.shape[1]].copy_(modulator_weights(errors, valid, cfg.modulator_strength, cfg.modulator_direction))
        if "rows_valid" in out.aux:
            return self._packed_loss(out.aux, labels, mask)
        terms = {} if self.direct_warmup else {"task": self.task_loss(out.prediction, labels, mask)}
        if cfg.unimodal_loss == "published":  # every real utterance, absent modalities too; twice in the joint stage
            unimodal = sum(self.task_loss(out.modality_predictions[m], labels, mask) for m in names)
            terms["unimodal"] = cfg.unimodal_weight * (2.0 if stage2 else 1.0) * unimodal
        else:
            unimodal = sum(self.task_loss(out.modality_predictions[m], labels, valid[..., j]) for j, m in enumerate(names))
            terms["unimodal"] = cfg.unimodal_weight * unimodal
        if cfg.disentangle:
            if stage2 or cfg.recon_stages == "both":
                if cfg.recon_loss == "published":  # every position and modality of the padded batch, target not detached
                    recon = torch.stack([out.aux[f"recon_{m}"] for m in names], dim=-2)
                    terms["recon"] = cfg.recon_weight * (recon - out.aux["z"]).pow(2).mean()
                else:
                    terms["recon"] = cfg.recon_weight * sum(
                        _masked_average((out.aux[f"recon_{m}"] - out.aux["z"][..., j, :].detach()).pow(2).mean(-1), grid_valid[..., j])
                        for j, m in enumerate(names)
                    )
            terms["disentangle"] = cfg.disentangle_weight * self._disentangle_loss(out.aux["shared"], out.aux["private"], grid_valid, grid_mask)
            if not stage2:
                terms["reverse"] = cfg.reverse_weight * self._reverse_terms(out.aux, grid_labels, grid_valid, grid_mask)
        return terms

    def _reverse_terms(self, aux: dict[str, Tensor], labels: Tensor, valid: Tensor, mask: Tensor) -> Tensor:
        """The warm-up's reverse loss summed over modalities (padded computation).

        ``reverse_loss="published"``: every real utterance counts (absent modalities too) and one noise draw
        over the padded batch serves every modality (regression).
        """
        names = self.modalities
        if self.config.reverse_loss != "published":
            return sum(self._reverse_loss(aux[f"private_pred_{m}"], labels, valid[..., j]) for j, m in enumerate(names))
        noise = None
        if self.spec.task == "regression":  # drawn (and scaled, in _reverse_loss) in the labels' dtype, as published
            noise = torch.randn(mask.shape, dtype=labels.dtype, device=labels.device)
        return sum(self._reverse_loss(aux[f"private_pred_{m}"], labels, mask, noise) for m in names)

    def _packed_loss(self, aux: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The terms of :meth:`loss` from a packed forward's rows (every row is a present entry)."""
        cfg, names, stage2 = self.config, self.modalities, bool(self.stage2)
        flat = labels.reshape(-1)
        rows_labels = {m: flat.index_select(0, aux[f"rows_index_{m}"]) for m in names}

        def everywhere(x: Tensor) -> Tensor:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

        terms = {}
        if not self.direct_warmup:
            prediction = aux["rows_prediction"]
            terms["task"] = self.task_loss(prediction, flat.index_select(0, aux["rows_index"]), everywhere(prediction))
        terms["unimodal"] = cfg.unimodal_weight * sum(
            self.task_loss(aux[f"rows_head_{m}"], rows_labels[m], everywhere(aux[f"rows_head_{m}"])) for m in names
        )
        if cfg.disentangle:
            if stage2 or cfg.recon_stages == "both":
                terms["recon"] = cfg.recon_weight * sum(
                    _masked_average(per, everywhere(per))
                    for per in ((aux[f"rows_recon_{m}"] - aux[f"rows_z_{m}"].detach()).pow(2).mean(-1) for m in names)
                )
            terms["disentangle"] = cfg.disentangle_weight * self._disentangle_loss(aux["rows_shared"], aux["rows_private"], aux["rows_valid"])
            if not stage2:
                reverse = []
                for m in names:
                    pred = aux[f"rows_private_pred_{m}"]
                    pred = pred.squeeze(-1) if self.spec.task == "regression" else pred
                    # the noise of the padded computation, drawn over [B, L] and read at the present entries
                    noise = None if self.spec.task == "classification" else torch.randn(mask.shape, dtype=pred.dtype, device=pred.device).reshape(-1)[aux[f"rows_index_{m}"]]
                    reverse.append(self._reverse_loss(pred, rows_labels[m], everywhere(pred), noise))
                terms["reverse"] = cfg.reverse_weight * sum(reverse)
        return terms

    def _disentangle_loss(self, shared: Tensor, private: Tensor, valid: Tensor, mask: Tensor | None = None) -> Tensor:
        """|cos(private_i, private_j)| + |cos(private_m, shared_m)| + JS(sigmoid(shared_i), sigmoid(shared_j)), observed positions only.

        ``disentangle_loss="published"``: the cosine terms over every real utterance (``mask``), the JS term
        with the "1" outcome only (:func:`published_js`) and over every position of the padded batch.
        """
        cfg, m = self.config, len(self.modalities)
        published = cfg.disentangle_loss == "published"
        everywhere = torch.ones_like(valid[..., 0]) if published else None

        def private_shared(j: int, where: Tensor) -> Tensor:
            return _masked_average(F.cosine_similarity(private[..., j, :], shared[..., j, :], dim=-1).abs(), where)

        per_pair = cfg.private_shared_terms == "per_pair"
        loss = shared.new_zeros(()) if per_pair else sum(private_shared(j, mask if published else valid[..., j]) for j in range(m))
        for i in range(m):
            for j in range(i + 1, m):
                both = mask if published else valid[..., i] & valid[..., j]
                js = (published_js if published else bernoulli_js)(shared[..., i, :], shared[..., j, :])
                js = js.sum(-1) if cfg.js_reduction == "sum" else js.mean(-1)
                loss = loss + _masked_average(F.cosine_similarity(private[..., i, :], private[..., j, :], dim=-1).abs(), both)
                loss = loss + _masked_average(js, everywhere if published else both)
                if per_pair:
                    loss = loss + private_shared(i, both) + private_shared(j, both)
        return loss

    def _reverse_loss(self, prediction: Tensor, labels: Tensor, weight: Tensor, noise: Tensor | None = None) -> Tensor:
        """Keep the private path from carrying the label.

        Classification: cross-entropy towards the complement of the true class,
        ``-log(1 - p(true))`` (computed in log space); ``reverse_loss="published"``: the cross-entropy of
        the true class under the logits ``1 - z``, as published. Regression: regress to
        noise, N(0, 1) (``reverse_target="normal"``) or 1.5 N(0, 1) clamped to
        [-3, 3] (``"published"``, the label range of CMU-MOSI); ``noise``: the
        N(0, 1) draw to use instead of a fresh one.
        """
        if self.spec.task == "classification" and self.config.reverse_loss == "published":
            # the published complement: cross-entropy of the label under the logits 1 - z
            per = F.cross_entropy((1.0 - prediction).reshape(-1, prediction.shape[-1]), labels.reshape(-1).long(), reduction="none").reshape(labels.shape)
        elif self.spec.task == "classification":
            true = F.one_hot(labels.long(), prediction.shape[-1]).bool()
            log_rest = torch.logsumexp(prediction.masked_fill(true, float("-inf")), dim=-1) - torch.logsumexp(prediction, dim=-1)
            per = -log_rest
        else:
            noise = torch.randn_like(prediction) if noise is None else noise
            if self.config.reverse_target == "published":
                noise = (1.5 * noise).clamp(-3.0, 3.0)
            per = (prediction - noise).pow(2)
        return _masked_average(per, weight)
