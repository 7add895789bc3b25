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

from ..lion import Hyperparameters
from . import xla


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return xla.supports(optimizer, variables) and not tf.distribute.has_strategy()


def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
    keys = tuple(optimizer._var_key(v) for v in variables)
    # Kept outside Keras's attribute tracking: a cache, not optimizer state.
    cache = optimizer.__dict__.setdefault("_tf_compiled_updates", {})
    if keys not in cache:
        cache[keys] = _compile(optimizer, list(variables))
    # float64, so that float64 variables get them unrounded; no weight decay
    # (None) is a trace of its own.
    live = [None if x is None else tf.constant(x, tf.float64) for x in optimizer._hyperparameters()]
    grads = [tf.convert_to_tensor(g) for g in grads]
    cache[keys](grads, tf.convert_to_tensor(learning_rate), *live)


def _compile(optimizer: Any, variables: list[Any]) -> Any:
    # The hyperparameters enter as tensors, so that their values at each step are used.
    @tf.function(jit_compile=True, autograph=False)
    def compiled(grads: list[Any], learning_rate: Any, *hyperparameters: Any) -> None:
        xla.update(optimizer, grads, variables, learning_rate,
                   Hyperparameters(*hyperparameters))

    return compiled
