"""How much can the rest of a dialogue say about an utterance that lost a modality? A ceiling (issue 24).

The test utterances that lost ``--modality`` (text by default) under a sweep's fixed test masks (the masks every
method of the sweep was tested on, rebuilt from its runs' configs) are predicted from the *true* labels of the
other utterances of their video: the sign of their mean, over all of them or only over those that kept the
modality (which is all a model can read through them). No model is involved: it is an upper bound on what the
dialogue's sentiment, read perfectly, gives such an utterance.

From it, per missing rate: the pooled acc2 gain over the best other method (the best mean test acc2 at that rate,
chosen on test as the report's significance table does) that a method would reach if it tied that method where
the modality is present and reached the oracle where it is lost, next to what ``--variant`` reached there.

    python benchmarks/context_ceiling.py results/cv_minilm --data-dir ../shared/data --variant context-fusion \
        --out docs/results/cv_minilm/context_ceiling.md

Writes ``--out`` (markdown) and prints it. Reads configs and metrics only; about a minute on one core.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np


def oracle_accuracy(labels: np.ndarray, groups: np.ndarray, kept: np.ndarray) -> tuple[float, float, int]:
    """Accuracy of sign(mean label of the other utterances of the video) on the non-zero-labelled utterances with
    ``kept`` False: over all others, and over the others with ``kept`` True (positive when there are none)."""
    _, video = np.unique(groups, return_inverse=True)
    totals, counts = np.bincount(video, labels), np.bincount(video)
    kept_totals, kept_counts = np.bincount(video, labels * kept), np.bincount(video, kept.astype(float))
    lost = ~kept & (labels != 0)
    others = counts[video] - 1
    mean_all = np.divide(totals[video] - labels, others, out=np.ones_like(labels), where=others > 0)
    mean_kept = np.divide(kept_totals[video], kept_counts[video], out=np.ones_like(labels), where=kept_counts[video] > 0)
    truth = labels[lost] > 0
    positive = lambda mean: np.round(mean[lost], 6) > 0  # noqa: E731  a mean of exactly zero (up to summation order) says negative
    return float(np.mean(positive(mean_all) == truth)), float(np.mean(positive(mean_kept) == truth)), int(lost.sum())


def test_mask(run_dir: Path, data_dir: str, rate: float, loaded: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Labels, video ids and fixed test mask of one run (the mask its test metrics were computed on); each dataset is
    read once into ``loaded``."""
    from imer.config.build import config_from_dict
    from imer.data import load_dataset
    from imer.data.missing import RandomMissing
    from imer.experiments.run import prepare_data, split_mask

    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    config.data.data_dir = data_dir
    key = (config.data.name, json.dumps(config.data.options, sort_keys=True))
    if key not in loaded:
        loaded[key] = load_dataset(config.data.name, data_dir, **config.data.options)
    data = prepare_data(config, dataset=loaded[key])
    test = data.indices["test"]
    mask = split_mask(config, data, "test", RandomMissing(rate))
    return data.dataset.labels[test].astype(float), data.dataset.group_ids[test], mask, list(data.dataset.features)


def lost_pattern_accuracy(metrics: dict, modality: str) -> float | None:
    """acc2 over the test patterns without ``modality`` (weighted by their utterances), or None if there are none."""
    parts = [(p["acc2"], p["n"]) for name, p in metrics.get("test_by_pattern", {}).items() if modality not in name.split("+")]
    total = sum(n for _, n in parts)
    return sum(a * n for a, n in parts) / total if total else None


def read_runs(sweep: Path) -> dict[tuple[str, float, int], tuple[Path, dict]]:
    """(variant, rate, seed) -> (run folder, metrics) for every finished grid cell of the sweep."""
    runs = {}
    for path in sorted(sweep.glob("runs/*/*/rate=*/seed=*/metrics.json")):
        metrics = json.loads(path.read_text())
        runs[(metrics["variant"], metrics["missing"]["train_rate"], metrics["seed"])] = (path.parent, metrics)
    return runs


