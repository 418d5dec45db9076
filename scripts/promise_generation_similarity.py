"""Per-epoch generation diagnostic of one PROMISE run with every observed test modality available.

(Each run's own history.jsonl already logs it under the run's masks, via ``epoch_diagnostics``.)

The run is set up as ``imer.experiments.run.train`` does (same data, scaler,
fixed masks, training masks and trainer arguments); the training-mask
callback, which the trainer calls at the start of every epoch, first measures
``generation_similarity`` on the model's weights at the end of the previous
epoch (read-only: eval mode, no gradients, no torch RNG use), and the last
epoch is measured after ``fit``. Measured on the test split with every
observed modality available (each one generated from the others). Output: a
markdown table (and JSON lines on stdout).

    OMP_NUM_THREADS=1 python scripts/promise_generation_similarity.py --data-dir ../shared/data --rate 0.4 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from imer.data import RandomMissing, derive_seed
from imer.experiments.config import build_run_config
from imer.experiments.run import default_select_metric, evaluation_protocol, prepare_data, split_mask
from imer.models import create_model
from imer.models.promise import generation_similarity
from imer.training.trainer import EvalSet, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("IMER_DATA", "../shared/data"))
    parser.add_argument("--dataset", default="cmu-mosi")
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], help="extra config override, e.g. model.lambda_1=0.5")
    parser.add_argument("--report", default="docs/results/promise_generation_mosi.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"data.data_dir={args.data_dir}", f"missing.rate={args.rate}", f"seed={args.seed}", f"train.epochs={args.epochs}", "train.progress=false", *args.set]
    config = build_run_config("promise", args.dataset, overrides=overrides)
    torch.manual_seed(config.seed)
    data = prepare_data(config)
    protocol = evaluation_protocol(config, data.dataset.modalities)
    sets = {s: EvalSet(data.batchers[s], split_mask(config, data, s, protocol)) for s in ("valid", "test")}
    complete_test = data.dataset.available[data.indices["test"]]
    train_available = data.dataset.available[data.indices["train"]]
    model = create_model("promise", data.spec, config.model)
    trainer = Trainer(
        model, epochs=config.train.epochs, batch_size=config.train.batch_size, lr=config.train.lr, weight_decay=config.train.weight_decay,
        optimizer=config.train.optimizer, grad_clip=config.train.grad_clip, select_metric=config.train.select_metric or default_select_metric(data.spec.task),
        seed=config.seed, progress=False,
    )
    similarity: dict[int, dict] = {}

    def train_mask(epoch: int) -> np.ndarray:
        if epoch > 0:
            similarity[epoch - 1] = generation_similarity(model, data.batchers["test"], complete_test)
        return RandomMissing(config.missing.rate).apply(train_available, np.random.default_rng(derive_seed("train-mask", config.seed, epoch)))

    result = trainer.fit(data.batchers["train"], train_mask, sets["valid"], sets["test"])
    similarity[config.train.epochs - 1] = generation_similarity(model, data.batchers["test"], complete_test)
    modalities = list(data.dataset.modalities)
    lines = [
        f"# PROMISE generation diagnostic per epoch ({args.dataset}, R = {args.rate}, seed {args.seed})",
        "",
        f"Produced by `python scripts/promise_generation_similarity.py --rate {args.rate} --seed {args.seed} --epochs {args.epochs}"
        + "".join(f" --set {s}" for s in args.set) + "`.",
        "",
        "Test split, every observed modality available; each modality generated from the other ones and compared (cosine) with its "
        "real prompted representation of the same utterance (matched) and of a random other utterance (shuffled). Weights at "
        f"the end of each epoch. The selected (best validation {trainer.select_metric}) epoch is {result.best_epoch}.",
        "",
        "| epoch | stage | valid acc2 | test acc2 | test MAE | " + " | ".join(f"{m} matched / shuffled" for m in modalities) + " |",
        "|---|---|---|---|---|" + "---|" * len(modalities),
    ]
    for record in result.history:
        e = record["epoch"]
        sims = similarity[e]
        print(json.dumps({"epoch": e, "similarity": sims}), flush=True)
        cells = [f"{sims[m]['matched']:.3f} / {sims[m]['shuffled']:.3f}" for m in modalities]
        lines.append(
            f"| {e} | {record['stage']} | {record['valid']['acc2']:.3f} | {record['test']['acc2']:.3f} | {record['test']['mae']:.3f} | " + " | ".join(cells) + " |"
        )
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
