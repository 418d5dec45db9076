"""Speed and memory of every method: seconds per training epoch and per evaluation pass,
peak RSS and parameter count, on real CMU-MOSI and on synthetic data of paper sizes.

Each (size, method) is measured in a fresh subprocess (so peak RSS is that
measurement's own) with one torch thread unless ``--threads`` says otherwise.

Sizes (``--sizes``, comma-separated):

* ``cmu-mosi``   the real bc-LSTM features (needs ``--data-dir``): 2,199 utterances, dims 73/100/100
* ``mosei``      synthetic at CMU-MOSEI size: 3,200 videos, 2..12 utterances (mean 7, ~22,400), dims 512/1024/1024
* ``iemocap``    synthetic IEMOCAP-like dialogues: 151 dialogues of 10..110 utterances (~9,000), dims 512/1024/1024
* ``n=<N>``      synthetic, about N utterances in videos of mean length 7, dims 512/1024/1024 (growth with size)
* ``len=<L>``    synthetic, 6,000 utterances in dialogues of exactly L utterances, dims 512/1024/1024 (growth with length)

Examples::

    python benchmarks/speed.py --data-dir ../shared/data                      # all methods, cmu-mosi + mosei + iemocap
    python benchmarks/speed.py --methods early-fusion,comp --sizes n=2000,n=8000,n=23000 --out benchmarks/results/size
    python benchmarks/speed.py --sizes len=10,len=30,len=110 --epochs 2

Writes ``<out>/speed.json`` and ``<out>/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIG_DIMS = {"audio": 512, "text": 1024, "video": 1024}
DEFAULT_SIZES = "cmu-mosi,mosei,iemocap"


def make_dataset(size: str, data_dir: str | None):
    """The dataset of a ``--sizes`` item (see module docstring)."""
    from imer.data import load_dataset, make_synthetic

    if size == "cmu-mosi":
        return load_dataset("cmu-mosi", data_dir)
    if size == "mosei":
        return make_synthetic(task="regression", num_groups=3200, min_len=2, max_len=12, dims=BIG_DIMS, seed=0)
    if size == "iemocap":
        return make_synthetic(task="classification", num_groups=151, min_len=10, max_len=110, dims=BIG_DIMS, seed=0)
    if size.startswith("n="):
        return make_synthetic(task="regression", num_groups=max(1, round(int(size[2:]) / 7)), min_len=2, max_len=12, dims=BIG_DIMS, seed=0)
    if size.startswith("len="):
        length = int(size[4:])
        return make_synthetic(task="classification", num_groups=max(10, round(6000 / length)), min_len=length, max_len=length, dims=BIG_DIMS, seed=0)
    raise SystemExit(f"unknown size {size!r}; use cmu-mosi, mosei, iemocap, n=<N> or len=<L>")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def measure(method: str, size: str, epochs: int, eval_repeats: int, data_dir: str | None, threads: int, overrides: list[str]) -> dict[str, Any]:
    """One measurement (runs inside the worker subprocess)."""
    import numpy as np
    import torch

    from imer.data import RandomMissing, derive_seed
    from imer.experiments.config import build_run_config
    from imer.experiments.run import prepare_data, split_mask
    from imer.models import create_model
    from imer.training.trainer import EvalSet, Trainer, predict_split

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    dataset = make_dataset(size, data_dir)
    config = build_run_config(method, "cmu-mosi" if size == "cmu-mosi" else "synthetic", overrides=overrides,
                              seed=0, train__epochs=epochs, train__progress=False, train__threads=threads, missing__rate=0.4)
    data = prepare_data(config, dataset)
    load_seconds = time.perf_counter() - t0
    rss_data = peak_rss_mb()
    train_available = data.dataset.available[data.indices["train"]]

    def train_mask(epoch: int) -> np.ndarray:
        return RandomMissing(0.4).apply(train_available, np.random.default_rng(derive_seed("bench", epoch)))

    valid = EvalSet(data.batchers["valid"], split_mask(config, data, "valid", RandomMissing(0.4)))
    test = EvalSet(data.batchers["test"], split_mask(config, data, "test", RandomMissing(0.4)))
    model = create_model(method, data.spec, config.model)
    trainer = Trainer(model, epochs=epochs, batch_size=config.train.batch_size, lr=config.train.lr, weight_decay=config.train.weight_decay,
                      optimizer=config.train.optimizer, grad_clip=config.train.grad_clip, select_metric=_select(data.spec.task),
                      seed=0, progress=False, eval_test_each_epoch=False)
    result = trainer.fit(data.batchers["train"], train_mask, valid)
    epoch_seconds = [h["seconds"] for h in result.history]
    eval_seconds = []
    for _ in range(eval_repeats):
        t = time.perf_counter()
        predict_split(model, test, config.train.batch_size, torch.device("cpu"))
        eval_seconds.append(time.perf_counter() - t)
    lengths = np.unique(data.dataset.group_ids, return_counts=True)[1]
    return {
        "method": method,
        "size": size,
        "uses_context": model.uses_context,
        "utterances": {s: int(len(i)) for s, i in data.indices.items()},
        "groups": int(len(lengths)),
        "mean_length": float(lengths.mean()),
        "max_length": int(lengths.max()),
        "dims": dict(data.dataset.dims),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "batch_size": config.train.batch_size,
        "epochs": epochs,
        "seconds_first_epoch": epoch_seconds[0],
        "seconds_per_epoch": float(np.mean(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds)),
        "seconds_per_eval": float(np.median(eval_seconds)),
        "seconds_load": load_seconds,
        "peak_rss_mb_data": rss_data,
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
    }


def _select(task: str) -> str:
    from imer.evaluation.metrics import headline_metrics

    return headline_metrics(task)[0]


def machine() -> dict[str, Any]:
    """Machine, versions, commit and date of a benchmark run."""
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(results: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    """Result tables, one per size, plus µs per training utterance for growth comparisons."""
    lines = [f"Command: `{command}`  ", f"Commit {info['commit']}, {info['date']}, {info['cpu']} ({info['nproc']} cores visible), "
             f"torch {info['torch']}, {results[0]['threads'] if results else 1} thread(s).", ""]
    for size in dict.fromkeys(r["size"] for r in results):
        rows = [r for r in results if r["size"] == size]
        ok = next((r for r in rows if "error" not in r), None)
        if ok:
            u = ok["utterances"]
            lines.append(f"**{size}** — {u['train']}/{u['valid']}/{u['test']} train/valid/test utterances, {ok['groups']} groups "
                         f"(mean length {ok['mean_length']:.1f}, max {ok['max_length']}), dims {'/'.join(map(str, ok['dims'].values()))}")
        else:
            lines.append(f"**{size}**")
        lines += ["", "| method | context | params | s / train epoch | µs / train utterance | s / eval pass (test) | peak RSS MB (data → total) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | | | failed: {r['error'][:80]} | | | |")
                continue
            per_utt = 1e6 * r["seconds_per_epoch"] / r["utterances"]["train"]
            lines.append(f"| {r['method']} | {'yes' if r['uses_context'] else 'no'} | {r['parameters']:,} | {r['seconds_per_epoch']:.2f} | {per_utt:.0f} | "
                         f"{r['seconds_per_eval']:.2f} | {r['peak_rss_mb_data']:.0f} → {r['peak_rss_mb']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def run_one(args: argparse.Namespace, method: str, size: str) -> dict[str, Any]:
    """Measure in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--worker", "--methods", method, "--sizes", size, "--epochs", str(args.epochs),
           "--eval-repeats", str(args.eval_repeats), "--threads", str(args.threads)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    for item in args.set:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"method": method, "size": size, "error": f"timeout after {args.timeout}s"}
    if proc.returncode != 0:
        return {"method": method, "size": size, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all", help="comma-separated methods, or all (default: every registered method)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per measurement; the first is reported apart as warm-up (default 3)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="evaluation passes over the test split; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-dir", default=os.environ.get("IMER_DATA"), help="data folder for cmu-mosi (default $IMER_DATA)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every method, e.g. hidden=128")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per measurement")
    parser.add_argument("--out", default="benchmarks/results", help="folder for speed.json and speed.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(measure(args.methods, args.sizes, args.epochs, args.eval_repeats, args.data_dir, args.threads, args.set)))
        return 0

    from imer.models import list_models

    methods = list_models() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if "cmu-mosi" in sizes and not args.data_dir:
        parser.error("size cmu-mosi needs --data-dir (or IMER_DATA)")
    info = machine()
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sizes:
        for method in methods:
            r = run_one(args, method, size)
            results.append(r)
            status = r.get("error") or f"{r['seconds_per_epoch']:.2f} s/epoch, {r['seconds_per_eval']:.2f} s/eval, {r['peak_rss_mb']:.0f} MB"
            print(f"{size:>10} {method:>18}: {status}", flush=True)
            (out / "speed.json").write_text(json.dumps({"machine": info, "command": command, "results": results}, indent=2) + "\n")
            (out / "speed.md").write_text(markdown(results, info, command))
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
