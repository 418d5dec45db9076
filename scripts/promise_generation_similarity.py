"""Per-epoch generation diagnostic of one PROMISE run (the trainer has no per-epoch hook for it).

The run is trained one epoch at a time through the public API: ``train`` with
``train.epochs = e`` and ``resume=True`` continues from the checkpoint of
epoch ``e - 1`` (the trainer restores model, optimizer and RNG, so the result
equals one uninterrupted run). After each epoch the checkpoint's weights are
loaded and ``generation_similarity`` is computed on the test split with every
observed modality available (each one generated from the others). Output: a
JSON-lines file and a markdown table.

    OMP_NUM_THREADS=1 python scripts/promise_generation_similarity.py --data-dir ../shared/data --rate 0.4 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from imer.experiments.config import build_run_config
from imer.experiments.run import load_run, prepare_data, train
from imer.models.promise import generation_similarity
from imer.training.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("IMER_DATA", "../shared/data"))
    parser.add_argument("--dataset", default="cmu-mosi")
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], help="extra config override, e.g. model.lambda_1=0.5")
    parser.add_argument("--run", default="runs/promise_generation")
    parser.add_argument("--report", default="docs/results/promise_generation_mosi.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    if run.exists():
        shutil.rmtree(run)
    base = [f"data.data_dir={args.data_dir}", f"missing.rate={args.rate}", f"seed={args.seed}", "train.progress=false", "train.threads=1", *args.set]
    records = []
    for epoch in range(1, args.epochs + 1):
        metrics = train(build_run_config("promise", args.dataset, overrides=base + [f"train.epochs={epoch}"]), run, resume=epoch > 1)
        loaded = load_run(run)
        loaded.model.load_state_dict(load_checkpoint(run / "checkpoint.pt")["model"])  # last epoch, not the best one
        data = prepare_data(loaded.config)
        sims = generation_similarity(loaded.model, data.batchers["test"], data.dataset.available[data.indices["test"]])
        last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
        records.append({"epoch": epoch - 1, "stage": last["stage"], "test_acc2": last["test"]["acc2"], "similarity": sims, "best_epoch": metrics["selection"]["best_epoch"]})
        print(json.dumps(records[-1]), flush=True)
    modalities = list(records[0]["similarity"])
    lines = [
        f"# PROMISE generation diagnostic per epoch ({args.dataset}, R = {args.rate}, seed {args.seed})",
        "",
        f"Produced by `python scripts/promise_generation_similarity.py --rate {args.rate} --seed {args.seed} --epochs {args.epochs}"
        + "".join(f" --set {s}" for s in args.set) + "`.",
        "",
        "Test split, every observed modality available; each modality generated from the other ones and compared (cosine) with its "
        "real prompted representation of the same utterance (matched) and of a random other utterance (shuffled). "
        "Weights of the end of each epoch (not the selected best).",
        "",
        "| epoch | stage | test acc2 | " + " | ".join(f"{m} matched / shuffled" for m in modalities) + " |",
        "|---|---|---|" + "---|" * len(modalities),
    ]
    for r in records:
        cells = [f"{r['similarity'][m]['matched']:.3f} / {r['similarity'][m]['shuffled']:.3f}" for m in modalities]
        lines.append(f"| {r['epoch']} | {r['stage']} | {r['test_acc2']:.3f} | " + " | ".join(cells) + " |")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines) + "\n")
    (run / "generation_similarity.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
