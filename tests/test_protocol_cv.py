"""Issue 24: the cross-validated selection protocol (``[search] protocol = "cv"``, docs/protocol.md)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from imer.cli import main
from imer.config import build_run_config
from imer.data import load_dataset
from imer.errors import ConfigError, IMERError
from imer.experiments.run import prepare_data
from imer.experiments.spec import load_spec
from imer.reports.aggregate import aggregate
from imer.reports.runs import collect_runs

TINY = {"data.options.num_groups": 30, "data.options.max_len": 5, "hidden": 8, "train.batch_size": 16}
CV_SPEC = """
[variants.ef]
method = "early-fusion"
[variants.lin]
method = "linear"
set = { mask_draws = 2, grid = [0.01, 1.0] }
[search]
protocol = "cv"
folds = 3
seed = 0
rate = 0.4
grid = { "train.lr" = [1e-3, 3e-2] }
[report]
compare = ["ef"]
baseline = "both"
"""


def write_spec(path: Path, body: str) -> Path:
    tiny = ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in TINY.items())
    path.write_text(f'name = "cv"\ndatasets = ["synthetic"]\nmissing_rates = [0.0, 0.4]\nseeds = [0, 1]\nepochs = 3\nset = {{ {tiny} }}\n' + body)
    return path


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


def test_development_folds_never_split_a_video_and_the_held_out_fold_validates():
    dataset = load_dataset("synthetic", num_groups=40, max_len=6)
    dev = dataset.development_folds(4, seed=0)
    assert not set(dev.group_ids) & set(dataset.group_ids[dataset.split == "test"])
    for group in np.unique(dev.group_ids):
        assert len(np.unique(dev.fold[dev.group_ids == group])) == 1
    for fold in dev.folds:
        parts = dev.split_indices(fold, holdout="valid")
        assert np.array_equal(parts["valid"], parts["test"]) and np.array_equal(parts["valid"], np.flatnonzero(dev.fold == fold))
        assert not set(dev.group_ids[parts["train"]]) & set(dev.group_ids[parts["valid"]])
        assert len(parts["train"]) + len(parts["valid"]) == len(dev)


def test_refit_trains_on_every_development_video_and_never_on_a_test_video():
    config = build_run_config("early-fusion", "synthetic", overrides=["data.refit=true", 'train.selection="last"'])
    data = prepare_data(config)
    split = data.dataset.split
    assert set(split[data.indices["train"]]) == {"train", "valid"}
    assert np.array_equal(np.sort(data.indices["train"]), np.flatnonzero(split != "test"))
    assert set(split[data.indices["test"]]) == {"test"}
    assert not set(data.dataset.group_ids[data.indices["train"]]) & set(data.dataset.group_ids[data.indices["test"]])


@pytest.mark.parametrize("overrides, message", [
    (["data.refit=true"], "train.selection"),
    (['train.selection="last"', "train.patience=3"], "train.patience"),
    (['data.holdout="valid"'], "data.dev_folds"),
])
def test_protocol_fields_that_would_select_on_the_wrong_data_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_run_config("early-fusion", "synthetic", overrides=overrides)


def test_cv_sweep_chooses_trial_and_budget_by_fold_averaged_curves_refits_and_resumes(tmp_path):
    spec = write_spec(tmp_path / "s.toml", CV_SPEC)
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    frozen = json.loads((out / "search.json").read_text())["datasets"]["synthetic"]
    # early fusion: 2 trials x 3 folds; the winner is the (trial, epoch) with the best mean validation curve
    entry = frozen["ef"]
    means = []
    for k in range(2):
        curves = [[h["valid"]["acc"] for h in history(out / f"search/runs/synthetic/ef/trial={k}/rate=0.4/fold={f}/seed=0")] for f in (1, 2, 3)]
        means.append(np.mean(curves, axis=0))
        assert entry["trials"][k]["curve"] == pytest.approx(list(means[k]))
    best = max(range(2), key=lambda k: (means[k].max(), -k))
    assert entry["winner"] == best and entry["best_epoch"] == int(np.argmax(means[best]))
    assert entry["overrides"] == [f"train.lr={json.dumps([1e-3, 3e-2][best])}", f"train.epochs={int(np.argmax(means[best])) + 1}"]
    # linear: its budget is the chosen penalty, fitted alone in the refit
    strength = json.loads(frozen["lin"]["overrides"][-1].split("=", 1)[1])
    assert frozen["lin"]["overrides"][-1].startswith("grid=") and strength[0] in (0.01, 1.0)
    for variant in ("ef", "lin"):
        for rate in ("0", "0.4"):
            for seed in (0, 1):
                run = out / f"runs/synthetic/{variant}/rate={rate}/seed={seed}"
                metrics = json.loads((run / "metrics.json").read_text())
                config = json.loads((run / "config.json").read_text())
                assert metrics["selection"]["protocol"] == "cv" and metrics["selection"]["rule"] == "last"
                assert config["data"]["refit"] is True and config["data"]["dev_folds"] == 0
                if variant == "ef":
                    assert metrics["selection"]["best_epoch"] == config["train"]["epochs"] - 1 == entry["best_epoch"]
                else:
                    assert config["model"]["grid"] == strength
    # Resume: a rerun runs nothing; a lost refit is the only cell run again; the frozen choice never changes.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    search = (out / "search.json").read_bytes()
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
    lost = out / "runs/synthetic/ef/rate=0.4/seed=1"
    shutil.rmtree(lost)
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    assert (lost / "metrics.json").is_file() and (out / "search.json").read_bytes() == search
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if lost not in p.parents)
    # The report says which protocol made the rows ...
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report/report.md").read_text()
    assert "model selection: cv (" in page and "cross-validation score (fold mean) | refit budget |" in page
    # ... and compares with the best other method chosen on test and, separately, on validation (here: its cv score)
    assert "| synthetic | ef | 0.4 | lin (on test) |" in page and "| synthetic | ef | 0.4 | lin (on validation) |" in page
    assert "fold-averaged cross-validation score" in page


def test_report_refuses_to_mix_protocols_in_one_row(tmp_path):
    spec = write_spec(tmp_path / "s.toml", CV_SPEC.replace("folds = 3", "folds = 2").replace('[variants.lin]\nmethod = "linear"\nset = { mask_draws = 2, grid = [0.01, 1.0] }\n', ""))
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    plain = tmp_path / "plain"
    assert main(["train", "--method", "early-fusion", "--dataset", "synthetic", "--missing-rate", "0.4", "--seed", "5", "--epochs", "3", "--no-progress",
                 *[a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")], "--out", str(plain)]) == 0
    metrics = json.loads((plain / "metrics.json").read_text())
    metrics["variant"] = "ef"
    (plain / "metrics.json").write_text(json.dumps(metrics))
    shutil.copytree(plain, out / "runs/synthetic/ef/rate=0.4/seed=5")
    with pytest.raises(IMERError, match="different selection protocols"):
        aggregate(collect_runs(out))


def test_cv_spec_needs_every_variant_searched_and_sound_folds(tmp_path):
    with pytest.raises(ConfigError, match="not searched"):
        load_spec(write_spec(tmp_path / "a.toml", CV_SPEC.replace('grid = { "train.lr"', 'variants = ["ef"]\ngrid = { "train.lr"')))
    with pytest.raises(ConfigError, match="'folds'"):
        load_spec(write_spec(tmp_path / "b.toml", CV_SPEC.replace("folds = 3", "folds = 1")))
    with pytest.raises(ConfigError, match="'protocol'"):
        load_spec(write_spec(tmp_path / "c.toml", CV_SPEC.replace('protocol = "cv"', 'protocol = "loo"')))


def test_in_memory_fit_with_the_cv_protocol_refits_with_the_cross_validated_choice(tmp_path):
    import imer

    dataset = load_dataset("synthetic", num_groups=30, max_len=5)
    model = imer.fit("early-fusion", dataset, 0.4, protocol="cv", folds=2, search={"lr": [1e-3, 3e-2]}, epochs=3, hidden=8,
                     out=tmp_path / "run")
    choice = json.loads((tmp_path / "run/cv.json").read_text())
    assert choice["protocol"] == "cv" and len(choice["trials"]) == 2 and all(len(t["fold_scores"]) == 2 for t in choice["trials"])
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["train"]["lr"] == [1e-3, 3e-2][choice["winner"]] and config["train"]["epochs"] == choice["best_epoch"] + 1
    assert config["data"]["refit"] is True and model.metrics["selection"]["protocol"] == "cv"
    assert (model.save(tmp_path / "copy") / "cv.json").is_file()
    with pytest.raises(IMERError, match="protocol"):
        imer.fit("early-fusion", dataset, protocol="loo")


ROOT = Path(__file__).resolve().parent.parent
CV_RECORD = ROOT / "results/cv_minilm"


def test_context_fusion_defaults_on_minilm_are_the_frozen_cv_choice_and_reproduce_the_seed_0_run(data_dir, tmp_path):
    """Issue 24: `imer train --method context-fusion --dataset cmu-mosi-minilm --missing-rate 0.3` with defaults is the
    cross-validated choice of experiments/cv_minilm.toml and gives its rate-0.3 seed-0 run."""
    from imer.experiments.run import train

    entry = json.loads((CV_RECORD / "search.json").read_text())["datasets"]["cmu-mosi-minilm"]["context-fusion"]
    config = build_run_config("context-fusion", "cmu-mosi-minilm", overrides=["train.threads=1", "train.progress=false", "missing.rate=0.3"],
                              settings={"data.data_dir": str(data_dir)})
    for item in entry["overrides"]:
        key, value = item.split("=", 1)
        section, _, name = key.rpartition(".")
        actual = getattr(getattr(config, section), name) if section else config.model[name]
        assert actual == json.loads(value), item
    assert config.data.refit and config.train.selection == "last"
    recorded = json.loads((CV_RECORD / "runs/cmu-mosi-minilm/context-fusion/rate=0.3/seed=0/metrics.json").read_text())
    metrics = train(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run/config.json").read_text())
    then = json.loads((CV_RECORD / "runs/cmu-mosi-minilm/context-fusion/rate=0.3/seed=0/config.json").read_text())
    for section in ("data", "missing", "train", "model"):  # a field added later (at its default) is the only allowed difference
        differing = {k for k in then[section] if then[section][k] != saved[section].get(k)} - {"data_dir", "threads", "progress"}
        assert not differing, (section, differing)
    assert metrics["test"]["acc2"] == recorded["test"]["acc2"] and metrics["test"]["f1"] == recorded["test"]["f1"]
    assert metrics["test"]["mae"] == pytest.approx(recorded["test"]["mae"], abs=1e-6)


def test_cv_minilm_spec_compares_every_method_under_one_frozen_search():
    from imer.experiments.grid import SweepSpec
    from imer.experiments.spec import validate_sweep
    from imer.models import list_models

    kwargs, meta = load_spec(ROOT / "experiments/cv_minilm.toml")
    spec = SweepSpec(**kwargs, experiment=meta)
    assert set(list_models()) <= {v.method for v in spec.variants}
    assert any(v.config == "published" and v.method == "comp" for v in spec.variants)
    assert spec.search.protocol == "cv" and spec.search.folds == 5 and set(spec.search.variants) == {v.name for v in spec.variants}
    assert spec.seeds == [0, 1, 2, 3, 4] and spec.rates == [0.0, 0.1, 0.3, 0.5]
    assert len({len(spec.search.trials(n)) for n in spec.search.variants}) == 1
    validate_sweep(spec)
