"""SIGTERM / SIGINT to a sweep, sent to the parent alone or to its whole process group, with 1 or 2 workers:
the sweep ends within seconds with status 143 / 130, finished cells are kept, no process of it is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPEC = """datasets = ["synthetic"]
missing_rates = [0.0]
seeds = [0]
set = {hidden = 8}

[variants.fast]
method = "late-fusion"
epochs = 1

[variants.slow]
method = "late-fusion"
epochs = 100000
"""


def _session(sid: int) -> list[int]:
    """Processes of session ``sid`` still alive (zombies aside)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def _sweep(spec: Path, out: Path, workers: int):
    """``imer sweep`` in a session of its own (one torch thread per process); whatever of it still runs at the end is killed,
    so check for leftover processes inside the block."""
    process = subprocess.Popen([sys.executable, "-m", "imer.cli", "sweep", str(spec), "--workers", str(workers), "--no-progress", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               start_new_session=True)
    try:
        yield process
    finally:
        if _session(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("target", ["parent", "group"])
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_a_sweep_cleanly(tmp_path, workers, target, signum, status):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "s"
    with _sweep(spec, out, workers) as process:
        fast = out / "runs" / "synthetic" / "fast" / "rate=0" / "seed=0" / "metrics.json"
        slow = out / "runs" / "synthetic" / "slow" / "rate=0" / "seed=0" / "checkpoint.pt"
        _wait_for(lambda: fast.is_file() and slow.is_file() or process.poll() is not None, 240, "a finished cell and a cell in training")
        assert process.poll() is None, process.communicate()
        (os.killpg if target == "group" else os.kill)(process.pid, signum)
        started = time.monotonic()
        _, err = process.communicate(timeout=60)
        took = time.monotonic() - started
        _wait_for(lambda: not _session(process.pid), 10, f"the sweep's processes {_session(process.pid)} to end")  # before the cleanup kills them
    assert process.returncode == status, err
    assert took < 20, f"took {took:.1f}s to stop"
    assert "Traceback" not in err and "sweep interrupted" in err, err
    assert fast.is_file()
    manifest = json.loads((out / "sweep.json").read_text())
    assert {c["variant"]: c["status"] for c in manifest["cells"]} == {"fast": "done", "slow": "partial"}
    assert not (out / ".imer.lock").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("target", ["parent", "group"])
@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_a_signal_while_workers_start_never_hangs(tmp_path, target, delay):
    """The race of issue 22: workers that die during start-up or hand-off left the parent joining an executor thread forever."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("epochs = 1\n", "epochs = 100000\n"))
    out = tmp_path / "s"
    with _sweep(spec, out, 2) as process:
        _wait_for(lambda: (out / "sweep.json").is_file() or process.poll() is not None, 120, "the sweep to start")
        time.sleep(delay)
        (os.killpg if target == "group" else os.kill)(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        _wait_for(lambda: not _session(process.pid), 10, "the sweep's processes to end")
    assert process.returncode == 143, err
    assert "Traceback" not in err, err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_end_when_the_sweep_is_killed(tmp_path):
    """SIGKILL to the sweep alone (it cannot stop its workers): they end by themselves, and a rerun resumes the cell."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "s"
    slow = out / "runs" / "synthetic" / "slow" / "rate=0" / "seed=0" / "checkpoint.pt"
    with _sweep(spec, out, 2) as process:
        _wait_for(lambda: slow.is_file() or process.poll() is not None, 240, "a cell in training")
        assert process.poll() is None, process.communicate()
        assert [pid for pid in _session(process.pid) if pid != process.pid], "no worker process"
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        _wait_for(lambda: not _session(process.pid), 15, f"the orphaned workers {_session(process.pid)} to end")
    left_at = slow.stat().st_mtime_ns
    with _sweep(spec, out, 2) as rerun:
        trains_on = lambda: slow.stat().st_mtime_ns > left_at  # noqa: E731  the rerun's worker writes the cell's next checkpoint
        _wait_for(lambda: (out / "failures.jsonl").is_file() or rerun.poll() is not None or trains_on(), 120, "the rerun to take the cell")
        os.kill(rerun.pid, signal.SIGTERM)
        _, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 143, err
    assert not (out / "failures.jsonl").is_file() or "slow" not in (out / "failures.jsonl").read_text(), err

