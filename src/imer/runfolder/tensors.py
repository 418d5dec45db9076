"""Checkpoints that load safely: plain tensors and containers, read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file as save_safetensors

from imer.errors import DataError
from imer.io import atomic_path, atomic_write

# A safetensors header holds names, dtypes, shapes and offsets: a few kB even for large models.
_MAX_HEADER_BYTES = 16 * 1024 * 1024


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a training checkpoint (model, optimizer, RNG, best-so-far)."""
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code can run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise DataError(
            f"{path}: damaged or not an imer checkpoint ({type(exc).__name__}); "
            "train again with --overwrite (or into a new --out)"
        ) from None


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
