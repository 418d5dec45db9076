"""End to end on the real CMU-MOSI features: the acceptance numbers of the foundation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imer.cli import main


@pytest.fixture(scope="module")
def mosi_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mosi") / "ef"
    argv = ["train", "--method", "early-fusion", "--dataset", "cmu-mosi", "--data-dir", str(data_dir), "--missing-rate", "0", "--epochs", "30", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_early_fusion_reaches_acceptance_accuracy(mosi_run):
    metrics = json.loads((mosi_run / "metrics.json").read_text())
    assert metrics["test"]["acc2"] >= 0.72, metrics["test"]
    assert metrics["missing_fraction"]["test"] == 0.0


def test_missing_rate_half_is_realised(data_dir, tmp_path):
    argv = ["train", "--method", "early-fusion", "--dataset", "cmu-mosi", "--data-dir", str(data_dir), "--missing-rate", "0.5", "--epochs", "3", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert abs(metrics["missing_fraction"]["test"] - 0.5) <= 0.02
    assert abs(metrics["missing_fraction"]["train"] - 0.5) <= 0.02
    assert metrics["test"]["acc2"] > 0.6


def test_converted_mosi_trains_to_the_same_numbers(data_dir, tmp_path):
    converted = tmp_path / "mosi.npz"
    assert main(["data", "convert", "--dataset", "cmu-mosi", "--data-dir", str(data_dir), "--out", str(converted)]) == 0
    common = ["--method", "early-fusion", "--missing-rate", "0.3", "--epochs", "3", "--no-progress"]
    assert main(["train", *common, "--dataset", "cmu-mosi", "--data-dir", str(data_dir), "--out", str(tmp_path / "orig")]) == 0
    assert main(["train", *common, "--dataset", str(converted), "--out", str(tmp_path / "conv")]) == 0
    a = json.loads((tmp_path / "orig" / "metrics.json").read_text())
    b = json.loads((tmp_path / "conv" / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    np.testing.assert_array_equal(np.load(tmp_path / "orig" / "masks.npz")["test_available"], np.load(tmp_path / "conv" / "masks.npz")["test_available"])
