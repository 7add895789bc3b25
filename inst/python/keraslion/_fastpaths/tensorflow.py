"""TensorFlow: the Lion step, compiled, for chunks of alike variables.

Eager TensorFlow pays about a millisecond of dispatch per variable and step;
a `tf.function` removes it. One function for a whole set of variables would
cost a trace (about a millisecond per operation, some twenty per variable)
and a compile for every new set (eager loops whose `None` gradients change
make many), and both grow with the set. So the variables are grouped by
shape, dtypes and weight decay, and each group is updated in chunks of at
most MAX_CHUNK by functions that take the variables and momentums as
arguments, so that alike variables reuse them:

- large variables: a function per shape and chunk length, compiled by XLA,
  which fuses the step into one pass over memory (the compile pays off);
- small ones: a function per chunk length shared by all shapes (traced for
  any shape once a second shape comes), run as a TensorFlow graph, which
  TensorFlow instantiates once per shape (an XLA compile per shape would
  cost more than many steps' dispatch); called eagerly, it stacks the
  chunk to do the step's maths once for all its variables.

Bounded least-recently-used caches hold these functions, the concrete
function of each shape, chunk length and dtypes, and the chunks of each set
of variables; the concrete functions are called directly, with their flat
inputs. Inside `fit()` they are traced into its train function. Under a
`tf.distribute` strategy the plain path runs, through Keras's per-replica
update. The functions are the optimizer's (they reach its state), so each
new optimizer compiles its own, and TensorFlow keeps part of them after the
optimizer is gone: about 0.85 MiB per optimizer created, stepped and
dropped, against 0 to 0.4 for Keras's Lion or the plain path, by run
(`bench/many_optimizers.py`).
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Any

import numpy as np
import tensorflow as tf

from ..lion import Hyperparameters, lion_update, stored_momentum
from . import xla

# Longest chunk: its trace stays short, and calls per step stay few.
MAX_CHUNK = 64
# Functions, and concrete functions, kept in each cache.
CACHE_SIZE = 512
# Elements from which a variable's shape gets its own XLA-compiled functions.
XLA_MIN_SIZE = 1 << 14


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return xla.supports(optimizer, variables) and not tf.distribute.has_strategy()


def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
    grads = [tf.convert_to_tensor(g) for g in grads]
    hyperparameters = optimizer._hyperparameters()
    # float64, so that float64 variables get them unrounded and `1 - beta` is
    # computed before rounding; no weight decay (None) is a trace of its own.
    live = [None if x is None else
            tf.constant(x, tf.float64) if isinstance(x, numbers.Real) else tf.cast(x, tf.float64)
            for x in hyperparameters]
    learning_rate = tf.convert_to_tensor(learning_rate)
    scalars = [learning_rate, *(x for x in live if x is not None)]
    for shape, kind, chunk, weights, momentums, indices in _plan(optimizer, variables, grads):
        chunk_grads = [grads[i] for i in chunk]
        indices = None if indices is None else tf.constant(indices)
        concrete = _concrete(optimizer, shape, kind, (weights, momentums, indices, chunk_grads,
                                                      learning_rate, *live))
        # Its flat inputs, in the order of the arguments it was traced for
        # (no tensor for no weight decay, nor for the indices of a float
        # momentum): calling it with the arguments would check each against
        # its trace, which for small variables costs as much as their step.
        handles = [variable.handle for variable in (*weights, *momentums)]
        concrete._call_flat([*handles, *([] if indices is None else [indices]), *chunk_grads,
                             *scalars], concrete.captured_inputs)


def _plan(optimizer: Any, variables: list[Any], grads: list[Any]) -> list[tuple[Any, ...]]:
    """The chunks of alike variables, kept for the next steps on the same
    variables (grouping them again would cost more than running them)."""
    # By identity: the plan holds the variables, so that no other takes an id.
    key = (*map(id, variables), *(g.dtype for g in grads))
    plans = _cache(optimizer, "_tf_plans")
    if key not in plans:
        momentums = [optimizer._momentum(v) for v in variables]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (variable, momentum) in enumerate(zip(variables, momentums)):
            kind = (tuple(variable.shape), variable.dtype, momentum.dtype, grads[i].dtype,
                    optimizer._use_weight_decay(variable))
            groups.setdefault(kind, []).append(i)
        plans[key] = tuple(variables), [
            (shape, (*kind, len(chunk)), chunk, [variables[i].value for i in chunk],
             [momentums[i].value for i in chunk], _int8_indices(optimizer, variables, chunk))
            for (shape, *kind), members in groups.items() for chunk in _chunks(members)]
    return plans[key][1]


def _int8_indices(optimizer: Any, variables: list[Any], chunk: list[int]) -> Any:
    """An int8 chunk's variables' indices (which seed their rounding), passed
    in so that chunks of one shape share a compiled function (one per chunk
    would take a compile each, tens of seconds for 64 variables); None for
    float momentums."""
    indices = [optimizer._get_variable_index(variables[i]) for i in chunk]
    if optimizer._int8_state(indices[0]) is None:
        return None
    # Made a tensor at each call: the plan may be made inside a trace.
    return np.asarray(indices, np.int32)


def _chunks(members: list[int]) -> list[list[int]]:
    # A group's own length for its remainder: one call more would cost more
    # at every step than a trace of that length once.
    return [members[start:start + MAX_CHUNK] for start in range(0, len(members), MAX_CHUNK)]


def _concrete(optimizer: Any, shape: tuple[int, ...], kind: tuple[Any, ...],
              args: tuple[Any, ...]) -> Any:
    """The compiled update of a chunk, as the concrete function for its
    arguments: calling it skips tf.function's search for a matching trace."""
    # Cautious Lion scales by the element count, a constant of the shape; int8
    # codes are decoded and encoded by blocks of the shape.
    fixed_shape = (optimizer.cautious or math.prod(shape) >= XLA_MIN_SIZE
                   or kind[1] == "int8")
    # Stacked only when called eagerly: traced into a function that XLA
    # compiles (fit()'s train step, by default), stacks and unstacks would
    # take XLA several times as long to compile as the step as written.
    stacked = not fixed_shape and tf.executing_eagerly()
    concretes = _cache(optimizer, "_tf_compiled_updates")
    # No weight decay (None), or a learning rate of another dtype: another
    # trace; `cautious`, a flag that may be set between steps, is traced in.
    key = (shape, *kind, stacked, optimizer.cautious, args[-1] is None, args[5].dtype)
    if key not in concretes:
        functions = _cache(optimizer, "_tf_update_functions")
        function_key = (shape if fixed_shape else None, *kind, optimizer.cautious, stacked)
        if function_key not in functions:
            functions[function_key] = _compile(optimizer, fixed_shape, stacked, decays=kind[3])
        concretes[key] = functions[function_key].get_concrete_function(*args)
    return concretes[key]


