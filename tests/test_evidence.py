"""Issue 14 infrastructure: the search stage, selection rules side by side, paired significance, balance plot, plan, evidence specs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from imer.cli import main
from imer.errors import ConfigError
from imer.reports.render import build_report
from imer.reports.runs import read_run, selected_by_rule
from imer.evaluation.significance import paired_t_pvalue, sign_test
from imer.config import build_run_config
from imer.experiments.run import train
from imer.experiments.grid import SweepSpec
from imer.experiments.search import pick_winner
from imer.experiments.spec import load_spec, validate_sweep
from imer.models import list_models

ROOT = Path(__file__).resolve().parent.parent
TINY = {"data.options.num_groups": 30, "data.options.max_len": 5, "hidden": 8, "train.batch_size": 16}


def write_spec(path: Path, body: str, rates: str = "[0.4]", extra_set: dict | None = None) -> Path:
    values = {**TINY, **(extra_set or {})}
    tiny = ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in values.items())
    path.write_text(f'name = "t"\ndatasets = ["synthetic"]\nmissing_rates = {rates}\nseeds = [0, 1]\nepochs = 2\nset = {{ {tiny} }}\n' + body)
    return path


SEARCH = """
[variants.ef]
method = "early-fusion"
[variants.ef-nodrop]
base = "ef"
set = { dropout = 0.0 }
[variants.lf]
method = "late-fusion"
[search]
seed = 0
rate = 0.4
grid = { "train.lr" = [1e-4, 3e-3, 3e-2] }
"""


def test_search_picks_the_validation_best_and_never_changes(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", SEARCH, extra_set={"train.eval_test_each_epoch": True})
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--no-progress", "--search-only", "--out", str(out)]) == 0
    assert (out / "search.json").is_file() and not (out / "runs").exists()
    states = {c["status"] for c in json.loads((out / "sweep.json").read_text())["cells"] if c.get("trial") is None}
    assert states == {"todo"}
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    frozen = json.loads((out / "search.json").read_text())
    for name in ("ef", "lf"):  # ef-nodrop has a base: not searched, takes ef's choice
        entry = frozen["datasets"]["synthetic"][name]
        scores = [json.loads((out / f"search/runs/synthetic/{name}/trial={k}/rate=0.4/seed=0/metrics.json").read_text())["valid"]["acc"]
                  for k in range(3)]
        assert [t["score"] for t in entry["trials"]] == scores and entry["metric"] == "acc"
        assert entry["winner"] == int(np.argmax(scores))  # argmax keeps the first of tied maxima, as the rule says
        lr = [1e-4, 3e-3, 3e-2][entry["winner"]]
        assert entry["overrides"] == [f"train.lr={json.dumps(lr)}"]
        for variant in (name, "ef-nodrop") if name == "ef" else (name,):
            for seed in (0, 1):
                config = json.loads((out / f"runs/synthetic/{variant}/rate=0.4/seed={seed}/config.json").read_text())
                assert config["train"]["lr"] == lr
    assert "ef-nodrop" not in frozen["datasets"]["synthetic"]
    # Trials are not grid runs: the report keeps them out of the tables and shows them in the search table.
    report = build_report(out, plots=False)
    assert {r.variant for r in report.runs} == {"ef", "ef-nodrop", "lf"}
    page = (out / "report/report.md").read_text()
    assert "## Hyper-parameter search" in page and "| synthetic | ef | 2 | `train.lr=0.03` |" in page
    assert "+ searched: `train.lr=" in page and "## Selection rules side by side" in page
    # Frozen: a rerun never re-decides, even when a trial's file now says something else.
    trial = out / "search/runs/synthetic/lf/trial=0/rate=0.4/seed=0/metrics.json"
    metrics = json.loads(trial.read_text())
    metrics["valid"]["acc"] = 2.0
    trial.write_text(json.dumps(metrics))
    before = (out / "search.json").read_bytes()
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    assert (out / "search.json").read_bytes() == before
    # A changed search for a frozen variant is refused, naming the file.
    spec.write_text(spec.read_text().replace("3e-2]", "1e-1]"))
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 2
    assert "frozen" in capsys.readouterr().err


def test_ties_keep_the_earlier_trial_and_mae_is_minimised():
    trials = [{"trial": k, "score": s} for k, s in enumerate([0.5, 0.7, None, 0.7])]
    assert pick_winner(trials, "acc2")["trial"] == 1
    assert pick_winner([{"trial": 0, "score": 0.9}, {"trial": 1, "score": 0.8}, {"trial": 2, "score": 0.8}], "mae")["trial"] == 1


@pytest.mark.parametrize("body, message", [
    ('[variants.ef]\nmethod = "early-fusion"\n[variants.lf]\nmethod = "late-fusion"\n[search]\nrate = 0.4\ngrid = { "train.lr" = [1e-3, 1e-2] }\n'
     '[search.grids.lf]\ndropout = [0.1, 0.2, 0.3]\n', "same number of trials"),
    ('[variants.ef]\nmethod = "early-fusion"\nset = { "train.lr" = 1e-3 }\n[search]\nrate = 0.4\ngrid = { "train.lr" = [1e-3, 1e-2] }\n', "sets ['train.lr']"),
    ('[variants.ef]\nmethod = "early-fusion"\n[search]\nrate = 0.4\nvariants = ["nope"]\ngrid = { dropout = [0.1] }\n', "'nope' is not a variant"),
    ('[variants.ef]\nmethod = "early-fusion"\n[search]\ngrid = { dropout = [0.1] }\n', "'rate'"),
    ('[variants.ef]\nmethod = "early-fusion"\n[search]\nrate = 0.4\ngrid = { dropout = [0.1, 0.1] }\n', "twice"),
    ('[variants.ef]\nmethod = "early-fusion"\n[report]\ncompare = ["x"]\n', "compare"),
])
def test_bad_search_and_report_tables_are_refused(tmp_path, body, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_spec(write_spec(tmp_path / "s.toml", body))


@pytest.mark.parametrize("method, stage", [("early-fusion", []), ("linear", []), ("comp", ["stage_epoch=2"]),
                                           ("promise", ["encoder_epochs=2"]), ("momke", [])])
def test_test_selection_from_history_equals_a_test_published_run(tmp_path, method, stage):
    """The published rule read from a valid-selected run's per-epoch history is exactly what a test-published run reports
    (staged methods switch stage within the 4 epochs; linear's epochs are its penalty candidates)."""
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + ["train.eval_test_each_epoch=true"] + stage
    for rule in ("valid", "test-published"):
        config = build_run_config(method, "synthetic", overrides=sets + [f"train.selection={rule}"],
                                  settings={"seed": 1, "missing.rate": 0.4, "train.epochs": 4, "train.progress": False, "train.threads": 1})
        train(config, tmp_path / rule)
    honest, published = read_run(tmp_path / "valid"), read_run(tmp_path / "test-published")
    derived = selected_by_rule(honest, "test-published")
    assert derived["epoch"] == published.metrics["selection"]["best_epoch"]
    assert derived["test"] == published.test
    back = selected_by_rule(published, "valid")
    assert back["epoch"] == honest.metrics["selection"]["best_epoch"] and back["test"] == honest.test


def test_selection_needs_per_epoch_test(tmp_path):
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    config = build_run_config("early-fusion", "synthetic", overrides=sets,
                              settings={"missing.rate": 0.4, "train.epochs": 2, "train.progress": False, "train.threads": 1})
    train(config, tmp_path / "run")
    assert selected_by_rule(read_run(tmp_path / "run"), "test-published") is None


def fake_run(root: Path, variant: str, rate: float, seed: int, acc2: float, conditions: dict | None = None) -> None:
    run = root / "runs" / "cmu-mosi" / variant / f"rate={rate:g}" / f"seed={seed}"
    run.mkdir(parents=True)
    method = "comp" if variant.startswith("comp") else variant
    metrics = {"method": method, "variant": variant, "dataset": "cmu-mosi", "seed": seed, "task": "regression",
               "missing": {"train_rate": rate}, "missing_fraction": {"test": rate}, "test": {"acc2": acc2, "f1": acc2},
               "selection": {"rule": "valid", "metric": "acc2", "best_epoch": 0, "epochs": 1}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if conditions is not None:
        (run / "conditions.json").write_text(json.dumps({"conditions": conditions, "average": {}}))


def test_significance_table_by_hand(tmp_path):
    """comp vs the best baseline per rate: at 0.1 'lf' is best, at 0.5 'ef'; 'comp-x' (an ablation) is no baseline."""
    values = {
        ("comp", 0.1): [0.80, 0.81, 0.82], ("ef", 0.1): [0.70, 0.71, 0.72], ("lf", 0.1): [0.79, 0.79, 0.79],
        ("comp", 0.5): [0.60, 0.61, 0.60], ("ef", 0.5): [0.61, 0.60, 0.60], ("lf", 0.5): [0.50, 0.50, 0.50],
        ("comp-x", 0.1): [0.99, 0.99, 0.99], ("comp-x", 0.5): [0.99, 0.99, 0.99],
    }
    for (variant, rate), accs in values.items():
        for seed, acc in enumerate(accs):
            fake_run(tmp_path, variant, rate, seed, acc)
    variants = [{"name": n, "method": "comp" if n.startswith("comp") else n, "overrides": [], "epochs": None, "base": "comp" if n == "comp-x" else None}
                for n in ("comp", "ef", "lf", "comp-x")]
    (tmp_path / "sweep.json").write_text(json.dumps({"spec": {"variants": variants, "experiment": {"name": "t", "path": "t.toml", "report": {"compare": ["comp"]}}}}))
    report = build_report(tmp_path, plots=False)
    rows = {c.rate: c for c in report.comparisons}
    assert [(r, c.baseline) for r, c in rows.items()] == [(0.1, "lf"), (0.5, "ef"), (None, "lf/ef")]
    # rate 0.1: diffs +0.01 +0.02 +0.03 -> 3 wins, sign p = 2 * 1/8; t = 0.02 / (0.01 / sqrt 3), df 2: p = 1 - t / sqrt(t^2 + 2)
    low = rows[0.1]
    assert low.diffs == pytest.approx([0.01, 0.02, 0.03]) and (low.wins, low.ties, low.losses) == (3, 0, 0)
    t = 0.02 / (0.01 / math.sqrt(3))
    assert low.p_sign == pytest.approx(0.25) and low.p_t == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    # rate 0.5: diffs -0.01 +0.01 0 -> 1 win, 1 tie, 1 loss; sign p = 1 (ties dropped)
    high = rows[0.5]
    assert (high.wins, high.ties, high.losses) == (1, 1, 1) and high.p_sign == 1.0 and high.mean == pytest.approx(0.0)
    # pooled: 4 wins, 1 tie, 1 loss -> n = 5, p = 2 * (1 + 5) / 32
    pooled = rows[None]
    assert (pooled.n, pooled.wins, pooled.losses) == (6, 4, 1) and pooled.p_sign == pytest.approx(12 / 32)
    assert pooled.mean == pytest.approx(np.mean([0.01, 0.02, 0.03, -0.01, 0.01, 0.0]))
    page = (tmp_path / "report/report.md").read_text()
    assert "| cmu-mosi | comp | 0.1 | lf | 3 | ACC | +2.00 | 3 / 0 / 0 | 0.250 |" in page
    assert "| cmu-mosi | comp | all | lf/ef | 6 | ACC | +1.00 | 4 / 1 / 1 | 0.375 |" in page
    assert json.loads((tmp_path / "report/report.json").read_text())["significance"][0]["p_sign"] == pytest.approx(0.25)


def test_sign_and_t_test_edge_cases():
    assert sign_test(0, 0) == 1.0 and sign_test(5, 0) == pytest.approx(2 / 32) and sign_test(10, 10) == 1.0
    assert paired_t_pvalue([0.1]) is None and paired_t_pvalue([0.2, 0.2, 0.2]) is None


def test_balance_plot_and_conditions_table_from_conditions(tmp_path):
    conditions = {"a": {"acc2": 0.55, "f1": 0.5}, "t": {"acc2": 0.75, "f1": 0.7}, "at": {"acc2": 0.78, "f1": 0.7}}
    for variant in ("comp", "ef"):
        for seed in (0, 1):
            fake_run(tmp_path, variant, 0.3, seed, 0.7, conditions)
    report = build_report(tmp_path)
    assert (tmp_path / "report/modality_conditions.png").is_file()
    assert "modality_conditions" in (tmp_path / "report/report.md").read_text()
    assert "| cmu-mosi | ef | 0.3 | ACC | 55.00 ± 0.00 | 75.00 ± 0.00 | 78.00 ± 0.00 | 69.33 |" in (tmp_path / "report/conditions.md").read_text()
    assert report.conditions is not None


EVIDENCE = sorted((ROOT / "experiments").glob("evidence_*.toml"))


@pytest.mark.parametrize("path", EVIDENCE, ids=lambda p: p.name)
def test_evidence_specs_are_complete_and_valid(path, monkeypatch):
    kwargs, meta = load_spec(path)
    spec = SweepSpec(**kwargs, experiment=meta)
    names = {v.name: v for v in spec.variants}
    # context-fusion came later (issue 24); its comparison of record is experiments/cv_minilm.toml (tests/test_protocol_cv.py)
    assert set(list_models()) - {"context-fusion"} <= {v.method for v in spec.variants if v.base is None}
    assert any(v.config == "published" and v.method == "comp" for v in spec.variants)
    assert spec.conditions and spec.search is not None and spec.seeds == [0, 1, 2] and len(spec.rates) == 3
    assert meta.report.get("compare") == ["comp", "promise"]
    assert "train.eval_test_each_epoch=true" in spec.overrides
    counts = {len(spec.search.trials(n)) for n in spec.search.variants}
    assert len(counts) == 1 and all(names[n].base is None for n in spec.search.variants)
    validate_sweep(spec)  # every variant, trial and dataset config builds


def test_plan_prints_cells_and_runs_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", SEARCH)
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--plan", "--no-timing", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| search | synthetic | ef | 3 | 3 | 2 |" in text and "| grid | synthetic | ef-nodrop | 2 | 2 | 2 |" in text
    assert "12 cells (6 search trials), 12 to do" in text and "no estimate for synthetic/ef, synthetic/lf, synthetic/ef-nodrop" in text
    assert "estimated ? CPU hours" in text and not out.exists()
    assert main(["sweep", str(spec), "--plan", "--out", str(out)]) == 0  # without finished runs: one epoch of each variant timed now
    text = capsys.readouterr().out
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| search") or line.startswith("| grid")]
    assert len(rows) == 5 and all(row[-1] == "one epoch timed now |" and float(row[6]) > 0 for row in rows)
    hours = float(re.search(r"estimated (\S+) CPU hours", text).group(1))
    assert 0 < hours < 0.1 and "no estimate" not in text and not out.exists()


def test_selection_table_numbers_by_hand(tmp_path):
    """Valid picks epoch 1 (valid 0.7), test picks epoch 2 (test 0.9): the row shows both and their paired difference."""
    history = [({"acc2": 0.6, "f1": 0.6}, {"acc2": 0.5, "f1": 0.5}), ({"acc2": 0.7, "f1": 0.7}, {"acc2": 0.6, "f1": 0.55}),
               ({"acc2": 0.65, "f1": 0.6}, {"acc2": 0.9, "f1": 0.8})]
    for seed, shift in ((0, 0.0), (1, 0.1)):
        fake_run(tmp_path, "ef", 0.3, seed, 0.6 + shift)
        run = tmp_path / f"runs/cmu-mosi/ef/rate=0.3/seed={seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["test"] = {"acc2": 0.6 + shift, "f1": 0.55 + shift}
        metrics["selection"]["best_epoch"] = 1
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "valid": v, "test": {k: x + shift for k, x in t.items()}}) + "\n"
                                                   for e, (v, t) in enumerate(history)))
    build_report(tmp_path, plots=False)
    page = (tmp_path / "report/report.md").read_text()
    # valid-selected acc2: 60, 70 -> 65.00 ± 5.00; test-selected: 90, 100 -> 95.00 ± 5.00, Δ +30.00; f1: 55/65 -> 80/90, Δ +25.00
    assert "| cmu-mosi | ef | 0.3 | 2 | 65.00 ± 5.00 | 95.00 ± 5.00 (+30.00) | 60.00 ± 5.00 | 85.00 ± 5.00 (+25.00) | 1/2 1/2 |" in page


