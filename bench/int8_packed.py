"""What would one buffer per variable for the int8 state gain on JAX?

keraslion keeps an int8 momentum as two arrays per variable (codes, and a
float32 scale per block); a float32 momentum is one. On JAX, each array of
a jitted step's state costs time to pass in and out, whatever its size: on
many small variables (bench.py's 2000 vectors of 1024), the int8 step is
0.64-0.74x float32's (`bench/int8_kernel.py`) though its kernel's work is a
few percent of the step. This times three jitted, donated steps of the
same variables, each written as plainly as a custom call allows:

* float32: Lion's step in `jax.numpy` (a float32 momentum);
* split: keraslion's int8 custom call (`native.xla_int8_steps`: codes and
  scales, two arrays per variable);
* packed: the same kernel on one int8 buffer per variable, the codes then
  the scales' bytes (`int8_packed.cc`, a timing model, not a path of the
  product), checked first to give the split step's weights, codes and
  scales bit for bit.

    python bench/int8_packed.py [--variables 2000] [--rounds 8] [--cpu 1]

Prints ms per step (the median over interleaved rounds of each round's
median of 5 steps) and float32's time divided by each int8 step's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "inst" / "python"))
os.environ["KERAS_BACKEND"] = "jax"  # `int8.noise_key` is written in Keras's operations

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from keraslion import int8  # noqa: E402
from keraslion._fastpaths import native  # noqa: E402

WIDTH = 1024
BLOCKS = WIDTH // int8.BLOCK
# learning rate, beta_1, 1 - beta_1, beta_2, 1 - beta_2, weight decay
COEFFICIENTS = (1e-4, 0.9, 0.1, 0.99, 0.01, 0.01)


def packed_kernel() -> Any:
    """`int8_packed.cc`'s call, built and registered."""
    kernel_dir = native.HERE
    flags = ["-std=c++17", f"-I{jax.ffi.include_dir()}", f"-I{kernel_dir}"]
    library = native._loaded("CXX", "c++", flags, HERE / "int8_packed.cc",
                             kernel_dir / "int8_step.c", native.HEADER, jax.__version__.encode())
    if library is None:
        sys.exit("int8_packed.cc could not be built")
    jax.ffi.register_ffi_target("int8_packed", jax.ffi.pycapsule(library.Int8PackedSteps),
                                platform="cpu")
    return jax.ffi.ffi_call


def steps(n: int) -> dict[str, Any]:
    """Each format's step, as a function of (state, gradients) -> state."""
    coefficients = jnp.asarray(COEFFICIENTS, jnp.float32)
    split_kernel = native.xla_int8_steps()
    ffi_call = packed_kernel()

    def keys(iterations: Any) -> Any:
        return int8.noise_key(iterations, jnp.arange(n, dtype=jnp.int32))

    def float32(state: Any, grads: Any) -> Any:
        iterations, weights, momentums = state
        lr, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, decay = COEFFICIENTS
        new_weights, new_momentums = [], []
        for p, m, g in zip(weights, momentums, grads):
            c = m * beta_1 + g * one_minus_beta_1
            new_weights.append(p - (jnp.sign(c) + p * decay) * lr)
            new_momentums.append(m * beta_2 + g * one_minus_beta_2)
        return [iterations + 1, new_weights, new_momentums]

    def split(state: Any, grads: Any) -> Any:
        iterations, weights, codes, scales = state
        operands = [x for v in range(n) for x in (grads[v], weights[v], codes[v], scales[v])]
        results = split_kernel(keys(iterations), coefficients, *operands,
                               blocks=(int8.BLOCK,) * n, decayed=(True,) * n)
        return [iterations + 1, list(results[0::3]), list(results[1::3]), list(results[2::3])]

    def packed(state: Any, grads: Any) -> Any:
        iterations, weights, buffers = state
        operands = [x for v in range(n) for x in (grads[v], weights[v], buffers[v])]
        results = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (weights[0], buffers[0])] * n
        call = ffi_call("int8_packed", results,
                        # (Operands: the keys, the coefficients, then 3 per variable.)
                        input_output_aliases={3 * v + 3 + i: 2 * v + i
                                              for v in range(n) for i in (0, 1)})
        out = call(keys(iterations), coefficients, *operands,
                   blocks=np.full(n, int8.BLOCK, np.int64))
        return [iterations + 1, list(out[0::2]), list(out[1::2])]

    return {"float32": float32, "split": split, "packed": packed}


def initial(name: str, n: int, seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    weights = [jnp.asarray(rng.standard_normal(WIDTH), jnp.float32) for _ in range(n)]
    if name == "float32":
        return [jnp.int32(0), weights, [jnp.zeros(WIDTH, jnp.float32) for _ in range(n)]]
    if name == "split":
        return [jnp.int32(0), weights, [jnp.zeros(WIDTH, jnp.int8) for _ in range(n)],
                [jnp.zeros(BLOCKS, jnp.float32) for _ in range(n)]]
    return [jnp.int32(0), weights, [jnp.zeros(WIDTH + 4 * BLOCKS, jnp.int8) for _ in range(n)]]


def check_packed_is_split(functions: dict[str, Any], grads: list[Any]) -> None:
    """Three steps of a few variables: the same weights, codes and scales."""
    n = len(grads)
    split, packed = initial("split", n), initial("packed", n)
    for _ in range(3):
        split, packed = functions["split"](split, grads), functions["packed"](packed, grads)
    for v in range(n):
        buffer = np.asarray(packed[2][v])
        np.testing.assert_array_equal(np.asarray(packed[1][v]), np.asarray(split[1][v]))
        np.testing.assert_array_equal(buffer[:WIDTH], np.asarray(split[2][v]))
        np.testing.assert_array_equal(buffer[WIDTH:].view(np.float32), np.asarray(split[3][v]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to pin to (-1: none)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    rng = np.random.default_rng(1)
    grads = [jnp.asarray(rng.standard_normal(WIDTH), jnp.float32) for _ in range(args.variables)]
    check_packed_is_split(steps(3), grads[:3])
    jitted = {name: jax.jit(f, donate_argnums=0) for name, f in steps(args.variables).items()}
    held = {name: initial(name, args.variables) for name in jitted}
    for name, step in jitted.items():  # compiles
        held[name] = step(held[name], grads)
        jax.block_until_ready(held[name])
    times: dict[str, list[float]] = {name: [] for name in jitted}
    for _ in range(args.rounds):
        for name, step in jitted.items():
            round_ = []
            for _ in range(5):
                start = time.perf_counter()
                held[name] = step(held[name], grads)
                jax.block_until_ready(held[name])
                round_.append(time.perf_counter() - start)
            times[name].append(statistics.median(round_))
    ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    print(f"{args.variables} variables of {WIDTH}, load average {os.getloadavg()[0]:.2f}: "
          + "  ".join(f"{name} {t:.1f} ms ({ms['float32'] / t:.2f}x)" for name, t in ms.items()))


if __name__ == "__main__":
    main()
