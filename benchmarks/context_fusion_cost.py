"""Cost of context-fusion against early fusion on the same data, and its prediction speed (issue 24).

Training: both methods train on ``cmu-mosi-minilm`` (rate 0.3, seed 0, one torch
thread) with their packaged settings for that dataset, ``--repeats`` times,
interleaved (EF, CF, EF, CF, ...) so both see the same machine load; the
medians of whole-run wall time and of seconds per training epoch, and their
ratios, are reported, at each method's own epoch budget and per epoch.
Prediction: the trained context-fusion run predicts ``--utterances`` utterances
(the test videos' features repeated as new videos, some modalities removed)
through ``imer.load(...).predict``, the Python API a user calls, timed end to
end (input checks, standardisation, batching, forward) over ``--repeats`` calls.

    python benchmarks/context_fusion_cost.py --data-dir ../shared/data --out benchmarks/results/context_fusion

Writes ``<out>/cost.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def train_once(method: str, data_dir: str, out: Path) -> dict:
    from imer.config import build_run_config
    from imer.experiments.run import train

    config = build_run_config(method, "cmu-mosi-minilm", overrides=["train.threads=1", "train.progress=false", "missing.rate=0.3"],
                              settings={"data.data_dir": data_dir})
    t0 = time.perf_counter()
    metrics = train(config, out, overwrite=True)
    return {"wall_seconds": time.perf_counter() - t0, "seconds_per_epoch": metrics["seconds_per_epoch"], "epochs": config.train.epochs}


def prediction_input(data_dir: str, n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from imer.data import load_dataset

    dataset = load_dataset("cmu-mosi-minilm", data_dir)
    test = np.flatnonzero(dataset.split == "test")
    rows = np.resize(test, n)
    groups = np.array([f"{dataset.group_ids[r]}#{i // len(test)}" for i, r in enumerate(rows)])
    rng = np.random.default_rng(seed)
    features = {m: x[rows].copy() for m, x in dataset.features.items()}
    drop = rng.integers(0, 3, size=n)  # 0: keep both, 1: drop audio, 2: drop text
    for j, m in enumerate(features):
        features[m][drop == j + 1] = np.nan
    return features, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--utterances", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/context_fusion")
    args = parser.parse_args()

    import torch

    import imer

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"early-fusion": [], "context-fusion": []}
    with tempfile.TemporaryDirectory() as scratch:
        for k in range(args.repeats):
            for method in runs:
                runs[method].append(train_once(method, args.data_dir, Path(scratch) / f"{method}-{k}"))
        model = imer.load(Path(scratch) / f"context-fusion-{args.repeats - 1}")
        features, groups = prediction_input(args.data_dir, args.utterances)
        model.predict(features, group_ids=groups)  # warm-up: first call imports and allocates
        predict_seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scores = model.predict(features, group_ids=groups)
            predict_seconds.append(time.perf_counter() - t0)
    summary = {m: {key: statistics.median(r[key] for r in rs) for key in ("wall_seconds", "seconds_per_epoch")} | {"epochs": rs[0]["epochs"]}
               for m, rs in runs.items()}
    ef, cf = summary["early-fusion"], summary["context-fusion"]
    result = {
        "machine": "shared 2-core CPU box, 1 torch thread", "repeats": args.repeats, "runs": runs, "median": summary,
        "ratio_run": cf["wall_seconds"] / ef["wall_seconds"], "ratio_epoch": cf["seconds_per_epoch"] / ef["seconds_per_epoch"],
        "predict": {"utterances": args.utterances, "seconds": predict_seconds, "median_seconds": statistics.median(predict_seconds),
                    "finite": bool(np.isfinite(scores).all())},
    }
    (out / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| | early fusion | context-fusion | ratio |\n|---|---:|---:|---:|")
    print(f"| whole run (s, median of {args.repeats}) | {ef['wall_seconds']:.2f} ({ef['epochs']} epochs) | "
          f"{cf['wall_seconds']:.2f} ({cf['epochs']} epochs) | {result['ratio_run']:.2f} |")
    print(f"| training epoch (s) | {ef['seconds_per_epoch']:.4f} | {cf['seconds_per_epoch']:.4f} | {result['ratio_epoch']:.2f} |")
    print(f"| predict {args.utterances} utterances (s, median) | | {result['predict']['median_seconds']:.3f} | |")


if __name__ == "__main__":
    main()
