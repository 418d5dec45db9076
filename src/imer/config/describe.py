"""The run options as a table, read from their declarations: ``imer list --options`` and docs/options.md."""

from __future__ import annotations

import dataclasses
from typing import Any

from imer.config.schema import RunConfig, run_fields


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _allowed(meta: dict[str, Any]) -> str:
    if meta.get("range") is not None:
        return meta["range"].text()
    if meta.get("choices"):
        return ", ".join(meta["choices"])
    if meta.get("pattern"):
        return meta["pattern"][1]
    return ""


def option_rows() -> list[list[str]]:
    """One row per run option: ``--set`` key, type, default, allowed values, help (``method`` is chosen with ``--method``)."""
    rows = []
    for name, f in run_fields().items():
        if name == "method":
            continue
        notes = [f.metadata["help"]] + (["not in the config hash"] if f.metadata.get("run_local") else [])
        rows.append([name, str(f.type), _text(_default(f)), _allowed(f.metadata), "; ".join(notes)])
    model = next(f for f in dataclasses.fields(RunConfig) if f.name == "model")
    rows.append(["model.NAME", "per method", "the method's config dataclass", "", model.metadata["help"]])
    return rows


def options_markdown() -> str:
    """docs/options.md: every run option, generated from :mod:`imer.config.schema` (tests/test_docs.py keeps it current)."""
    lines = ["# Run options", "",
             "Generated from `src/imer/config/schema.py` (`imer list --options` prints the same table); a test keeps it current.",
             "Set any of them with `--set KEY=VALUE` or in a config file's `[data]`, `[missing]`, `[train]` section.", "",
             "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in option_rows()]
    return "\n".join(lines) + "\n"
