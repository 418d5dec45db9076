"""`imer list`: methods, datasets, run options, a method's options, or the variants of a spec file."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from imer.cli.common import table
from imer.errors import ConfigError


def cmd_list(args: argparse.Namespace) -> int:
    from imer.data import list_datasets
    from imer.experiments.spec import filter_names
    from imer.models import get_model_class, list_models

    if args.options:
        from imer.config.describe import method_option_rows, option_rows

        columns = ["key", "type", "default", "allowed", "meaning"]
        if not args.pattern:
            table("run options (--set KEY=VALUE)", columns, option_rows())
            return 0
        methods = filter_names(list_models(), args.pattern)
        if not methods:
            raise ConfigError(f"no method matches '{args.pattern}'; registered: {', '.join(list_models())}")
        for method in methods:
            table(f"options of {method} (--set model.NAME=VALUE)", columns, method_option_rows(method))
        return 0
    spec_file = args.spec
    if spec_file is None and args.pattern and (args.pattern.endswith((".toml", ".json")) or Path(args.pattern).is_file()):
        spec_file, args.pattern = args.pattern, None  # `imer list SPEC` = `imer list --spec SPEC`
    if spec_file:
        return _list_variants(spec_file, args.pattern)
    table("methods", ["name", "kind", "description"],
           [[m, "dialogue" if get_model_class(m).uses_context else "utterance", _method_description(get_model_class(m))]
            for m in filter_names(list_models(), args.pattern)])
    table("datasets", ["name", "description"], [[k, v] for k, v in list_datasets().items() if filter_names([k], args.pattern)])
    return 0


def _list_variants(path: str, pattern: str | None) -> int:
    """The variants of a spec file with their resolved epochs (variant, spec, else the method's config) and the spec-wide settings."""
    from imer.config import build_run_config
    from imer.experiments.grid import SweepSpec
    from imer.experiments.spec import filter_names, load_spec, overrides_for

    kwargs, experiment = load_spec(path)
    spec = SweepSpec(**kwargs, experiment=experiment)
    shown = set(filter_names([v.name for v in spec.variants], pattern))
    rows = []
    for v in spec.variants:
        if v.name in shown:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the sweep itself warns about its configs; a listing only shows them
                config = build_run_config(v.method, spec.datasets[0], config_file=v.config, overrides=overrides_for(v.method, spec.overrides) + list(v.overrides),
                                          settings=spec.build_settings(v))
            source = "variant" if v.epochs else "spec" if spec.epochs else f"{v.method} config"
            rows.append([v.name, v.method, v.base or "", (f"preset {v.config} " if v.config else "") + " ".join(v.overrides),
                         f"{config.train.epochs} ({source})"])
    table(f"variants of {path}", ["name", "method", "base", "overrides (base's first)", "epochs"], rows)
    every = " ".join(spec.overrides) or "none"
    print(f"every variant: set {every}; datasets {', '.join(spec.datasets)}; missing rates {', '.join(f'{r:g}' for r in spec.rates)}; "
          f"seeds {', '.join(map(str, spec.seeds))}" + (f"; folds {', '.join(map(str, spec.folds))}" if spec.folds else ""))
    return 0


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].rstrip(".") if text and text.strip() else ""


def _method_description(cls: type) -> str:
    """First line of the method module's docstring (every method file starts with one)."""
    return _first_line(sys.modules[cls.__module__].__doc__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer list` and its options to the command parser."""
    ls = sub.add_parser("list", help="registered methods and datasets, or the variants of a spec file",
                        epilog="examples:\n  imer list\n  imer list 'comp*'\n  imer list experiments/mosi_comp.toml\n  imer list 'comp*' --spec experiments/mosi_comp.toml\n  imer list --options\n  imer list --options comp",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("pattern", nargs="?", help="shell-style name filter, e.g. 'comp*'; or a spec file: list its variants")
    ls.add_argument("--spec", help="list the variants of this experiment spec file instead")
    ls.add_argument("--options", action="store_true", help="list the run options (train, missing, data, seed) instead, "
                    "or with a method name or pattern that method's options")
    ls.set_defaults(func=cmd_list)
