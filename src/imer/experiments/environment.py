"""What a run records about where it ran: code version, machine, memory, feature origin."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imer.config import RunConfig
from imer.data import MultimodalDataset
from imer.features.manifest import builtin_manifest
from imer.version import __version__


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the imer source tree (``+dirty`` with uncommitted changes); None outside a checkout.

    Read once per process, at its first run: Python keeps the code it imported, so a long sweep whose
    checkout moves on (``--workers 1`` runs every cell in one process) still records the code it ran.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far, in MB (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024)


def environment_info() -> dict[str, Any]:
    """Versions and machine, written next to every result."""
    return {
        "imer": __version__,
        "commit": source_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "openmp": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS") if k in os.environ},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def feature_manifest(config: RunConfig, dataset: MultimodalDataset) -> dict[str, Any] | None:
    """The dataset's feature manifest: carried by the data (``imer features build``) or known for a built-in dataset."""
    return dataset.manifest if dataset.manifest is not None else builtin_manifest(config.data.name)
