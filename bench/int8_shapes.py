"""The int8-momentum step against float32's for rows whose length is, or is
not, a multiple of the block (256): a shorter last block must not cost more
than its share. One process per backend:

    KERAS_BACKEND=jax python bench/int8_shapes.py [4096x4096 4000x4000 ...]

JAX: a jitted, donated `stateless_apply`; TensorFlow: `apply` in a
`tf.function` compiled by XLA; PyTorch: `apply`. Prints ms per step (the
median of 8, after 2 warm-up steps) and float32's time ÷ int8's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inst" / "python"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keraslion import Lion  # noqa: E402

BACKEND = keras.backend.backend()


def stepper(optimizer: Lion, variable: keras.Variable, gradient: object) -> object:
    if BACKEND == "jax":
        import jax

        state = {"weights": [variable.value], "slots": [v.value for v in optimizer.variables]}
        apply = jax.jit(lambda w, s, g: optimizer.stateless_apply(s, g, w), donate_argnums=(0, 1))

        def step() -> None:
            state["weights"], state["slots"] = apply(state["weights"], state["slots"], [gradient])
            jax.block_until_ready(state["weights"])

        return step
    if BACKEND == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(lambda: optimizer.apply([gradient], [variable]), jit_compile=True)
        return lambda: (compiled(), variable.value.numpy()[:1])
    return lambda: optimizer.apply([gradient], [variable])


def milliseconds(shape: tuple[int, ...], momentum_dtype: str) -> float:
    rng = np.random.default_rng(0)
    variable = keras.Variable(rng.standard_normal(shape).astype("float32"))
    gradient = ops.convert_to_tensor(rng.standard_normal(shape).astype("float32"))
    optimizer = Lion(learning_rate=1e-4, weight_decay=0.01, momentum_dtype=momentum_dtype)
    optimizer.build([variable])
    step = stepper(optimizer, variable, gradient)
    step()
    step()
    times = []
    for _ in range(8):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    shapes = sys.argv[1:] or ["4096x4096", "4000x4000"]
    print("| backend | shape | float32 ms | int8 ms | float32 ÷ int8 |\n|---|---|---|---|---|")
    for text in shapes:
        shape = tuple(int(n) for n in text.split("x"))
        float32, int8 = (milliseconds(shape, dtype) for dtype in ("float32", "int8"))
        print(f"| {BACKEND} | {text} | {float32:.1f} | {int8:.1f} | {float32 / int8:.2f} |")


if __name__ == "__main__":
    main()
