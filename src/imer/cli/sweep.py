"""`imer sweep`: an experiment spec or a grid of runs; `--plan` says what it would run and cost."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any


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
    if args.budget is not None:
        spec.budget = args.budget
    spec.device = args.device
    spec.threads = resolve_threads(spec.threads, max(1, args.workers))
    validate_sweep(spec)  # every variant × dataset config is checked before the first cell starts
    if args.plan:
        return _print_plan(spec, args)
    try:
        if args.search_only and spec.search is None:
            raise ConfigError("sweep: --search-only needs a spec with a [search] table")
        manifest = run_sweep(spec, args.out, workers=args.workers, backend=args.backend, address=args.address, progress=not args.no_progress,
                             search_only=args.search_only)
    except KeyboardInterrupt as exc:
        print(f"imer: sweep interrupted; rerun the same command to resume (finished cells are kept, see {Path(args.out) / 'sweep.json'})", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
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
    rows = plan_sweep(spec, args.out, sources, timing=not args.no_timing)

    def hours(seconds: float | None) -> str:
        return "?" if seconds is None else f"{seconds / 3600:.2f}" if seconds >= 360 else f"{seconds / 3600:.4f}"

    print(f"Plan of {args.spec or 'the grid'} into {args.out} (nothing is run):\n")
    print("| stage | dataset | variant | cells | to do | epochs | s / epoch | CPU h to do | cost from |\n|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        per_epoch = "?" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.2f}"
        print(f"| {r['stage']} | {r['dataset']} | {r['variant']} | {r['cells']} | {r['todo']} | {r['epochs']} | {per_epoch} | "
              f"{hours(r['seconds'])} | {r['source']} |")
    print()
    known = sum(r["seconds"] for r in rows if r["seconds"] is not None) if any(r["seconds"] is not None for r in rows) else None
    unknown = list(dict.fromkeys(f"{r['dataset']}/{r['variant']}" for r in rows if r["seconds"] is None and r["todo"]))
    cells, todo = sum(r["cells"] for r in rows), sum(r["todo"] for r in rows)
    print(f"{cells} cells ({sum(r['cells'] for r in rows if r['stage'] == 'search')} search trials), {todo} to do; "
          f"estimated {hours(known)} CPU hours for the cells with a known cost = "
          f"{hours(None if known is None else known / max(1, args.workers))} hours with "
          f"--workers {max(1, args.workers)} "
          f"at {spec.threads} thread(s) each (median seconds per epoch of finished runs: wall time of the whole run, or training "
          f"time only for runs older than wall_seconds; without finished runs, one epoch timed now plus its start-up per cell)"
          + (f"; no estimate for {', '.join(unknown)}" if unknown else ""))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer sweep` and its options to the command parser."""
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
        "  imer sweep experiments/rehearsal.toml --budget 0.1 --out sweeps/try     # a tenth of every budget: a quick trial\n"
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
    sw.add_argument("--device", default="cpu",
                    help="where every cell trains and evaluates: cpu (default), cuda, cuda:N, mps or auto; on one GPU, --workers N "
                    "runs N cells side by side on it (see docs/benchmarks.md)")
    sw.add_argument("--threads", type=int, help="torch threads per worker (default: the cores available divided by --workers, at least 1)")
    sw.add_argument("--epochs", type=int, help="training epochs of every cell (default: each method's config)")
    sw.add_argument("--budget", type=float, metavar="F",
                    help="run every cell at this fraction (0 < F <= 1) of its epochs and whole-epoch stage lengths, e.g. 0.1 to try a spec "
                    "in a tenth of the time; recorded in each run (train.budget), and the report refuses to mix it with full-budget runs")
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
    sw.add_argument("--no-timing", action="store_true",
                    help="with --plan: do not time one epoch of the variants without finished runs (their cost is then unknown)")
    sw.add_argument("--costs", action="append", default=[], metavar="DIR",
                    help="with --plan: folders of finished runs to estimate seconds per epoch from (default: ./results and --out)")
    sw.set_defaults(func=cmd_sweep)
