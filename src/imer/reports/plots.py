"""PNG plots of a sweep report (matplotlib, ``Agg`` backend, no display needed).

* ``metric_vs_rate.png`` — each headline metric against the realised missing
  fraction of the test masks (0.667, not the 0.7 asked for, with 3 modalities),
  one line per variant with a ± std band over seeds, one column per dataset;
  with a single rate, one bar per variant instead.
* ``modality_balance.png`` — per-modality accuracy of the unimodal heads
  (``modality_acc``) per variant, grouped by missing rate: the "balance" view.
* ``modality_over_epochs.png`` — per-modality validation accuracy over epochs from
  ``history.jsonl``, for methods that report ``modality_acc`` (ComP-style).
* ``modality_conditions.png`` — the balance view for every method (ComP's Figure 1):
  test accuracy with one modality only (fixed conditions ``{a}``, ``{t}``, ...) and
  with all of them, per variant, and, as markers, the variant's own unimodal head
  where it has one; from runs evaluated with ``conditions = true``.

Colours are fixed per variant and per modality across all figures. A dataset
registered with a caveat (``cmu-mosi``: features trained on its own videos) gets
it printed under every figure that shows it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from imer.data.registry import dataset_caveat
from imer.io import atomic_write
from imer.reports.aggregate import Aggregate
from imer.evaluation.metrics import metric_label
from imer.reports.runs import RunRecord, history_modality_acc

LINESTYLES = ("-", "--", ":", "-.")
PANELS_PER_ROW = 6  # wide reports (20+ variants) wrap instead of becoming one unreadable strip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _colours(names: list[str]) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _caveats(fig, datasets: list[str]) -> float:
    """Print the registered caveat of each dataset under the figure; the height (figure fraction) it takes."""
    import textwrap

    lines = [line for d in datasets if dataset_caveat(d)
             for line in textwrap.wrap(f"{d}: {dataset_caveat(d)}", width=int(14 * fig.get_figwidth()))]
    if lines:
        fig.text(0.01, 0.005, "\n".join(lines), fontsize=8, color="darkred", va="bottom", ha="left")
    return (0.18 * len(lines) + 0.1) / fig.get_figheight() if lines else 0.0


def _save(plt, fig, path: Path, rect: tuple[float, float, float, float]) -> Path:
    """Lay ``fig`` out inside ``rect`` (room for caveats below and the legend on the right), write it atomically, close it."""
    fig.tight_layout(rect=rect)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, dpi=120, format="png")
    plt.close(fig)
    return path


def _grouped_bars(ax, x: np.ndarray, series: list[tuple[str, list[float], list[float], tuple]], width: float) -> list[np.ndarray]:
    """Bars side by side around each ``x``, one (label, means, stds, colour) series each; returns each series' offsets."""
    offsets = []
    for j, (label, mean, std, colour) in enumerate(series):
        offset = x + (j - (len(series) - 1) / 2) * width
        ax.bar(offset, mean, width, yerr=std, capsize=2, color=colour, label=label)
        offsets.append(offset)
    return offsets


def plot_metric_vs_rate(aggregates: list[Aggregate], path: Path) -> Path:
    """Headline metrics (rows) × datasets (columns) against the realised test missing fraction; bars when there is one rate."""
    plt = _pyplot()
    datasets = list(dict.fromkeys(a.dataset for a in aggregates))
    methods = sorted({a.variant for a in aggregates})
    colour = _colours(methods)
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.8 * len(datasets) + 1.8, 7.0), squeeze=False)
    for col, dataset in enumerate(datasets):
        here = [a for a in aggregates if a.dataset == dataset]
        single = len({a.rate for a in here}) == 1
        for row, k in enumerate(here[0].headline):
            ax = axes[row][col]
            shown = [m for m in methods if any(a.variant == m and k in a.metrics for a in here)]
            for i, method in enumerate(shown):
                points = sorted((a.test_missing_fraction, *a.metrics[k]) for a in here if a.variant == method and k in a.metrics)
                fraction, mean, std = (np.array(v) for v in zip(*points))
                if single:
                    ax.bar(i, 100 * mean[0], 0.7, yerr=100 * std[0], capsize=3, color=colour[method], label=method)
                    continue
                ax.plot(fraction, 100 * mean, marker="o", color=colour[method], label=method, linewidth=2)
                ax.fill_between(fraction, 100 * (mean - std), 100 * (mean + std), color=colour[method], alpha=0.18, linewidth=0)
            ax.set_title(f"{dataset} — {metric_label(k)}")
            ax.set_ylabel(f"test {metric_label(k)} (%)")
            if single:
                ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right")
                ax.set_xlabel(f"missing rate {here[0].rate:g} (realised on test: {here[0].test_missing_fraction:.3f})")
                continue
            realised = sorted({round(a.test_missing_fraction, 3) for a in here})
            ax.set_xticks(realised, [f"{r:.3f}".rstrip("0").rstrip(".") for r in realised])
            if row == 1:
                ax.set_xlabel("missing fraction of the test masks (realised)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", title="variant", frameon=False)
    fig.suptitle("Test metric vs missing rate\n(mean ± std over seeds)")
    return _save(plt, fig, path, rect=(0, _caveats(fig, datasets), 1 - 1.7 / fig.get_figwidth(), 1))


