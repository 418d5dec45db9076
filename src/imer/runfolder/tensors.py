"""Checkpoints that load safely: plain tensors and containers, read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file as save_safetensors

from imer.errors import DataError
from imer.io import atomic_path, atomic_write, loads

# A safetensors header holds names, dtypes, shapes and offsets: a few kB even for large models.
_MAX_HEADER_BYTES = 16 * 1024 * 1024


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a training checkpoint (model, optimizer, RNG, best-so-far)."""
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code can run), its fields checked (:func:`check_checkpoint`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise DataError(
            f"{path}: damaged or not an imer checkpoint ({type(exc).__name__}); "
            "train again with --overwrite (or into a new --out)"
        ) from None
    problem = check_checkpoint(state)
    if problem:
        raise DataError(f"{path}: damaged or not an imer checkpoint ({problem}); train again with --overwrite (or into a new --out)")
    return state


def _tensors(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def check_checkpoint(state: Any) -> str | None:
    """What is wrong with a resume state's fields (types, ranges, the history's length), or None."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a table of fields"
    epoch, best = state.get("epoch"), state.get("best_epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"epoch is {epoch!r}, not a whole number >= 0"
    if not isinstance(best, int) or isinstance(best, bool) or not -1 <= best <= epoch:
        return f"best_epoch is {best!r}, not a whole number in [-1, {epoch}]"
    if not _tensors(state.get("model")) or not (state.get("best_state") is None or _tensors(state.get("best_state"))):
        return "model or best_state is not a table of tensors"
    if not isinstance(state.get("optimizer"), dict):
        return "optimizer is not a table"
    rng = state.get("torch_rng")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        return "torch_rng is not a byte tensor"
    score = state.get("best_score")
    if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool)):
        return f"best_score is {type(score).__name__}, not a number"
    for key in ("best_valid", "best_test", "history"):
        if not isinstance(state.get(key), str):
            return f"{key} is not JSON text"
    try:
        history = loads(state["history"])
    except (ValueError, RecursionError):
        return "history is not valid JSON"
    if not isinstance(history, list) or len(history) != epoch + 1 or not all(isinstance(h, dict) and h.get("epoch") == i for i, h in enumerate(history)):
        return f"history does not hold epochs 0..{epoch} in order"
    return None


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Best weights as safetensors (a format that holds only tensors).

    Written straight from the tensors' memory (``save_file``), not through an
    in-memory copy of the whole file: that copy was the peak of a ComP run's memory.
    """
    with atomic_path(path) as tmp:
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; :class:`DataError` for a missing, damaged or crafted file.

    The header length is checked against the file size before anything is
    parsed, so a crafted header cannot make imer allocate huge buffers.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    size = path.stat().st_size
    with path.open("rb") as fh:
        prefix = fh.read(8)
        header = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header < 2 or header > min(_MAX_HEADER_BYTES, size - 8):
            raise DataError(f"{path}: not a valid safetensors weights file (bad header); the run folder is damaged, train again")
        fh.seek(0)
        data = fh.read()
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise DataError(f"{path}: not a valid safetensors weights file ({exc}); the run folder is damaged, train again") from None
