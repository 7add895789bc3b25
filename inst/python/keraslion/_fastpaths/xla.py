"""The paper's Lion step, ordered for XLA (JAX, and TensorFlow with jit_compile).

XLA's CPU code computes the new weights and the new momentum in two loops
over memory, each fusing its share of the step, and updates a donated
momentum in place. Both loops read the old momentum, so unless the weights'
loop is known to run first, XLA copies the momentum before overwriting it:
a third pass, and a full-size temporary. Here the momentum is read a second
time, for its own update, through a select that depends on the new weights
(`after`): the loops are then ordered, and nothing is copied.

    c  = beta_1 * m + (1 - beta_1) * g
    p' = p - lr * (sign(c) + weight_decay * p)
    m' = beta_2 * m + (1 - beta_2) * g        (m read again, after p')

The step is the paper's, in the paper's order, for every beta and every
momentum dtype. Where the loops are ordered (`_orders`), a narrower momentum
gains the bytes it saves: a bfloat16 momentum is read and written as two
bytes per element, and an int8 momentum's codes are rewritten in place.
"""

from __future__ import annotations

import functools
from functools import partial
from typing import Any

import keras
from keras import ops

from .. import int8
from ..lion import StepInputs, lion_update
from . import native


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return True


def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any,
           hyperparameters: Any = None, ordered: bool = True,
           noise_indices: list[Any] | None = None) -> None:
    """`hyperparameters`: read once for all variables (a compiled caller
    passes them in as tensors). `ordered`: whether the momentum is read again
    after the weights (for XLA; a TensorFlow graph runs in program order).
    On TensorFlow, `ordered` also says that XLA compiles the caller (the
    int8 kernel's custom call runs only there).
    `noise_indices`: the variables' indices that seed int8 rounding, as
    tensors (a compiled function shared by several variables)."""
    hyperparameters = hyperparameters or optimizer._hyperparameters()
    scalars: dict[Any, Any] = {}
    kernel_steps = []
    for i, (gradient, variable) in enumerate(zip(grads, variables)):
        noise_index = None if noise_indices is None else noise_indices[i]
        if _takes_kernel(optimizer, variable, ordered):
            kernel_steps.append((gradient, variable, noise_index))
            continue
        step = optimizer._step_inputs(variable, optimizer._momentum_value(variable), gradient,
                                      optimizer._use_weight_decay(variable), learning_rate,
                                      hyperparameters, scalars)
        again = (partial(_momentum_after, optimizer, variable)
                 if ordered and _orders(optimizer, variable) else None)
        theta, m = lion_update(step, optimizer.cautious, again)
        optimizer._store_momentum(variable, m, noise_index)
        optimizer.assign(variable, ops.cast(theta, variable.dtype))
    if kernel_steps:
        _kernel_steps(optimizer, kernel_steps, learning_rate, hyperparameters, scalars)


def _takes_kernel(optimizer: Any, variable: Any, compiled: bool) -> bool:
    """Whether the variable's step is the int8 kernel's (`native.py`): for
    float32 weights with an int8 momentum, without caution, on JAX with one
    CPU device, or on TensorFlow on the CPU in a function that XLA compiles
    (`compiled`)."""
    backend = keras.backend.backend()
    if not (backend in ("jax", "tensorflow") and not optimizer.cautious
            and optimizer._int8_state(optimizer._get_variable_index(variable)) is not None
            and keras.backend.standardize_dtype(variable.dtype) == "float32"
            and native.enabled()):
        return False
    if backend == "jax":
        return _one_cpu() and native.xla_int8_steps() is not None
    return compiled and _on_cpu(variable) and native.tf_int8_steps() is not None


def _one_cpu() -> bool:
    """Whether JAX computes on one CPU device: the custom call has no GPU or
    TPU kernel, and across devices XLA would gather a sharded variable to
    each of them for it (a variable's sharding is not known while tracing)."""
    import jax

    return jax.default_backend() == "cpu" and jax.device_count() == 1


def _on_cpu(variable: Any) -> bool:
    """Whether TensorFlow keeps the variable (a `tf.Variable`, as the
    TensorFlow fast path passes it, or Keras's) on the CPU: the custom call
    has no GPU kernel."""
    import tensorflow as tf

    device = variable.value.device if isinstance(variable, keras.Variable) else variable.device
    return tf.DeviceSpec.from_string(device).device_type == "CPU"


