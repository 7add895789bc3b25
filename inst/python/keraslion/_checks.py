"""Argument checks shared by the optimizer constructor and its methods.

Every check raises a `ValueError` (or `TypeError` for a wrong type) whose
message names the argument, states the rule and shows the value received,
in the style of Keras's own messages.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np


def _received(name: str, value: Any) -> str:
    return f"Received: {name}={value!r}"


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_scalar_tensor(value: Any) -> bool:
    return getattr(value, "shape", None) == () and hasattr(value, "dtype")


def _is_symbolic(value: Any) -> bool:
    """A 0-d tensor traced under jit or tf.function, whose value cannot be read."""
    if not _is_scalar_tensor(value):
        return False
    try:
        keras.ops.convert_to_numpy(value)
    except Exception:
        return True
    return False


def _concrete_float(value: Any) -> float | None:
    """`value` as a Python float if it is a number or a concrete 0-d tensor, else None."""
    if _is_real(value):
        return float(value)
    if _is_scalar_tensor(value) and "bool" not in str(value.dtype):
        try:
            return float(keras.ops.convert_to_numpy(value))
        except Exception:  # A symbolic tensor, traced under jit or tf.function.
            return None
    return None


def _as_float(name: str, value: Any) -> float:
    """Returns `value` as a Python float, accepting 0-d tensors and arrays."""
    number = _concrete_float(value)
    if number is None:
        raise TypeError(f"Argument `{name}` must be a number. {_received(name, value)}")
    return number


def _check_interval(
    name: str,
    value: float,
    low: float,
    high: float,
    low_closed: bool,
    high_closed: bool,
) -> float:
    above = value >= low if low_closed else value > low
    below = value <= high if high_closed else value < high
    if not (math.isfinite(value) and above and below):
        opening = "[" if low_closed else "("
        closing = "]" if high_closed else ")"
        raise ValueError(
            f"Argument `{name}` must be a finite number in {opening}{low:g}, {high:g}{closing}. "
            f"{_received(name, value)}"
        )
    return value


def number_in(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_closed: bool = True,
    high_closed: bool = False,
    float32: bool = False,
) -> float:
    """A finite real number in the given interval, returned as a float.

    With `float32`, it must also survive float32, in which Keras keeps and
    uses it: a number that rounds to infinity, or from non-zero to zero, is
    refused.
    """
    number = _check_interval(name, _as_float(name, value), low, high, low_closed, high_closed)
    if not float32:
        return number
    with np.errstate(over="ignore"):  # said below, naming the argument
        rounded = float(np.float32(number))
    if math.isinf(rounded) or (rounded == 0.0) != (number == 0.0):
        raise ValueError(
            f"Argument `{name}` must be representable in float32 (between about 1.4e-45 "
            f"and 3.4e+38, or 0), where Keras uses it; it would become {rounded:g}. "
            f"{_received(name, value)}"
        )
    return number


def optional_number_in(name: str, value: Any, low: float, **kwargs: Any) -> float | None:
    return None if value is None else number_in(name, value, low, **kwargs)


def live_number_in(name: str, value: Any, low: float, **kwargs: Any) -> Any:
    """As `optional_number_in`, but a tensor traced under jit or tf.function
    (set inside a compiled function, as Keras's optimizers allow) is taken
    as it is: its value cannot be read to check it. A `keras.Variable` is
    kept, to be read at every step (its value now checked)."""
    if isinstance(value, keras.Variable):
        return followed_variable(name, value, low, **kwargs)
    if _is_symbolic(value):
        return value
    if value is not None and _concrete_float(value) is None:
        raise TypeError(f"Argument `{name}` must be None, a number >= {low:g} or a "
                        f"`keras.Variable`. {_received(name, value)}")
    return optional_number_in(name, value, low, **kwargs)


def followed_variable(name: str, value: Any, low: float, *args: Any, **kwargs: Any) -> Any:
    """A `keras.Variable` hyperparameter, read at every step: a float scalar
    whose current value is in range."""
    if value.shape != () or not keras.backend.is_float_dtype(value.dtype):
        raise ValueError(
            f"Argument `{name}` given as a `keras.Variable` must be a float scalar. "
            f"{_received(name, value)}")
    number_in(name, keras.ops.convert_to_numpy(value), low, *args, **kwargs)
    return value


#: What a beta may be given as, named by the errors for anything else.
_BETA_KINDS = "a number, a `keras.Variable` or a function of no arguments"

#: The intervals of the betas: beta_1 in (0, 1], beta_2 in [0, 1).
_BETAS = {
    "beta_1": {"low_closed": False, "high_closed": True},
    "beta_2": {"low_closed": True, "high_closed": False},
}


def beta(name: str, value: Any) -> Any:
    """`beta_1` or `beta_2`: a number in its interval, or a zero-argument
    callable returning one (checked by `resolve_beta` at every call)."""
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(
            f"Argument `{name}` must be a number or a function of no arguments; a "
            f"`LearningRateSchedule` (a function of the step) is only for `learning_rate`. "
            f"{_received(name, value)}"
        )
    if isinstance(value, type):
        raise TypeError(f"Argument `{name}` must be {_BETA_KINDS}, not a class. "
                        f"{_received(name, value)}")
    if callable(value):
        return value
    if isinstance(value, keras.Variable):
        beta_number(name, keras.ops.convert_to_numpy(value))
        return followed_variable(name, value, 0.0, 1.0, **_BETAS[name])
    if _is_symbolic(value):
        return value
    if _concrete_float(value) is None:
        raise TypeError(f"Argument `{name}` must be {_BETA_KINDS}. {_received(name, value)}")
    return beta_number(name, value)


def beta_number(name: str, value: Any) -> float:
    """A beta in its interval, and 0 or a normal float32: a smaller one does
    not survive the float32 step (beta_2 = 1e-50 rounds to 0; a subnormal
    such as beta_1 = 1e-40 is flushed to 0 by XLA and TensorFlow on CPU),
    which then drops `beta * m` where the paper keeps it."""
    number = number_in(name, value, 0.0, 1.0, **_BETAS[name])
    if 0.0 < number < float(np.finfo(np.float32).tiny):
        or_zero, use_zero = (" (or 0)", "Use 0. ") if name == "beta_2" else ("", "")
        raise ValueError(
            f"Argument `{name}` must be at least 2^-126 (about 1.1754944e-38), float32's "
            f"smallest normal number{or_zero}: a smaller one rounds to 0 in the float32 "
            f"step, or is flushed to 0 by XLA. {use_zero}{_received(name, value)}")
    return number


def resolve_beta(name: str, value: Any) -> Any:
    """The value of a beta given as a number or a callable, checked as at construction.

    A symbolic tensor (a callable read inside a traced function) cannot be
    checked and is returned as it is.
    """
    if not callable(value):
        return value
    result = value()
    if _concrete_float(result) is None and _is_scalar_tensor(result):
        return result
    return beta_number(name, result)


#: What a learning rate may be given as, named by the errors for anything else.
_LEARNING_RATE_KINDS = ("a number >= 0, a `LearningRateSchedule`, a `keras.Variable` or a "
                        "function of no arguments")


def learning_rate(value: Any) -> Any:
    """A schedule, a callable (checked at each call by `resolve_learning_rate`),
    a `keras.Variable` (followed at every step), a traced tensor, else a float
    >= 0 that survives float32."""
    if isinstance(value, type):
        raise TypeError(f"Argument `learning_rate` must be {_LEARNING_RATE_KINDS}, not a class: "
                        f"give an instance. {_received('learning_rate', value)}")
    if isinstance(value, keras.Variable):
        return followed_variable("learning_rate", value, 0.0, float32=True)
    if hasattr(value, "assign") and hasattr(value, "dtype"):
        # A tf.Variable or the like would be read once and copied.
        raise TypeError(
            "Argument `learning_rate` must not be a backend variable, whose value would be "
            "copied once: pass a `keras.Variable`, which Lion follows at every step, or a "
            f"number. {_received('learning_rate', value)}")
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) or callable(value):
        return value
    if _is_symbolic(value):
        return value
    if _concrete_float(value) is None:
        raise TypeError(f"Argument `learning_rate` must be {_LEARNING_RATE_KINDS}. "
                        f"{_received('learning_rate', value)}")
    return number_in("learning_rate", value, 0.0, float32=True)


def resolve_learning_rate(value: Any) -> Any:
    """The value a learning-rate callable returned, checked as a number given
    directly is; a traced tensor is returned as it is."""
    if _is_symbolic(value):
        return value
    if not _is_real(value) and not _is_scalar_tensor(value):
        raise TypeError(
            "The function given as `learning_rate` must return a number >= 0. "
            f"{_received('learning_rate()', value)}")
    return number_in("learning_rate", value, 0.0, float32=True)


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, np.bool_):  # NumPy's, shown as True: taken as it reads
        value = bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"Argument `{name}` must be True or False. {_received(name, value)}")
    return value


def optional_whole_number(name: str, value: Any, low: int) -> int | None:
    """None, or an integer >= low (a float with no fractional part is accepted)."""
    if value is None:
        return None
    whole = _is_real(value) and math.isfinite(value) and float(value).is_integer()
    if not whole or value < low:
        raise ValueError(
            f"Argument `{name}` must be None or a whole number >= {low}. "
            f"{_received(name, value)}"
        )
    return int(value)


def non_empty_string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"Argument `{name}` must be a non-empty string. {_received(name, value)}")
    return value


#: The float dtypes a momentum may be stored in (float8 would saturate or
#: overflow differently on each backend, and TensorFlow cannot cast to it).
MOMENTUM_FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


def momentum_dtype(value: Any) -> str | None:
    """None, one of `MOMENTUM_FLOAT_DTYPES` or "int8" (one-byte codes), by
    its standard name, refusing a float64 momentum that the backend would
    not keep."""
    if value is None:
        return None
    try:
        dtype = keras.backend.standardize_dtype(value)  # also NumPy's and the backends' dtypes
    except (TypeError, ValueError):
        dtype = None
    if dtype not in (*MOMENTUM_FLOAT_DTYPES, "int8"):
        raise ValueError(
            "Argument `momentum_dtype` must be None, 'float32', 'bfloat16', 'float16', "
            "'float64' or 'int8' (one byte per weight; float8 dtypes are not supported). "
            f"{_received('momentum_dtype', value)}")
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            raise ValueError(
                "Argument `momentum_dtype` is 'float64', but JAX's 64-bit mode is off, so JAX "
                "would store it in float32. Enable it before any array is made: set the "
                "environment variable JAX_ENABLE_X64=1 before Python starts (from R, "
                "Sys.setenv(JAX_ENABLE_X64 = 1) before reticulate starts Python), or call "
                "jax.config.update('jax_enable_x64', True). "
                f"{_received('momentum_dtype', value)}")
    return dtype


def is_zero_or_none(value: Any) -> bool:
    """No weight decay: None or a number equal to zero (a tensor may be traced)."""
    return value is None or (_is_real(value) and value == 0)


def regex_problem(pattern: str) -> str | None:
    """Why Python's `re`, which applies the patterns, rejects `pattern` or warns
    about it (as for R's `"[[:alpha:]]"`, which means something else here);
    None if it is fine."""
    re.purge()  # A pattern compiled before would come from the cache, without its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            re.compile(pattern)
        except (re.error, Warning) as err:
            return str(err)
    return None


def patterns(name: str, value: str | Iterable[str] | None) -> list[str]:
    """Python regular expressions (`re`, which applies them): one string is one
    pattern, not its characters."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(
                f"Argument `{name}` must be a string or a list of non-empty strings "
                f"(regular expressions). {_received(name, value)}"
            )
        problem = regex_problem(item)
        if problem is not None:
            raise ValueError(
                f"Argument `{name}` holds an invalid regular expression {item!r}: {problem}."
            )
    return items


def divisor(name: str, value: Any) -> float | None:
    """`global_clipnorm` or `loss_scale_factor`, which Keras divides by: None
    or a float32 that, as its reciprocal, is normal. XLA and TensorFlow flush
    subnormals to 0 on CPU: the gradients became 0 (global_clipnorm = 3e38)
    or NaN (loss_scale_factor = 1e-40) there, not on PyTorch."""
    number = optional_number_in(name, value, 0.0, low_closed=False, float32=True)
    tiny = float(np.finfo(np.float32).tiny)
    if number is not None and not tiny <= number <= 1 / tiny:
        raise ValueError(
            f"Argument `{name}` must be between 2^-126 and 2^126 (about 1.2e-38 and 8.5e+37): "
            "Keras divides by it, and on JAX and TensorFlow a smaller number or reciprocal "
            f"is flushed to 0, which makes the gradients 0 or NaN. {_received(name, value)}")
    return number


def clipping(optimizer: Any, name: str, value: Any) -> float | None:
    """`clipnorm`, `clipvalue` or `global_clipnorm`: None or a float > 0, and
    refused while another of them is set (Keras would apply only one)."""
    value = (divisor(name, value) if name == "global_clipnorm" else
             optional_number_in(name, value, 0.0, low_closed=False, float32=True))
    others = [f"`{other}` is {getattr(optimizer, '_' + other)}"
              for other in ("clipnorm", "clipvalue", "global_clipnorm")
              if other != name and getattr(optimizer, "_" + other, None) is not None]
    if value is not None and others:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set, and "
            f"{' and '.join(others)}: set it to None first. Nothing was changed. "
            f"{_received(name, value)}")
    return value


