"""What the commands share: tables on the terminal, the argument parser with one-line errors, help texts."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from imer.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

THREADS_HELP = "torch CPU threads (default: the cores this process may use; more than that is slower and warns)"
DEVICE_HELP = "where the model runs: cpu (default), cuda, cuda:N, mps, or auto (a GPU when one is visible)"


def console() -> Console:
    """A rich console (imported on use, so `imer --help` stays fast)."""
    from rich.console import Console

    return Console()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a table: numeric columns right-aligned, floats with 4 decimals."""
    from rich.markup import escape
    from rich.table import Table

    print(title)  # above the table, not as its title: rich would wrap a title to the table's width
    grid = Table()
    for j, c in enumerate(columns):
        numeric = all(isinstance(r[j], (int, float)) and not isinstance(r[j], bool) for r in rows)
        grid.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        grid.add_row(*[f"{v:.4f}" if isinstance(v, float) else escape(str(v)) for v in r])
    console().print(grid)


def metric_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """Scalar metrics (and each modality head's accuracy) as table rows."""
    rows = []
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            rows.append([k, float(v)])
        elif k == "modality_acc":
            rows += [[f"modality_acc[{m}]", float(a)] for m, a in v.items()]
    return rows


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``imer: error: <command>: <problem> ...``) raised, not printed."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("imer").strip() or "command line"
        raise UsageError(f"{where}: {message} (see `{self.prog} --help`)")
