"""Thread defaults fit the machine: cores from the affinity mask, divided among workers; oversubscription warns."""

from __future__ import annotations

import pytest
import torch

from imer.cli import build_parser, main
from imer.training import threads


def test_default_divides_the_available_cores_among_workers(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.default_threads() == 8
    assert threads.default_threads(workers=3) == 2
    assert threads.default_threads(workers=16) == 1
    assert threads.resolve_threads(None, workers=4) == 2


def test_oversubscription_warns(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    with pytest.warns(RuntimeWarning, match="exceeds the 2 core"):
        assert threads.resolve_threads(2, workers=2) == 2
    with pytest.warns(RuntimeWarning):
        threads.resolve_threads(3)


def test_configure_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_computing_command_takes_threads(tmp_path):
    parser = build_parser()
    for argv in (["train", "--method", "x", "--dataset", "y", "--out", "z"], ["evaluate", "--model", "m"],
                 ["predict", "--model", "m", "--input", "i", "--out", "o"],
                 ["sweep", "--methods", "a", "--datasets", "b", "--missing-rates", "0", "--seeds", "0", "--out", "o"]):
        assert parser.parse_args([*argv, "--threads", "1"]).threads == 1
    out = tmp_path / "run"
    assert main(["train", "--method", "late-fusion", "--dataset", "synthetic", "--epochs", "1", "--set", "hidden=8", "--no-progress",
                 "--threads", "1", "--out", str(out)]) == 0
    assert main(["evaluate", "--model", str(out), "--threads", "1"]) == 0


def test_spinning_waits_default_to_one_thread(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3


def test_import_imer_asks_for_passive_waiting():
    import subprocess
    import sys

    code = "import os, imer, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert out == "PASSIVE"


def test_openmp_wait_environment_spins_briefly_only_on_an_idle_machine():
    idle, busy = threads.IDLE_LOAD / 2, 2.0
    assert threads.openmp_wait_environment({}, torch_loaded=False, load=idle) == {
        "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(threads.IDLE_SPIN_COUNT)}
    assert threads.openmp_wait_environment({}, torch_loaded=False, load=busy) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.openmp_wait_environment({}, torch_loaded=False, load=None) == {"OMP_WAIT_POLICY": "PASSIVE"}
    # the user's choices win, and nothing is set once torch has loaded OpenMP
    assert threads.openmp_wait_environment({"GOMP_SPINCOUNT": "0"}, torch_loaded=False, load=idle) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.openmp_wait_environment({"OMP_WAIT_POLICY": "ACTIVE"}, torch_loaded=False, load=idle) == {}
    assert threads.openmp_wait_environment({}, torch_loaded=True, load=idle) == {}