def plot_modality_balance(aggregates: list[Aggregate], path: Path) -> Path | None:
    """Grouped bars of per-modality accuracy: a panel per dataset × method with unimodal heads, at most 6 panels a row."""
    with_heads = [a for a in aggregates if a.modality_acc]
    if not with_heads:
        return None
    plt = _pyplot()
    datasets = list(dict.fromkeys(a.dataset for a in with_heads))
    methods = sorted({a.variant for a in with_heads})
    modalities = list(dict.fromkeys(m for a in with_heads for m in a.modality_acc))
    colour = _colours(modalities)
    cols = min(len(methods), PANELS_PER_ROW)
    per_dataset = -(-len(methods) // cols)
    fig, axes = plt.subplots(len(datasets) * per_dataset, cols, figsize=(4.6 * cols + 1.6, 3.6 * len(datasets) * per_dataset), squeeze=False,
                             sharey=True)
    width = 0.8 / len(modalities)
    for d, dataset in enumerate(datasets):
        for i in range(per_dataset * cols):
            r, c = d * per_dataset + i // cols, i % cols
            ax = axes[r][c]
            if i >= len(methods):
                ax.set_axis_off()
                continue
            method = methods[i]
            here = sorted((a for a in with_heads if a.dataset == dataset and a.variant == method), key=lambda a: a.rate)
            ax.set_title(f"{dataset} — {method}")
            if not here:
                ax.set_axis_off()
                continue
            x = np.arange(len(here))
            accuracy = {mod: [a.modality_acc.get(mod, (np.nan, np.nan)) for a in here] for mod in modalities}
            _grouped_bars(ax, x, [(mod, [100 * v[0] for v in accuracy[mod]], [100 * v[1] for v in accuracy[mod]], colour[mod])
                                  for mod in modalities], width)
            ax.set_xticks(x, [f"{a.rate:g}" for a in here])
            ax.set_xlabel("missing rate")
            if c == 0:
                ax.set_ylabel("unimodal head ACC (%)")
            ax.set_ylim(0, 100)
    handles, labels = next(ax for row in axes for ax in row if ax.get_legend_handles_labels()[0]).get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", title="modality", frameon=False)
    fig.suptitle("Per-modality accuracy of the unimodal heads\n(test, mean ± std over seeds)")
    return _save(plt, fig, path, rect=(0, _caveats(fig, datasets), 1 - 1.5 / fig.get_figwidth(), 1))


def _chosen_rates(rates: list[float]) -> list[float]:
    """At most three rates to draw (lowest, middle, highest) so a panel stays readable."""
    rates = sorted(set(rates))
    return rates if len(rates) <= 3 else [rates[0], rates[len(rates) // 2], rates[-1]]


def plot_modality_over_epochs(runs: list[RunRecord], path: Path) -> Path | None:
    """Per-modality accuracy over epochs (mean over seeds); one panel per dataset × method, line style = rate."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    series: dict[tuple[str, str, float], list[list[dict[str, float]]]] = defaultdict(list)
    for run in runs:
        history = history_modality_acc(run.path)
        if history:
            series[(run.dataset, run.variant, run.rate)].append(history)
    if not series:
        return None
    plt = _pyplot()
    panels = list(dict.fromkeys((d, m) for d, m, _ in sorted(series)))
    modalities = list(dict.fromkeys(mod for histories in series.values() for h in histories for mod in h[0]))
    colour = _colours(modalities)
    style = {rate: LINESTYLES[i % len(LINESTYLES)] for i, rate in enumerate(_chosen_rates([r for _, _, r in series]))}
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols + 1.8, 3.6 * rows + 0.6), squeeze=False, sharey=True)
    for i, (dataset, method) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for rate in [r for r in style if (dataset, method, r) in series]:
            histories = series[(dataset, method, rate)]
            epochs = min(len(h) for h in histories)
            for mod in modalities:
                values = np.array([[h[e].get(mod, np.nan) for e in range(epochs)] for h in histories], dtype=float)
                ax.plot(np.arange(epochs), 100 * np.nanmean(values, axis=0), color=colour[mod], linestyle=style[rate], linewidth=1.8)
        ax.set_title(f"{dataset} — {method}")
        ax.set_xlabel("epoch (from 0, as in history.jsonl)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if i % cols == 0:
            ax.set_ylabel("unimodal head ACC (%)")
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].set_axis_off()
    handles = [Line2D([], [], color=colour[m], linewidth=2.5, label=m) for m in modalities]
    handles += [Line2D([], [], color="black", linestyle=ls, label=f"rate {r:g}") for r, ls in style.items()]
    fig.legend(handles=handles, loc="center right", frameon=False, title="modality / rate")
    fig.suptitle("Per-modality validation accuracy over epochs\n(mean over seeds)")
    bottom = _caveats(fig, list(dict.fromkeys(d for d, _ in panels)))
    return _save(plt, fig, path, rect=(0, bottom, 1 - 1.7 / fig.get_figwidth(), 1))


def single_conditions(labels: list[str]) -> list[str]:
    """The one-modality conditions among fixed-condition labels (``all_conditions`` lists singles first: 2^M - 1 labels)."""
    m = int(round(np.log2(len(labels) + 1)))
    return labels[:m] if 2 ** m - 1 == len(labels) else []


def _head_for(label: str, heads: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    """The unimodal head of the modality a single-modality condition keeps (``a`` -> ``audio``; or its full name)."""
    for name, value in heads.items():
        if name == label or (len(label) == 1 and name[:1] == label):
            return value
    return None


def plot_modality_conditions(aggregates: list[Aggregate], path: Path) -> Path | None:
    """Per-modality balance for every variant: one-modality and full fixed-condition accuracy, head accuracy as markers."""
    rows = [a for a in aggregates if a.conditions]
    if not rows:
        return None
    labels = list(dict.fromkeys(c for a in rows for c in a.conditions))
    singles = single_conditions(labels)
    if not singles:
        return None
    bars = singles + [labels[-1]]  # the full set last: the multimodal reference
    plt = _pyplot()
    datasets = list(dict.fromkeys(a.dataset for a in rows))
    rates = _chosen_rates([a.rate for a in rows])
    colour = _colours(bars)
    variants = list(dict.fromkeys(a.variant for a in rows))
    panels = [(dataset, rate) for dataset in datasets for rate in rates]
    cols = min(len(panels), 3 if len(variants) <= 6 else 2 if len(variants) <= 12 else 1)  # wrapped: many variants get wide panels
    grid_rows = -(-len(panels) // cols)
    panel_width = max(4.8, 0.9 * len(variants) + 1.5)
    fig, grid = plt.subplots(grid_rows, cols, figsize=(panel_width * cols + 1.8, 4.2 * grid_rows), squeeze=False, sharey=True)
    axes = [[ax] for row in grid for ax in row]
    for (ax,) in axes[len(panels):]:
        ax.set_axis_off()
    width = 0.8 / len(bars)
    for (dataset, rate), (ax,) in zip(panels, axes):
        here = [a for a in rows if a.dataset == dataset and a.rate == rate]
        ax.set_title(f"{dataset} — trained at rate {rate:g}")
        if not here:
            ax.set_axis_off()
            continue
        x = np.arange(len(here))
        values = {label: [a.conditions.get(label, {}).get(a.headline[0], (np.nan, np.nan)) for a in here] for label in bars}
        offsets = _grouped_bars(ax, x, [(f"{{{label}}}" + (" (all)" if label not in singles else ""), [100 * v[0] for v in values[label]],
                                         [100 * v[1] for v in values[label]], colour[label]) for label in bars], width)
        for label, offset in zip(singles, offsets):
            heads = [_head_for(label, a.modality_acc) for a in here]
            if any(h is not None for h in heads):  # one legend entry: the figure legend below keeps the first handle of each name
                ax.scatter([o for o, h in zip(offset, heads) if h is not None], [100 * h[0] for h in heads if h is not None],
                           marker="D", color="black", s=18, zorder=3, label="own unimodal head")
        ax.set_xticks(x, [a.variant for a in here], rotation=30, ha="right")
        ax.set_ylabel(f"test {metric_label(here[0].headline[0])} (%)")
        ax.set_ylim(0, 100)
    handles, names = {}, []
    for row in axes:
        for ax in row:
            for h, n in zip(*ax.get_legend_handles_labels()):
                if n not in handles:
                    handles[n] = h
                    names.append(n)
    fig.legend([handles[n] for n in names], names, loc="center right", title="test condition", frameon=False)
    fig.suptitle("Per-modality balance: test accuracy with one modality only, and with all\n(fixed conditions, mean ± std over seeds)")
    return _save(plt, fig, path, rect=(0, _caveats(fig, datasets), 1 - 1.9 / fig.get_figwidth(), 1))


def write_plots(aggregates: list[Aggregate], runs: list[RunRecord], out_dir: Path) -> list[Path]:
    """All plots that the report's runs support; returns the files written."""
    out_dir = Path(out_dir)
    made = [
        plot_metric_vs_rate(aggregates, out_dir / "metric_vs_rate.png"),
        plot_modality_balance(aggregates, out_dir / "modality_balance.png"),
        plot_modality_over_epochs(runs, out_dir / "modality_over_epochs.png"),
        plot_modality_conditions(aggregates, out_dir / "modality_conditions.png"),
    ]
    return [p for p in made if p is not None]
