"""ComP at full budget, side by side: the published code, `published-exact`, `published` and imer's default (issue 26).

`published-exact` runs twice: with the published mask draw and under imer's protocol (fixed masks), which splits its
gap to `published` into the protocol's part and the fixed defects' part; `published` with one group of defects put back
(absent modalities act) splits the defects' part further.

The grid: CMU-MOSI with the bc-LSTM release's features and split (test videos never seen by the feature extractors;
validation carved from the training videos, as imer's ``cmu-mosi`` does it), z-scored on the training part; rates
0.4 and 0.7; seeds 0-2; 300 epochs with the stage switch at 150; batch 32. Both selection rules (best test F1, the
published one, and best validation F1) are read from the per-epoch test and validation curves of the same runs.

    # 1. the published code's input: imer's cmu-mosi split and scaling, in the GCNet layout (outside the repository)
    python benchmarks/comp_side_by_side.py export --data-dir ../shared/data --out /tmp/comp-sbs/layout
    # 2. the published code (a checkout of WenjueHE/2026-AAAI-ComP at 28192d3, never copied into this repository)
    python benchmarks/comp_side_by_side.py published --published /tmp/comp-published --layout /tmp/comp-sbs/layout \\
        --rates 0.4,0.7 --seeds 0,1,2 --out results/comp_exact            # --device cuda on a GPU
    # 3. imer's implementations (experiments/comp_exact.toml)
    imer sweep experiments/comp_exact.toml --data-dir ../shared/data --workers 2 --out results/comp_exact
    # 4. tables and the curves figure
    python benchmarks/comp_side_by_side.py report results/comp_exact --out docs/results/comp_exact

    # all four steps at 3 epochs (switch at 2), seed 0, into a scratch folder; also checks that the driver of step 2
    # trains exactly as the unmodified published script does (same seed -> the same test numbers printed every epoch)
    python benchmarks/comp_side_by_side.py smoke --published /tmp/comp-published --data-dir ../shared/data --out /tmp/comp-sbs-smoke

Step 2 drives the published code's own functions (``get_loaders``, ``build_model``, ``train_or_eval_model``) with the
published script's seeding, optimizer and epoch loop; its only additions are a validation pass after each epoch,
run with every random generator saved and restored so that training stays bit for bit that of the script, and
per-epoch records in imer's ``history.jsonl`` keys. Each finished run is skipped when the command is repeated.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import re
import runpy
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "experiments" / "comp_exact.toml"
MODALITIES = ("audio", "text", "video")
# implementation label -> run folders (the sweep's variant names; the published code's own folder)
IMPLEMENTATIONS = {"published code": "published-code", "published-exact": "comp-published-exact@{rate}",
                   "published-exact, fixed masks": "comp-published-exact-fixed-masks", "published, absent modalities act": "comp-published-absent-act",
                   "published": "comp-published", "default": "comp"}
STEADY_AFTER_SWITCH = 20  # steady state: epochs from stage_epoch + 20 to the end (170-299 at 300 / 150)


# ----- 1. export ------------------------------------------------------------------------------------------------
def export(data_dir: Path, out: Path) -> None:
    """imer's ``cmu-mosi`` (split, carved validation, training-set z-scores) as the published code reads it."""
    from imer.config import build_run_config
    from imer.data import safe_load_pickle
    from imer.experiments.run import prepare_data

    config = build_run_config("comp", "cmu-mosi", overrides=[f"data.data_dir={data_dir}"])
    data = prepare_data(config)
    ds = data.dataset
    scaled = data.scaler.transform(ds.features, ds.available)
    row_of = {str(u): i for i, u in enumerate(ds.utterance_ids)}
    for m in MODALITIES:
        folder = out / "features" / m
        folder.mkdir(parents=True, exist_ok=True)
        for utt, i in row_of.items():
            np.save(folder / f"{utt}.npy", scaled[m][i].astype(np.float32))
    ids, labels, speakers, sentences = safe_load_pickle(Path(data_dir) / "gcnet-meta" / "CMUMOSI_features_raw_2way.pkl")[:4]
    splits = {s: sorted({str(g) for g in ds.group_ids[idx]}) for s, idx in data.indices.items()}
    videos = [v for s in ("train", "valid", "test") for v in splits[s]]
    for v in videos:  # every utterance of an exported video has features, in the pickle's order
        missing = [u for u in ids[v] if str(u) not in row_of]
        if missing:
            raise SystemExit(f"video {v}: utterances {missing[:3]} have no bc-LSTM features")
    meta = [{v: ids[v] for v in videos}, {v: labels[v] for v in videos}, {v: speakers[v] for v in videos}, {v: sentences[v] for v in videos},
            splits["train"], splits["valid"], splits["test"]]
    (out / "labels.pkl").write_bytes(pickle.dumps(meta))
    (out / "export.json").write_text(json.dumps({"videos": {s: len(v) for s, v in splits.items()}, "utterances": len(row_of),
                                                 "source": "imer cmu-mosi (bc-LSTM release split, validation carved with split_seed 0), "
                                                           "z-scored with imer's training-set scaler"}, indent=1))
    print(f"{out}: {len(row_of)} utterances, videos " + ", ".join(f"{s} {len(v)}" for s, v in splits.items()))


