"""The jitted JAX step with an int8 momentum: the C kernel, XLA's ops, and
what other codes would cost in XLA's ops.

Written in XLA's ops, keraslion's int8 step runs at 0.5-0.6x float32's on
XLA's CPU code, short of issue 14's 0.9x: XLA runs it as three loops (the
new weights; the blocks' maxima of the new momentum; the new codes), and
each decodes the codes, so the code's arithmetic counts three times. The C
kernel (`keraslion/_fastpaths/native.py`, the default where it builds)
runs it in one pass. For XLA's ops, this swaps `int8.decode` and
`int8.encode` for two cheaper codes, with the same block scales (the
smallest power of two at or above a block's largest |m|), and times the
step against float32's and bfloat16's:

- "float-like, one path": r + 2**-15 coded by its float32 bits (4 exponent
  and 3 mantissa bits), so that the range below 2**-15 is linear without a
  second path, rounded at random as keraslion's code is; NaN by a clamp.
  About 9 operations to decode where keraslion's code takes about 15.
- "linear": round(127 r), to nearest: 2 operations to decode, but every
  momentum below 1/254 of its block's largest rounds to 0, which issue 14
  rules out (`bench/int8_codes.py` measures the flips it causes).

These are timing models, not paths of the product: their codes are not
keraslion's, and nothing checks them but their timing.

    python bench/int8_formats.py [--rounds 12] [--cpu 1]

Prints ms per step (the median over interleaved rounds of each round's
median of 8 steps) and float32's ms divided by each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inst" / "python"))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keraslion import Lion, int8  # noqa: E402

SHAPE = (4096, 4096)
BIAS = 2.0**-15
BIAS_CODE_OFFSET = (127 - 15) << 3  # the bits of 2**-15, shifted right by 20


def float_like_decode(codes: Any, scales: Any) -> Any:
    signed = ops.cast(codes, "int32")
    r = ops.view(ops.left_shift(ops.abs(signed) + BIAS_CODE_OFFSET, 20), "float32") - BIAS
    bits = ops.bitwise_or(ops.view(r, "int32"),
                          ops.bitwise_and(signed, int8._int32(int8.SIGN_BIT)))
    return ops.view(bits, "float32") * int8._per_element(scales, tuple(codes.shape))


def float_like_encode(m: Any, noise: Any) -> tuple[Any, Any]:
    shape = tuple(m.shape)
    bits = ops.view(m, "int32")
    magnitude_bits = ops.bitwise_and(bits, int8._int32(0x7FFFFFFF))
    largest = ops.minimum(int8._block_max(magnitude_bits, shape),
                          int8._int32(int8.FLOAT32_MAX_BITS))
    scales, inverse = int8.power_of_two_scales(largest)
    magnitude = ops.view(magnitude_bits, "float32")
    r = ops.minimum(magnitude * int8._per_element(inverse, shape), 1.0) + BIAS
    k = ops.right_shift(ops.view(r, "int32") + noise, int8.NOISE_BITS) - BIAS_CODE_OFFSET
    k = ops.minimum(k, int8._int32(int8.NAN_CODE))  # NaN's bits give a larger k
    negative = ops.right_shift(bits, 31)
    return ops.cast(ops.bitwise_xor(k, negative) - negative, "int8"), scales


def linear_decode(codes: Any, scales: Any) -> Any:
    return ops.cast(codes, "float32") * int8._per_element(scales, tuple(codes.shape))


def linear_encode(m: Any, noise: Any) -> tuple[Any, Any]:
    shape = tuple(m.shape)
    magnitude_bits = ops.bitwise_and(ops.view(m, "int32"), int8._int32(0x7FFFFFFF))
    scales, inverse = int8.power_of_two_scales(int8._block_max(magnitude_bits, shape))
    # Rounded to nearest by adding 1.5 * 2**23, whose last mantissa bit counts ones.
    shifted = m * int8._per_element(inverse * 127.0, shape) + 1.5 * 2.0**23
    return ops.cast(ops.view(shifted, "int32") - 0x4B400000, "int8"), scales * (1 / 127)


def timer(momentum_dtype: str, kernel: bool = True) -> Callable[[], float]:
    """A function timing a round of 8 jitted, donated steps (as `fit` runs
    them), built with the codes `int8` has now, with or without the C kernel."""
    os.environ["KERASLION_NATIVE"] = "1" if kernel else "0"
    rng = np.random.default_rng(0)
    variable = keras.Variable(rng.standard_normal(SHAPE, np.float32))
    grads = [ops.convert_to_tensor(rng.standard_normal(SHAPE, np.float32))]
    optimizer = Lion(1e-4, momentum_dtype=momentum_dtype, weight_decay=0.01)
    optimizer.build([variable])
    step = jax.jit(lambda weights, state, grads: optimizer.stateless_apply(state, grads, weights),
                   donate_argnums=(0, 1))
    held = [[variable.value], [v.value for v in optimizer.variables]]

    def round_() -> float:
        times = []
        for _ in range(8):
            start = time.perf_counter()
            held[0], held[1] = step(held[0], held[1], grads)
            jax.block_until_ready(held[0])
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    round_()  # compiles
    return round_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to pin to (-1: none)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    timers = {"float32": timer("float32"), "bfloat16": timer("bfloat16"),
              "int8, C kernel": timer("int8"),
              "int8, XLA's ops": timer("int8", kernel=False)}
    for name, decode, encode in [("int8 float-like, XLA's ops", float_like_decode,
                                  float_like_encode),
                                 ("int8 linear, XLA's ops", linear_decode, linear_encode)]:
        int8.decode, int8.encode = decode, encode  # traced now, in timer()
        timers[name] = timer("int8", kernel=False)
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, round_ in timers.items():
            times[name].append(round_())
    float32 = statistics.median(times["float32"])
    print(f"jitted JAX step, {SHAPE[0]}x{SHAPE[1]}, pinned to CPU {args.cpu}, "
          f"{args.rounds} interleaved rounds")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28s} {median * 1e3:6.1f} ms   float32's ms / this {float32 / median:.2f}x")


if __name__ == "__main__":
    main()
