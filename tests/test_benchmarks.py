"""benchmarks/speed.py measures on the device it is given: the CPU here, a GPU where torch sees one (refused where it does not)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SPEED = Path(__file__).resolve().parent.parent / "benchmarks" / "speed.py"


def _speed():
    spec = importlib.util.spec_from_file_location("speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_speed_benchmark_measures_on_the_device_given(device, tmp_path):
    out = tmp_path / "speed"
    assert _speed().main(["--methods", "early-fusion", "--sizes", "n=300", "--epochs", "2", "--eval-repeats", "1", "--variants", "after",
                          "--device", device, "--out", str(out)]) == 0
    (result,) = json.loads((out / "speed.json").read_text())["results"]
    expected = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    assert result["device"] == expected and result["variants"]["after"]["seconds_train"] > 0
    assert (result["gpu"] is None) == (expected == "cpu") and f"device {result['gpu'] or 'cpu'}." in (out / "speed.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_speed_benchmark_refuses_a_gpu_it_cannot_see(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _speed().main(["--sizes", "n=300", "--device", "cuda", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "torch sees no GPU" in capsys.readouterr().err
