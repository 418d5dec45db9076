"""Paired comparisons of a method against the best baseline: mean difference, wins, sign test, paired t-test.

Runs with the same seed on the same dataset and rate share their test masks
(protocol.md), so a method and a baseline run with seed s were tested on
identical inputs: their difference at (rate, seed) is one paired observation.
For each compared variant and dataset, the pairs are every (rate, seed) that
both ran; per rate the baseline is the **best** baseline variant at that rate
(highest mean test score over seeds, lowest for MAE; ties keep the spec's
order) unless the spec names one. Choosing the best baseline on test favours
the baseline, so the comparison is conservative for the method.

Tests (two-sided): the exact sign test over the non-zero differences
(binomial, p = 1/2), and the paired t-test (``scipy.stats.ttest_rel``; none
when fewer than two pairs or all differences are equal). Fold-based datasets
average a seed's folds first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imer.evaluation.metrics import is_better, lower_is_better


@dataclass
class Comparison:
    """One paired comparison: ``rate`` None = all rates pooled."""

    dataset: str
    variant: str
    rate: float | None
    baseline: str  # the baseline variant (per rate; joined with "/" for the pooled row when they differ)
    metric: str
    diffs: list[float]  # variant minus baseline, one per (rate, seed) pair

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs))

    @property
    def wins(self) -> int:
        """Pairs where the variant is better (for MAE: lower)."""
        return sum(1 for d in self.diffs if (d < 0 if lower_is_better(self.metric) else d > 0))

    @property
    def ties(self) -> int:
        return sum(1 for d in self.diffs if d == 0)

    @property
    def losses(self) -> int:
        return self.n - self.wins - self.ties

    @property
    def p_sign(self) -> float:
        return sign_test(self.wins, self.losses)

    @property
    def p_t(self) -> float | None:
        return paired_t_pvalue(self.diffs)

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "variant": self.variant, "rate": self.rate, "baseline": self.baseline, "metric": self.metric,
                "n": self.n, "mean_diff": self.mean, "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "p_sign": self.p_sign, "p_t": self.p_t, "diffs": self.diffs}


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test (``scipy.stats.binomtest``, p = 1/2): a split at least as uneven as ``wins``:``losses``; ties are dropped."""
    if wins + losses == 0:
        return 1.0
    from scipy import stats

    return float(stats.binomtest(wins, wins + losses, 0.5).pvalue)


def paired_t_pvalue(diffs: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test on the differences (H0: mean 0); None if undefined (n < 2 or no spread)."""
    values = np.asarray(diffs, dtype=np.float64)
    if len(values) < 2 or np.allclose(values, values[0], rtol=0, atol=1e-15):
        return None
    from scipy import stats

    return float(stats.ttest_1samp(values, 0.0).pvalue)


def best_baseline(scores: dict[str, float], metric: str, order: list[str]) -> str | None:
    """The baseline with the best mean score; ties keep the earlier one in ``order``."""
    best = None
    for name in order:
        if name in scores and (best is None or is_better(metric, scores[name], scores[best])):
            best = name
    return best


def compare_runs(per_seed: dict[tuple[str, str, float], dict[int, float]], compare: list[str], baselines: list[str],
                 metric: str, named_baseline: str | None = None,
                 chosen: dict[tuple[str, float], str] | None = None) -> list[Comparison]:
    """Paired comparisons from seed values ``per_seed[(dataset, variant, rate)] = {seed: value}``.

    For each compared variant and dataset: one row per rate (its seeds) and a
    pooled row over every (rate, seed) pair. ``baselines`` (in spec order) are
    the candidates for the best baseline (best mean test value); ``named_baseline``
    fixes it instead, ``chosen[(dataset, rate)]`` gives it per rate (e.g. chosen on validation).
    """
    out = []
    datasets = list(dict.fromkeys(d for d, _, _ in per_seed))
    for dataset in datasets:
        rates = sorted({r for d, _, r in per_seed if d == dataset})
        for variant in compare:
            rows = []
            for rate in rates:
                mine = per_seed.get((dataset, variant, rate))
                if not mine:
                    continue
                if chosen is not None:
                    base = chosen.get((dataset, rate))
                    base = base if base is not None and per_seed.get((dataset, base, rate)) else None
                elif named_baseline is not None:
                    base = named_baseline if per_seed.get((dataset, named_baseline, rate)) else None
                else:
                    means = {b: float(np.mean(list(per_seed[(dataset, b, rate)].values()))) for b in baselines if per_seed.get((dataset, b, rate))}
                    base = best_baseline(means, metric, baselines)
                if base is None:
                    continue
                theirs = per_seed[(dataset, base, rate)]
                common = sorted(set(mine) & set(theirs))
                if common:
                    rows.append(Comparison(dataset, variant, rate, base, metric, [mine[s] - theirs[s] for s in common]))
            out += rows
            if len(rows) > 1:
                names = "/".join(dict.fromkeys(r.baseline for r in rows))
                out.append(Comparison(dataset, variant, None, names, metric, [d for r in rows for d in r.diffs]))
    return out
