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
``stage_epoch`` epochs (no prompts; the fusion head learns on detached
modality outputs so every epoch can be validated), then prompting. The
dynamic gradient modulator scales, per utterance and modality, the gradient
that flows back into the modality's prompt generator (prototypes included),
with weights that :meth:`Comp.loss` computes from the unimodal errors before
the trainer calls ``backward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imer.layers import MLP, MaskedTransformer, ModalityEmbedding
from imer.layers.packing import on_valid
from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput, scores
from imer.models.registry import register_model


@dataclass
class CompConfig(ModelConfig):
    """ComP options; defaults are the paper's (CMU-MOSI, missing rate 0.7).

    Attributes:
        depth: Transformer layers per modality, split into block 1 (``depth // 2``)
            and block 2 (the rest).
        prompt_size: size p of a prompt.
        num_prototypes: K global prototypes per modality.
        momentum: lambda, the weight of the carried prompt in the level-2 mix.
        stage_epoch: epochs of unimodal warm-up before prompting starts.
        single_stage: skip the warm-up (prompting from epoch 0).
        prompts / modulator / coordinator / disentangle: ablation switches;
            off removes the part (coordinator off = uniform weights over the
            available modalities).
        modulator_strength: beta; modulator weights lie in [1 - beta, 1 + beta].
        temperature: of the cosine-similarity softmax over prototypes.
        unimodal_weight, recon_weight, disentangle_weight, reverse_weight:
            loss weights.
    """

    hidden: int = 256
    dropout: float = 0.5
    depth: int = 4
    heads: int = 2
    prompt_size: int = 16
    num_prototypes: int = 10
    momentum: float = 0.3
    stage_epoch: int = 150
    single_stage: bool = False
    prompts: bool = True
    modulator: bool = True
    coordinator: bool = True
    disentangle: bool = True
    modulator_strength: float = 0.5
    temperature: float = 0.1
    unimodal_weight: float = 1.0
    recon_weight: float = 1.0
    disentangle_weight: float = 0.1
    reverse_weight: float = 0.1


class GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``weight`` (broadcast over the last dim).

    ``weight`` is read when backward runs, not when forward runs, so the
    model's ``loss`` can fill it in after the forward pass (the modulator
    needs the unimodal errors, which exist only after the forward pass).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.weight.unsqueeze(-1).to(grad.dtype), None


