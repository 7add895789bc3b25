"""A PyTorch step on many small variables, as a training loop repeats it.

    KERAS_BACKEND=torch python bench/torch_overhead.py [--variables 2000] [--cpu 1]

On 2000 vectors of 1024, the arithmetic of a step takes about 1 ms; the
rest is Python's work per variable (Keras's `apply`, keraslion's checks,
routes and the C steps' address arrays). This times `optimizer.apply`
repeated on one optimizer (its caches warm, as in `fit`), for each momentum
dtype, in one process per dtype, one thread: ms per step, the median of 40
steps after 5. (`bench/int8_kernel.py` alternates four optimizers between
rounds of 5 steps, so that each round begins with cold caches.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(momentum_dtype: str, variables: int) -> float:
    sys.path.insert(0, str(HERE.parent / "inst" / "python"))
    import keras
    import numpy as np
    import torch

    from keraslion import Lion

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    weights = [keras.Variable(rng.standard_normal(1024).astype("float32"))
               for _ in range(variables)]
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(1024).astype("float32"))
             for _ in range(variables)]
    optimizer = Lion(1e-4, weight_decay=0.01, momentum_dtype=momentum_dtype)
    optimizer.build(weights)
    for _ in range(5):
        optimizer.apply(grads, weights)
    times = []
    for _ in range(40):
        start = time.perf_counter()
        optimizer.apply(grads, weights)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, default=2000)
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to pin to (-1: none)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a worker's momentum dtype
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    if args.one:
        print(one(args.one, args.variables))
        return
    print(f"torch, {args.variables} vectors of 1024, load average {os.getloadavg()[0]:.2f}")
    for momentum_dtype in ("float32", "bfloat16", "int8"):
        result = subprocess.run(
            [sys.executable, __file__, "--one", momentum_dtype, "--variables",
             str(args.variables), "--cpu", str(args.cpu)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "KERAS_BACKEND": "torch"})
        print(f"{momentum_dtype:9s} {float(result.stdout.split()[-1]):6.2f} ms a step")


if __name__ == "__main__":
    main()
