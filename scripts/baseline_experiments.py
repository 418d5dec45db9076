"""Run the baselines and the foundation floors on cmu-mosi and tabulate them.

Every method is trained at missing rates 0.1 / 0.4 / 0.7 (train rate = test
rate) with seeds 0, 1, 2 on the same fixed test masks (the masks depend on
dataset, split, rate and seed only), selected on validation. Settings are
deliberately modest so the whole grid runs on one CPU thread; they are listed
in the output file. Finished runs are reused, so the script can be stopped and
restarted.

    PYTHONPATH=src python scripts/baseline_experiments.py --data-dir ../shared/data \
        --runs /tmp/imer_baseline_runs --out docs/results/baselines_mosi.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from imer.experiments.config import build_run_config
from imer.experiments.run import train

RATES = (0.1, 0.4, 0.7)
SEEDS = (0, 1, 2)
# method -> overrides on top of its packaged defaults (modest budgets for one CPU thread)
SETTINGS: dict[str, list[str]] = {
    "early-fusion": ["train.epochs=30"],
    "late-fusion": ["train.epochs=30"],
    "modality-dropout": ["train.epochs=30"],
    "mmin": ["train.epochs=30", "model.pretrain_epochs=10", "model.conditions=2", "train.batch_size=32", "train.lr=1e-3"],
    "gcnet": ["train.epochs=30", "train.batch_size=8", "train.lr=1e-3"],
    "momke": ["train.epochs=30", "model.stage_epochs=10", "model.hidden=128", "model.depth=2", "train.batch_size=8", "train.lr=5e-4"],
}
COMMON = ["train.threads=1", "train.progress=false", "train.eval_test_each_epoch=false"]
METRICS = (("acc2", "ACC-2 (label != 0)", 100.0), ("f1", "weighted F1 (label != 0)", 100.0), ("mae", "MAE", 1.0), ("corr", "Pearson r", 1.0))
NOTES_MARKER = "<!-- notes: everything below this line is kept when the script rewrites the file -->"


def run_one(method: str, rate: float, seed: int, data_dir: str, runs: Path) -> dict:
    """Train one (method, rate, seed) run, or read its finished metrics."""
    out = runs / method / f"rate{rate}_seed{seed}"
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    overrides = [f"data.data_dir={data_dir}", f"missing.rate={rate}", f"seed={seed}", *COMMON, *SETTINGS[method]]
    config = build_run_config(method, "cmu-mosi", overrides=overrides)
    start = time.perf_counter()
    metrics = train(config, out, resume=(out / "checkpoint.pt").is_file())
    print(f"{method:17s} rate={rate} seed={seed} acc2={metrics['test']['acc2']:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    return metrics


def best_stage(run_dir: Path, best_epoch: int) -> str:
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["epoch"] == best_epoch:
            return record["stage"]
    return "?"


def table(results: dict, methods: list[str], key: str, scale: float) -> list[str]:
    lines = ["| method | " + " | ".join(f"r = {r}" for r in RATES) + " |", "|---" * (len(RATES) + 1) + "|"]
    for method in methods:
        cells = []
        for rate in RATES:
            values = np.array([results[method, rate, s]["test"][key] for s in SEEDS], dtype=float) * scale
            cells.append(f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if scale != 1.0 else f"{values.mean():.3f} ± {values.std(ddof=1):.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def paired_table(results: dict, methods: list[str], key: str = "acc2") -> list[str]:
    lines = ["| method | " + " | ".join(f"r = {r}" for r in RATES) + " |", "|---" * (len(RATES) + 1) + "|"]
    for method in methods:
        cells = []
        for rate in RATES:
            diff = np.array([results[method, rate, s]["test"][key] - results["early-fusion", rate, s]["test"][key] for s in SEEDS]) * 100
            cells.append(f"{diff.mean():+.2f} ({int((diff > 0).sum())}/{len(SEEDS)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", default="/tmp/imer_baseline_runs")
    parser.add_argument("--out", default="docs/results/baselines_mosi.md")
    parser.add_argument("--methods", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    runs = Path(args.runs)
    results = {}
    for seed in SEEDS:
        for rate in RATES:
            for method in args.methods:
                results[method, rate, seed] = run_one(method, rate, seed, args.data_dir, runs)

    lines = [
        "# Baselines on CMU-MOSI (bc-LSTM features), random missing rates",
        "",
        "Produced by `scripts/baseline_experiments.py`. Test metrics at the epoch chosen on validation,",
        f"mean ± sample std over seeds {', '.join(map(str, SEEDS))}; train rate = test rate; test masks fixed per (rate, seed),",
        "identical for every method. One CPU thread per run.",
        "",
        "Settings (on top of each method's `configs/<method>/default.toml`):",
        "",
    ]
    lines += [f"- `{m}`: `{' '.join(SETTINGS[m])}`" for m in args.methods]
    fractions = {r: np.mean([results[args.methods[0], r, s]["missing_fraction"]["test"] for s in SEEDS]) for r in RATES}
    lines += ["", "Real test missing fractions: " + ", ".join(f"r = {r}: {f:.3f}" for r, f in fractions.items()), ""]
    for key, title, scale in METRICS:
        lines += [f"## {title}", "", *table(results, args.methods, key, scale), ""]
    if "early-fusion" in args.methods:
        lines += [
            "## Paired difference to early-fusion (ACC-2, points; same masks and seed)",
            "",
            "mean difference over seeds, and in how many seeds the method is ahead",
            "",
            *paired_table(results, [m for m in args.methods if m != "early-fusion"]),
            "",
        ]
    lines += ["## Stage of the selected epoch (staged methods)", ""]
    for method in args.methods:
        stages = [best_stage(runs / method / f"rate{r}_seed{s}", results[method, r, s]["selection"]["best_epoch"]) for r in RATES for s in SEEDS]
        if len(set(stages)) > 1 or stages[0] != "main":
            counts = {st: stages.count(st) for st in sorted(set(stages))}
            lines.append(f"- `{method}`: " + ", ".join(f"{st}: {n}/{len(stages)} runs" for st, n in counts.items()))
    lines.append("")
    out = Path(args.out)
    notes = ""
    if out.is_file() and NOTES_MARKER in out.read_text():
        notes = out.read_text().split(NOTES_MARKER, 1)[1]
    out.write_text("\n".join(lines) + "\n" + NOTES_MARKER + notes)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
