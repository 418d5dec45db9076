"""Spec files and variants, report by variant (ablations, refusal to mix configs), dataset identity, imer.results."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from imer.cli import main
from imer.data import load_dataset, save_custom
from imer.errors import ConfigError, IMERError
from imer.reports.render import build_report
from imer.config import config_hash, dataset_label
from imer.experiments.spec import load_spec
from imer.experiments.sweep import SweepSpec, run_sweep

ROOT = Path(__file__).resolve().parent.parent
TINY = {"data.options.num_groups": 12, "data.options.max_len": 4, "hidden": 8, "train.batch_size": 16}


def write_spec(path: Path, body: str) -> Path:
    tiny = ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in TINY.items())
    path.write_text(f'name = "t"\ndatasets = ["synthetic"]\nmissing_rates = [0.4]\nseeds = [0, 1]\nepochs = 1\nset = {{ {tiny} }}\n' + body)
    return path


def test_spec_variants_inherit_from_their_base(tmp_path):
    spec = write_spec(tmp_path / "s.toml", """
methods = ["early-fusion"]
[variants.lf]
method = "late-fusion"
epochs = 2
set = ["dropout=0.1"]
[variants."lf@drop0.5"]
base = "lf"
set = { dropout = 0.5 }
missing_rates = [0.4]
seeds = [1]
""")
    kwargs, meta = load_spec(spec)
    variants = {v.name: v for v in kwargs["variants"]}
    assert list(variants) == ["early-fusion", "lf", "lf@drop0.5"] and meta.name == "t"
    v = variants["lf@drop0.5"]
    assert (v.method, v.base, v.epochs, v.overrides, v.seeds) == ("late-fusion", "lf", 2, ("dropout=0.1", "dropout=0.5"), (1,))
    cells = SweepSpec(**kwargs).cells()
    assert [c.relpath.as_posix() for c in cells if c.variant == "lf@drop0.5"] == ["runs/synthetic/lf@drop0.5/rate=0.4/seed=1"]
    assert len(cells) == 5


@pytest.mark.parametrize("body, message", [
    ('[variants.x]\nmethod = "nope"\n', "unknown method 'nope'"),
    ('[variants.x]\nbase = "y"\nmethod = "comp"\n', "base 'y'"),
    ('[variants.a]\nbase = "b"\nmethod = "comp"\n[variants.b]\nbase = "a"\nmethod = "comp"\n', "cycle"),
    ('[variants."bad/name"]\nmethod = "comp"\n', "variant name"),
    ('[variants.x]\nmethod = "comp"\nlr = 1\n', "unknown key"),
    ('bogus = 1\nmethods = ["comp"]\n', "unknown key"),
    ('', "no variants"),
])
def test_bad_specs_are_refused(tmp_path, body, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_spec(write_spec(tmp_path / "s.toml", body))


def test_two_variants_of_one_method_stay_apart_and_ablation_shows_deltas(tmp_path, capsys):
    """Acceptance: one method, two variants differing in one override -> two rows; the ablation table gives deltas."""
    spec = write_spec(tmp_path / "s.toml", """