class PromptGenerator(nn.Module):
    """K global prototypes; each utterance attends over them by cosine similarity -> a prompt.

    Per-utterance only (no attention across utterances or dialogues), so a
    prompt never depends on the rest of the batch. Positions where ``valid``
    is False get an all-zero prompt.
    """

    def __init__(self, hidden: int, prompt_size: int, num_prototypes: int, temperature: float, dropout: float) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, hidden) / math.sqrt(hidden))
        self.query = nn.Linear(hidden, hidden)
        self.ffn = MLP(hidden, hidden, prompt_size, layers=2, dropout=dropout)
        self.skip = nn.Linear(hidden, prompt_size)
        self.temperature = temperature

    def forward(self, code: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """``code`` ``[B, L, H]`` -> prompt ``[B, L, p]`` and attention ``[B, L, K]``."""
        sim = F.normalize(self.query(code), dim=-1) @ F.normalize(self.prototypes, dim=-1).T
        attention = torch.softmax(sim / self.temperature, dim=-1)
        prompt = self.ffn(attention @ self.prototypes) + self.skip(code)
        keep = valid.unsqueeze(-1)
        return torch.where(keep, prompt, torch.zeros((), dtype=prompt.dtype)), torch.where(keep, attention, torch.zeros((), dtype=attention.dtype))


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


def modulator_weights(errors: Tensor, present: Tensor, strength: float) -> Tensor:
    """Per-utterance, per-modality gradient weights from unimodal errors.

    ``errors`` ``[..., M]`` (>= 0), ``present`` ``[..., M]`` bool. A modality
    whose error on an utterance is above the mean error of the other present
    modalities gets a weight above 1, below it a weight below 1:
    ``w = 1 + strength * (e_m - e_others) / (e_m + e_others)``. Equal errors
    (including all zero) give exactly 1; weights always lie in
    ``[1 - strength, 1 + strength]``; absent modalities, and utterances where
    no other modality is present, get 1.
    """
    errors = torch.where(present, errors, torch.zeros((), dtype=errors.dtype))
    p = present.to(errors.dtype)
    others_count = p.sum(-1, keepdim=True) - p
    others = (errors.sum(-1, keepdim=True) - errors) / others_count.clamp(min=1.0)
    denom = errors + others
    relative = torch.where(denom > 0, (errors - others) / denom.clamp(min=torch.finfo(errors.dtype).tiny), torch.zeros((), dtype=errors.dtype))
    weights = 1.0 + strength * relative.clamp(-1.0, 1.0)
    return torch.where(present & (others_count > 0), weights, torch.ones((), dtype=errors.dtype))


class ModalityStream(nn.Module):
    """One modality's path: disentangling encoders, blocks 1 and 2 with prompt inputs, own head."""

    def __init__(self, config: CompConfig, num_modalities: int, output_size: int) -> None:
        super().__init__()
        h, extra = config.hidden, (num_modalities - 1) * config.prompt_size if config.prompts else 0
        self.extra = extra
        if config.disentangle:
            self.shared = MLP(h, h, h, layers=2, dropout=config.dropout)
            self.private = MLP(h, h, h, layers=2, dropout=config.dropout)
            self.decoder = MLP(2 * h, h, h, layers=2, dropout=config.dropout)
            self.private_head = nn.Linear(h, output_size)
        first = config.depth // 2
        self.in1 = nn.Linear(h + extra, h)
        self.block1 = MaskedTransformer(h, first, config.heads, config.dropout, packed=config.packed)
        self.out1 = nn.Linear(h, h + extra)
        self.in2 = nn.Linear(h + extra, h)
        self.block2 = MaskedTransformer(h, config.depth - first, config.heads, config.dropout, packed=config.packed)
        self.head = MLP(h, h, output_size, layers=2, dropout=config.dropout)
        if config.prompts:
            self.generator = PromptGenerator(h, config.prompt_size, config.num_prototypes, config.temperature, config.dropout)


@register_model("comp")
class Comp(IMERModel):
    """ComP (see module docstring). ``aux`` exposes coordinator weights, prompts and losses' inputs."""

    config_class = CompConfig
    uses_context = True

    def __init__(self, config: CompConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if len(spec.modalities) < 2:
            raise ValueError("comp needs at least 2 modalities")
        if config.depth < 2:
            raise ValueError("comp: depth must be >= 2 (block 1 and block 2)")
        if not 0.0 <= config.momentum <= 1.0 or not 0.0 <= config.modulator_strength < 1.0:
            raise ValueError("comp: momentum must lie in [0, 1] and modulator_strength in [0, 1)")
        m, h = len(spec.modalities), config.hidden
        self.embed = ModalityEmbedding(spec.dim_of, h, config.dropout, packed=config.packed)
        self.streams = nn.ModuleDict({name: ModalityStream(config, m, spec.output_size) for name in spec.modalities})
        if config.coordinator:
            self.coordinator = MLP(m * h, h, m, layers=2, dropout=config.dropout)
        self.fusion = MLP(m * h, h, m * h, layers=2, dropout=config.dropout)
        self.final = nn.Linear(m * h, spec.output_size)
        # True from stage 2 on; a buffer so the stage travels with saved weights and checkpoints.
        self.register_buffer("stage2", torch.tensor(self._stage2_at(0)))

    # ----- schedule -------------------------------------------------------------------------
    def _stage2_at(self, epoch: int) -> bool:
        return self.config.single_stage or epoch >= self.config.stage_epoch

    @property
    def prompting(self) -> bool:
        """Whether prompts are generated and used now (stage 2 with prompts on)."""
        return self.config.prompts and bool(self.stage2)

    def on_epoch_start(self, epoch: int) -> None:
        """Stage 1 (unimodal warm-up) before ``stage_epoch``, stage 2 from it on."""
        self.stage2.fill_(self._stage2_at(epoch))

    def stage(self) -> str:
        return "joint" if bool(self.stage2) else "warmup"

    # ----- forward --------------------------------------------------------------------------
    def forward(self, features: dict[str, Tensor], available: Tensor, mask: Tensor, speakers: Tensor | None = None) -> ModelOutput:
        cfg, names = self.config, self.modalities
        valid = available & mask.unsqueeze(-1)  # [B, L, M]
        z = self.embed(features, available)  # [B, L, M, H]
        zero = torch.zeros((), dtype=z.dtype)
        aux: dict[str, Tensor] = {"valid": valid}
        codes, private = {}, {}
        for j, m in enumerate(names):
            stream, v = self.streams[m], valid[..., j : j + 1]
            if cfg.disentangle:
                codes[m] = on_valid(stream.shared, z[..., j, :], v, cfg.packed)
                private[m] = on_valid(stream.private, z[..., j, :], v, cfg.packed)
                aux[f"recon_{m}"] = on_valid(stream.decoder, torch.cat([codes[m], private[m]], dim=-1), v, cfg.packed)
                if not bool(self.stage2):  # the reverse loss exists only in the warm-up
                    aux[f"private_pred_{m}"] = scores(on_valid(stream.private_head, private[m], v, cfg.packed), self.spec.task)
            else:
                codes[m] = z[..., j, :]
        if cfg.disentangle:
            aux["z"], aux["shared"] = z, torch.stack([codes[m] for m in names], dim=2)
            aux["private"] = torch.stack([private[m] for m in names], dim=2)

        prompting = self.prompting
        weights = torch.ones(valid.shape, dtype=z.dtype, device=z.device)  # modulator, filled by loss()
        new_prompts = self._prompts(codes, valid, weights, aux, "1") if prompting else None
        hidden, carried = {}, {}
        for j, m in enumerate(names):
            stream = self.streams[m]
            x = self._with_prompts(codes[m], new_prompts, j)
            out = on_valid(stream.out1, stream.block1(on_valid(stream.in1, x, valid[..., j], cfg.packed), valid[..., j]), valid[..., j], cfg.packed)
            hidden[m], carried[m] = out[..., : cfg.hidden], out[..., cfg.hidden :]
        if prompting:
            regenerated = self._prompts(hidden, valid, weights, aux, "2")
        outputs, per_modality = {}, {}
        for j, m in enumerate(names):
            stream = self.streams[m]
            if prompting:
                others = torch.stack([regenerated[k] for i, k in enumerate(names) if i != j], dim=2)  # [B, L, M-1, p]
                mixed = cfg.momentum * carried[m].unflatten(-1, (len(names) - 1, cfg.prompt_size)) + (1 - cfg.momentum) * others
                other_valid = torch.cat([valid[..., :j], valid[..., j + 1 :]], dim=-1).unsqueeze(-1)
                aux[f"received_{m}"] = torch.where(other_valid, mixed, zero)  # [B, L, M-1, p], others in order
                x = torch.cat([hidden[m], aux[f"received_{m}"].flatten(-2)], dim=-1)
            else:
                x = self._with_prompts(hidden[m], None, j)
            outputs[m] = stream.block2(on_valid(stream.in2, x, valid[..., j], cfg.packed), valid[..., j])
            per_modality[m] = scores(on_valid(stream.head, outputs[m], valid[..., j], cfg.packed), self.spec.task)

        stacked = torch.stack([outputs[m] for m in names], dim=2)  # [B, L, M, H]
        if not bool(self.stage2):
            stacked = stacked.detach()  # warm-up: the fusion head learns without training the encoders
        coord = self._coordinate(stacked, valid)
        fused = (coord.unsqueeze(-1) * stacked).flatten(-2)
        prediction = self.final(fused + self.fusion(fused))
        aux["coordinator"], aux["modulator_weights"] = coord, weights
        return ModelOutput(prediction=scores(prediction, self.spec.task), modality_predictions=per_modality, aux=aux)

    def _prompts(self, codes: dict[str, Tensor], valid: Tensor, weights: Tensor, aux: dict[str, Tensor], level: str) -> dict[str, Tensor]:
        """Every modality's prompt at one level; absent -> 0; the modulator scales their gradients."""
        out = {}
        for j, m in enumerate(self.modalities):
            prompt, attention = self.streams[m].generator(codes[m], valid[..., j])
            aux[f"prompt{level}_{m}"], aux[f"prototype_attention{level}_{m}"] = prompt, attention
            out[m] = GradScale.apply(prompt, weights[..., j]) if self.config.modulator else prompt
        return out

    def _with_prompts(self, code: Tensor, prompts: dict[str, Tensor] | None, j: int) -> Tensor:
        """``[code ; prompts of the other modalities]`` (zeros for absent ones or without prompts)."""
        if not self.config.prompts:
            return code
        if prompts is None:
            return torch.cat([code, code.new_zeros(*code.shape[:-1], self.streams[self.modalities[j]].extra)], dim=-1)
        others = [prompts[k] for i, k in enumerate(self.modalities) if i != j]
        return torch.cat([code, *others], dim=-1)

    def _coordinate(self, stacked: Tensor, valid: Tensor) -> Tensor:
        """Softmax weights ``[B, L, M]`` over available modalities (0 for absent ones and padding)."""
        if self.config.coordinator:
            logits = self.coordinator(stacked.flatten(-2))
            logits = torch.where(valid, logits, torch.full((), -1e9, dtype=logits.dtype))
            weights = torch.softmax(logits, dim=-1)
        else:
            weights = valid.to(stacked.dtype)
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
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
        """Stage-dependent loss terms; also fills the modulator weights used by the coming backward."""
        cfg, names = self.config, self.modalities
        assert out.modality_predictions is not None
        valid = available & mask.unsqueeze(-1)
        prompting = self.prompting
        terms = {"task": self.task_loss(out.prediction, labels, mask)}
        unimodal = sum(self.task_loss(out.modality_predictions[m], labels, valid[..., j]) for j, m in enumerate(names))
        terms["unimodal"] = cfg.unimodal_weight * unimodal
        if cfg.modulator and prompting:
            out.aux["modulator_weights"].copy_(modulator_weights(self.modality_errors(out, labels), valid, cfg.modulator_strength))
        if cfg.disentangle:
            terms["recon"] = cfg.recon_weight * sum(
                _masked_average((out.aux[f"recon_{m}"] - out.aux["z"][..., j, :].detach()).pow(2).mean(-1), valid[..., j])
                for j, m in enumerate(names)
            )
            terms["disentangle"] = cfg.disentangle_weight * self._disentangle_loss(out.aux["shared"], out.aux["private"], valid)
            if not bool(self.stage2):
                terms["reverse"] = cfg.reverse_weight * sum(
                    self._reverse_loss(out.aux[f"private_pred_{m}"], labels, valid[..., j]) for j, m in enumerate(names)
                )
        return terms

    def _disentangle_loss(self, shared: Tensor, private: Tensor, valid: Tensor) -> Tensor:
        """|cos(private_i, private_j)| + |cos(private_m, shared_m)| + JS(sigmoid(shared_i), sigmoid(shared_j)), observed positions only."""
        m = len(self.modalities)
        loss = sum(_masked_average(F.cosine_similarity(private[..., j, :], shared[..., j, :], dim=-1).abs(), valid[..., j]) for j in range(m))
        for i in range(m):
            for j in range(i + 1, m):
                both = valid[..., i] & valid[..., j]
                loss = loss + _masked_average(F.cosine_similarity(private[..., i, :], private[..., j, :], dim=-1).abs(), both)
                loss = loss + _masked_average(bernoulli_js(shared[..., i, :], shared[..., j, :]).mean(-1), both)
        return loss

    def _reverse_loss(self, prediction: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
        """Keep the private path from carrying the label.

        Classification: cross-entropy towards the complement of the true class,
        ``-log(1 - p(true))`` (computed in log space). Regression: regress to
        standard-normal noise.
        """
        if self.spec.task == "classification":
            true = F.one_hot(labels.long(), prediction.shape[-1]).bool()
            log_rest = torch.logsumexp(prediction.masked_fill(true, float("-inf")), dim=-1) - torch.logsumexp(prediction, dim=-1)
            per = -log_rest
        else:
            per = (prediction - torch.randn_like(prediction)).pow(2)
        return _masked_average(per, weight)
