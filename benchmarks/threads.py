"""1 vs 2 (or more) torch threads on this machine, measured as ratios inside one process.

Trains ComP (or ``--method``; current defaults) on CMU-MOSI (or ``--size``) for ``--rounds`` rounds; each round
runs one training epoch per thread count in ``--threads`` (order alternating
between rounds), so every setting sees the same machine load. The OpenMP wait
policy is fixed when the process starts, so compare ``OMP_WAIT_POLICY=PASSIVE``
by running the script twice::

    python benchmarks/threads.py --data-dir ../shared/data
    OMP_WAIT_POLICY=PASSIVE python benchmarks/threads.py --data-dir ../shared/data

Prints one JSON line: seconds per epoch per thread count (median over rounds),
their ratio to 1 thread, the wait policy and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("IMER_DATA"))
    parser.add_argument("--method", default="comp")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--size", default="cmu-mosi", help="dataset size as in speed.py --sizes: cmu-mosi (default), mosei, iemocap, n=<N>, len=<L>")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from imer.data import RandomMissing, derive_seed
    from imer.config import build_run_config
    from imer.experiments.run import prepare_data
    from imer.models import create_model
    from imer.training.trainer import Trainer

    counts = [int(t) for t in args.threads.split(",")]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from speed import make_dataset

    dataset = make_dataset(args.size, args.data_dir)
    config = build_run_config(args.method, "cmu-mosi" if args.size == "cmu-mosi" else "synthetic",
                              settings={"seed": 0, "data.data_dir": args.data_dir, "train.progress": False, "missing.rate": 0.4})
    data = prepare_data(config, dataset)
    torch.manual_seed(0)
    model = create_model(args.method, data.spec, config.model)
    trainer = Trainer(model, dataclasses.replace(config.train, epochs=1), select_metric="mae", seed=0)
    available = data.dataset.available[data.indices["train"]]
    model.on_epoch_start(0)
    trainer._train_epoch(data.batchers["train"], RandomMissing(0.4).apply(available, np.random.default_rng(0)), 0)  # warm-up
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for n in counts if r % 2 == 0 else counts[::-1]:
            torch.set_num_threads(n)
            mask = RandomMissing(0.4).apply(available, np.random.default_rng(derive_seed("threads", r)))
            t = time.perf_counter()
            trainer._train_epoch(data.batchers["train"], mask, r)
            seconds[n].append(time.perf_counter() - t)
        loads.append(os.getloadavg()[0])
    median = {n: float(np.median(v)) for n, v in seconds.items()}
    print(json.dumps({
        "method": args.method, "size": args.size, "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "cores": len(os.sched_getaffinity(0)),
        "seconds_per_epoch": median, "ratio_to_1_thread": {n: median[n] / median[counts[0]] for n in counts},
        "all_seconds": seconds, "load_average_1min": loads,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
