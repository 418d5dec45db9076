"""How report tables write numbers: ×100 fractions, raw MAE/Corr, rates, best marks, LaTeX and CSV text."""

from __future__ import annotations

import csv
import io
from typing import Any

from imer.evaluation.metrics import headline_metrics, metric_label, shown_raw


STD_NOTE = "mean ± population std (ddof=0) over seeds, ×100"


def metric_pair(task: str) -> str:
    return "/".join(metric_label(k) for k in headline_metrics(task))


def rate_text(rate: float) -> str:
    return f"{rate:g}"


def fmt_cell(mean: float, std: float, best: bool, style: str) -> str:
    if style == "latex":
        core = f"{mean:.2f}"
        return (rf"\textbf{{{core}}}" if best else core) + rf"$\pm${std:.2f}"
    text = f"{mean:.2f} ± {std:.2f}"
    if style == "md":
        return f"**{text}**" if best else text
    return text + ("*" if best else "")


def tex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def metric_text(k: str, mean: float, std: float) -> str:
    if shown_raw(k):
        return f"{mean:.3f} ± {std:.3f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def value_text(k: str, value: float) -> str:
    return f"{value:.3f}" if shown_raw(k) else f"{100 * value:.2f}"


def delta_text(k: str, delta: float) -> str:
    return f"{delta:+.3f}" if shown_raw(k) else f"{100 * delta:+.2f}"


def p_text(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