def ceiling_rows(sweep: Path, data_dir: str, variant: str, modality: str) -> list[dict]:
    runs, loaded = read_runs(sweep), {}
    by_rate: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (name, rate, _), (_, metrics) in runs.items():
        by_rate[rate][name].append(metrics["test"]["acc2"])
    rows = []
    for rate in sorted(by_rate):
        others = {name: statistics.mean(v) for name, v in by_rate[rate].items() if name != variant}
        rival = max(others, key=others.get)
        seeds = sorted(seed for (name, r, seed) in runs if name == variant and r == rate)
        cells = defaultdict(list)
        for seed in seeds:
            run_dir, metrics = runs[(variant, rate, seed)]
            labels, groups, mask, modalities = test_mask(run_dir, data_dir, rate, loaded)
            kept = mask[:, modalities.index(modality)]
            share = float(np.mean(~kept[labels != 0]))
            if rate == 0 or share == 0:
                cells["gain"].append(0.0)
                continue
            oracle_all, oracle_kept, count = oracle_accuracy(labels, groups, kept)
            rival_lost = lost_pattern_accuracy(runs[(rival, rate, seed)][1], modality)
            cells["share"].append(share)
            cells["n"].append(count)
            cells["oracle_all"].append(oracle_all)
            cells["oracle_kept"].append(oracle_kept)
            cells["variant_lost"].append(lost_pattern_accuracy(metrics, modality))
            cells["rival_lost"].append(rival_lost)
            cells["gain"].append(share * (oracle_kept - rival_lost))
        rows.append({"rate": rate, "rival": rival, "seeds": len(seeds), **{k: (statistics.mean(v), statistics.pstdev(v)) for k, v in cells.items()}})
    return rows


def render(rows: list[dict], variant: str, modality: str) -> str:
    def pct(row: dict, key: str) -> str:
        return f"{100 * row[key][0]:.2f} ± {100 * row[key][1]:.2f}" if key in row else "–"

    lines = [f"| rate | seeds | test utterances without {modality} (share, n) | oracle: all other utterances | oracle: others with {modality} "
             f"| {variant} without {modality} | best other (on test) | its acc2 without {modality} | ceiling on the gain over it |",
             "|---:|---:|---|---:|---:|---:|---|---:|---:|"]
    for row in rows:
        share = f"{100 * row['share'][0]:.1f} % ({row['n'][0]:.0f})" if "share" in row else "0"
        lines.append(f"| {row['rate']:g} | {row['seeds']} | {share} | {pct(row, 'oracle_all')} | {pct(row, 'oracle_kept')} | "
                     f"{pct(row, 'variant_lost')} | {row['rival']} | {pct(row, 'rival_lost')} | +{100 * row['gain'][0]:.2f} |")
    pooled = statistics.mean(row["gain"][0] for row in rows)
    lines += ["", f"Pooled over the {len(rows)} rates (each rate's seeds weighted alike): a ceiling of **+{100 * pooled:.2f}** points acc2 "
              f"over the best other method chosen on test, for a method that ties it on the utterances with {modality} and predicts every "
              f"utterance without {modality} as well as the true sentiment of the rest of its video does. Oracle: sign of the mean true label "
              f"of the other utterances of the same video, on the non-zero-labelled test utterances without {modality}, under each seed's "
              "fixed test mask; ceiling = share × (oracle with the others that kept the modality − the best other method there); "
              "mean ± population std over seeds, ×100."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder (results/cv_minilm)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--variant", default="context-fusion", help="the method whose accuracy without the modality is shown")
    parser.add_argument("--modality", default="text", help="the modality whose loss is studied")
    parser.add_argument("--out", type=Path, help="markdown file to write")
    args = parser.parse_args()
    text = render(ceiling_rows(args.sweep, args.data_dir, args.variant, args.modality), args.variant, args.modality)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
