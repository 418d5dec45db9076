"""Speed and memory of every method: seconds per training epoch and per evaluation pass,
peak RSS and parameter count, on real CMU-MOSI and on synthetic data of paper sizes.

Each (size, method) is measured in a fresh subprocess (so peak RSS is that
measurement's own) with one torch thread unless ``--threads`` says otherwise.
Inside it, the ``before`` variant (the pre-issue-10 code path: padded
computation, unbucketed batches, per-parameter Adam loop, test split and a
checkpoint after every epoch) and the ``after`` variant (current defaults) run
their epochs interleaved with the same seed, and the ratio is printed: on a
shared machine absolute times vary by 2x from run to run, ratios much less.
With ``--baseline-src DIR`` (a source tree of another commit, e.g.
``git archive main | tar -x -C DIR``) a third variant, ``main``, runs that
tree's model code inside the same process under the current trainer, so
two versions of a method compare epoch by epoch under the same load.

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
    python benchmarks/speed.py --device cuda --variants after --data-dir ../shared/data --out benchmarks/results/gpu   # GPU epoch times

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


# What "before" means: the settings of the code before issue 10, reachable only here.
LEGACY_OVERRIDES = ["packed=false", "train.bucket=0"]


def _legacy_optimizer(model, config):
    """The optimizer as it was before issue 10: torch's default per-parameter loop (no fused kernels)."""
    import torch

    kwargs = {"lr": config.train.lr, "weight_decay": config.train.weight_decay}
    if config.train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), momentum=0.9, foreach=False, **kwargs)
    cls = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), foreach=False, **kwargs)


def baseline_model_factory(src: str):
    """``create_model`` of the imer package in source tree ``src`` (its ``src/`` or itself), imported beside this one.

    The other tree's modules are imported under the usual names and moved out
    of ``sys.modules`` afterwards, so its model classes keep their own layers
    while everything else (data, trainer) stays this tree's.
    """
    root = Path(src) / "src" if (Path(src) / "src" / "imer").is_dir() else Path(src)
    if not (root / "imer").is_dir():
        raise SystemExit(f"--baseline-src {src}: no imer package in it")
    ours = {k: v for k, v in sys.modules.items() if k == "imer" or k.startswith("imer.")}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        import imer.models as baseline

        baseline.list_models()  # registers every method now, from that tree's modules
        create = baseline.create_model
    finally:
        sys.path.remove(str(root))
        for name in [k for k in sys.modules if k == "imer" or k.startswith("imer.")]:
            del sys.modules[name]
        sys.modules.update(ours)
    return create


