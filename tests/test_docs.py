"""The runnable examples of docs/data.md ("Your own data") run and give datasets imer accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from imer.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "data.md"


def section_code(title: str) -> list[str]:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_own_data_examples_run_and_train(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = section_code("Your own data")
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {})
    for name, task in (("mydata.npz", "regression"), ("mycsv.npz", "classification")):
        assert main(["data", "info", "--dataset", name]) == 0
        assert task in capsys.readouterr().out
        assert main(["train", "--method", "early-fusion", "--dataset", name, "--epochs", "1", "--set", "hidden=4", "--no-progress", "--out", f"run-{name}"]) == 0


def _readme_section(title: str) -> str:
    readme = (DOC.parent.parent / "README.md").read_text()
    start = readme.index(f"## {title}")
    return readme[start:readme.find("\n## ", start + 1)]


def _on_local_data(code: str, data_dir: Path) -> str:
    """A README example with its data folder (``../shared/data``) and the committed ``results/`` pointed at where they are here."""
    return code.replace("../shared/data", str(data_dir)).replace('"results/', f'"{DOC.parent.parent}/results/')


def test_readme_predict_example_gives_scores_in_the_label_range(data_dir, tmp_path, monkeypatch):
    section = _readme_section("Predicting on your own utterances")
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    run = re.search(r"imer predict --model (\S+) --input new.npz", section).group(1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "early-fusion", "--dataset", "cmu-mosi-minilm", "--data-dir", str(data_dir), "--missing-rate", "0.3",
                 "--epochs", "3", "--no-progress", "--out", run]) == 0
    exec(compile(_on_local_data(code, data_dir), "README.md", "exec"), {})
    assert main(["predict", "--model", run, "--input", "new.npz", "--out", "predictions.csv"]) == 0
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert len(table) == 5 and list(table["has_text"]) == [1, 1, 0, 1, 1]  # utterance 2: text not used
    assert table["score"].between(-3, 3).all() and table["score"].std() > 0  # real features give scores on the task's scale


def test_readme_file_api_example_works_with_the_run_it_makes(data_dir, tmp_path, monkeypatch):
    """The "From files and results" example: it trains on cmu-mosi-minilm, so the new.npz of the predict example fits its run."""
    blocks = re.findall(r"```python\n(.*?)```", _readme_section("Python API"), flags=re.S)
    code = next(b for b in blocks if "imer.build_run_config" in b)
    predict_example = re.search(r"```python\n(.*?)```", _readme_section("Predicting on your own utterances"), flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "early-fusion", "--dataset", "cmu-mosi-minilm", "--data-dir", str(data_dir), "--epochs", "1",
                 "--no-progress", "--out", "runs/minilm-ef-0.3"]) == 0
    exec(compile(_on_local_data(predict_example, data_dir), "README.md", "exec"), {})
    namespace: dict = {}
    exec(compile(_on_local_data(code, data_dir), "README.md", "exec"), namespace)
    assert namespace["metrics"]["test"]["acc2"] > 0.6 and namespace["metrics"]["dataset"] == "cmu-mosi-minilm"
    rows = namespace["rows"]
    assert len(rows) == 5 and all(-3 <= row["score"] <= 3 for row in rows)
    assert len(namespace["df"]) > 0 and namespace["ds"].name == "cmu-mosi-minilm"


def test_readme_real_data_commands_run_as_printed(data_dir, tmp_path, monkeypatch, capsys):
    """The README's real-data block, every command as printed (the data folder pointed here); new.npz from the predict example."""
    import shlex

    readme = (DOC.parent.parent / "README.md").read_text()
    block = readme[readme.index("On real data"):].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("  #")[0]) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    kinds = [c[1] for c in commands]
    assert kinds[-4:] == ["evaluate", "predict", "data", "list"] and set(kinds[:-4]) == {"train"} and len(kinds) >= 6
    monkeypatch.chdir(tmp_path)
    predict_example = re.search(r"```python\n(.*?)```", _readme_section("Predicting on your own utterances"), flags=re.S).group(1)
    for argv in commands:
        argv = [str(data_dir) if a == "../shared/data" else a for a in argv[1:]]
        if argv[0] == "predict":
            exec(compile(_on_local_data(predict_example, data_dir), "README.md", "exec"), {})
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    for run in [c[c.index("--out") + 1] for c in commands if c[1] == "train"]:
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["test"]["acc2"] > 0.65 and not metrics["warnings"], run  # well above a constant prediction on cmu-mosi-minilm
    text_only = re.search(r"\bt\s+\W\s+(0\.\d+)", out)  # the {t} row of evaluate --all-conditions
    assert text_only and float(text_only.group(1)) > 0.65 and "average" in out
    scores = pd.read_csv(tmp_path / "predictions.csv")["score"]
    assert len(scores) == 5 and scores.between(-3, 3).all()
    assert "early-fusion" in out and "cmu-mosi-minilm" in out