def fixed_once_built(optimizer: Any, name: str, current: Any, value: Any) -> None:
    """Refuses to change an option that the optimizer's build (or a compiled
    step) has already acted on."""
    if getattr(optimizer, "built", False) and value != current:
        raise ValueError(
            f"`{name}` can only be changed before the optimizer is built (before its first "
            f"step); nothing was changed. To change it, compile the model with a new "
            f"optimizer and load the checkpoint into it: the step count and momentums load. "
            f"{_received(name, value)}")


def not_distributed(optimizer: Any, name: str, value: Any) -> None:
    """Refuses what Keras cannot do under a `tf.distribute` strategy: its
    gradient accumulation and its EMA overwriting synchronize the replicas
    inside a conditional, where tf.distribute raises (a RuntimeError about
    `merge_call`) after the step has begun."""
    if not value or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    # Keras's TensorFlow optimizer belongs to the strategy it was created
    # under (set once its constructor has run); outside any, get_strategy()
    # is the default one.
    own = getattr(optimizer, "_distribution_strategy", None)
    if tf.distribute.has_strategy() or own not in (None, tf.distribute.get_strategy()):
        raise ValueError(
            f"Argument `{name}` is not supported under a tf.distribute strategy: Keras "
            f"synchronizes the replicas inside a conditional there, which tf.distribute "
            f"cannot do. Use it without a strategy, or leave it None. "
            f"{_received(name, value)}")


