"""`imer train`: one method on one dataset, into a run folder."""

from __future__ import annotations

import argparse

from imer.cli.common import DEVICE_HELP, THREADS_HELP, metric_rows, table


def cmd_train(args: argparse.Namespace) -> int:
    from imer.config import build_run_config
    from imer.experiments.run import train

    config = build_run_config(
        args.method,
        args.dataset,
        config_file=args.config,
        overrides=args.set,
        settings={
            "seed": args.seed,
            "data.data_dir": args.data_dir,
            "data.fold": args.fold,
            "missing.rate": args.missing_rate,
            "missing.test_rate": args.test_missing_rate,
            "missing.test_condition": args.test_condition,
            "train.epochs": args.epochs,
            "train.device": args.device,
            "train.threads": args.threads,
            "train.progress": False if args.no_progress else None,
            "train.log_to": args.log_to,
        },
    )
    metrics = train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    sel = metrics["selection"]
    table(
        f"{metrics['method']} on {metrics['dataset']} (seed {metrics['seed']}) — test at best valid epoch {sel['best_epoch']} by {sel['metric']}",
        ["metric", "value"],
        metric_rows(metrics["test"]) + [["missing_fraction[test]", metrics["missing_fraction"]["test"]]],
    )
    print(f"run written to {args.out} (metrics.json, history.jsonl, model.safetensors)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer train` and its options to the command parser."""
    t = sub.add_parser(
        "train",
        help="train one method on one dataset and evaluate it",
        description="Train METHOD on DATASET with validation-based model selection; write a run directory.",
        epilog="Run directory: config.json, metrics.json (valid/test metrics at the selected epoch, missing fractions), "
        "history.jsonl (one line per epoch), model.safetensors, scaler.npz, masks.npz, predictions_test.csv, checkpoint.pt.\n"
        "Config layers (later wins): built-in defaults, configs/<method>/<dataset>.toml, --config, flags, --set.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--method", required=True, help="registered method name (see `imer list`)")
    t.add_argument("--dataset", required=True, help="dataset name (see `imer list`) or path to a custom .npz")
    t.add_argument("--data-dir", help="data folder, holding e.g. cmu-mosi-minilm/, cmu-mosi-bclstm/ and gcnet-meta/ (default: $IMER_DATA)")
    t.add_argument("--missing-rate", type=float, help="fraction of (utterance, modality) entries dropped in training, each utterance keeps >= 1 (default 0)")
    t.add_argument("--test-missing-rate", type=float, help="missing rate of the fixed valid/test masks (default: same as --missing-rate)")
    t.add_argument("--test-condition", help="evaluate valid/test under one fixed subset instead, e.g. t, at, full")
    t.add_argument("--seed", type=int, help="seed of initialisation, shuffling, training masks and test masks (default 0)")
    t.add_argument("--epochs", type=int, help="number of training epochs")
    t.add_argument("--fold", type=int, help="test fold for fold-based datasets (IEMOCAP: session 1..5)")
    t.add_argument("--config", help="a TOML/JSON config file (sections: data, missing, train, model), or a packaged preset name such as 'published' (comp)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. --set hidden=128 --set train.lr=1e-4 (repeatable)")
    t.add_argument("--device", help=DEVICE_HELP)
    t.add_argument("--threads", type=int, help=THREADS_HELP)
    t.add_argument("--out", required=True, help="run directory to write")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run in --out (otherwise refused)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--log-to", choices=("tensorboard", "mlflow"), help="also send each epoch's history to TensorBoard (DIR/tensorboard) or MLflow "
                   "(pip install 'imer[tensorboard]' / 'imer[mlflow]')")
    t.set_defaults(func=cmd_train)