# ----- 2. the published code --------------------------------------------------------------------------------------
def load_published(checkout: Path, layout: Path, log_dir: Path) -> types.ModuleType:
    """Import the published ``train_mr`` with a ``config`` module pointing at ``layout`` (its own stays untouched)."""
    config = types.ModuleType("config")
    config.PATH_TO_FEATURES = {"CMUMOSI": str(layout / "features")}
    config.PATH_TO_LABEL = {"CMUMOSI": str(layout / "labels.pkl")}
    config.LOG_DIR = str(log_dir)
    sys.modules["config"] = config
    sys.path[:0] = [str(checkout / "ComP")]
    import train_mr  # noqa: PLC0415  (the published module, found through sys.path)

    return train_mr


def published_args(rate: float, seed: int, epochs: int, stage_epoch: int, batch_size: int, device: str) -> argparse.Namespace:
    """The README's CMU-MOSI command line, as the published script parses it."""
    import torch

    return argparse.Namespace(audio_feature="audio", text_feature="text", video_feature="video", dataset="CMUMOSI", time_attn=False, depth=4, num_heads=2,
                              drop_rate=0.5, attn_drop_rate=0.0, hidden=256, n_classes=1, n_speakers=1, no_cuda=device == "cpu", gpu=0, lr=1e-4, l2=1e-5,
                              batch_size=batch_size, epochs=epochs, num_folder=1, seed=seed, stage_epoch=stage_epoch, lbd=0.3, mask_rate=rate, seq_len=65,
                              device=torch.device(device))


def _seed_like_the_script(seed: int) -> None:
    import torch

    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


@contextlib.contextmanager
def _generators_restored():
    """Run a block without moving python's, numpy's or torch's random generators."""
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def _metrics(result: tuple) -> dict:
    """The published ``train_or_eval_model`` result in imer's metric names (regression)."""
    mae, corr, acc, f1, heads = result[:5]
    return {"acc2": float(acc), "f1": float(f1), "mae": float(mae), "corr": float(corr), "modality_acc": dict(zip(MODALITIES, map(float, heads)))}


