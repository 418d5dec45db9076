"""`imer predict`: new utterances, from a feature file or raw input, with a trained run."""

from __future__ import annotations

import argparse

from imer.cli.common import DEVICE_HELP, THREADS_HELP
from imer.errors import IMERError


def cmd_predict(args: argparse.Namespace) -> int:
    if args.text is not None and args.text_file is not None:
        raise IMERError("predict: give --text or --text-file, not both")
    texts = [args.text] if args.text is not None else _sentences(args.text_file) if args.text_file is not None else None
    raw = {"text": texts, "audio": None if args.audio is None else [args.audio], "video": None if args.openface is None else [args.openface]}
    if args.input is None:
        return _predict_raw(args, raw)
    if any(v is not None for v in raw.values()):
        raise IMERError("predict: give either --input FILE.npz or raw input (--text/--audio/--openface), not both")
    if args.out is None:
        raise IMERError("predict --input: --out is required (a .csv or .json file)")
    from imer.experiments.inference import predict
    from imer.training.threads import configure_threads

    configure_threads(args.threads)

    rows = predict(args.model, args.input, args.out, device=args.device)
    print(f"{len(rows)} predictions written to {args.out}")
    return 0


def _sentences(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file, one transcript each."""
    from pathlib import Path

    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise IMERError(f"--text-file {path}: not UTF-8 text") from None
    sentences = [line for line in lines if line]
    if not sentences:
        raise IMERError(f"--text-file {path}: holds no sentence (one per line)")
    return sentences


def _predict_raw(args: argparse.Namespace, raw: dict[str, list[str] | None]) -> int:
    from imer.experiments.raw_predict import predict_raw

    rows = predict_raw(args.model, raw, args.out, device=args.device)
    print(f"{args.model}: {'prediction' if len(rows) == 1 else f'{len(rows)} predictions'} from {', '.join(rows[0]['used'])}")
    for number, row in enumerate(rows, start=1):
        if len(rows) > 1:  # several utterances come only from --text-file
            print(f"{number}: {raw['text'][number - 1]}")
        for k, v in row.items():
            if k not in ("utterance_id", "used", "missing"):
                print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    for m, why in rows[0]["missing"].items():
        print(f"{m}: missing ({why})")
    if args.out:
        print(f"{'prediction' if len(rows) == 1 else 'predictions'} written to {args.out}")
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
                       "  imer predict --model runs/mine --text \"it was really good\" --audio clip.wav\n"
                       "  imer predict --model runs/mine --text-file sentences.txt --out predictions.csv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--input", help="feature file: .npz with x_<modality> arrays, or a .csv table with columns <modality>_0, <modality>_1, ... (empty = absent)")
    p.add_argument("--text", help="raw input: the utterance's transcript")
    p.add_argument("--text-file", metavar="FILE",
                   help="raw input: a UTF-8 text file with one transcript per line; one prediction per line (text only), in one batch")
    p.add_argument("--audio", help="raw input: the utterance's audio file (WAV/FLAC)")
    p.add_argument("--openface", help="raw input: the utterance's OpenFace 2.x CSV (video)")
    p.add_argument("--out", help="output file (.csv or .json); required with --input")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.set_defaults(func=cmd_predict)
