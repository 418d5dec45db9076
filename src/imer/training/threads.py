"""How many intra-op threads torch uses: the cores this process may run on, shared among workers.

On a CPU, torch's intra-op threads beyond the cores actually available do not
help, and OpenMP threads that spin while they wait hurt a lot on a busy
machine (measured in docs/benchmarks.md: 2 threads 10-12x slower than 1 with
the default wait policy, 1.6x faster with ``OMP_WAIT_POLICY=PASSIVE``, which
``import imer`` sets unless torch was imported first or the user chose a
policy). The default is ``cores // workers`` (at least 1), with ``cores``
from ``os.sched_getaffinity`` (what a container or ``taskset`` allows), so
``workers × threads ≤ cores``; asking for more warns. Without passive waiting
the default is 1 thread; an explicit ``OMP_NUM_THREADS`` is the default too.

Passive waiting puts a thread to sleep after every parallel region, and ComP's
many small operations then pay a wake-up each. On an idle machine a short spin
first (``GOMP_SPINCOUNT=2000``, tens of microseconds) brought the default
300-epoch ComP run from 6 min 17 s to 5 min 02 s with the same numbers; on a
busy machine it made epochs about 1.2x slower (a spin of 10000: 1.5x). So
``import imer`` adds the spin only when the 1-minute load average says the
machine is idle, and never when the user set either variable
(``GOMP_SPINCOUNT=0`` turns it off).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

#: Spins before an idle OpenMP thread sleeps, on an idle machine (libgomp counts roughly 100 spins per microsecond).
IDLE_SPIN_COUNT = 2000
#: Below this 1-minute load average the machine counts as idle.
IDLE_LOAD = 0.5


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask; ``os.cpu_count()`` where unsupported)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def passive_waiting() -> bool:
    """Whether OpenMP threads sleep instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def machine_load() -> float | None:
    """The 1-minute load average, None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def openmp_wait_environment(environ: Mapping[str, str], torch_loaded: bool, load: float | None) -> dict[str, str]:
    """The OpenMP variables to set before torch loads OpenMP: passive waiting, plus a short spin on an idle machine.

    Nothing when torch is already loaded (too late) or the user chose a wait policy.
    """
    if torch_loaded or "OMP_WAIT_POLICY" in environ:
        return {}
    settings = {"OMP_WAIT_POLICY": "PASSIVE"}
    if "GOMP_SPINCOUNT" not in environ and load is not None and load < IDLE_LOAD:
        settings["GOMP_SPINCOUNT"] = str(IDLE_SPIN_COUNT)
    return settings


def default_threads(workers: int = 1) -> int:
    """``OMP_NUM_THREADS`` when set, else ``available_cores() // workers`` (at least 1) with passive waiting, else 1."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    if not passive_waiting():
        return 1
    return max(1, available_cores() // max(1, workers))


def resolve_threads(threads: int | None, workers: int = 1) -> int:
    """The thread count to use: ``threads`` if given (warning when ``workers × threads`` exceeds the cores), else the default."""
    if threads is None or threads <= 0:
        return default_threads(workers)
    cores = available_cores()
    if threads * max(1, workers) > cores:
        warnings.warn(
            f"{workers} worker(s) × {threads} thread(s) = {threads * workers} exceeds the {cores} core(s) available; "
            "expect much slower training (threads wait for each other); use --threads "
            f"{default_threads(workers)} or fewer workers",
            RuntimeWarning,
            stacklevel=2,
        )
    return int(threads)


def configure_threads(threads: int | None, workers: int = 1) -> int:
    """Set torch's intra-op threads to :func:`resolve_threads` and return the number."""
    import torch

    n = resolve_threads(threads, workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