def test_options_page_is_generated_from_the_field_declarations(capsys):
    from imer.config.describe import option_rows, options_markdown

    from imer.config.describe import method_option_rows
    from imer.models import list_models

    assert (DOC.parent / "options.md").read_text() == options_markdown()  # regenerate: imer.config.describe.options_markdown()
    assert all(row[4] for row in option_rows())  # every option says what it means
    assert all(row[4] for method in list_models() for row in method_option_rows(method))  # every method option too
    assert main(["list", "--options"]) == 0
    assert "train.lr" in capsys.readouterr().out
    assert main(["list", "--options", "comp"]) == 0
    out = capsys.readouterr().out
    assert "model.block_style" in out and "prenorm, plain" in out and "train.lr" not in out
    for method in list_models():
        assert f"### {method}" in options_markdown()


def test_readme_spec_listing_plan_and_budget_trial_run_as_printed(data_dir, tmp_path, monkeypatch, capsys):
    """The README's spec commands that run in seconds: list a spec, plan one, try one at a tenth of its budget, report it."""
    import shlex

    root = DOC.parent.parent
    block = _readme_section("Sweeps and reports").split("```bash\n", 1)[1].split("```", 1)[0]
    lines = {line.split()[1] + (" --plan" if "--plan" in line else " --budget" if "--budget" in line else ""): line
             for line in block.splitlines() if line.startswith("imer ")}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(root / "experiments")
    (tmp_path / "results").symlink_to(root / "results")

    def run(line: str) -> str:
        argv = [str(data_dir) if a == "../shared/data" else a for a in shlex.split(line.split("  #")[0])[1:]]
        assert main(argv) == 0, line
        return capsys.readouterr().out

    out = run(lines["list"])
    assert "comp-no-prompts" in out and "(variant)" in out and "every variant:" in out
    out = run(lines["sweep --plan"])
    assert "runs of this variant here" in out and "no estimate" not in out and "estimated ? " not in out
    trial = lines["sweep --budget"]
    out = run(trial)
    sweep = tmp_path / trial.split("--out ")[1].split()[0]
    configs = [json.loads(p.read_text()) for p in sweep.rglob("config.json")]
    assert len(configs) == 12 and {(c["train"]["epochs"], c["train"]["budget"]) for c in configs} == {(1, 0.1)}  # rehearsal: 10 epochs
    assert main(["report", str(sweep), "--no-plots"]) == 0
    assert "Every run had 0.1 of its epoch budget" in (sweep / "report/report.md").read_text()


def test_readme_spec_sweep_and_report_commands_work_as_printed_on_the_committed_results(data_dir, tmp_path, monkeypatch, capsys):
    """Rerun as printed over a copy of results/mosi_comp: the sweep resumes with nothing left to do, the report re-renders its table."""
    import shlex
    import shutil

    root = DOC.parent.parent
    block = _readme_section("Sweeps and reports").split("```bash\n", 1)[1].split("```", 1)[0]
    sweep_line, report_line = [line for line in block.splitlines() if "results/mosi_comp" in line]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(root / "experiments")
    shutil.copytree(root / "results/mosi_comp", tmp_path / "results/mosi_comp")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("metrics.json")}
    for line in (sweep_line, report_line):
        argv = [str(data_dir) if a == "../shared/data" else a for a in shlex.split(line.split("  #")[0])[1:]]
        assert main(argv + (["--no-progress"] if argv[0] == "sweep" else [])) == 0, line
    out = capsys.readouterr().out
    assert f"{len(before)} done of {len(before)} cells" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing retrained
    assert (tmp_path / "docs/results/mosi_comp/table.md").read_bytes() == (root / "docs/results/mosi_comp/table.md").read_bytes()
