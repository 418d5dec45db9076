"""The label-leakage probe on every built-in real dataset present, and through ``imer data info --probe``."""

from __future__ import annotations

import json

import pytest

from imer.cli import main
from imer.data import list_datasets, load_dataset, make_synthetic, save_custom
from imer.errors import DataError
from imer.evaluation.leakage import probe_leakage


@pytest.fixture(scope="module")
def reports(data_dir):
    found = {}
    for name in list_datasets():
        if name.startswith("synthetic"):
            continue
        try:
            dataset = load_dataset(name, data_dir)
        except DataError:  # e.g. GCNet-layout sets whose feature folders are not in the shared data
            continue
        found[name] = probe_leakage(dataset)
    return found


def test_probe_runs_on_both_mosi_feature_sets(reports):
    assert {"cmu-mosi", "cmu-mosi-minilm"} <= set(reports)
    for report in reports.values():
        assert report.rows and all(0 <= r.valid <= 1 and 0 <= r.test <= 1 for r in report.rows)


def test_minilm_scores_alike_on_validation_and_test(reports):
    report = reports["cmu-mosi-minilm"]
    assert [r.modality for r in report.rows] == ["audio", "text"]
    for row in report.rows:
        assert abs(row.valid - row.test) < 0.05, row
    assert report.verdict == "no leak suspected"
    assert next(r for r in report.rows if r.modality == "text").test > 0.75  # the probe is a real classifier


def test_bclstm_text_and_video_are_flagged(reports):
    report = reports["cmu-mosi"]
    flagged = {r.modality for r in report.rows if r.flagged}
    assert {"text", "video"} <= flagged, report.rows
    assert report.verdict.startswith("leak suspected")


def test_data_info_probe_prints_verdict(capsys, tmp_path):
    small = save_custom(make_synthetic(num_groups=30, seed=2), tmp_path / "small.npz")
    assert main(["data", "info", "--dataset", str(small), "--probe"]) == 0
    out = capsys.readouterr().out
    assert "leakage probe" in out and "verdict:" in out
    assert main(["data", "info", "--dataset", str(small), "--probe", "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)["leakage_probe"]
    assert [r["modality"] for r in probe["rows"]] == ["audio", "text", "video"]
    assert probe["threshold"] == 0.05 and all(set(r) >= {"valid", "test", "gap", "flagged"} for r in probe["rows"])
