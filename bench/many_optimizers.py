"""Memory a process keeps for each optimizer created, stepped and dropped.

    KERAS_BACKEND=tensorflow python bench/many_optimizers.py [--count 120]

A hyperparameter sweep in one session makes many optimizers. Each case
creates `--count` optimizers one after another, takes two steps on one
128x256 variable (large enough for TensorFlow's XLA-compiled fast path)
and drops the optimizer; the resident memory (`/proc/self/statm`, Linux)
is read after the first and the last, and the growth per optimizer printed:
keraslion's Lion, the same with its fast path off, and Keras's own Lion.
One optimizer of each kind is stepped first, so that what the process
grows once (imports, backend set-up) is charged to none of them.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inst" / "python"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keraslion import Lion  # noqa: E402


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def plain_lion() -> Any:
    optimizer = Lion(learning_rate=1e-3)
    optimizer._fast_path = None
    return optimizer


def growth_per_optimizer(make: Callable[[], Any], count: int) -> tuple[float, float]:
    variable = keras.Variable(np.ones((128, 256), np.float32))
    grads = [keras.ops.ones((128, 256))]
    first = 0.0
    for i in range(count):
        optimizer = make()
        optimizer.apply(grads, [variable])
        optimizer.apply(grads, [variable])
        del optimizer
        gc.collect()
        if i == 0:
            first = resident_mib()
    return first, (resident_mib() - first) / (count - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=120)
    args = parser.parse_args()
    if args.count < 2:
        parser.error(f"--count must be at least 2 (two readings), not {args.count}")
    cases = {"keraslion Lion": lambda: Lion(learning_rate=1e-3),
             "keraslion Lion, fast path off": plain_lion,
             "Keras's Lion": lambda: keras.optimizers.Lion(learning_rate=1e-3)}
    for make in cases.values():
        growth_per_optimizer(make, 2)
    print(f"{keras.backend.backend()}, {args.count} optimizers each")
    print("| optimizer | MiB after the first | MiB kept per optimizer |\n|---|---|---|")
    for name, make in cases.items():
        first, per_optimizer = growth_per_optimizer(make, args.count)
        print(f"| {name} | {first:.1f} | {per_optimizer:.2f} |", flush=True)


if __name__ == "__main__":
    main()
