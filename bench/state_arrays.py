"""What does each array of an optimizer's state cost a compiled step, whatever its size?

An int8 momentum was two arrays per variable (codes, and a float32 scale
per block) until 0.3.0 packed them into one, as a float32 momentum is. This
times a compiled, in-place step of
n float32 vectors of 1024 (`x * 0.5 + 1`), alone and with n more arrays of
4 elements updated alike (a vector's scales), the shapes of
`bench/int8_kernel.py`'s "2000x1k" case, on:

* JAX: a jitted step whose state is donated (as `fit` runs it);
* TensorFlow: a `tf.function` that XLA compiles, assigning to variables
  (as `fit` runs it with `jit_compile=True`, and as keraslion's eager
  TensorFlow path runs its int8 chunks).

    python bench/state_arrays.py [--variables 200 2000] [--cpu 1]

Prints ms per step (the median of 20) and what each added array costs,
in microseconds: the time that one buffer per variable saves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

WIDTH = 1024
SCALES = WIDTH // 256


def median_ms(step: Callable[[], Any], wait: Callable[[Any], Any]) -> float:
    wait(step())  # compiles
    times = []
    for _ in range(20):
        start = time.perf_counter()
        wait(step())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def jax_steps(n: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    def one(state: Any) -> Any:
        return [x * 0.5 + 1 for x in state]

    def two(state: Any) -> Any:
        return [one(state[0]), one(state[1])]

    times = {}
    for name, step, state in (
            ("alone", one, [jnp.ones(WIDTH) for _ in range(n)]),
            ("with scales", two, [[jnp.ones(WIDTH) for _ in range(n)],
                                  [jnp.ones(SCALES) for _ in range(n)]])):
        jitted = jax.jit(step, donate_argnums=0)
        held = [state]

        def run(jitted: Any = jitted, held: list[Any] = held) -> Any:
            held[0] = jitted(held[0])
            return held[0]

        times[name] = median_ms(run, jax.block_until_ready)
    return times


def tensorflow_steps(n: int) -> dict[str, float]:
    import tensorflow as tf

    weights = [tf.Variable(tf.ones(WIDTH)) for _ in range(n)]
    scales = [tf.Variable(tf.ones(SCALES)) for _ in range(n)]

    @tf.function(jit_compile=True)
    def alone() -> None:
        for x in weights:
            x.assign(x * 0.5 + 1)

    @tf.function(jit_compile=True)
    def with_scales() -> None:
        for x in (*weights, *scales):
            x.assign(x * 0.5 + 1)

    return {"alone": median_ms(alone, lambda _: None),
            "with scales": median_ms(with_scales, lambda _: None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to pin to (-1: none)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    print(f"load average {os.getloadavg()[0]:.2f}")
    for backend, steps in (("jax jit", jax_steps), ("tensorflow xla", tensorflow_steps)):
        for n in args.variables:
            times = steps(n)
            extra = (times["with scales"] - times["alone"]) / n * 1e3
            print(f"{backend:15s} {n:5d} vectors: alone {times['alone']:6.2f} ms, with "
                  f"{n} scale arrays {times['with scales']:6.2f} ms: {extra:5.1f} us an array")


if __name__ == "__main__":
    main()
