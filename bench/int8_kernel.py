"""The int8 step with and without its C kernel, and bfloat16's, against float32's, by case.

    KERAS_BACKEND=torch python bench/int8_kernel.py [--rounds 6] [--cpu 1]
    KERAS_BACKEND=jax python bench/int8_kernel.py
    KERAS_BACKEND=tensorflow python bench/int8_kernel.py

One thread, pinned to one CPU (`--cpu -1`: not pinned, all threads). The
cases are bench.py's: one 4096x4096 variable, a 200-tensor transformer
(16.7M parameters), 2000 vectors of 1024. PyTorch: `optimizer.apply`;
JAX: a jitted, donated `stateless_apply` (as `fit` runs it); TensorFlow:
`optimizer.apply` in a function XLA compiles (as `fit` runs it). Prints ms per
step (the median over interleaved rounds of each round's median of 5
steps) and float32's ms divided by bfloat16's, and by int8's with the
kernel (`KERASLION_NATIVE=1`, as for float32 and bfloat16: on PyTorch they
step in C too) and with the backend's operations (`=0`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "inst" / "python"))
sys.path.insert(0, str(HERE))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tf_variables import transformer_shapes  # noqa: E402

from keraslion import Lion  # noqa: E402

BACKEND = keras.backend.backend()
CASES = {"1x16.7M": [(4096, 4096)], "200 mixed": transformer_shapes(),
         "2000x1k": [(1024,)] * 2000}


def timer(shapes: list[tuple[int, ...]], momentum_dtype: str, kernel: bool) -> Callable[[], float]:
    """A function timing a round of 5 steps (the step is built, and traced, here)."""
    os.environ["KERASLION_NATIVE"] = "1" if kernel else "0"
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32"))
             for s in shapes]
    optimizer = Lion(1e-4, weight_decay=0.01, momentum_dtype=momentum_dtype)
    optimizer.build(variables)
    if BACKEND == "jax":
        import jax

        step = jax.jit(lambda w, s, g: optimizer.stateless_apply(s, g, w), donate_argnums=(0, 1))
        held = [[v.value for v in variables], [v.value for v in optimizer.variables]]

        def one() -> None:
            held[0], held[1] = step(held[0], held[1], grads)
            jax.block_until_ready(held[0])
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        one = tf.function(lambda: optimizer.apply(grads, variables), jit_compile=True)
    else:
        def one() -> None:
            optimizer.apply(grads, variables)

    def round_() -> float:
        os.environ["KERASLION_NATIVE"] = "1" if kernel else "0"
        times = []
        for _ in range(5):
            start = time.perf_counter()
            one()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    round_()  # builds, compiles
    return round_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to pin to (-1: none)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
        if BACKEND == "torch":
            import torch

            torch.set_num_threads(1)
    where = f"pinned to CPU {args.cpu}" if args.cpu >= 0 else "all CPUs"
    print(f"{BACKEND}, {where}, "
          f"{args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    for case, shapes in CASES.items():
        timers = {"float32": timer(shapes, "float32", True),
                  "bfloat16": timer(shapes, "bfloat16", True),
                  "int8, kernel": timer(shapes, "int8", True),
                  "int8, operations": timer(shapes, "int8", False)}
        times: dict[str, list[float]] = {name: [] for name in timers}
        for _ in range(args.rounds):
            for name, round_ in timers.items():
                times[name].append(round_())
        medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        print(f"{case:10s} " + "  ".join(f"{name} {ms:6.1f} ms ({medians['float32'] / ms:.2f}x)"
                                         for name, ms in medians.items()))


if __name__ == "__main__":
    main()
