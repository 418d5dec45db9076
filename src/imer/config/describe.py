"""Run and method options as tables, read from their declarations: ``imer list --options [METHOD]`` and docs/options.md."""

from __future__ import annotations

import dataclasses
from typing import Any

from imer.config.schema import RunConfig, run_fields
from imer.models import get_model_class, list_models


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


def _allowed(meta: dict[str, Any], listed: bool = False) -> str:
    if meta.get("stage"):
        return f"{meta['range'].text()}, or a fraction of train.epochs in (0, 1)"
    if meta.get("range") is not None:
        return ("each " if listed else "") + meta["range"].text()
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
    rows.append(["model.NAME", "per method", "per method", "", model.metadata["help"]])
    return rows


def method_option_rows(method: str) -> list[list[str]]:
    """One row per option of ``method`` (its config dataclass): ``--set`` key, type, default, allowed values, help."""
    rows = []
    for f in dataclasses.fields(get_model_class(method).config_class):
        notes = [f.metadata["help"]] + (["a stage length"] if f.metadata.get("stage") else [])
        rows.append([f"model.{f.name}", str(f.type), _text(_default(f)), _allowed(f.metadata, str(f.type).startswith("list")),
                     "; ".join(notes)])
    return rows


def _markdown_table(rows: list[list[str]]) -> list[str]:
    return ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"] + [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def options_markdown() -> str:
    """docs/options.md: every run option and every method's options, generated from their declarations
    (:mod:`imer.config.schema`, the methods' config dataclasses; tests/test_docs.py keeps it current)."""
    lines = ["# Options", "", "## Run options", "",
             "Generated from `src/imer/config/schema.py` (`imer list --options` prints the same table); a test keeps it current.",
             "Set any of them with `--set KEY=VALUE` or in a config file's `[data]`, `[missing]`, `[train]` section.",
             "A `--set` value is read as TOML (`3`, `1e-4`, `true`, `[1, 2]`, `\"text\"`) or else as plain text; `none` / `null`",
             "unsets an option whose type allows none and is the word itself for a plain `str` option (`--set prompt_mask=none`).", "",
             *_markdown_table(option_rows()), "",
             "## Method options", "",
             "Generated from each method's config dataclass in `src/imer/models/` (`imer list --options METHOD` prints one table).",
             "Set them with `--set model.NAME=VALUE` (or `--set NAME=VALUE`) or in a config file's `[model]` section. A stage length",
             "is whole epochs, or a fraction of `train.epochs` (`0.5` = half the budget) resolved when the run config is built."]
    for method in list_models():
        lines += ["", f"### {method}", "", *_markdown_table(method_option_rows(method))]
    return "\n".join(lines) + "\n"