def _kernel_steps(optimizer: Any, steps: list[tuple[Any, Any, Any]], learning_rate: Any,
                  hyperparameters: Any, scalars: dict[Any, Any]) -> None:
    """The int8 steps of (gradient, variable, noise index or None) in one
    custom call."""
    *factors, weight_decay = optimizer._coefficients("float32", learning_rate, hyperparameters,
                                                     scalars)
    coefficients = ops.stack([*factors, ops.zeros((), "float32") if weight_decay is None
                              else weight_decay])
    indices = [optimizer._get_variable_index(variable) for _, variable, _ in steps]
    noise_indices = ops.stack([ops.cast(index if noise_index is None else noise_index, "int32")
                               for index, (_, _, noise_index) in zip(indices, steps)])
    keys = int8.noise_key(optimizer.iterations, noise_indices)
    operands, blocks, decayed = [], [], []
    for index, (gradient, variable, _) in zip(indices, steps):
        # (On TensorFlow, `variable` is the `tf.Variable` itself: read as tensors.)
        operands += [ops.cast(gradient, "float32"),
                     *(ops.convert_to_tensor(x) for x in (variable, optimizer._momentums[index]))]
        blocks.append(int8.block_size(tuple(variable.shape)))
        decayed.append(weight_decay is not None and optimizer._use_weight_decay(variable))
    if keras.backend.backend() == "jax":
        results = _differentiable_kernel()(tuple(blocks), tuple(decayed), keys, coefficients,
                                           *operands)
    else:
        results = native.tf_int8_steps()(keys, coefficients, *operands, blocks=tuple(blocks),
                                         decayed=tuple(decayed))
    for i, (index, (_, variable, _)) in enumerate(zip(indices, steps)):
        theta, state = results[2 * i:2 * i + 2]
        optimizer.assign(optimizer._momentums[index], state)
        optimizer.assign(variable, theta)


@functools.cache
def _differentiable_kernel() -> Any:
    """The kernel's steps, as a function of (blocks, decayed, keys,
    coefficients, *state), whose derivative (for `jax.grad` or `jax.jvp`
    through `stateless_apply`) is that of the same steps in XLA's operations."""
    import jax

    kernel = native.xla_int8_steps()

    @partial(jax.custom_jvp, nondiff_argnums=(0, 1))
    def steps(blocks: tuple[int, ...], decayed: tuple[bool, ...], *inputs: Any) -> Any:
        return tuple(kernel(*inputs, blocks=blocks, decayed=decayed))

    @steps.defjvp
    def steps_jvp(blocks: tuple[int, ...], decayed: tuple[bool, ...], primals: Any,
                  tangents: Any) -> Any:
        in_ops = partial(_steps_in_ops, decayed=decayed)
        return steps(blocks, decayed, *primals), jax.jvp(in_ops, primals, tangents)[1]

    return steps


def _steps_in_ops(keys: Any, coefficients: Any, *state: Any,
                  decayed: tuple[bool, ...]) -> tuple[Any, ...]:
    """The kernel's steps, in XLA's operations (as `update` computes them)."""
    learning_rate, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, weight_decay = (
        coefficients[i] for i in range(6))
    results: list[Any] = []
    for v, decays in enumerate(decayed):
        gradient, theta, packed = state[3 * v:3 * v + 3]
        step = StepInputs(theta, int8.decode(*int8.unpack(packed)), gradient, learning_rate,
                          beta_1, one_minus_beta_1, beta_2, one_minus_beta_2,
                          weight_decay if decays else None)
        theta, m = lion_update(step, cautious=False)
        noise = int8.noise_from_key(keys[v], tuple(theta.shape))
        results += [theta, int8.pack(*int8.encode(m, noise))]
    return tuple(results)


def _orders(optimizer: Any, variable: Any) -> bool:
    """Whether reading the momentum after the new weights orders XLA's loops.

    Not for weights narrower than float32: XLA's CPU code computes them in
    float32 and would recompute their first element from the old weights
    (copying them, and the momentum). Not for sharded weights: reading their
    first element would take a collective at every step. Not when skipping
    non-finite steps: the old weights and momentum are kept for a select
    after the step, so they are copied anyway.
    """
    return (keras.backend.standardize_dtype(variable.dtype) in ("float32", "float64")
            and getattr(variable, "_layout", None) is None and not optimizer.skip_nonfinite)


def _momentum_after(optimizer: Any, variable: Any, theta: Any) -> Any:
    """The variable's momentum, in the compute dtype, read after its new
    weights as stored (in their dtype: what XLA writes)."""
    stored = ops.cast(theta, variable.dtype)
    return ops.cast(optimizer._momentum_value(variable, read=partial(after, first=stored)),
                    theta.dtype)


def after(x: Any, first: Any) -> Any:
    """`x`, as a value that depends on `first`, so that XLA computes `first` first.

    A select on a condition that is never true (the bits of `first`'s first
    element, if any, with the lowest set, are never 0) but that XLA cannot
    see is never true; it costs one comparison per element of the loop it joins.
    """
    x = ops.convert_to_tensor(x)
    bits = "int64" if keras.backend.standardize_dtype(first.dtype) == "float64" else "int32"
    head = ops.sum(ops.view(ops.reshape(first, (-1,))[:1], bits))
    # (The 1 as a tensor: on JAX, keras.ops makes a Python int float32 under a bfloat16 floatx.)
    never = ops.equal(ops.bitwise_or(head, ops.convert_to_tensor(1, bits)), 0)
    return ops.where(never, ops.zeros_like(x), x)

