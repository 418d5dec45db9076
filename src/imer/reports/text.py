"""How report tables write numbers: ×100 fractions, raw MAE/Corr, rates, best marks, LaTeX and CSV text."""

from __future__ import annotations

import csv
import io
from typing import Any

from imer.evaluation.metrics import headline_metrics, metric_label, shown_raw


STD_NOTE = "mean ± population std (ddof=0) over seeds, ×100"


def metric_pair(task: str) -> str:
    """The headline pair's labels, e.g. ``ACC/F1``."""
    return "/".join(metric_label(k) for k in headline_metrics(task))


def rate_text(rate: float) -> str:
    """A missing rate as tables show it (``0.4``)."""
    return f"{rate:g}"


def fmt_cell(mean: float, std: float, best: bool, style: str) -> str:
    """``mean ± std`` in ``md``, ``latex`` or ``plain`` style, the best marked."""
    if style == "latex":
        core = f"{mean:.2f}"
        return (rf"\textbf{{{core}}}" if best else core) + rf"$\pm${std:.2f}"
    text = f"{mean:.2f} ± {std:.2f}"
    if style == "md":
        return f"**{text}**" if best else text
    return text + ("*" if best else "")


def tex_escape(text: str) -> str:
    """``text`` safe in LaTeX."""
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text (header from the first row)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def metric_text(k: str, mean: float, std: float) -> str:
    """``mean ± std`` of metric ``k``: ×100 with 2 decimals, or raw with 3."""
    if shown_raw(k):
        return f"{mean:.3f} ± {std:.3f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def value_text(k: str, value: float) -> str:
    """One value of metric ``k``: ×100 with 2 decimals, or raw with 3."""
    return f"{value:.3f}" if shown_raw(k) else f"{100 * value:.2f}"


def delta_text(k: str, delta: float) -> str:
    """A signed difference of metric ``k``: ×100 with 2 decimals, or raw with 3."""
    return f"{delta:+.3f}" if shown_raw(k) else f"{100 * delta:+.2f}"


def p_text(p: float | None) -> str:
    """A p-value (``< 0.001``, ``–`` when undefined)."""
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
