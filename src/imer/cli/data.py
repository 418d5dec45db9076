"""`imer data`: inspect (with the leakage probe) or convert a dataset."""

from __future__ import annotations

import argparse
from typing import Any

from imer.cli.common import table


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The data options `imer train` takes, for the commands that only read data."""
    p.add_argument("--dataset", required=True, help="dataset name (see `imer list`) or path to a custom .npz")
    p.add_argument("--data-dir", help="data folder (default: $IMER_DATA)")
    p.add_argument("--config", help="a TOML/JSON config file; only its [data] section is used")
    p.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                   help="override a data setting, e.g. --set data.options.label_file=PATH (repeatable)")


def _load_data_args(args: argparse.Namespace):
    """The dataset named on the command line, with the same data options as `imer train`."""
    from imer.data import load_dataset
    from imer.config import build_data_config

    data = build_data_config(args.dataset, config_file=args.config, overrides=args.set, data_dir=args.data_dir).data
    return load_dataset(data.name, data.data_dir, **data.options), data


def cmd_data_info(args: argparse.Namespace) -> int:
    from imer.io import dumps

    dataset, data = _load_data_args(args)
    info = dataset.summary(data.valid_fraction, data.split_seed)
    if args.probe:
        from imer.evaluation.leakage import probe_leakage

        info["leakage_probe"] = probe_leakage(dataset).to_dict()
    if args.json:
        print(dumps(info, indent=2))
        return 0
    probe = info.pop("leakage_probe", None)
    _print_data_info(info)
    if probe:
        table(
            f"leakage probe: linear probe per modality on train, target {probe['target']}; flagged when valid beats test by > {probe['threshold']:.2f}",
            ["modality", "C", "train CV", "valid", "test", "valid - test", "flagged"],
            [[r["modality"], f"{r['C']:g}", r["cv"], r["valid"], r["test"], r["gap"], "yes" if r["flagged"] else "no"] for r in probe["rows"]],
        )
        print(f"verdict: {probe['verdict']}")
    return 0


def _print_data_info(info: dict[str, Any]) -> None:
    """`imer data info` as readable tables: overview, splits, modalities, labels."""
    overview = [["task", info["task"]], ["utterances", info["utterances"]], ["dialogues / videos", info["groups"]],
                ["speakers", info["speakers"] if info["speakers"] is not None else "-"], ["source", info["source"]]]
    table(f"dataset {info['name']}", ["name", "value"], overview)
    if "splits" in info:
        table("splits", ["split", "utterances", "dialogues", "note"],
               [[s, v["utterances"], v["groups"], v.get("note", "")] for s, v in info["splits"].items()])
    if "folds" in info:
        table("folds", ["fold", "utterances"], [[f, n] for f, n in info["folds"].items()])
    absent = info.get("absent_in_data", {})
    table("modalities", ["modality", "width", "absent in data"],
           [[m, d, f"{absent.get(m, 0.0):.1%}"] for m, d in info["modalities"].items()])
    labels = info["labels"]
    if info["task"] == "classification":
        table("classes", ["name", "utterances"], [[c, n] for c, n in labels.items()])
    else:
        table("labels (regression)", ["name", "value"], [[k, v] for k, v in labels.items()])
    for note in info.get("notes", []):
        print(f"note: {note}")


def cmd_data_convert(args: argparse.Namespace) -> int:
    from imer.data import save_custom
    from imer.features import builtin_manifest

    dataset, _ = _load_data_args(args)
    dataset.manifest = dataset.manifest or builtin_manifest(args.dataset)
    path = save_custom(dataset, args.out)
    print(f"wrote {len(dataset)} utterances of '{dataset.name}' to {path} (train on it with --dataset {path})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer data` and its options to the command parser."""
    d = sub.add_parser("data", help="inspect or convert datasets", description="Inspect a dataset or convert it to the custom .npz format.")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    di = dsub.add_parser("info", help="sizes, dims, splits and label distribution",
                         description="Splits, utterances, dialogues, modalities with widths, label range or classes, and "
                         "missing values of a dataset, loaded with the same data options as `imer train`.")
    _add_data_options(di)
    di.add_argument("--json", action="store_true", help="print JSON instead of a table")
    di.add_argument("--probe", action="store_true",
                    help="also run the label-leakage probe: a logistic probe per modality fitted on train, scored on valid and test; "
                    "'leak suspected' when valid beats test by more than 5 points (see docs/data.md)")
    di.set_defaults(func=cmd_data_info)
    dc = dsub.add_parser("convert", help="write a dataset in the custom .npz format",
                         description="Write any loadable dataset to one .npz (keys: format, name, task, modalities, x_<modality>, labels, "
                         "class_names, utterance_ids, group_ids, order, split or fold, speakers, available). Train on it with --dataset FILE.")
    _add_data_options(dc)
    dc.add_argument("--out", required=True, help="output .npz")
    dc.set_defaults(func=cmd_data_convert)