def run_published(train_mr: types.ModuleType, args: argparse.Namespace, out: Path) -> dict:
    """One run of the published code, epoch by epoch; writes ``history.jsonl`` and ``metrics.json`` into ``out``."""
    import torch
    from torch.utils.data import DataLoader, SubsetRandomSampler

    train_mr.device = args.device
    _seed_like_the_script(args.seed)
    root = Path(train_mr.config.PATH_TO_FEATURES["CMUMOSI"])
    with contextlib.redirect_stdout(io.StringIO()):
        train_loaders, test_loaders, adim, tdim, vdim = train_mr.get_loaders(audio_root=str(root / "audio"), text_root=str(root / "text"), video_root=str(root / "video"),
                                                                             num_folder=1, batch_size=args.batch_size, dataset="CMUMOSI", num_workers=0)
        model = train_mr.build_model(args, adim, tdim, vdim)
    dataset = train_loaders[0].dataset
    n_train, n_valid = len(dataset.trainVids), len(dataset.valVids)
    valid_loader = DataLoader(dataset, batch_size=args.batch_size, sampler=SubsetRandomSampler(list(range(n_train, n_train + n_valid))), collate_fn=dataset.collate_fn)
    if not args.no_cuda:
        model.to(args.device)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": args.lr, "weight_decay": args.l2}])
    reg_loss, cls_loss = train_mr.MaskedMSELoss(), train_mr.MaskedCELoss()
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.jsonl").unlink(missing_ok=True)
    history = []
    for epoch in range(args.epochs):
        first_stage = epoch < args.stage_epoch
        t0 = time.perf_counter()
        common = {"total_sqlen": args.seq_len, "first_stage": first_stage, "mask_rate": args.mask_rate}
        train = train_mr.train_or_eval_model(args, model, reg_loss, cls_loss, train_loaders[0], optimizer=optimizer, train=True, mark="train", **common)
        seconds = time.perf_counter() - t0
        test = train_mr.train_or_eval_model(args, model, reg_loss, cls_loss, test_loaders[0], optimizer=None, train=False, mark="test", **common)
        with _generators_restored():  # not in the published script: its training must not notice
            valid = train_mr.train_or_eval_model(args, model, reg_loss, cls_loss, valid_loader, optimizer=None, train=False, mark="valid", **common)
        record = {"epoch": epoch, "stage": "warmup" if first_stage else "joint", "seconds": seconds, "train": _metrics(train), "valid": _metrics(valid), "test": _metrics(test)}
        history.append(record)
        with open(out / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
    best = int(np.argmax([h["test"]["f1"] for h in history]))  # the published rule: first epoch of best test F1
    metrics = {"implementation": "published code", "rate": args.mask_rate, "seed": args.seed, "epochs": args.epochs, "stage_epoch": args.stage_epoch,
               "batch_size": args.batch_size, "device": str(args.device), "selection": {"rule": "test-published", "metric": "f1", "best_epoch": best},
               "test": history[best]["test"], "seconds_per_epoch": float(np.mean([h["seconds"] for h in history]))}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def published_runs(checkout: Path, layout: Path, rates: list[float], seeds: list[int], epochs: int, stage_epoch: int, batch_size: int, device: str, out: Path) -> None:
    train_mr = load_published(checkout.resolve(), layout.resolve(), out / "published-code" / "logs")
    for rate in rates:
        for seed in seeds:
            run_dir = out / "published-code" / f"rate={rate:g}" / f"seed={seed}"
            if (run_dir / "metrics.json").is_file():
                print(f"{run_dir}: done, skipped")
                continue
            m = run_published(train_mr, published_args(rate, seed, epochs, stage_epoch, batch_size, device), run_dir)
            print(f"{run_dir}: best test F1 {m['test']['f1']:.4f} at epoch {m['selection']['best_epoch']}, {m['seconds_per_epoch']:.2f} s/epoch", flush=True)


def script_test_prints(checkout: Path, args: argparse.Namespace, workdir: Path) -> list[list[float]]:
    """The unmodified published script (``train_mr.py`` as ``__main__``) for the same settings: per epoch, the test numbers
    it prints (warm-up: the three heads' acc2; joint stage: MAE, correlation, F1, acc2)."""
    argv = ["train_mr.py", "--dataset=CMUMOSI", "--audio-feature=audio", "--text-feature=text", "--video-feature=video", f"--epoch={args.epochs}",
            f"--batch-size={args.batch_size}", f"--lr={args.lr}", f"--l2={args.l2}", f"--hidden={args.hidden}", f"--depth={args.depth}",
            f"--num_heads={args.num_heads}", f"--drop_rate={args.drop_rate}", f"--attn_drop_rate={args.attn_drop_rate}", f"--stage_epoch={args.stage_epoch}",
            f"--mask_rate={args.mask_rate}", f"--lbd={args.lbd}", f"--seed={args.seed}"] + (["--no-cuda"] if args.no_cuda else [])
    workdir.mkdir(parents=True, exist_ok=True)
    saved_argv, saved_cwd, saved_stdout = sys.argv, os.getcwd(), sys.stdout
    captured = io.StringIO()
    try:
        sys.argv = argv
        os.chdir(workdir)  # the script appends to ./CMUMOSI-<rate>.txt
        with contextlib.redirect_stdout(captured):
            runpy.run_path(str(checkout / "ComP" / "train_mr.py"), run_name="__main__")
    finally:
        sys.argv, sys.stdout = saved_argv, saved_stdout
        os.chdir(saved_cwd)
    found = []
    for line in captured.getvalue().splitlines():
        heads = re.match(r"epoch:\d+; a_acc_test:([-\d.]+); t_acc_test:([-\d.]+); v_acc_test:([-\d.]+)", line)
        joint = re.match(r"epoch:\d+; test_mae_[\d.]+:([-\d.]+); test_corr_[\d.]+:([-\d.nan]+); test_fscore_[\d.]+:([\d.]+)%; test_acc_[\d.]+:([\d.]+)%", line)
        if heads:
            found.append([float(x) for x in heads.groups()])
        elif joint:
            mae, corr, f1, acc = joint.groups()
            found.append([float(mae), float(corr), float(f1) / 100, float(acc) / 100])
    return found


def _as_printed(record: dict) -> list[float]:
    """A driver history record as :func:`script_test_prints` reads the script's output."""
    test = record["test"]
    if record["stage"] == "warmup":
        return [test["modality_acc"][m] for m in MODALITIES]
    return [test["mae"], test["corr"], test["f1"], test["acc2"]]


# ----- 4. report --------------------------------------------------------------------------------------------------
def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(root: Path) -> dict[tuple[str, float], dict[int, list[dict]]]:
    """(implementation, rate) -> seed -> per-epoch records, from the finished runs (``metrics.json`` written) of the
    sweep's and the published code's run folders; a run still training is left out."""
    found: dict[tuple[str, float], dict[int, list[dict]]] = {}
    for path in sorted(root.glob("**/rate=*/seed=*/history.jsonl")):
        if not (path.parent / "metrics.json").is_file():
            continue
        seed_dir, rate_dir, variant_dir = path.parent, path.parent.parent, path.parent.parent.parent
        rate, seed = float(rate_dir.name.split("=")[1]), int(seed_dir.name.split("=")[1])
        for label, folder in IMPLEMENTATIONS.items():
            if variant_dir.name == folder.format(rate=f"{rate:g}"):
                records = _history(path)
                if records and all(r.get("test") for r in records):
                    found.setdefault((label, rate), {})[seed] = records
    return found


def summarise(records: list[dict], stage_epoch: int) -> dict:
    """One run: best test F1 (first maximum), test F1 at the best validation F1, steady-state mean test F1."""
    test = np.array([r["test"]["f1"] for r in records])
    valid = np.array([r["valid"]["f1"] for r in records])
    best, chosen = int(np.argmax(test)), int(np.argmax(valid))
    steady = test[steady_start(len(test), stage_epoch) :]
    return {"best_test_f1": float(test[best]), "best_epoch": best, "valid_test_f1": float(test[chosen]), "valid_epoch": chosen,
            "steady_f1": float(steady.mean()) if steady.size else float("nan"), "epochs": len(test),
            "seconds_per_epoch": float(np.nanmedian([r.get("seconds", np.nan) for r in records]))}  # median: robust to a busy spell


def steady_start(epochs: int, stage_epoch: int) -> int:
    """First epoch of the steady state: 20 epochs after the switch, or the switch itself in runs too short for that."""
    return stage_epoch + STEADY_AFTER_SWITCH if epochs > stage_epoch + STEADY_AFTER_SWITCH else stage_epoch


def _mean_std(values: list[float]) -> str:
    v = np.array(values, dtype=float) * 100
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def _gap_split(summaries: dict[str, dict[int, dict]]) -> list[str]:
    """``published-exact`` − ``published`` split into the protocol's part and the fixed defects' part.

    ``published-exact, fixed masks`` is ``published-exact`` under imer's protocol, so it differs from
    ``published-exact`` by the protocol only (masks redrawn every batch vs one fixed test mask) and from
    ``published`` by the defects only; ``published, absent modalities act`` (where run) splits the defects' part
    into that group and the rest. Mean differences, points, for the three selection rules.
    """
    exact, middle, fixed = (summaries.get(k) for k in ("published-exact", "published-exact, fixed masks", "published"))
    if not (exact and middle and fixed):
        return []
    absent = summaries.get("published, absent modalities act")
    mean = lambda runs, key: float(np.mean([p[key] for p in runs.values()])) * 100  # noqa: E731
    lines = [""]
    for key, what in (("best_test_f1", "best test F1"), ("valid_test_f1", "test F1 at best valid F1"), ("steady_f1", "steady-state test F1")):
        total, protocol = mean(exact, key) - mean(fixed, key), mean(exact, key) - mean(middle, key)
        line = (f"published-exact − published, {what}: {total:+.2f} points = {protocol:+.2f} from the protocol (published-exact − its fixed-masks run) and "
                f"{total - protocol:+.2f} from the fixed defects (fixed masks − published)")
        if absent:
            acting = mean(absent, key) - mean(fixed, key)
            line += f", of which {acting:+.2f} from absent modalities acting (that group put back − published) and {total - protocol - acting:+.2f} from the rest"
        lines.append(line + ".  ")
    return lines


def report(root: Path, out: Path, stage_epoch: int) -> None:
    runs = collect(root)
    if not runs:
        raise SystemExit(f"{root}: no finished run with per-epoch test metrics")
    out.mkdir(parents=True, exist_ok=True)
    rows, lines = [], []
    rates = sorted({rate for _, rate in runs})
    for rate in rates:
        summaries: dict[str, dict[int, dict]] = {}
        lines += [f"### Rate {rate:g}", "",
                  "| implementation | seeds | best test F1 (published rule) | its epoch | test F1 at best valid F1 | its epoch | steady-state test F1 | s / epoch |",
                  "|---|---|---|---|---|---|---|---|"]
        for label in IMPLEMENTATIONS:
            seeds = runs.get((label, rate), {})
            if not seeds:
                continue
            per = summaries[label] = {s: summarise(r, stage_epoch) for s, r in sorted(seeds.items())}
            for s, p in per.items():
                rows.append({"implementation": label, "rate": rate, "seed": s, **p})
            col = lambda k: [p[k] for p in per.values()]  # noqa: E731
            lines.append(f"| {label} | {','.join(map(str, per))} | {_mean_std(col('best_test_f1'))} | {'/'.join(map(str, col('best_epoch')))} | "
                         f"{_mean_std(col('valid_test_f1'))} | {'/'.join(map(str, col('valid_epoch')))} | {_mean_std(col('steady_f1'))} | "
                         f"{np.nanmean(col('seconds_per_epoch')):.2f} |")
        exact, code = summaries.get("published-exact"), summaries.get("published code")
        if exact and code and len(code) > 1:
            lines.append("")
            for key, what in (("best_test_f1", "mean best test F1 (the acceptance)"), ("steady_f1", "mean steady-state test F1")):
                e = [p[key] for p in exact.values()]
                c = [p[key] for p in code.values()]
                gap, spread = (np.mean(e) - np.mean(c)) * 100, np.std(c, ddof=1) * 100
                lines.append(f"published-exact − published code, {what}: {gap:+.2f} points; one seed std of the published code: {spread:.2f} "
                             f"({'within' if abs(gap) <= spread else 'NOT within'} it).  ")
        lines += _gap_split(summaries)
        lines.append("")
    keys = list(rows[0])
    csv = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
    (out / "runs.csv").write_text("\n".join(csv) + "\n")
    figure = _curves(runs, rates, stage_epoch, out / "curves.png")
    start = steady_start(min(r["epochs"] for r in rows), stage_epoch)
    text = ["# ComP side by side: the published code, `published-exact` (with its own masks and with imer's), `published`, imer's default (issue 26)", "",
            f"Made by `python benchmarks/comp_side_by_side.py report {root} --out {out}` from the runs under `{root}`. F1 = weighted F1 of the sign "
            "on non-zero labels (%), mean ± sample std over seeds; steady state = mean test F1 over epochs "
            f"{start} to the last (the published rule's best-of-all-epochs is a maximum over as many test-mask draws for the two "
            "implementations that redraw their masks every epoch, the published code and `published-exact`); s / epoch: training only, the "
            "median over a run's epochs (robust to a spell of load on a shared machine), mean over seeds. "
            "Per-run numbers: `runs.csv`.", "", *lines, f"![per-epoch test F1]({figure.name})", ""]
    (out / "report.md").write_text("\n".join(text))
    print(f"{out / 'report.md'}, {out / 'runs.csv'}, {figure}")


def _curves(runs: dict, rates: list[float], stage_epoch: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rates), figsize=(6.5 * len(rates), 4.2), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        for label in IMPLEMENTATIONS:
            seeds = runs.get((label, rate))
            if not seeds:
                continue
            length = min(len(r) for r in seeds.values())
            curve = np.mean([[e["test"]["f1"] for e in r[:length]] for r in seeds.values()], axis=0) * 100
            ax.plot(np.arange(length), curve, label=f"{label} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})", linewidth=1)
        ax.axvline(stage_epoch - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"missing rate {rate:g}", xlabel="epoch", ylabel="test F1 (%), mean over seeds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----- smoke ------------------------------------------------------------------------------------------------------
def smoke(checkout: Path, data_dir: Path, out: Path, epochs: int, stage_epoch: int) -> None:
    """Every step at a tiny budget (seed 0, both rates) into ``out``, plus the driver-vs-script check."""
    layout = out / "layout"
    if not (layout / "labels.pkl").is_file():
        export(data_dir, layout)
    published_runs(checkout, layout, [0.4, 0.7], [0], epochs, stage_epoch, 32, "cpu", out)
    args = published_args(0.4, 0, epochs, stage_epoch, 32, "cpu")
    script = script_test_prints(checkout.resolve(), args, out / "script")
    driver = [_as_printed(r) for r in _history(out / "published-code" / "rate=0.4" / "seed=0" / "history.jsonl")]
    # the script prints 3 decimals (percentages: 2), so equal up to 5e-4
    same = len(script) == len(driver) and all(np.allclose(a, b, atol=5e-4, equal_nan=True) for a, b in zip(driver, script))
    print(f"driver vs unmodified published script, test numbers per epoch (warm-up: head acc2; joint: mae, corr, f1, acc2):\n"
          f"  driver {[[round(x, 4) for x in row] for row in driver]}\n  script {script}\n  {'same' if same else 'DIFFERENT'}")
    text = SPEC.read_text()
    text = re.sub(r"^epochs = \d+", f"epochs = {epochs}", text, flags=re.M)
    text = re.sub(r"^seeds = \[.*\]", "seeds = [0]", text, flags=re.M)
    text = text.replace("stage_epoch = 150", f"stage_epoch = {stage_epoch}").replace('name = "comp_exact"', 'name = "comp_exact_smoke"')
    spec = out / "comp_exact_smoke.toml"
    spec.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "imer.cli", "sweep", str(spec), "--data-dir", str(data_dir), "--workers", "1", "--no-progress", "--out", str(out)],
                   check=True, env=env)
    report(out, out / "report", stage_epoch)
    if not same:
        raise SystemExit("the driver does not train as the published script does")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="imer's cmu-mosi in the GCNet layout, for the published code")
    ex.add_argument("--data-dir", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    pub = sub.add_parser("published", help="run the published code over rates x seeds")
    pub.add_argument("--published", type=Path, required=True, help="checkout of WenjueHE/2026-AAAI-ComP (repository root)")
    pub.add_argument("--layout", type=Path, required=True, help="the folder `export` wrote")
    pub.add_argument("--rates", default="0.4,0.7")
    pub.add_argument("--seeds", default="0,1,2")
    pub.add_argument("--epochs", type=int, default=300)
    pub.add_argument("--stage-epoch", type=int, default=150)
    pub.add_argument("--batch-size", type=int, default=32)
    pub.add_argument("--device", default="cpu", help="cpu or cuda")
    pub.add_argument("--out", type=Path, required=True, help="the side-by-side folder (runs go to OUT/published-code/rate=R/seed=S)")
    rep = sub.add_parser("report", help="tables and curves of every finished run under a folder")
    rep.add_argument("root", type=Path)
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--stage-epoch", type=int, default=150)
    sm = sub.add_parser("smoke", help="all steps at a tiny budget, into a scratch folder")
    sm.add_argument("--published", type=Path, required=True)
    sm.add_argument("--data-dir", type=Path, required=True)
    sm.add_argument("--out", type=Path, required=True)
    sm.add_argument("--epochs", type=int, default=3)
    sm.add_argument("--stage-epoch", type=int, default=2)
    args = parser.parse_args()
    if args.command == "export":
        export(args.data_dir, args.out)
    elif args.command == "published":
        published_runs(args.published, args.layout, [float(r) for r in args.rates.split(",")], [int(s) for s in args.seeds.split(",")],
                       args.epochs, args.stage_epoch, args.batch_size, args.device, args.out)
    elif args.command == "report":
        report(args.root, args.out, args.stage_epoch)
    else:
        smoke(args.published, args.data_dir, args.out, args.epochs, args.stage_epoch)


if __name__ == "__main__":
    main()
