"""The runnable examples of docs/data.md ("Your own data") run and give datasets imer accepts."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_readme_predict_example_runs(tmp_path, monkeypatch):
    readme = (DOC.parent.parent / "README.md").read_text()
    section = readme[readme.index("## Predicting on your own utterances"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    run = re.search(r"imer predict --model (\S+) --input new.npz", section).group(1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "early-fusion", "--dataset", "synthetic", "--epochs", "1", "--set", "hidden=4", "--no-progress", "--out", run]) == 0
    exec(compile(code, "README.md", "exec"), {})
    assert main(["predict", "--model", run, "--input", "new.npz", "--out", "predictions.csv"]) == 0
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[3].split(",")[-2] == "0"  # utterance 2: text not used (has_text = 0)


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
