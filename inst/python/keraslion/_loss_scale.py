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

from ._restore import (
    LOADED_BY_WRAPPER,
    LOSS_SCALE_INTEGERS,
    StateWarning,
    load_own_variables,
    saved_by_a_loss_scale_optimizer,
    saved_by_an_unbuilt_loss_scale_optimizer,
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
    if saved_by_an_unbuilt_loss_scale_optimizer(store):
        return  # Saved before training: the Lion's own store, next, says so if need be.
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
    # The four variables the store's prefix was recognised by (another Keras
    # could give the wrapper others).
    own = list(wrapper._variables)
    if len(own) != len(LOSS_SCALE_INTEGERS):
        warnings.warn(
            f"Loading the state of optimizer '{wrapper.name}': its variables "
            f"({', '.join(variable.name for variable in own)}) are not those the checkpoint "
            "begins with, and start afresh.", StateWarning, stacklevel=3)
        return
    for i, variable in enumerate(own):
        variable.assign(store[str(i)])
