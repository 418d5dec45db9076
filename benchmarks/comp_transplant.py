"""Write the ComP transplant fixture from a checkout of the published code (issue 26).

The published code (``WenjueHE/2026-AAAI-ComP``, commit 28192d3) is never copied into this repository: this
script imports it from a checkout given on the command line, builds its model at a small size, runs one training
step per stage through the published ``train_or_eval_model`` (dropout 0, so a training step is deterministic;
the optimizer only records the gradients) and writes what ``tests/test_comp_transplant.py`` needs into one
``.npz``: the weights it uses (float32, as initialised by the published code), the inputs, the availability the
published code drew, and the outputs, loss terms and gradients of both stages, computed in float64 (the
reference) and float32.

    git --git-dir=<mirror of WenjueHE/2026-AAAI-ComP> worktree add /tmp/comp-published 28192d3
    python benchmarks/comp_transplant.py --published /tmp/comp-published --out tests/fixtures/comp_transplant.npz

(A checkout that is not a git work tree works too; the fixture then records the commit as unknown.) The output is
the same on every run: the same arrays and metadata (the zip members' timestamps aside).

Nothing here runs in the test suite; the test reads only the committed ``.npz``. Gradients are stored as four
signed random projections per tensor plus its norm (the full gradients would be ~300 KB); the projection
vectors are a function of the tensor's name (:func:`projection_vectors`, repeated in the test).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {"hidden": 16, "depth": 2, "heads": 2, "seq_len": 8, "dims": (5, 6, 7), "lengths": (4, 6, 3)}
MASK_RATE = 0.4
DRAW_SEEDS = range(0, 500)  # the first seed whose mask draw covers the cases below is used
WEIGHT_SEED = 7
PROJECTIONS = 4
# Parameters the published forward never uses (the level-2 out-projections and the level-2 sequence MLPs).
UNUSED = re.compile(r"prop_proj_rev_[atv]_2\.|prop_former_[atv]_2\.proj_n\.")


def projection_vectors(name: str, size: int) -> np.ndarray:
    """``[PROJECTIONS, size]`` signs in {-1, +1}, a function of the tensor name only."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.integers(0, 2, size=(PROJECTIONS, size)).astype(np.float64) * 2.0 - 1.0


def load_published(checkout: Path) -> types.ModuleType:
    """Import ``train_mr`` of the published code from ``checkout`` (the repository root)."""
    sys.path[:0] = [str(checkout / "ComP"), str(checkout)]
    import train_mr  # noqa: PLC0415  (the published module, found through sys.path)

    train_mr.device = torch.device("cpu")  # the published script defines it only under __main__
    return train_mr


def make_inputs() -> dict[str, np.ndarray]:
    """Three short dialogues (lengths 4, 6, 3), widths 5 / 6 / 7, labels in [-3, 3] (one exactly 0)."""
    rng = np.random.default_rng(2026)
    b, longest = len(SIZES["lengths"]), max(SIZES["lengths"])
    mask = np.zeros((b, longest), dtype=bool)
    for i, n in enumerate(SIZES["lengths"]):
        mask[i, :n] = True
    feats = {m: rng.standard_normal((b, longest, d)).astype(np.float32) * mask[..., None] for m, d in zip("atv", SIZES["dims"])}
    labels = (rng.uniform(-3, 3, size=(b, longest)).round(1) * mask).astype(np.float32)
    labels[0, 1] = 0.0
    return {"mask": mask, "labels": labels, **{f"x_{m}": x for m, x in feats.items()}}


def published_batch(inputs: dict[str, np.ndarray]) -> list:
    """One batch as the published CMU-MOSI loader yields it: features ``[seqlen, batch, dim]``, then masks."""
    seq_first = [torch.from_numpy(inputs[f"x_{m}"]).transpose(0, 1).contiguous() for m in "atv"]
    guests = [torch.zeros_like(x) for x in seq_first]
    mask = torch.from_numpy(inputs["mask"].astype(np.float32))
    return [*seq_first, *guests, torch.zeros_like(mask), mask, torch.from_numpy(inputs["labels"]), [f"v{i}" for i in range(mask.shape[0])]]