def _name(variable: Any) -> str:
    return getattr(variable, "path", None) or getattr(variable, "name", "?")


def keras_variables(variables: list[Any]) -> None:
    """Refuses what is not a `keras.Variable` (a `tf.Variable`, say), whose
    momentum keraslion could not name, save or step on its fast paths."""
    for i, variable in enumerate(variables):
        if not isinstance(variable, keras.Variable):
            raise TypeError(
                f"Argument `trainable_variables` holds a {type(variable).__name__} at position "
                f"{i + 1} ('{_name(variable)}'): keraslion steps `keras.Variable`s, such as a "
                "model's `trainable_variables`; make one with `keras.Variable(value)`. "
                "Nothing was updated.")


def gradient_shapes(grads: list[Any], variables: list[Any]) -> None:
    """Refuses a gradient whose shape is not its variable's (dimensions not
    known while tracing pass), before anything is updated: broadcast, or
    reshaped by a fast path, it would give a wrong step without an error.
    Refuses as well another count of gradients than of variables (with
    none, Keras's apply gives its own error): zipped, some would not step;
    and a variable listed twice."""
    keras_variables(variables)
    if variables and len(grads) != len(variables):
        raise ValueError(
            f"Argument `grads` holds {len(grads)} gradients for {len(variables)} variables: "
            "give one gradient (or None) per variable, in their order. Nothing was updated.")
    seen: set[int] = set()
    for variable in variables:
        if id(variable) in seen:
            # Stepped twice with one momentum on some paths, once on others.
            raise ValueError(
                f"Argument `trainable_variables` lists the variable '{_name(variable)}' more "
                "than once: give each variable once, with its gradient. Nothing was updated.")
        seen.add(id(variable))
    for gradient, variable in zip(grads, variables):
        if gradient is None:
            continue
        # (A PyTorch tensor says so itself, more cheaply than by its device.)
        meta = getattr(gradient, "is_meta", None)
        if meta is None:
            meta = getattr(getattr(gradient, "device", None), "type", None) == "meta"
        if meta:
            # Keras would read it as uninitialised memory.
            raise ValueError(
                f"Argument `grads` holds a tensor on PyTorch's meta device, which has no values, "
                f"for the variable '{_name(variable)}'. Nothing was updated.")
        shape = getattr(gradient, "shape", None)
        # Its variable's, as a tuple (NumPy, JAX, torch.Size): checked at
        # every step, for every variable, this costs the least.
        if isinstance(shape, tuple) and shape == variable.shape:
            continue
        if shape is None and isinstance(gradient, list | tuple | numbers.Number):
            shape = np.shape(np.asarray(gradient, dtype=object))  # The array it makes.
        if shape is None or getattr(shape, "rank", 0) is None:
            continue  # Unknown here (an IndexedSlices given a Python dense_shape, say).
        received = tuple(None if d is None else int(d) for d in shape)
        expected = tuple(variable.shape)
        if len(received) != len(expected) or any(
                r is not None and e is not None and r != e for r, e in zip(received, expected)):
            raise ValueError(
                f"Argument `grads` holds a gradient of shape {received} for the variable "
                f"'{_name(variable)}' of shape {expected}: each gradient must have its "
                "variable's shape. "
                f"Nothing was updated.")
