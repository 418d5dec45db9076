"""The published code's own computations, for ComP's ``published-exact`` preset (issue 26).

Each function here reproduces one behaviour of the published ComP code (``WenjueHE/2026-AAAI-ComP``, commit
28192d3) that imer's defaults and the ``published`` preset replace by a fix; :class:`imer.models.comp.CompConfig`
selects them one switch at a time (``EXACT_CHOICES`` in ``comp.py``). They exist so that a transplant test
(``tests/test_comp_transplant.py``) and a side-by-side run can show imer computes what the published code
computes, defects included; none of them is fit for anything but that reproduction
(``docs/methods/comp.md``, "published-exact").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from imer.layers.plain_transformer import PlainTransformer


class PublishedMLP(nn.Sequential):
    """``Linear -> GELU -> Dropout -> Linear -> Dropout``: the published two-layer MLP.

    Its parameters have the names of :class:`imer.layers.MLP`'s (``0.*`` and ``3.*``), so
    ``mlp_style`` changes no state-dict key.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim), nn.Dropout(dropout))


def every_position(blocks: PlainTransformer, x: Tensor, keys: Tensor) -> Tensor:
    """``blocks`` computed at every position of ``x`` ``[B, L, H]``, as the published code does.

    Keys are visible only where ``keys`` (``[B, L]`` bool) holds, but every position is a query: positions
    where the modality is absent, and padding, get the attention over the present ones. A row with no
    visible key (a modality absent from a whole dialogue) gets attention weights 0 (the published code turns
    the NaN of its softmax into 0). Attention logits and softmax are computed in float32 whatever the
    dtype of ``x`` (the published ``q.float() @ k.float()``); nothing is zeroed anywhere.
    """
    for layer in blocks.layers:
        q, k, v = layer.qkv(x).unflatten(-1, (3, layer.heads, -1)).permute(2, 0, 3, 1, 4)  # each [B, heads, L, H/heads]
        logits = (q * q.shape[-1] ** -0.5).float() @ k.float().transpose(-2, -1)
        logits = logits.masked_fill(~keys[:, None, None, :], float("-inf"))
        weights = torch.nan_to_num(torch.softmax(logits, dim=-1).to(x.dtype), nan=0.0)
        a = (weights @ v).transpose(1, 2).flatten(-2)
        x = x + (a + layer.ff(a))
    return x


def batch_prototypes(mlp: nn.Module, code: Tensor) -> Tensor:
    """The published prototypes: an MLP over the sequence axis of ``code`` ``[B, S, H]`` -> ``[B * K, H]``.

    ``S`` must be the MLP's input width (the published fixed sequence length). Every utterance of the batch
    attends to all ``B * K`` rows, so a prompt depends on which dialogues share the batch.
    """
    return mlp(code.transpose(1, 2)).transpose(1, 2).reshape(-1, code.shape[-1])


def published_missing(rs: np.random.RandomState, views: int, count: int, rate: float) -> np.ndarray:
    """The published training/test mask draw: ``[count, views]`` of 0/1, at least one 1 per row.

    Keep probability ``1 - rate``. At or below ``1 / views`` every row keeps exactly one view; at 1 all
    views; otherwise one view per row plus independent extra views at a rate corrected for their overlap,
    redrawn until the realised keep fraction over ``max(count, 32)`` rows is within 0.005 of the target.
    Draws from ``rs`` in the published order, so a ``RandomState`` seeded like numpy's global generator
    gives the published masks.
    """
    keep = 1 - rate
    if keep <= 1 / views:
        return np.eye(views)[rs.randint(0, views, size=(count, 1))[:, 0]]
    if keep == 1:
        return rs.randint(1, 2, size=(count, views))
    rows = max(count, 32)
    while True:
        one_each = np.eye(views)[rs.randint(0, views, size=(rows, 1))[:, 0]]
        extra = views * rows * keep - rows
        extra_rate = extra / (views * rows)
        draws = (rs.randint(0, 100, size=(rows, views)) < int(extra_rate * 100)).astype(np.int32)
        overlap = np.sum(((draws + one_each) > 1).astype(np.int32))
        extra_rate = extra / (1 - overlap / extra) / (views * rows)
        draws = (rs.randint(0, 100, size=(rows, views)) < int(extra_rate * 100)).astype(np.int32)
        matrix = ((draws + one_each) > 0).astype(np.int32)
        if abs(keep - np.sum(matrix) / (views * rows)) < 0.005:
            return matrix[:count]


def draw_availability(batch: int, length: int, views: int, rate: float, device: torch.device) -> Tensor:
    """A fresh published mask draw for a ``[batch, length]`` grid -> ``[batch, length, views]`` bool.

    Seeded by one draw from torch's generator, so runs are reproducible from the run's seed and resume
    exactly (the trainer's checkpoint holds torch's generator state). Row ``b * length + s`` of the draw
    is position ``(b, s)``, as in the published code.
    """
    rs = np.random.RandomState(int(torch.randint(2**31 - 1, (1,))))
    matrix = published_missing(rs, views, batch * length, rate)
    return torch.as_tensor(np.asarray(matrix).reshape(batch, length, views) > 0, device=device)


def published_js(a: Tensor, b: Tensor) -> Tensor:
    """The published "JS divergence" of ``sigmoid(a)`` and ``sigmoid(b)``, per element.

    ``0.5 * (p log(p / m) + q log(q / m))`` with ``m = (p + q) / 2``: the KL terms of the "1" outcome only
    (a Bernoulli JS also has the ``1 - p`` terms, :func:`imer.models.comp.bernoulli_js`). Logs from
    log-sigmoids, so it is finite where the published ``log(sigmoid(x))`` is and equal to it there.
    """
    log_p, log_q = torch.nn.functional.logsigmoid(a), torch.nn.functional.logsigmoid(b)
    log_m = torch.logaddexp(log_p, log_q) - float(np.log(2.0))
    return 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m))