class _LRUCache(OrderedDict):
    """At most CACHE_SIZE entries; a lookup makes an entry the most recent."""

    def __getitem__(self, key: Any) -> Any:
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > CACHE_SIZE:
            self.popitem(last=False)


def _cache(optimizer: Any, name: str) -> _LRUCache:
    # Kept outside Keras's attribute tracking: a cache, not optimizer state.
    return optimizer.__dict__.setdefault(name, _LRUCache())


def _compile(optimizer: Any, fixed_shape: bool, stacked: bool, decays: bool) -> Any:
    # The variables and momentums passed in are reached by the
    # optimizer too (TensorFlow maps a variable passed in to its argument
    # wherever it is reached). The hyperparameters enter as tensors, so that
    # their values at each step are used.
    def per_variable(variables: list[Any], momentums: list[Any], indices: Any, grads: list[Any],
                     learning_rate: Any, *hyperparameters: Any) -> None:
        del momentums  # reached through the optimizer
        xla.update(optimizer, grads, variables, learning_rate, Hyperparameters(*hyperparameters),
                   ordered=fixed_shape,
                   noise_indices=None if indices is None else tf.unstack(indices))

    def stacked_update(variables: list[Any], momentums: list[Any], indices: Any,
                       grads: list[Any], learning_rate: Any, *hyperparameters: Any) -> None:
        # The chunk's variables stacked into one tensor: a dozen operations
        # for the step's maths instead of a dozen per variable, which a graph
        # (unlike XLA) would run one by one at every step.
        live = Hyperparameters(*hyperparameters)
        step = optimizer._step_inputs(tf.stack(variables), tf.stack(momentums), tf.stack(grads),
                                      decays, learning_rate, live)
        theta, m = lion_update(step, optimizer.cautious)
        for targets, value in ((variables, tf.cast(theta, variables[0].dtype)),
                               (momentums, stored_momentum(m, momentums[0].dtype.name))):
            for target, row in zip(targets, tf.unstack(value, num=len(targets))):
                optimizer.assign(target, row)

    # Without a fixed shape, the second trace (for other shapes) is for any shapes.
    compiled = tf.function(stacked_update if stacked else per_variable, jit_compile=fixed_shape,
                           reduce_retracing=not fixed_shape, autograph=False)
    # TensorFlow counts traces per Python function, which all of these share,
    # and would warn of a tf.function "created repeatedly in a loop".
    compiled._omit_frequent_tracing_warning = True
    return compiled
