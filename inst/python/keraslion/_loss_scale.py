"""Keras's `LossScaleOptimizer` around a Lion: its own state loads whatever the Lion's options.

Mixed precision (`mixed_float16`) wraps the optimizer in Keras's
`LossScaleOptimizer`. It saves its own variables (iteration count, learning
rate, step counter, loss scale) followed by every variable of the Lion, and
Keras's loader assigns them back by position; then the Lion loads its own
saved copy, matched by role (`_restore`). Where the Lion's options had
changed, Keras's loader skipped the loss scale (another count of
variables), failed (the same count, other shapes), or put saved values into
the wrong Lion variables (moving averages into gradient accumulators), which
kept them where the Lion's loader then refused the checkpoint. Around a
Lion, the wrapper loads only its own variables, which come first, and
leaves the Lion's to the Lion; a checkpoint saved without mixed precision
(the Lion's variables where the wrapper's would be) loads into the Lion.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import keras
import numpy as np

from ._restore import (
    LOADED_BY_WRAPPER,
    StateWarning,
    load_own_variables,
    saved_by_a_loss_scale_optimizer,
    unpickling,
)
from .lion import Lion


def install() -> None:
    """Makes `LossScaleOptimizer.load_own_variables` load only its own
    variables around a Lion (Keras's loader, as it is, around others)."""
    wrapper = keras.optimizers.LossScaleOptimizer
    keras_load = wrapper.load_own_variables
    if getattr(keras_load, "_keraslion", False):
        return

    @functools.wraps(keras_load)
    def load_own_variables(self: Any, store: Any) -> None:
        if isinstance(self.inner_optimizer, Lion):
            load_own(self, store)
        else:
            keras_load(self, store)

    load_own_variables._keraslion = True  # type: ignore[attr-defined]
    wrapper.load_own_variables = load_own_variables


def load_own(wrapper: Any, store: Any) -> None:
    lion = wrapper.inner_optimizer
    lion.__dict__.pop(LOADED_BY_WRAPPER, None)
    if not saved_by_a_loss_scale_optimizer(store):
        # A checkpoint saved without mixed precision: the Lion's variables
        # here, and nothing where the wrapper keeps the Lion's own. They load
        # into the Lion (as they would unwrapped); the wrapper's, never
        # saved, are left as they are.
        load_own_variables(lion, store)
        lion.__dict__[LOADED_BY_WRAPPER] = True
        return
    if not wrapper.built:
        # No step counter and loss scale yet (a copy's loss is said by its Lion).
        if not unpickling():
            warnings.warn(
                f"Loading the state of optimizer '{wrapper.name}': it is not built, so its "
                "saved step counter and loss scale were not loaded; build it first, with "
                "`optimizer.build(model.trainable_variables)`.", StateWarning, stacklevel=3)
        return
    own = list(wrapper._variables)
    names = ", ".join(variable.name for variable in own)
    saved = [np.asarray(store[str(i)]) for i in range(min(len(own), len(store.keys())))]
    if len(saved) < len(own) or not all(fits(v, variable) for v, variable in zip(saved, own)):
        warnings.warn(
            f"Loading the state of optimizer '{wrapper.name}': the checkpoint does not begin "
            f"with its own variables ({names}), which start afresh.", StateWarning, stacklevel=3)
        return
    for variable, value in zip(own, saved):
        variable.assign(value)


def fits(value: np.ndarray, variable: Any) -> bool:
    """Whether a saved value can be this variable's: its shape, and int or float
    (a float32 checkpoint's first momentums, of scalar weights, are scalars too)."""
    integer = keras.backend.standardize_dtype(variable.dtype).startswith(("int", "uint"))
    return value.shape == tuple(variable.shape) and (value.dtype.kind in "iu") == integer
