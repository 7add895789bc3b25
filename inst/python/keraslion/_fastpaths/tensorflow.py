"""TensorFlow: the momentum-first step for all variables in one XLA-compiled call.

Eager TensorFlow pays about a millisecond of dispatch per variable and step;
one `tf.function(jit_compile=True)` per set of variables removes it, and
inside `fit()` it makes the update one XLA cluster even without `jit_compile`.
Under a `tf.distribute` strategy the plain path runs, through Keras's
per-replica update.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from .._checks import resolve
from . import xla


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return xla.supports(optimizer, variables) and not tf.distribute.has_strategy()


def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
    keys = tuple(optimizer._var_key(v) for v in variables)
    # Kept outside Keras's attribute tracking: a cache, not optimizer state.
    cache = optimizer.__dict__.setdefault("_tf_compiled_updates", {})
    if keys not in cache:
        cache[keys] = _compile(optimizer, list(variables))
    # float64, so that float64 variables get their betas unrounded.
    betas = [tf.constant(resolve(b), tf.float64) for b in (optimizer.beta_1, optimizer.beta_2)]
    grads = [tf.convert_to_tensor(g) for g in grads]
    cache[keys](grads, tf.convert_to_tensor(learning_rate), *betas)


def _compile(optimizer: Any, variables: list[Any]) -> Any:
    # Betas enter as tensors so that callables are read again at every step.
    @tf.function(jit_compile=True, autograph=False)
    def compiled(grads: list[Any], learning_rate: Any, beta_1: Any, beta_2: Any) -> None:
        xla.update(optimizer, grads, variables, learning_rate, betas=(beta_1, beta_2))

    return compiled
