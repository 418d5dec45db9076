"""`imer evaluate`: a trained run's test metrics under a missing rate or fixed conditions."""

from __future__ import annotations

import argparse

from imer.cli.common import DEVICE_HELP, THREADS_HELP, metric_rows, table


def cmd_evaluate(args: argparse.Namespace) -> int:
    from imer.experiments.inference import evaluate_conditions, evaluate_run
    from imer.runfolder.folder import check_output
    from imer.training.threads import configure_threads

    configure_threads(args.threads)
    if args.json:
        check_output(args.json)  # before the work: never a run's own file
    if args.all_conditions:
        result = evaluate_conditions(args.model, data_dir=args.data_dir, dataset=args.dataset, device=args.device)
        rows = [[name, *[float(m[k]) for k in result["average"]]] for name, m in result["conditions"].items()]
        rows.append(["average", *result["average"].values()])
        table(f"{args.model}: fixed conditions (test split)", ["condition", *result["average"]], rows)
    else:
        result = evaluate_run(args.model, missing_rate=args.missing_rate, condition=args.condition, data_dir=args.data_dir, dataset=args.dataset,
                              device=args.device)
        table(f"{args.model}: test under {result['protocol']} (missing fraction {result['missing_fraction']:.3f})", ["metric", "value"], metric_rows(result["test"]))
    if args.json:
        from imer.io import write_json

        write_json(args.json, result)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer evaluate` and its options to the command parser."""
    e = sub.add_parser("evaluate", help="evaluate a trained run under a missing rate or a fixed condition",
                       description="Recompute test metrics of a run directory. Masks are seeded like in training, so the "
                       "training rate reproduces the run's own numbers.")
    e.add_argument("--model", required=True, help="run directory written by `imer train`")
    group = e.add_mutually_exclusive_group()
    group.add_argument("--missing-rate", type=float, help="random missing rate of the test mask")
    group.add_argument("--condition", help="fixed condition: modality letters (a, t, v, at, av, tv, atv) or full")
    group.add_argument("--all-conditions", action="store_true", help="every fixed condition and their average")
    e.add_argument("--data-dir", help="data folder, if it moved since training")
    e.add_argument("--dataset", help="path of the run's custom .npz dataset, if it moved since training")
    e.add_argument("--json", help="also write the result to this JSON file")
    e.add_argument("--threads", type=int, help=THREADS_HELP)
    e.add_argument("--device", default="cpu", help=DEVICE_HELP)
    e.set_defaults(func=cmd_evaluate)
