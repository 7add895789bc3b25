"""Momentum-first Lion step for XLA (JAX, and TensorFlow with jit_compile).

The paper's order reads the old momentum twice, for `c` and for the new
momentum, so XLA must copy it before overwriting it in place. Updating the
momentum first and rewriting `c` in terms of the new momentum reads it once:

    m' = beta_2 * m + (1 - beta_2) * g
    c  = beta_1 * m + (1 - beta_1) * g
       = ratio * m' + gradient_weight * g,
    ratio = beta_1 / beta_2,  gradient_weight = (1 - beta_1) - ratio * (1 - beta_2)

This is exact in real arithmetic, and within rounding of the paper's `c`
only where it does not amplify rounding: when beta_1 < beta_2 (the defaults,
0.9 < 0.99), ratio < 1 and 0 < gradient_weight <= 1 - beta_1, so its
rounding error is at most about twice the paper's, and an infinite gradient
or momentum gives the paper's infinity (no `inf - inf`). With beta_2 < beta_1
the ratio grows without bound (beta_2 = 1e-7 steps 13-27% of elements the
wrong way; 1e-50 divides by zero in float32), so there, and wherever the
betas are not Python numbers (traced, so not known to be safe), the step is
computed in the paper's order. The coefficients are computed in float64
(Python numbers) before they are rounded to the compute dtype.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import keras
from keras import ops

from ..lion import cast_scalar, descended, lion_update, opaque

if TYPE_CHECKING:
    from ..lion import Hyperparameters, StepInputs


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return True


def momentum_first_is_exact(hyperparameters: Hyperparameters) -> bool:
    """Whether the rewrite stays within rounding of the paper's step (module docstring)."""
    beta_1, beta_2 = hyperparameters.beta_1, hyperparameters.beta_2
    numeric = isinstance(beta_1, numbers.Real) and isinstance(beta_2, numbers.Real)
    return numeric and beta_1 < beta_2


def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any,
           hyperparameters: Hyperparameters | None = None,
           momentum_first: bool | None = None) -> None:
    # Read once for all variables (a compiled caller passes them in as tensors,
    # with `momentum_first` decided from their values).
    hyperparameters = hyperparameters or optimizer._hyperparameters()
    if momentum_first is None:
        momentum_first = momentum_first_is_exact(hyperparameters)
    scalars: dict[Any, Any] = {}
    for gradient, variable in zip(grads, variables):
        step = optimizer._step_inputs(variable, optimizer._momentum_value(variable), gradient,
                                      optimizer._use_weight_decay(variable), learning_rate,
                                      hyperparameters, scalars)
        theta, m = new_values(optimizer, step, hyperparameters, momentum_first, scalars)
        optimizer._store_momentum(variable, m)
        optimizer.assign(variable, ops.cast(theta, variable.dtype))


def new_values(optimizer: Any, step: StepInputs, hyperparameters: Hyperparameters,
               momentum_first: bool, scalars: dict[Any, Any]) -> tuple[Any, Any]:
    """The new weights and momentum, in the compute dtype: momentum first
    where that is exact, else in the paper's order. `scalars` as for
    `Lion._step_inputs`, which keeps this step's coefficients too."""
    if not momentum_first:
        return lion_update(step, optimizer.cautious)
    dtype = keras.backend.standardize_dtype(step.m.dtype)
    key = ("momentum-first", dtype)
    if key not in scalars:
        beta_1, beta_2, _ = hyperparameters
        ratio = beta_1 / beta_2
        gradient_weight = (1 - beta_1) - ratio * (1 - beta_2)
        scalars[key] = opaque([cast_scalar(ratio, dtype), cast_scalar(gradient_weight, dtype)])
    ratio, gradient_weight = scalars[key]
    m = step.beta_2 * step.m + step.one_minus_beta_2 * step.g
    # From the new momentum before it is rounded to a narrower dtype, as the paper's c.
    c = ratio * m + gradient_weight * step.g
    return descended(step, c, optimizer.cautious), m
