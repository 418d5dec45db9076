"""What identifies a run's settings: the dataset's identity and the config hash."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from imer.config.schema import RUN_LOCAL
from imer.errors import ConfigError

# Config fields that never change a run's numbers (or identify the cell rather than the setting).
HASH_FREE = {tuple(key.split(".")) for key in RUN_LOCAL}


def dataset_label(name: str) -> str:
    """The dataset's identity in run folders and reports.

    A registered dataset is its name. A file is ``<stem>-<first 8 hex digits of
    the SHA-256 of its content>``: readable, stable when the file moves, and
    different for two files with the same stem (``a/data.npz``, ``b/data.npz``).
    """
    if not (name.endswith(".npz") or "/" in name or "\\" in name):
        return name
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}: dataset file not found")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stem}-{digest.hexdigest()[:8]}"


def config_hash(config: dict[str, Any], dataset_id: str | None = None) -> str:
    """12 hex digits identifying a resolved run config, ignoring the seed, fold and run-local settings.

    Runs of one table cell must share it; ``dataset_id`` replaces a file path
    in ``data.name`` so a moved file keeps its hash.
    """
    values = copy.deepcopy(config)
    for path in HASH_FREE:
        holder = values
        for key in path[:-1]:
            holder = holder.get(key, {})
        if isinstance(holder, dict):
            holder.pop(path[-1], None)
    if dataset_id is not None and isinstance(values.get("data"), dict):
        values["data"]["name"] = dataset_id
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
