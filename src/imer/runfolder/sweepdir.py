"""The sweep directory's own files: ``sweep.json`` (the grid and each cell's state), ``search.json`` (frozen
search choices) and ``failures.jsonl`` (one line per failed attempt); each cell is a run folder below it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    """``sweep.json`` of ``out``; None for a folder that holds no sweep."""
    return read_json(out / MANIFEST) if (out / MANIFEST).is_file() else None


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
    return read_json(out / SEARCH) if has_search(out) else {"datasets": {}}


def write_search(out: Path, choices: dict[str, Any]) -> None:
    """Write ``search.json`` (atomically)."""
    write_json(out / SEARCH, choices)