def test_stage_table_numbers_by_hand(tmp_path):
    """Warm-up best valid 0.8 at epoch 1, joint best 0.7 at epoch 2: validation selection stays in the warm-up stage."""
    stages = ["warmup", "warmup", "joint", "joint"]
    valid = [0.6, 0.8, 0.7, 0.7]
    for seed, shift in ((0, 0.0), (1, 0.1)):
        fake_run(tmp_path, "comp", 0.3, seed, 0.5 + shift)
        run = tmp_path / f"runs/cmu-mosi/comp/rate=0.3/seed={seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["selection"]["best_epoch"] = 1
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "history.jsonl").write_text("".join(
            json.dumps({"epoch": e, "stage": s, "valid": {"acc2": v}, "test": {"acc2": 0.1 * e + shift}}) + "\n"
            for e, (s, v) in enumerate(zip(stages, valid))))
    fake_run(tmp_path, "ef", 0.3, 0, 0.5)  # one stage: no row
    build_report(tmp_path, plots=False)
    page = (tmp_path / "report/report.md").read_text()
    # warm-up: valid 80 both seeds, test at epoch 1: 10, 20 -> 15.00 ± 5.00; joint: ties keep epoch 2, test 20, 30
    assert "| cmu-mosi | comp | 0.3 | warmup | 0–1 | 2 | 80.00 ± 0.00 | 15.00 ± 5.00 | 2 of 2 |" in page
    assert "| cmu-mosi | comp | 0.3 | joint | 2–3 | 2 | 70.00 ± 0.00 | 25.00 ± 5.00 | 0 of 2 |" in page
    assert "| cmu-mosi | ef |" not in page.split("## Training stages")[1].split("##")[0]


def test_gap_table_numbers_by_hand(tmp_path):
    """Validation at the selected epoch beside test: comp valid 0.80 / 0.90, test 0.70 / 0.75 -> gap +12.50; no valid score, no row."""
    for seed, (valid, test) in enumerate(((0.80, 0.70), (0.90, 0.75))):
        fake_run(tmp_path, "comp", 0.3, seed, test)
        path = tmp_path / f"runs/cmu-mosi/comp/rate=0.3/seed={seed}/metrics.json"
        metrics = json.loads(path.read_text())
        metrics["valid"] = {"acc2": valid}
        path.write_text(json.dumps(metrics))
    fake_run(tmp_path, "ef", 0.3, 0, 0.5)
    build_report(tmp_path, plots=False)
    gap = (tmp_path / "report/gap.md").read_text()
    assert "| cmu-mosi | comp | 0.3 | 2 | 85.00 ± 5.00 | 72.50 ± 2.50 | +12.50 |" in gap
    assert "| ef |" not in gap
    assert "## Validation and test at the selected epoch" in (tmp_path / "report/report.md").read_text()
