"""TensorFlow: the momentum-first step, compiled, for chunks of alike variables.

Eager TensorFlow pays about a millisecond of dispatch per variable and step;
a `tf.function` removes it. One function for a whole set of variables would
cost a trace (about a millisecond per operation, some twenty per variable)
and a compile for every new set (eager loops whose `None` gradients change
make many), and both grow with the set. So the variables are grouped by
shape, dtypes and weight decay, and each group is updated in chunks of
power-of-two lengths by functions that take the variables and momentums as
arguments, so that alike variables reuse them:

- large variables: a function per shape and chunk length, compiled by XLA,
  which fuses the step into one pass over memory (the compile pays off);
- small ones: a function per chunk length shared by all shapes (traced for
  any shape once a second shape comes), run as a TensorFlow graph, which
  TensorFlow instantiates once per shape (an XLA compile per shape would
  cost more than many steps' dispatch).

A bounded least-recently-used cache holds these functions. Inside `fit()`
they are traced into its train function. Under a `tf.distribute` strategy
the plain path runs, through Keras's per-replica update.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import tensorflow as tf

from ..lion import Hyperparameters
from . import xla

# Longest chunk: its trace stays short, and calls per step stay few.
MAX_CHUNK = 64
# Compiled functions kept: up to 7 chunk lengths of each of 64 kinds.
CACHE_SIZE = 448
# Elements from which a variable's shape gets its own XLA-compiled functions.
XLA_MIN_SIZE = 1 << 14


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return xla.supports(optimizer, variables) and not tf.distribute.has_strategy()


def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
    grads = [tf.convert_to_tensor(g) for g in grads]
    momentums = [optimizer._momentums[optimizer._get_variable_index(v)] for v in variables]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (variable, momentum) in enumerate(zip(variables, momentums)):
        kind = (tuple(variable.shape), variable.dtype, momentum.dtype, grads[i].dtype,
                optimizer._use_weight_decay(variable))
        groups.setdefault(kind, []).append(i)
    # float64, so that float64 variables get them unrounded; no weight decay
    # (None) is a trace of its own.
    live = [None if x is None else tf.constant(x, tf.float64) for x in optimizer._hyperparameters()]
    learning_rate = tf.convert_to_tensor(learning_rate)
    for (shape, *kind), members in groups.items():
        # Cautious Lion scales by the element count, a constant of the shape.
        fixed_shape = optimizer.cautious or math.prod(shape) >= XLA_MIN_SIZE
        for chunk in _chunks(members):
            compiled = _compiled(optimizer, (shape if fixed_shape else None, *kind, len(chunk)))
            compiled([variables[i].value for i in chunk], [momentums[i].value for i in chunk],
                     [grads[i] for i in chunk], learning_rate, *live)


def _chunks(members: list[int]) -> list[list[int]]:
    """`members` in chunks of MAX_CHUNK, then of the powers of two that make up the rest."""
    chunks, start = [], 0
    length = MAX_CHUNK
    while start < len(members):
        while length > len(members) - start:
            length //= 2
        chunks.append(members[start:start + length])
        start += length
    return chunks


def _compiled(optimizer: Any, key: tuple[Any, ...]) -> Any:
    # Kept outside Keras's attribute tracking: a cache, not optimizer state.
    cache = optimizer.__dict__.setdefault("_tf_compiled_updates", OrderedDict())
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = _compile(optimizer, fixed_shape=key[0] is not None)
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    return cache[key]


def _compile(optimizer: Any, fixed_shape: bool) -> Any:
    # Traced with the first variables passed in: the optimizer finds their
    # momentums and weight decay, which in the trace are the arguments
    # (TensorFlow maps a variable passed in to its argument wherever it is
    # reached) and the decay of the key. The hyperparameters enter as
    # tensors, so that their values at each step are used. Without a fixed
    # shape, the second trace (for other shapes) is for any shapes.
    @tf.function(jit_compile=fixed_shape, reduce_retracing=not fixed_shape, autograph=False)
    def compiled(variables: list[Any], momentums: list[Any], grads: list[Any],
                 learning_rate: Any, *hyperparameters: Any) -> None:
        del momentums  # reached through the optimizer
        xla.update(optimizer, grads, variables, learning_rate,
                   Hyperparameters(*hyperparameters))

    # TensorFlow counts traces per Python function, which all of these share,
    # and would warn of a tf.function "created repeatedly in a loop".
    compiled._omit_frequent_tracing_warning = True
    return compiled
