"""The sweep directory's own files: ``sweep.json`` (the grid and each cell's state), ``search.json`` (frozen
search choices) and ``failures.jsonl`` (one line per failed attempt); each cell is a run folder below it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imer.errors import DataError
from imer.io import append_jsonl, read_json, write_json

MANIFEST = "sweep.json"
SEARCH = "search.json"
FAILURES = "failures.jsonl"
# The sweep directory's own files (its cells are run folders under runs/ and search/).
OWN_FILES = (MANIFEST, SEARCH, FAILURES, ".imer.lock", "runs", "search", "report")


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``sweep.json`` (atomically)."""
    write_json(out / MANIFEST, manifest)


def read_manifest(out: Path) -> dict[str, Any] | None:
    """``sweep.json`` of ``out``, its structure checked; None for a folder that holds no sweep."""
    if not (out / MANIFEST).is_file():
        return None
    manifest = read_json(out / MANIFEST, "sweep manifest")
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"{out / MANIFEST}: not a sweep manifest written by imer ({problem}); the sweep directory is damaged, "
                        "use another --out")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict):
        return "not a JSON object"
    spec, cells = manifest.get("spec"), manifest.get("cells", [])
    if not isinstance(spec, dict):
        return "'spec' is not an object"
    if not isinstance(cells, list) or not all(isinstance(c, dict) and isinstance(c.get("path", ""), str) for c in cells):
        return "'cells' is not a list of cells"
    if not isinstance(spec.get("overrides", []), list) or not all(isinstance(o, str) for o in spec.get("overrides", [])):
        return "'spec.overrides' is not a list of key=value strings"
    if not isinstance(spec.get("variants", []), list) or not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in spec.get("variants", [])):
        return "'spec.variants' is not a list of variants"
    epochs = spec.get("epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool)):
        return f"'spec.epochs' is {epochs!r}"
    if not isinstance(spec.get("experiment") or {}, dict):
        return "'spec.experiment' is not an object"
    return None


def failed_cells(out: Path) -> list[str]:
    """Run paths of the cells that failed in the last sweep of ``out``."""
    manifest = read_manifest(out) or {}
    return [c["path"] for c in manifest.get("cells", []) if c.get("status") == "failed"]


def append_failure(out: Path, record: dict[str, Any]) -> None:
    """Append a failed attempt to ``failures.jsonl``."""
    append_jsonl(out / FAILURES, record)


def has_search(out: Path) -> bool:
    """Whether ``out`` holds frozen search choices."""
    return (out / SEARCH).is_file()


def read_search(out: Path) -> dict[str, Any]:
    """``search.json`` of ``out``: ``{"datasets": {dataset: {variant: choice}}, ...}``; no choice when absent."""
    if not has_search(out):
        return {"datasets": {}}
    choices = read_json(out / SEARCH, "search choices")
    datasets = choices.get("datasets") if isinstance(choices, dict) else None
    if not isinstance(datasets, dict) or not all(
            isinstance(entries, dict) and all(isinstance(e, dict) and isinstance(e.get("overrides"), list) for e in entries.values())
            for entries in datasets.values()):
        raise DataError(f"{out / SEARCH}: not the search choices imer froze (datasets -> variant -> overrides); "
                        "the sweep directory is damaged, use another --out")
    return choices


def write_search(out: Path, choices: dict[str, Any]) -> None:
    """Write ``search.json`` (atomically)."""
    write_json(out / SEARCH, choices)