class Recorder:
    """Captures what one published training step computes: forward inputs and outputs, prompts, router
    logits, each call of the regression loss, each disentangling term, the reverse-loss noise, the total loss
    and the gradients (through an optimizer whose ``step`` only records them)."""

    def __init__(self, train_mr: types.ModuleType, model: torch.nn.Module) -> None:
        self.train_mr, self.model = train_mr, model
        self.reset()
        recorder = self

        class RecordingMSE(train_mr.MaskedMSELoss):
            def forward(self, pred, target, umask):
                value = super().forward(pred, target, umask)
                recorder.reg_calls.append(value.detach().clone())
                return value

        class RecordingDisentangled(train_mr.DisentangledLoss):
            def foward_2(self, *args):
                value = super().foward_2(*args)
                recorder.disentangle.append(value.detach().clone())
                return value

        class RecordingOptimizer:
            def zero_grad(self) -> None:
                model.zero_grad(set_to_none=True)

            def step(self) -> None:
                recorder.grads = {k: None if p.grad is None else p.grad.detach().clone() for k, p in model.named_parameters()}

        self.reg_loss, self.optimizer = RecordingMSE(), RecordingOptimizer()
        train_mr.DisentangledLoss = RecordingDisentangled
        model.register_forward_hook(self._model_hook)
        for m in "atv":
            getattr(model, f"prop_former_{m}_1").register_forward_hook(lambda mod, args, out, m=m: self.prompts.__setitem__(f"prompt1_{m}", out[0].detach().clone()))
            getattr(model, f"prop_former_{m}_2").register_forward_hook(lambda mod, args, out, m=m: self.prompts.__setitem__(f"prompt2_{m}", out.detach().clone()))
        model.router.register_forward_hook(lambda mod, args, out: self.prompts.__setitem__("coordinator", torch.softmax(out.detach(), dim=-1)))

    def reset(self) -> None:
        self.reg_calls, self.disentangle, self.totals, self.noise, self.prompts, self.forward, self.grads = [], [], [], [], {}, None, None

    def _model_hook(self, module, args, output) -> None:
        self.forward = ([a.detach().clone() if torch.is_tensor(a) else a for a in args], [o.detach().clone() if torch.is_tensor(o) else o for o in output])

    def step(self, batch: list, first_stage: bool, draw_seed: int) -> None:
        """One published training step on ``batch``; masks drawn after seeding numpy from ``draw_seed``."""
        self.reset()
        original_backward, original_randn_like = torch.Tensor.backward, torch.randn_like

        def backward(tensor, *a, **k):
            self.totals.append(tensor.detach().clone())
            return original_backward(tensor, *a, **k)

        def randn_like(tensor, *a, **k):
            out = original_randn_like(tensor, *a, **k)
            self.noise.append(out.clone())
            return out

        torch.manual_seed(draw_seed)
        # imer's published-exact draws its masks the same way: one torch draw seeds numpy's legacy generator
        np.random.seed(int(torch.randint(2**31 - 1, (1,))))
        torch.Tensor.backward, torch.randn_like = backward, randn_like
        try:
            self.train_mr.train_or_eval_model(self.args, self.model, self.reg_loss, None, [batch], total_sqlen=SIZES["seq_len"], optimizer=self.optimizer,
                                              train=True, first_stage=first_stage, mark="train", mask_rate=MASK_RATE)
        finally:
            torch.Tensor.backward, torch.randn_like = original_backward, original_randn_like


def terms_of(rec: Recorder, first_stage: bool) -> dict[str, float]:
    """The published loss split into imer's term names; checked against the total the published code backpropagated."""
    _, out = rec.forward
    dis = float(sum(rec.disentangle))
    if first_stage:
        uni, rev = rec.reg_calls[0::2], rec.reg_calls[1::2]  # calls: a, a-private, t, t-private, v, v-private
        terms = {"unimodal": float(sum(uni)), "reverse": float(sum(rev)), "disentangle": dis}
    else:
        uni, task = rec.reg_calls[:3], rec.reg_calls[3]  # calls: a, t, v, fused
        recon = float(F.mse_loss(out[7], out[6]))  # proj_atv_rec vs proj_atv, every entry
        terms = {"task": float(task), "unimodal": 2.0 * float(sum(uni)), "recon": recon, "disentangle": dis}
    total = float(rec.totals[-1])
    assert abs(sum(terms.values()) - total) <= 1e-6 * max(1.0, abs(total)), (terms, total)
    return {**terms, "total": total}


def outputs_of(rec: Recorder, first_stage: bool) -> dict[str, np.ndarray]:
    """Forward outputs ``[B, S, ...]`` in imer's names (``shared`` is ``[B, S, 3, H]``)."""
    _, out = rec.forward
    h = SIZES["hidden"]
    found = {"fused": out[1][..., 0], "head_audio": out[2][..., 0], "head_text": out[3][..., 0], "head_video": out[4][..., 0],
             "shared": out[8].unflatten(-1, (3, h))}
    if first_stage:
        found["private_pred"] = out[10]
    else:
        found["coordinator"] = rec.prompts["coordinator"]
        for m, name in zip("atv", ("audio", "text", "video")):
            found[f"prompt1_{name}"] = rec.prompts[f"prompt1_{m}"]
            found[f"prompt2_{name}"] = rec.prompts[f"prompt2_{m}"]
    return {k: v.double().numpy() for k, v in found.items()}


def gradient_summary(grads: dict[str, torch.Tensor | None]) -> dict[str, np.ndarray]:
    """Per tensor: its norm, :data:`PROJECTIONS` signed projections and a flag (0: no gradient, the published ``None``)."""
    found = {}
    for name, g in grads.items():
        if g is None:
            found[name] = np.zeros(PROJECTIONS + 2)
            continue
        flat = g.double().reshape(-1).numpy()
        found[name] = np.concatenate([[np.linalg.norm(flat)], projection_vectors(name, flat.size) @ flat, [1.0]])
    return found


