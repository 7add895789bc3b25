"""Momentum-first Lion step for XLA (JAX, and TensorFlow with jit_compile).

The paper's order reads the old momentum twice, for `c` and for the new
momentum, so XLA must copy it before overwriting it in place. Updating the
momentum first and rewriting `c` in terms of the new momentum reads it once:

    m' = beta_2 * m + (1 - beta_2) * g
    c  = beta_1 * m + (1 - beta_1) * g
       = (beta_1 / beta_2) * m' + ((1 - beta_1) - (beta_1 / beta_2) * (1 - beta_2)) * g

which is exact in real arithmetic; in floating point `c` can differ in its
last bits, so `sign(c)` may differ where `c` is within rounding of zero.
It needs beta_2 > 0, and beta_1 < 1: with beta_1 = 1, `c` is the old
momentum itself, and where that is exactly zero (at the first step) the
rewritten form would turn rounding noise into a full step.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

from keras import ops

if TYPE_CHECKING:
    from ..lion import Hyperparameters, StepInputs


def supports(optimizer: Any, variables: list[Any]) -> bool:
    live = optimizer._hyperparameters()
    numeric = isinstance(live.beta_1, numbers.Real) and isinstance(live.beta_2, numbers.Real)
    return numeric and live.beta_1 < 1 and live.beta_2 > 0


def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any,
           hyperparameters: Hyperparameters | None = None) -> None:
    # Read once for all variables (a compiled caller passes them in as tensors).
    hyperparameters = hyperparameters or optimizer._hyperparameters()
    scalars: dict[Any, Any] = {}
    for gradient, variable in zip(grads, variables):
        momentum = optimizer._momentum(variable)
        step = optimizer._step_inputs(variable, momentum, gradient,
                                      optimizer._use_weight_decay(variable), learning_rate,
                                      hyperparameters, scalars)
        theta, m = momentum_first(optimizer, step, scalars)
        optimizer.assign(momentum, ops.cast(m, momentum.dtype))
        optimizer.assign(variable, ops.cast(theta, variable.dtype))


def momentum_first(optimizer: Any, step: StepInputs, scalars: dict[Any, Any]) -> tuple[Any, Any]:
    """The new weights and momentum, in the compute dtype; `scalars` as for
    `Lion._step_inputs`, which keeps this step's coefficients too."""
    key = ("momentum-first", step.g.dtype)
    if key not in scalars:
        ratio = step.beta_1 / step.beta_2
        scalars[key] = (1 - step.beta_2, ratio, (1 - step.beta_1) - ratio * (1 - step.beta_2))
    one_minus_beta_2, ratio, gradient_weight = scalars[key]
    m = step.beta_2 * step.m + one_minus_beta_2 * step.g
    # From the new momentum before it is rounded to a narrower dtype, as the paper's c.
    c = ratio * m + gradient_weight * step.g
    return optimizer._descended(step, c), m
