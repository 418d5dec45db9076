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
"""

from __future__ import annotations

import os
import warnings


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask; ``os.cpu_count()`` where unsupported)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def passive_waiting() -> bool:
    """Whether OpenMP threads sleep instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


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