[variants.ef]
method = "early-fusion"
[variants.ef-wide]
base = "ef"
set = { hidden = 24 }
[report]
metrics = ["wf1"]
""")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    metrics = {v: [json.loads((out / f"runs/synthetic/{v}/rate=0.4/seed={s}/metrics.json").read_text()) for s in (0, 1)] for v in ("ef", "ef-wide")}
    assert {m["variant"] for m in metrics["ef"]} == {"ef"} and metrics["ef"][0]["method"] == "early-fusion"
    assert metrics["ef"][0]["config_hash"] == metrics["ef"][1]["config_hash"] != metrics["ef-wide"][0]["config_hash"]
    assert all(m["wall_seconds"] > 0 and m["peak_rss_mb"] > 0 for ms in metrics.values() for m in ms)
    report = build_report(out, plots=False)
    rows = [line for line in (out / "report/table.md").read_text().splitlines() if line.startswith("| synthetic")]
    assert [r.split(" | ")[1] for r in rows] == ["ef", "ef-wide"]
    acc = {v: [m["test"]["acc"] for m in ms] for v, ms in metrics.items()}
    assert f"{100 * np.mean(acc['ef']):.2f} ± {100 * np.std(acc['ef']):.2f}" in rows[0]
    assert f"{100 * np.mean(acc['ef-wide']):.2f} ± {100 * np.std(acc['ef-wide']):.2f}" in rows[1]
    (table,) = report.ablations
    assert table.base.variant == "ef" and [a.variant for a in table.variants] == ["ef-wide"]
    delta = np.mean(np.array(acc["ef-wide"]) - np.array(acc["ef"]))
    assert table.deltas[("ef-wide", "acc")] == pytest.approx(delta)
    ablation = (out / "report/ablations.md").read_text()
    assert "| ef (base) | 2 |" in ablation and f"({100 * delta:+.2f})" in ablation
    page = (out / "report/report.md").read_text()
    assert f"imer sweep {spec.as_posix()} --out {out.as_posix()}" in page and "## Ablations" in page and "## Test WF1 (`wf1`)" in page
    assert "| ef-wide | early-fusion | ef | " in page and "`hidden=24`" in page
    # The same sweep again: nothing runs, the report renders byte for byte.
    before = {p.name: p.read_bytes() for p in (out / "report").iterdir()}
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 0
    build_report(out, plots=False)
    assert {p.name: p.read_bytes() for p in (out / "report").iterdir()} == before
    # A variant whose definition changed under the same name is refused.
    spec.write_text(spec.read_text().replace("hidden = 24", "hidden = 32"))
    assert main(["sweep", str(spec), "--no-progress", "--out", str(out)]) == 2
    assert "ef-wide" in capsys.readouterr().err


def test_report_refuses_to_average_different_configs(tmp_path):
    sweep = SweepSpec(methods=["early-fusion"], datasets=["synthetic"], rates=[0.4], seeds=[0], epochs=1, overrides=[f"{k}={v}" for k, v in TINY.items()])
    run_sweep(sweep, tmp_path / "a", progress=False)
    sweep.seeds, sweep.overrides = [1], sweep.overrides + ["dropout=0.1"]
    run_sweep(sweep, tmp_path / "b", progress=False)
    mixed = tmp_path / "mixed"
    for name, seed in (("a", 0), ("b", 1)):
        src = tmp_path / name / f"runs/synthetic/early-fusion/rate=0.4/seed={seed}"
        dst = mixed / f"seed={seed}"
        dst.mkdir(parents=True)
        for f in ("metrics.json", "config.json"):
            (dst / f).write_bytes((src / f).read_bytes())
    with pytest.raises(IMERError, match=r"refusing to average.*dropout"):
        build_report(mixed, plots=False)


def _copy_cell(runs: list[tuple[Path, int]], out: Path, edit=None) -> Path:
    """Two seeds of one cell copied into ``out``; ``edit(config, metrics)`` rewrites the second run as an older or other imer would."""
    for index, (src, seed) in enumerate(runs):
        dst = out / f"seed={seed}"
        dst.mkdir(parents=True)
        config, metrics = (json.loads((src / f).read_text()) for f in ("config.json", "metrics.json"))
        if index == 1 and edit is not None:
            edit(config, metrics)
        (dst / "config.json").write_text(json.dumps(config))
        (dst / "metrics.json").write_text(json.dumps(metrics))
    return out


@pytest.mark.parametrize("edit, refused", [
    (lambda c, m: c["model"].pop("dropout"), False),                              # older imer: field absent, other run at the default
    (lambda c, m: c["train"].update(checkpoint_minutes=10.0), False),               # run-local: never changes numbers
    (lambda c, m: (c["model"].pop("dropout"), c["model"].update(hidden=99)), True),  # a real setting differs as well
])
def test_report_compares_settings_not_imer_versions(tmp_path, edit, refused):
    """A grid finished by a later imer (new opt-in fields, other checkpoint interval) still averages; other settings do not."""
    sweep = SweepSpec(methods=["early-fusion"], datasets=["synthetic"], rates=[0.4], seeds=[0, 1], epochs=1, overrides=[f"{k}={v}" for k, v in TINY.items()])
    run_sweep(sweep, tmp_path / "a", progress=False)
    cell = tmp_path / "a/runs/synthetic/early-fusion/rate=0.4"

    def as_other_version(config, metrics):
        edit(config, metrics)
        metrics["config_hash"] = "0123456789ab"

    mixed = _copy_cell([(cell / "seed=0", 0), (cell / "seed=1", 1)], tmp_path / "mixed", as_other_version)
    if refused:
        with pytest.raises(IMERError, match=r"refusing to average.*model\.hidden"):
            build_report(mixed, plots=False)
    else:
        assert build_report(mixed, plots=False).aggregates[0].seeds == [0, 1]


def test_report_refuses_an_absent_field_whose_value_is_not_the_default(tmp_path):
    """An older run lacks `dropout`; the newer one ran with a non-default value: different settings, refused."""
    sweep = SweepSpec(methods=["early-fusion"], datasets=["synthetic"], rates=[0.4], seeds=[0, 1], epochs=1,
                      overrides=[f"{k}={v}" for k, v in TINY.items()] + ["dropout=0.37"])
    run_sweep(sweep, tmp_path / "a", progress=False)
    cell = tmp_path / "a/runs/synthetic/early-fusion/rate=0.4"

    def older(config, metrics):
        config["model"].pop("dropout")
        metrics["config_hash"] = "0123456789ab"

    mixed = _copy_cell([(cell / "seed=1", 1), (cell / "seed=0", 0)], tmp_path / "mixed", older)
    with pytest.raises(IMERError, match=r"refusing to average.*model\.dropout \(absent vs 0\.37\)"):
        build_report(mixed, plots=False)


def test_same_stem_datasets_get_their_own_run_folders(tmp_path):
    """Issue 15 item 1: a/data.npz and b/data.npz are different datasets."""
    for folder, groups in (("a", 10), ("b", 12)):
        (tmp_path / folder).mkdir()
        save_custom(load_dataset("synthetic", num_groups=groups, max_len=4), tmp_path / folder / "data.npz")
    paths = [str(tmp_path / "a/data.npz"), str(tmp_path / "b/data.npz")]
    labels = [dataset_label(p) for p in paths]
    assert labels[0] != labels[1] and all(re.fullmatch(r"data-[0-9a-f]{8}", x) for x in labels)
    sweep = SweepSpec(methods=["early-fusion"], datasets=paths, rates=[0.4], seeds=[0], epochs=1, overrides=["hidden=8"])
    manifest = run_sweep(sweep, tmp_path / "sweep", progress=False)
    assert manifest["counts"] == {"done": 2}
    dirs = sorted(p.relative_to(tmp_path / "sweep").as_posix() for p in (tmp_path / "sweep").rglob("metrics.json"))
    assert dirs == sorted(f"runs/{x}/early-fusion/rate=0.4/seed=0/metrics.json" for x in labels)
    report = build_report(tmp_path / "sweep", plots=False)
    assert sorted(a.dataset for a in report.aggregates) == sorted(labels)
    moved = tmp_path / "moved.npz"
    moved.write_bytes(Path(paths[0]).read_bytes())
    assert dataset_label(str(moved)) == "moved-" + labels[0].split("-")[1]


def test_config_hash_ignores_seed_fold_and_run_local_settings():
    base = {"method": "comp", "seed": 0, "data": {"name": "x", "fold": 1, "data_dir": "/a"}, "train": {"threads": 1, "lr": 1e-3}, "model": {}}
    same = json.loads(json.dumps(base))
    same.update(seed=5)
    same["data"].update(fold=2, data_dir="/b")
    same["train"]["threads"] = 4
    other = json.loads(json.dumps(base))
    other["train"]["lr"] = 1e-4
    assert config_hash(base) == config_hash(same) != config_hash(other)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas not installed (pip install 'imer[analysis]')")
def test_results_dataframe(tmp_path):
    import imer

    sweep = SweepSpec(methods=["early-fusion", "late-fusion"], datasets=["synthetic"], rates=[0.4], seeds=[0, 1], epochs=1,
                      overrides=[f"{k}={v}" for k, v in TINY.items()])
    run_sweep(sweep, tmp_path, progress=False)
    df = imer.results(tmp_path)
    assert len(df) == 4 and set(df["variant"]) == {"early-fusion", "late-fusion"}
    for column in ("dataset", "variant", "method", "rate", "seed", "condition", "acc", "ua", "wf1", "epochs", "seconds", "commit", "peak_rss_mb"):
        assert column in df.columns
    row = df[(df.variant == "late-fusion") & (df.seed == 1)].iloc[0]
    metrics = json.loads((tmp_path / "runs/synthetic/late-fusion/rate=0.4/seed=1/metrics.json").read_text())
    assert row["acc"] == metrics["test"]["acc"] and row["epochs"] == 1 and row["condition"] == "rate=0.4"


def test_list_filters_methods_and_spec_variants(capsys):
    assert main(["list", "comp*", "--spec", str(ROOT / "experiments/mosi_comp.toml")]) == 0
    out = capsys.readouterr().out
    assert "comp-no-prompts" in out and "early-fusion" not in out
    assert main(["list", "*fusion"]) == 0
    out = capsys.readouterr().out
    assert "early-fusion" in out and "promise" not in out


def test_list_spec_file_shows_variants_with_their_resolved_epochs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list", str(ROOT / "experiments/rehearsal.toml")]) == 0  # `imer list SPEC` = `imer list --spec SPEC`
    out = capsys.readouterr().out
    assert "│ early-fusion │ early-fusion │" in out and out.count("10 (spec)") == 2 and "seeds 0, 1" in out
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\ndatasets = ["synthetic"]\nmissing_rates = [0.4]\nseeds = [0]\nset = { "hidden" = 8 }\n'
                    '[variants.mmin]\nmethod = "mmin"\n[variants.mmin-short]\nbase = "mmin"\nepochs = 6\nset = { "pretrain_epochs" = 2 }\n')
    assert main(["list", "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "80 (mmin config)" in out and "6 (variant)" in out and "every variant: set hidden=8" in out


def test_budget_scales_epochs_and_stages_is_recorded_and_refused_beside_full_runs(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\ndatasets = ["synthetic"]\nmissing_rates = [0.4]\nseeds = [0]\nepochs = 10\n'
                    f'set = {{ {", ".join(f"{chr(34)}{k}{chr(34)} = {json.dumps(v)}" for k, v in TINY.items())} }}\n'
                    '[variants.mmin]\nmethod = "mmin"\nset = { "pretrain_epochs" = 4 }\n')
    assert main(["sweep", str(spec), "--budget", "0.5", "--no-progress", "--out", str(tmp_path / "try")]) == 0
    run = tmp_path / "try/runs/synthetic/mmin/rate=0.4/seed=0"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 5 and config["model"]["pretrain_epochs"] == 2 and config["train"]["budget"] == 0.5
    assert len((run / "history.jsonl").read_text().splitlines()) == 5
    assert main(["report", str(tmp_path / "try"), "--no-plots"]) == 0
    page = (tmp_path / "try/report/report.md").read_text()
    assert "Every run had 0.5 of its epoch budget" in page and f"imer sweep {spec} --budget 0.5 --out" in page
    assert main(["sweep", str(spec), "--no-progress", "--out", str(tmp_path / "try")]) == 2  # a sweep folder keeps one budget
    assert "other settings" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--no-progress", "--out", str(tmp_path / "full")]) == 0
    (tmp_path / "full/runs/synthetic/mmin").rename(tmp_path / "try/runs/synthetic/mmin-full")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "try"), "--no-plots"]) == 2
    assert "0.5 and 1 of their epoch budget side by side" in capsys.readouterr().err
    for bad in (["--budget", "0"], ["--budget", "1.5"]):
        assert main(["sweep", str(spec), *bad, "--out", str(tmp_path / "x")]) == 2
    assert "--budget: must be" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="set by imer sweep --budget only"):
        from imer.config import build_run_config

        build_run_config("mmin", "synthetic", overrides=["train.budget=0.5"])


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_committed_specs_load(path):
    kwargs, meta = load_spec(path)
    assert meta.name == path.stem and SweepSpec(**kwargs, experiment=meta).variants


def test_spec_and_grid_flags_do_not_mix(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", 'methods = ["early-fusion"]\n')
    assert main(["sweep", str(spec), "--epochs", "3", "--out", str(tmp_path / "o")]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["sweep", "--methods", "early-fusion", "--out", str(tmp_path / "o")]) == 2
    assert "--datasets" in capsys.readouterr().err


RESULTS = sorted(p.parent for p in (ROOT / "results").glob("*/sweep.json")) if (ROOT / "results").is_dir() else []


@pytest.mark.parametrize("sweep_dir", RESULTS, ids=lambda p: p.name)
def test_committed_results_render_byte_for_byte(sweep_dir, tmp_path):
    """Every committed result set re-renders to exactly the tables committed under docs/."""
    page = next((p for p in (ROOT / "docs").rglob("report.md") if f"imer report results/{sweep_dir.name} " in p.read_text()), None)
    if page is None:
        pytest.skip(f"no docs page renders results/{sweep_dir.name}")
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        build_report(Path("results") / sweep_dir.name, out_dir=tmp_path, plots=False)
    finally:
        os.chdir(cwd)
    for name in ("table.md", "table.tex", "table.csv", "ablations.md", "conditions.md", "selection.md", "significance.md", "patterns.md", "stages.md", "gap.md"):
        if (page.parent / name).is_file():
            assert (tmp_path / name).read_bytes() == (page.parent / name).read_bytes(), name


@pytest.mark.parametrize("doc", ["docs/results.md", "docs/methods/context-fusion.md"])
def test_results_page_quotes_rendered_tables_verbatim(doc):
    """Tables in the results pages are copies of `imer report` output (checked above against the committed runs)."""
    page = (ROOT / doc).read_text()
    quoted = re.findall(r"<!-- table from (\S+) -->\n(.*?)<!-- end of table -->", page, flags=re.S)
    assert quoted, f"{doc} quotes no rendered table"
    for source, block in quoted:
        assert (ROOT / source).read_text() == block, f"{doc} differs from {source}; re-render and copy it"
