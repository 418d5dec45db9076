"""`imer report`: tables, report page and plots of a sweep directory."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from imer.reports.render import build_report

    report = build_report(args.dir, out_dir=args.out, plots=not args.no_plots)
    if args.format:
        print(report.text(args.format))
    else:
        report.print_terminal()
    print(f"tables, report.json and plots written to {report.out_dir}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer report` and its options to the command parser."""
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
