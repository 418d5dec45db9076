"""Checkpoints that load safely: plain tensors and containers, read with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from imer.errors import IMERError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a training checkpoint (model, optimizer, RNG, best-so-far)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code can run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise IMERError(f"{path}: cannot load checkpoint safely ({type(exc).__name__}: {exc})") from None


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Best weights as safetensors (a format that holds only tensors)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise IMERError(f"{path}: weights file not found")
    return load_file(str(path))