def draw_is_interesting(avail: np.ndarray, mask: np.ndarray) -> bool:
    """Utterances with one, two and three modalities, and a dialogue missing one modality throughout."""
    counts = avail[mask].sum(-1)
    whole_absent = any((~avail[i, mask[i], j]).all() for i in range(mask.shape[0]) for j in range(3))
    return {1, 2, 3} <= set(counts.tolist()) and whole_absent


def choose_draw_seed(train_mr: types.ModuleType, mask: np.ndarray) -> int:
    """The first seed whose published mask draw (as :meth:`Recorder.step` makes it) is interesting."""
    b, s = mask.shape[0], SIZES["seq_len"]
    padded = np.zeros((b, s), dtype=bool)
    padded[:, : mask.shape[1]] = mask
    for seed in DRAW_SEEDS:
        torch.manual_seed(seed)
        np.random.seed(int(torch.randint(2**31 - 1, (1,))))
        matrix = train_mr.random_mask(3, s * b, MASK_RATE)  # the published draw, row b * S + s
        avail = matrix.reshape(b, s, 3).astype(bool) & padded[..., None]
        if draw_is_interesting(avail, padded):
            return seed
    raise RuntimeError("no interesting mask draw among the seeds tried")


def mask_samples(train_mr: types.ModuleType) -> dict[str, np.ndarray]:
    """The published ``random_mask`` at several rates and sizes, seeded through numpy's legacy generator."""
    found = {}
    for rate in (0.0, 0.1, 0.4, 0.5, 0.7):
        for n in (24, 40, 130):
            np.random.seed(1000 + n)
            found[f"mask_draw/{rate}/{n}"] = np.asarray(train_mr.random_mask(3, n, rate)).astype(np.int8)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", type=Path, required=True, help="checkout of WenjueHE/2026-AAAI-ComP (repository root)")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/comp_transplant.npz"))
    args = parser.parse_args()
    train_mr = load_published(args.published.resolve())
    commit = subprocess.run(["git", "-C", str(args.published), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown (not a git checkout)"

    model_args = argparse.Namespace(hidden=SIZES["hidden"], depth=SIZES["depth"], num_heads=SIZES["heads"], drop_rate=0.0, attn_drop_rate=0.0, n_classes=1,
                                    seq_len=SIZES["seq_len"], lbd=0.3, no_cuda=True, device=torch.device("cpu"), dataset="CMUMOSI")
    torch.manual_seed(WEIGHT_SEED)
    model = train_mr.build_model(model_args, *SIZES["dims"])
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    inputs = make_inputs()
    batch = published_batch(inputs)
    draw_seed = choose_draw_seed(train_mr, inputs["mask"])

    used = [k for k in weights if not UNUSED.match(k)]
    store: dict[str, np.ndarray] = {"weights": np.concatenate([weights[k].reshape(-1).numpy() for k in used])}
    store.update(inputs)
    store.update(mask_samples(train_mr))
    meta: dict = {"weights": [[k, list(weights[k].shape)] for k in used], "sizes": SIZES, "mask_rate": MASK_RATE, "draw_seed": draw_seed, "weight_seed": WEIGHT_SEED, "published_commit": commit,
                  "torch": torch.__version__, "projections": PROJECTIONS, "float32_vs_float64": {}}
    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        model.load_state_dict(weights)
        model.to(dtype)
        step_batch = [x.to(dtype) if i < 6 else x for i, x in enumerate(batch)]
        rec = Recorder(train_mr, model)
        rec.args = model_args
        for stage, first in (("stage1", True), ("stage2", False)):
            rec.step(step_batch, first, draw_seed)
            fwd_args, _ = rec.forward
            avail = fwd_args[2].permute(1, 0, 2).bool().numpy() & fwd_args[3].bool().numpy()[..., None]
            store[f"{stage}/available"] = avail
            if first:
                store[f"{stage}/reverse_noise/{tag}"] = rec.noise[0].numpy()
            meta.setdefault("terms", {}).setdefault(tag, {})[stage] = terms_of(rec, first)
            outs = outputs_of(rec, first)
            if tag == "f64":
                store.update({f"{stage}/out/{k}": v for k, v in outs.items()})
            else:
                meta["float32_vs_float64"][stage] = {k: float(np.abs(v - store[f"{stage}/out/{k}"]).max()) for k, v in outs.items()}
            summary = gradient_summary(rec.grads)
            store[f"{stage}/grad/{tag}"] = np.stack([summary[k] for k in used])
    store["meta"] = np.array(json.dumps(meta, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **store)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB, draw seed {draw_seed}")
    print(json.dumps(meta["terms"], indent=1))
    print(json.dumps(meta["float32_vs_float64"], indent=1))


if __name__ == "__main__":
    main()
