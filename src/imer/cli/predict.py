"""`imer predict`: new utterances, from a feature file or raw input, with a trained run."""

from __future__ import annotations

import argparse

from imer.cli.common import THREADS_HELP
from imer.errors import IMERError


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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer predict` and its options to the command parser."""
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
