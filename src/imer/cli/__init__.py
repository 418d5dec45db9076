"""The ``imer`` command line: train, evaluate, predict, inspect and convert data, sweeps and reports.

One module per command (``imer/cli/<command>.py``) holds the command and its
parser (``add_parser``); this module assembles them and turns errors into one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from imer.cli import data, evaluate, features, listing, predict, report, sweep, train
from imer.cli.common import Parser
from imer.errors import IMERError, stop_on_sigterm
from imer.version import __version__

COMMANDS = (train, evaluate, predict, features, data, sweep, report, listing)  # in the order `imer --help` lists them

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


def build_parser() -> argparse.ArgumentParser:
    """The ``imer`` parser with every command of :data:`COMMANDS`."""
    parser = Parser(
        prog="imer",
        description="Incomplete multimodal emotion recognition: train and compare methods under missing modalities.",
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
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
        restore = stop_on_sigterm()
        try:
            args = build_parser().parse_args(argv)
            return int(args.func(args) or 0)
        except KeyboardInterrupt as exc:
            print("imer: interrupted (a training run continues with --resume)", file=sys.stderr)
            return 128 + getattr(exc, "signum", signal.SIGINT)
        except Exception as exc:
            if debug:
                raise
            status, text = describe_error(exc)
            print(f"imer: error: {text}", file=sys.stderr)
            return status
        finally:
            restore()