def measure(method: str, size: str, epochs: int, eval_repeats: int, data_dir: str | None, threads: int, overrides: list[str],
            variants: list[str], baseline_src: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """One measurement (runs inside the worker subprocess): the variants' epochs interleaved, same seed.

    ``after`` = the current defaults; ``before`` = :data:`LEGACY_OVERRIDES`, the
    plain optimizer loop, the test split evaluated and a checkpoint written
    after every epoch (what every epoch cost before issue 10); ``main`` = the
    current defaults with the model code of ``baseline_src``. Interleaving
    epoch by epoch exposes both variants to the same machine load, so their
    ratio is meaningful even when absolute times are not. ``device`` ``cuda``
    trains and evaluates on the GPU (timings after ``torch.cuda.synchronize()``,
    peak GPU memory reported beside the RSS).
    """
    import tempfile

    import numpy as np
    import torch

    from imer.data import RandomMissing, derive_seed
    from imer.config import build_run_config
    from imer.experiments.run import prepare_data, split_mask
    from imer.models import create_model
    from imer.training.trainer import EvalSet, Trainer, predict_split

    torch.set_num_threads(threads)
    target = torch.device(device)
    gpu = target.type == "cuda"

    def clock() -> float:
        if gpu:
            torch.cuda.synchronize(target)  # GPU work is asynchronous: wait for it before reading the clock
        return time.perf_counter()

    baseline_create = baseline_model_factory(baseline_src) if "main" in variants else None
    t0 = time.perf_counter()
    dataset = make_dataset(size, data_dir)
    load_seconds = time.perf_counter() - t0
    rss_data = peak_rss_mb()
    scratch = Path(tempfile.mkdtemp(prefix="imer-speed-"))
    runs = {}
    for variant in variants:
        extra = LEGACY_OVERRIDES if variant == "before" else []
        config = build_run_config(method, "cmu-mosi" if size == "cmu-mosi" else "synthetic", overrides=[*overrides, *extra],
                                  settings={"seed": 0, "train.epochs": epochs, "train.progress": False, "train.threads": threads, "missing.rate": 0.4})
        data = prepare_data(config, dataset)
        torch.manual_seed(0)
        model = (baseline_create if variant == "main" else create_model)(method, data.spec, config.model)
        trainer = Trainer(model, config.train, select_metric=_select(data.spec.task), seed=0,
                          run_dir=scratch / variant if variant == "before" else None, device=target)
        if variant == "before":
            trainer.optimizer = _legacy_optimizer(model, config)
            (scratch / variant).mkdir()
        train_available = data.dataset.available[data.indices["train"]]
        runs[variant] = {
            "config": config, "data": data, "model": model, "trainer": trainer, "available": train_available,
            "valid": EvalSet(data.batchers["valid"], split_mask(config, data, "valid", RandomMissing(0.4))),
            "test": EvalSet(data.batchers["test"], split_mask(config, data, "test", RandomMissing(0.4))),
            "train": [], "eval_valid": [], "eval_test": [], "checkpoint": [], "stages": [],
        }
    for epoch in range(epochs):
        mask = RandomMissing(0.4).apply(runs[variants[0]]["available"], np.random.default_rng(derive_seed("bench", epoch)))
        for variant in variants if epoch % 2 == 0 else variants[::-1]:  # alternate who goes first
            r = runs[variant]
            trainer, model = r["trainer"], r["model"]
            model.on_epoch_start(epoch)
            r["stages"].append(model.stage())
            t = clock()
            trainer._train_epoch(r["data"].batchers["train"], mask, epoch)
            r["train"].append(clock() - t)
            for split in ("valid", "test"):
                t = clock()
                predict_split(model, r[split], r["config"].train.batch_size, target)
                r[f"eval_{split}"].append(clock() - t)
            if variant == "before":
                t = time.perf_counter()
                trainer._checkpoint(epoch, {"epoch": epoch, "score": 0.0, "valid": {}, "test": {}, "state": {k: v.clone() for k, v in model.state_dict().items()}}, [])
                r["checkpoint"].append(time.perf_counter() - t)
    for _ in range(eval_repeats - 1):
        for variant in variants:
            r = runs[variant]
            t = clock()
            predict_split(r["model"], r["test"], r["config"].train.batch_size, target)
            r["eval_test"].append(clock() - t)
    data = runs[variants[0]]["data"]
    model = runs[variants[0]]["model"]
    lengths = np.unique(data.dataset.group_ids, return_counts=True)[1]
    steady = slice(1, None) if epochs > 1 else slice(None)
    result = {
        "method": method,
        "size": size,
        "uses_context": model.uses_context,
        "utterances": {s: int(len(i)) for s, i in data.indices.items()},
        "groups": int(len(lengths)),
        "mean_length": float(lengths.mean()),
        "max_length": int(lengths.max()),
        "dims": dict(data.dataset.dims),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "batch_size": runs[variants[0]]["config"].train.batch_size,
        "epochs": epochs,
        "seconds_load": load_seconds,
        "peak_rss_mb_data": rss_data,
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
        "device": device,
        "gpu": torch.cuda.get_device_name(target) if gpu else None,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(target) / 2**20 if gpu else None,
        "variants": {},
    }
    for variant in variants:
        r = runs[variant]
        train_s = float(np.mean(r["train"][steady]))
        valid_s, test_s = float(np.median(r["eval_valid"])), float(np.median(r["eval_test"]))
        checkpoint_s = float(np.median(r["checkpoint"])) if r["checkpoint"] else 0.0
        # what one epoch of `imer train` costs: train + valid (+ test and a checkpoint every epoch before issue 10)
        total = train_s + valid_s + (test_s + checkpoint_s if variant == "before" else 0.0)
        result["variants"][variant] = {
            "seconds_first_epoch": r["train"][0], "seconds_train": train_s, "seconds_valid": valid_s, "seconds_test": test_s,
            "seconds_checkpoint": checkpoint_s, "seconds_epoch_total": total, "stages": r["stages"],
        }
    if "after" in result["variants"]:
        a = result["variants"]["after"]
        for ref in (v for v in variants if v != "after"):
            b = result["variants"][ref]
            result.setdefault("speedup", {})[ref] = {"train": b["seconds_train"] / a["seconds_train"],
                                                     "epoch_total": b["seconds_epoch_total"] / a["seconds_epoch_total"]}
    return result


def _device(parser: argparse.ArgumentParser, name: str) -> str:
    """The device to measure on: ``auto`` is the GPU when torch sees one; a GPU asked for and absent is refused."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {name}: torch sees no GPU here")
    if name != "cpu" and not name.startswith("cuda"):
        parser.error(f"--device {name}: use cpu, cuda, cuda:N or auto")
    return name


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
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": load}


def markdown(results: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    """Result tables, one per size: after (current) and, where measured, before (legacy) and their ratio."""
    lines = [f"Command: `{command}`  ", f"Commit {info['commit']}, {info['date']}, {info['cpu']} ({info['nproc']} cores visible, "
             f"load average {info['load']}), torch {info['torch']}, {next((r['threads'] for r in results if 'threads' in r), 1)} thread(s), "
             f"device {next((r['gpu'] or r['device'] for r in results if 'device' in r), 'cpu')}.", ""]
    for size in dict.fromkeys(r["size"] for r in results):
        rows = [r for r in results if r["size"] == size]
        ok = next((r for r in rows if "error" not in r), None)
        if ok:
            u = ok["utterances"]
            lines.append(f"**{size}** — {u['train']}/{u['valid']}/{u['test']} train/valid/test utterances, {ok['groups']} groups "
                         f"(mean length {ok['mean_length']:.1f}, max {ok['max_length']}), dims {'/'.join(map(str, ok['dims'].values()))}")
        else:
            lines.append(f"**{size}**")
        order = list(ok["variants"]) if ok else ["after"]
        refs = [v for v in order if v != "after"] if "after" in order else []
        arrow = " → ".join(order)
        ratio_cols = [f"× train vs {ref}" for ref in refs] + [f"× epoch vs {ref}" for ref in refs]
        lines += ["", f"| method | params | s train ({arrow}) | s valid | s test | s epoch total ({arrow}) | " + " | ".join(ratio_cols)
                  + (" | " if ratio_cols else "") + "peak RSS MB (data → total) |",
                  "|---|---:|---:|---:|---:|---:|" + "---:|" * len(ratio_cols) + "---:|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | | failed: {r['error'][:80]} |" + " |" * (4 + len(ratio_cols)))
                continue
            v = r["variants"]
            chain = lambda key: " → ".join(f"{v[name][key]:.2f}" for name in order if name in v)
            ratios = [f"{r['speedup'][ref]['train']:.2f}" for ref in refs] + [f"{r['speedup'][ref]['epoch_total']:.2f}" for ref in refs]
            stage = next(iter(v.values()))["stages"][-1]
            lines.append(f"| {r['method']} ({stage}) | {r['parameters']:,} | {chain('seconds_train')} | {chain('seconds_valid')} | "
                         f"{chain('seconds_test')} | {chain('seconds_epoch_total')} | " + "".join(f"{x} | " for x in ratios)
                         + f"{r['peak_rss_mb_data']:.0f} → {r['peak_rss_mb']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def run_one(args: argparse.Namespace, method: str, size: str) -> dict[str, Any]:
    """Measure in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--worker", "--methods", method, "--sizes", size, "--epochs", str(args.epochs),
           "--eval-repeats", str(args.eval_repeats), "--threads", str(args.threads), "--variants", args.variants, "--device", args.device]
    if args.baseline_src:
        cmd += ["--baseline-src", args.baseline_src]
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
    parser.add_argument("--variants", default="before,after",
                        help="before (the pre-issue-10 path: padded, unbucketed, plain Adam loop, test + checkpoint every epoch) "
                        "and/or after (current defaults) and/or main (the model code of --baseline-src); several = interleaved, "
                        "with ratios to after (default before,after)")
    parser.add_argument("--baseline-src", help="source tree of another commit for the main variant, e.g. from git archive main")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda, cuda:N, or auto: the GPU when torch sees one, else the CPU (GPU epoch times)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from imer.io import dumps, write_json  # strict JSON (null for NaN), like every file imer writes

    if args.worker:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        print(dumps(measure(args.methods, args.sizes, args.epochs, args.eval_repeats, args.data_dir, args.threads, args.set, variants,
                            args.baseline_src, args.device)))
        return 0

    from imer.models import list_models

    methods = list_models() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if "main" in args.variants.split(",") and not args.baseline_src:
        parser.error("variant main needs --baseline-src")
    if "cmu-mosi" in sizes and not args.data_dir:
        parser.error("size cmu-mosi needs --data-dir (or IMER_DATA)")
    args.device = _device(parser, args.device)
    info = machine()
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sizes:
        for method in methods:
            r = run_one(args, method, size)
            results.append(r)
            status = r.get("error") or ", ".join(f"{v}: {x['seconds_train']:.2f} s train, {x['seconds_epoch_total']:.2f} s epoch" for v, x in r["variants"].items())
            for ref, x in r.get("speedup", {}).items():
                status += f"; vs {ref}: × {x['train']:.2f} train, × {x['epoch_total']:.2f} epoch"
            if "peak_rss_mb" in r:
                status += f"; {r['peak_rss_mb']:.0f} MB"
            print(f"{size:>10} {method:>18}: {status}", flush=True)
            write_json(out / "speed.json", {"machine": info, "command": command, "results": results})
            (out / "speed.md").write_text(markdown(results, info, command))
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
