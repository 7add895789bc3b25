"""The Lion optimizer (Chen et al., 2023) as a Keras 3 optimizer."""

from __future__ import annotations

import math
import numbers
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import keras
from keras import ops

from . import _checks, _fastpaths, _restore, int8

Hyperparameter = float | Callable[[], Any]


def sign(x: Any) -> Any:
    """`sign(x)`, NaN where `x` is NaN on every backend.

    torch.sign gives 0 for NaN, where NumPy, JAX and TensorFlow give NaN: a
    NaN gradient would then freeze its element silently (its momentum NaN
    for good) instead of showing in the weights and the loss.
    """
    direction = ops.sign(x)
    if keras.backend.backend() == "torch":
        direction = ops.where(ops.isnan(x), x, direction)
    return direction


def lion_direction(c: Any, gradient: Any, cautious: bool) -> Any:
    """The per-element step direction: `sign(c)`, or its cautious form.

    Cautious Lion (Liang et al., 2024) keeps only the elements whose direction
    agrees in sign with the current gradient and rescales them by
    `size / max(kept, 1)`, the inverse of the kept fraction; the `max` guards
    the case where no element is kept (the step is then zero).
    """
    direction = sign(c)
    if not cautious:
        return direction
    agrees = ops.cast(ops.greater(direction * gradient, 0), direction.dtype)
    kept = ops.sum(agrees)
    # max(kept, 1) for a count; ops.maximum would compute it in float32 on torch.
    kept = kept + ops.cast(ops.equal(kept, 0), kept.dtype)
    cautious_direction = direction * agrees * (math.prod(direction.shape) / kept)
    # NaN stays NaN (as NaN * 0 would be), so that a NaN shows in the weights:
    # XLA rewrites the product by a 0/1 mask into a select, which drops it.
    return ops.where(ops.isnan(direction), direction, cautious_direction)


def cast_scalar(x: Any, dtype: str) -> Any:
    """A hyperparameter in `dtype`: a Python number directly, as on TensorFlow
    `ops.cast` would round it through float32 first."""
    return ops.convert_to_tensor(x, dtype) if isinstance(x, numbers.Real) else ops.cast(x, dtype)


def opaque(coefficients: list[Any]) -> list[Any]:
    """The step's coefficients, hidden from XLA's algebraic rewrites on JAX.

    As constants in a jitted step, equal coefficients let XLA factor
    `0.5 * m + 0.5 * g` (beta_2 = 0.5) into `0.5 * (m + g)`, which overflows
    where the paper's sum does not. An optimization barrier keeps them
    values (as TensorFlow's compiled paths pass them in); None passes through.
    """
    if keras.backend.backend() != "jax":
        return coefficients
    import jax

    present = jax.lax.optimization_barrier([x for x in coefficients if x is not None])
    return [None if x is None else present.pop(0) for x in coefficients]


def compute_dtype(variable_dtype: str, momentum_dtype: str) -> str:
    """The dtype a step is computed in: float64 if the weight or its momentum
    is float64 (exactly, as the paper's maths), else float32 (narrower dtypes
    are widened, and rounded once when stored)."""
    return "float64" if "float64" in (variable_dtype, momentum_dtype) else "float32"


#: The largest finite float16: a float16 momentum saturates there.
FLOAT16_MAX = 65504.0


def stored_momentum(m: Any, dtype: str) -> Any:
    """The new momentum rounded to its storage dtype.

    A float16 momentum saturates at +-65504 instead of overflowing: only the
    sign of `c` matters, and an infinite momentum would fix its element's
    direction for good (NaN stays NaN, for `skip_nonfinite` to see).
    """
    if dtype == "float16":
        m = ops.where(ops.abs(m) > FLOAT16_MAX, ops.sign(m) * FLOAT16_MAX, m)
    return ops.cast(m, dtype)


class Hyperparameters(NamedTuple):
    """The values a user (or a callback) may change between steps, read at every step."""

    beta_1: Any
    beta_2: Any
    weight_decay: Any  # None: no weight decay


class StepInputs(NamedTuple):
    """A step's tensors (one variable's, or alike variables' stacked) and its
    coefficients, in the dtype the update is computed in.

    `1 - beta` is computed before it is rounded to that dtype (for Python
    numbers, in float64): rounded first, `1 - (1 - 1e-7)` is 19% off in float32.
    """

    theta: Any
    m: Any
    g: Any
    learning_rate: Any
    beta_1: Any
    one_minus_beta_1: Any
    beta_2: Any
    one_minus_beta_2: Any
    weight_decay: Any  # None: no weight decay


def lion_update(step: StepInputs, cautious: bool,
                read_momentum_again: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
    """The paper's step (Alg. 2): the new weights and momentum, in the compute dtype.

    `read_momentum_again`: a fast path's function of the new weights that
    returns the old momentum, read anew for its own update (XLA orders its
    loops by it).
    """
    c = step.beta_1 * step.m + step.one_minus_beta_1 * step.g
    theta = descended(step, c, cautious)
    m = step.m if read_momentum_again is None else read_momentum_again(theta)
    return theta, step.beta_2 * m + step.one_minus_beta_2 * step.g


def descended(step: StepInputs, c: Any, cautious: bool) -> Any:
    """theta - lr * (direction(c) + weight_decay * theta)."""
    direction = lion_direction(c, step.g, cautious)
    if step.weight_decay is not None:
        direction = direction + step.weight_decay * step.theta
    return step.theta - step.learning_rate * direction


@keras.saving.register_keras_serializable(package="keraslion")
class Lion(keras.optimizers.Optimizer):
    """Optimizer that implements the Lion algorithm.

    Lion ("EvoLved Sign Momentum") keeps one momentum per variable and moves
    every element by the same amount, the learning rate, in the direction of
    the sign of an interpolation between momentum and gradient:

        c = beta_1 * m + (1 - beta_1) * g
        theta = theta - learning_rate * (sign(c) + weight_decay * theta)
        m = beta_2 * m + (1 - beta_2) * g

    Because every element moves by the full learning rate, a good learning
    rate is typically 3-10x smaller than AdamW's and the weight decay 3-10x
    larger, so that `learning_rate * weight_decay` stays the same
    (`lion_hparams_from_adamw()` does this conversion).

    `learning_rate`, `beta_1`, `beta_2`, `weight_decay`, `cautious` and the
    clipping arguments may be set between steps, by a callback for example:
    a new value is checked when set and is used from the next step. A
    callable beta is checked each time it is called (a
    `LearningRateSchedule`, a function of the step, is refused); on JAX,
    with `gradient_accumulation_steps`, a callable is also called on steps
    that only accumulate (JAX traces both branches of Keras's condition),
    so a bad value it returns is refused one step sooner. Inside a
    compiled `fit()` on JAX or TensorFlow, as with Keras's own optimizers, a
    number or flag traced into the step keeps its traced value until the
    step is rebuilt (`model.make_train_function(force=True)`), while the
    learning rate (a variable) follows; so in a `tf.function` or `jax.jit`
    of your own, until it is traced again, and a callable is then called
    only when traced. (`torch.compile`, as in PyTorch's `fit(jit_compile=True)`,
    compiles the step again for a new value: it is used at once.) A
    `keras.Variable` given as a hyperparameter is read inside the step,
    where it cannot be checked: it is checked when given, not when
    `assign()`ed later (Keras's own optimizers check neither), so keep what
    you assign in range. On JAX, `fit()` holds the optimizer's variables,
    these included, as its own state during an epoch: a value assigned when
    an epoch begins is used, but one assigned between batches only if the
    callback first reads `self.model` (which syncs that state), as for
    Keras's own optimizers.

    Numerical limits: on JAX and TensorFlow the CPU kernels flush float32
    subnormals (below about 1.2e-38) to 0, so an element whose
    `(1 - beta_1) * g` and `beta_1 * m` are both that small takes no step,
    and such a momentum is stored as 0 (PyTorch keeps them). With
    `gradient_accumulation_steps`, Keras sums the gradients in the
    weights' dtype before dividing, so a sum beyond its range (3.4e38 in
    float32, 65504 in float16) gives an infinite momentum, and +Inf then
    -Inf a NaN one, unless `skip_nonfinite` skips that step: the
    optimizer's own clipping comes after the sum, so clip gradients that
    can be that large before you pass them. Keras's `clipnorm` and
    `global_clipnorm` square the gradients in their dtype: beyond about
    1.8e19 in float32 (about 256 in float16) the norm is Inf, and then
    `clipnorm` makes that gradient 0 (NaN where `g * clipnorm` overflows)
    and `global_clipnorm` makes every gradient NaN, after `skip_nonfinite`
    has judged them (as with Keras's own optimizers). XLA
    (TensorFlow's `jit_compile`, JAX's `jit`) may fuse a multiply and an
    add into one rounding: where
    `beta_1 * m + (1 - beta_1) * g` is exactly 0 in float32 (a tie,
    likeliest with bfloat16 weights and gradients), it can give a tiny
    number instead, and the element steps by the learning rate where other
    paths leave it; and a bfloat16 weight whose new value lies a hair from
    halfway between two bfloat16 numbers may round the other way (rarely:
    the fused result must fall on the other side of halfway). PyTorch's
    `torch.compile` fuses alike: a compiled step's momentum, and with weight
    decay its weights, may differ from an eager step's by one unit in the
    last place in some elements (so does Keras's own Lion's momentum). What
    XLA fuses depends on the whole compiled step: an option that adds to it
    (`skip_nonfinite`, say) may change a momentum element by one unit in
    the last place. Keras keeps the learning rate in floatx: after
    `keras.config.set_floatx("bfloat16")`, in bfloat16 (0.01 becomes
    0.0100098), as for its own optimizers; the step is unchanged.

    Saving and loading: a checkpoint loads into a Lion whose options add or
    drop variables (`skip_nonfinite`, `use_ema`, gradient accumulation, a
    schedule for a float learning rate), and from Keras's own Lion (Keras's
    Lion loads a keraslion checkpoint only with the same variables: its
    loader skips them all otherwise).
    The optimizer must be built before `load_weights()`. Variables are
    matched by role and by weight: the iteration count, learning rate and
    momentums load, what the new options add starts fresh (a moving
    average at the current weight), and saved state with no place here is
    dropped with a `keraslion.StateWarning`. What the checkpoint lacks (say,
    the momentum of a layer it had frozen) or what cannot be matched raises
    a `ValueError` and loads nothing into the optimizer (the model's
    weights, which Keras loads first, are loaded); with
    `model.load_weights(path, skip_mismatch=True)` it is a `StateWarning`
    instead, and the rest loads. A checkpoint names no variable: its
    entries are matched to the trainable weights by order and shape, so one
    saved with other weights of the same shapes trainable (one of two alike
    layers frozen, the other not) loads their momentums into these. A
    checkpoint saved before training (its optimizer not yet built) holds a
    fresh optimizer's state: loaded into a trained Lion, it restarts it,
    with a `StateWarning`. Moving averages
    and gradient accumulators lie alike in a checkpoint: their values tell
    them apart (averages near the weights, as after `fit()`, which copies
    them into the weights; accumulators at zero, reset at an update), and
    what has no place here is dropped, with the warning. Where the values
    cannot tell, they load as this optimizer's options say, and so where
    they only hint at the other role (far from the weights: sums of
    gradients, or averages far behind fast-moving weights), with the
    warning: heed it, for sums of gradients taken for averages become the
    weights when `fit()` copies the averages into them. A checkpoint saved
    with another `gradient_accumulation_steps` loads as into Keras's own
    optimizers: its partial sum and its iteration count (of batches, which
    says when an update falls) load as they are, and an update divides what
    has been summed by this optimizer's count. A checkpoint of an
    optimizer that saves two values per weight, one never negative (AdamW,
    Adam, Nadam, Adamax, Lamb, Adadelta, Ftrl), loads none of its state into
    the Lion, with a `StateWarning` (switching from AdamW: the model's
    weights load, the Lion's state is left as it is; where all the weights
    have one shape, a Lion with `use_ema` or gradient accumulation reads it
    as its own); one value per weight
    (SGD with momentum, RMSprop, Adagrad) cannot be told from a momentum and
    loads as one: load such weights before `compile()`. Under mixed
    precision, Keras's `LossScaleOptimizer` around a Lion loads its own
    state (loss scale, step counter) whatever the Lion's options, and the
    Lion its own as above (importing keraslion gives the wrapper this
    loader around a Lion; Keras's assigned the Lion's variables by
    position, which skipped the loss scale, failed, or left saved moving
    averages in gradient accumulators). Checkpoints also load between
    mixed precision and without it (a saved loss scale, with no place
    without it, is dropped with a `StateWarning`: so also when a
    mixed-precision model is loaded or copied under the "float32" dtype
    policy, which compiles it without loss scaling; set the policy
    first). A model
    copied or pickled (`copy.deepcopy(model)`, `pickle.dumps(model)`) keeps
    its optimizer's state. A built optimizer copied or pickled on its own
    comes back unbuilt, with its options but without its state (it has no
    variables to hold it yet), with a `StateWarning` if the state had steps.

    One-byte momentum (`momentum_dtype="int8"`): each momentum element is
    an int8 code, and each block of 256 along the last axis (or shorter
    row) keeps a scale, the smallest power of two at or above its largest
    |m|, as one exponent byte after the block's codes (as the OCP's MXFP8
    format stores its scales): 1.004 bytes per parameter for rows that are
    multiples of 256 (1.016 for rows of 64, 1.031 for rows of 32), where
    float32 takes 4 and bfloat16 2, so Lion's state is an eighth of
    AdamW's. The code is float8-like relative to the block's scale (3
    mantissa bits over 14 binades, then linear steps of 2^-17 of the
    scale), so momenta 1e4 times smaller than their block's largest keep
    a value, where absmax-linear int8 rounds everything below 1/254 of it to zero; and it
    is rounded up or down at random, unbiased, by bits hashed from the
    iteration count, the variable and the element, so a step is
    deterministic: the same after saving and resuming, on every replica
    and device of a sharded variable (measurements in
    `keraslion/int8.py` and `bench/int8_codes.py`). Costs: each stored
    momentum is off by up to one code (1/8 of its value above 2^-14 of
    the block's scale, more below), on average by none; a NaN momentum
    stays NaN, and one that is infinite or beyond 2^126 (8.5e37)
    saturates at 2^126; either makes 2^126 its block's scale, and the
    block's other momenta are then stored as 0 (a NaN or infinite gradient
    does this unless `skip_nonfinite=True`); and encoding takes more work than a
    float store. On the CPU, PyTorch's step, and JAX's and TensorFlow's
    for float32 weights (without `cautious`; on JAX with one device, on
    TensorFlow in the functions XLA compiles, as its fast path and `fit`
    run it), run in a C kernel that reads and writes each element once
    (on JAX and TensorFlow, an XLA custom call that updates the variables
    in place): it is compiled on first use with the system's C compiler
    (`cc`; `c++` and the FFI headers jaxlib or TensorFlow ships for XLA),
    for this CPU, and kept in `~/.cache/keraslion` (`KERASLION_CACHE_DIR`
    sets another place; `KERASLION_NATIVE=0` turns it off); where it
    cannot be built, a `keraslion.KernelWarning` says so and the backend's
    operations run the step. `jax.vmap` and `jax.grad` work through the
    kernel as through XLA's operations. Its results are the backends'
    operations' bit for bit (but the sign and payload of a NaN, and the sign
    of a zero weight; on JAX, those of XLA's operations one by one:
    XLA's compiled step may differ by a unit in the last place, and flushes
    subnormal numbers to zero; on TensorFlow, the plain path's, from which
    XLA's fused operations may differ by a unit in the last place). On one
    thread of a 2-core x86 CPU (`bench/int8_kernel.py`: 16.7M parameters
    in one variable or 200, and 2000 vectors of 1024) the step then takes
    1.05-1.25x float32's time on PyTorch (whose float32 step runs in C too,
    in one pass), 0.9-1.05x on JAX and 0.85-1.0x on TensorFlow (float32
    steps are bound by memory, the kernel by its arithmetic: the ratio
    moves with the machine's memory bandwidth; a compiled step also pays
    for each array it passes, which is why codes and scales share one);
    where the backends' operations
    run it (bfloat16 or float16 weights on JAX and TensorFlow, no C
    compiler), 1.5-2x as long on JAX and
    TensorFlow, and 3-7x on PyTorch. The first step compiles longer (a
    200-tensor transformer: up to 30 s on JAX, 13 s on TensorFlow with
    the kernel and 90 s with its operations,
    against 3-8 s; the kernel's first build takes about 2 s, 3 s for
    TensorFlow's). Variables
    whose last axis is shorter than 32, or with fewer than 256 elements,
    gain little and keep a float32 momentum. Checkpoints load between int8 and float momentums
    (decoded, or rounded to the nearest code).

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule`, a callable
            that takes no arguments and returns the learning rate (checked
            at each call), or a `keras.Variable`, read at every step and
            saved as the optimizer's learning rate. `beta_1`, `beta_2` and
            `weight_decay` may be `keras.Variable`s too, given here or set
            later: read at every step, also by a compiled `fit()`, but not
            saved with the optimizer's state (their values are their
            owner's; the config keeps the value they had).
            Defaults to `0.001`.
        beta_1: A float in (0, 1], or a callable that takes no arguments and
            returns one: the weight of the momentum in the interpolation `c`
            whose sign is the step; at least 2^-126, float32's smallest
            normal number (a subnormal is flushed to 0 by XLA). Defaults to
            `0.9`.
        beta_2: A float in [0, 1), or a callable that takes no arguments and
            returns one: the decay rate of the momentum; 0 or at least
            2^-126 (smaller values round to 0 in float32). Defaults to `0.99`.
        weight_decay: `None` or a float >= 0. Decoupled weight decay:
            each step also subtracts `learning_rate * weight_decay * theta`.
        clipnorm: `None` or a float > 0: clip each gradient to this norm.
        clipvalue: `None` or a float > 0: clip each gradient element to
            `[-clipvalue, clipvalue]`.
        global_clipnorm: `None` or a float in [2^-126, 2^126] (about
            1.2e-38 to 8.5e+37, where its reciprocal is a normal float32):
            clip all gradients together to this global norm. At most one of
            the three clipping arguments may be set.
        use_ema: Whether to keep an exponential moving average (EMA) of the
            model's weights. Defaults to `False`.
        ema_momentum: A float in [0, 1]: `average = ema_momentum * average +
            (1 - ema_momentum) * weight`. Defaults to `0.99`.
        ema_overwrite_frequency: `None` or an int >= 1: every this many
            steps, the weights are overwritten by their average. With `None`,
            `finalize_variable_values()` (called by `fit()` at the end)
            does it once. Refused under a `tf.distribute` strategy.
        loss_scale_factor: `None` or a float in [2^-126, 2^126]: the loss is
            multiplied and the gradients divided by this factor (the scaled
            loss must stay within its dtype's range: 65504 in float16).
        gradient_accumulation_steps: `None` or an int >= 2: update the
            weights every this many steps with the mean of the gradients.
            Learning-rate schedules count every step (as in Keras);
            `ema_overwrite_frequency` counts updates. A gradient of another
            dtype than its weights is cast to theirs before it is added
            (Keras's own optimizers fail there on JAX and TensorFlow).
            Fixed once the optimizer is built. Refused under a
            `tf.distribute` strategy, where Keras cannot synchronize the
            replicas inside its conditional.
        name: The name of the optimizer, used in its variables' paths (so
            without a `/`). Defaults to `"lion"`, numbered as Keras numbers
            its optimizers' names (`"lion_1"`, ...) when several are made.
        momentum_dtype: `None` (the variable's dtype), `"float32"`,
            `"bfloat16"`, `"float16"`, `"float64"` or `"int8"`: the dtype
            to store the momentum in (not float8: use `"int8"`). The
            step is computed in float64 if the weight or its momentum is
            float64, else in float32, and rounded once when stored. A
            float16 momentum saturates at +-65504 (only the sign of `c`
            matters) instead of overflowing to Inf. `"float64"` on JAX
            needs its 64-bit mode. `"int8"`: see "One-byte momentum".
            On PyTorch's CPU, float32 weights with a float32 or bfloat16
            momentum step in a C kernel (`float_step.c`, built and cached
            as the int8 one is) that reads and writes each element once,
            with the plain path's results bit for bit (but the sign
            and payload of a NaN, and the sign of a zero weight): 0.6 ns per
            parameter on one thread of a 2-core x86 CPU, a bfloat16
            momentum 1.0-1.15x as fast (`bench/int8_kernel.py`). Where it
            cannot be built, PyTorch's operations run the step (within a
            rounding).
        cautious: If `True`, use cautious Lion (C-Lion, Liang et al., 2024):
            elements whose step direction disagrees in sign with the current
            gradient are not moved, and the others are scaled by the inverse
            of the kept fraction of their tensor. The momentum update and the
            weight decay are unchanged. On PyTorch a cautious step takes the
            plain path, a few Keras operations per variable, which is slower
            than the fast path, most on many small variables. It may be set
            between steps; a step that TensorFlow or JAX has compiled (the
            train step of `fit()`) keeps the value it was compiled with,
            until the model is compiled again. Defaults to `False`.
        exclude_from_weight_decay: `None`, a string or a list of strings:
            Python regular expressions (module `re`); a variable whose path
            (e.g. `"dense/bias"`), or name, matches any of them gets no weight
            decay. Each tail of the path that starts after a `/` is tried too,
            so that `"^head/kernel$"` matches whether or not Keras puts the
            model's name in front (it does for a Sequential model built in
            code, `"seq/head/kernel"`, not for one loaded from a file). Saved
            with the optimizer.
        skip_nonfinite: If `True`, a step whose gradients hold NaN or Inf
            leaves the weights, the momentum, the EMA and the iteration count
            untouched; such steps are counted in `nonfinite_steps`. The
            gradients are judged as the step gets them: divided by
            `loss_scale_factor`, and with `gradient_accumulation_steps` as
            the accumulator will hold them, summed in their weights' dtype
            (a float32 gradient beyond float16's range, or finite gradients
            whose sum overflows, is skipped, and the accumulator keeps its
            sum). Under a `tf.distribute` strategy each replica judges its
            own gradients, not the replicas' sum. It cannot be changed once
            the optimizer is built. Defaults to `False`.
        **kwargs: Passed to `keras.optimizers.Optimizer`.

    References:
        - [Chen et al., 2023](https://arxiv.org/abs/2302.06675)
        - [Authors' implementation](https://github.com/google/automl/tree/master/lion)
        - [Liang et al., 2024](https://arxiv.org/abs/2411.16085) (cautious)
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Hyperparameter = 0.9,
        beta_2: Hyperparameter = 0.99,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        *,
        momentum_dtype: str | None = None,
        cautious: bool = False,
        exclude_from_weight_decay: str | Iterable[str] | None = None,
        skip_nonfinite: bool = False,
        **kwargs: Any,
    ) -> None:
        learning_rate = _checks.learning_rate(learning_rate)
        # Keras makes a variable of a float; a keras.Variable given is followed instead.
        followed = learning_rate if isinstance(learning_rate, keras.Variable) else None
        super().__init__(
            learning_rate=learning_rate if followed is None else 0.0,
            weight_decay=weight_decay,
            use_ema=use_ema,
            ema_momentum=_checks.number_in("ema_momentum", ema_momentum, 0.0, 1.0,
                                           high_closed=True),
            ema_overwrite_frequency=_checks.optional_whole_number(
                "ema_overwrite_frequency", ema_overwrite_frequency, 1),
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=_checks.optional_whole_number(
                "gradient_accumulation_steps", gradient_accumulation_steps, 2),
            # None: Keras numbers the default name ("lion", "lion_1", ...), so that
            # two optimizers' variables get distinct paths.
            name=None if name is None else _checks.non_empty_string("name", name),
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            **kwargs,
        )
        if followed is not None:
            self._follow_learning_rate(followed)
        if isinstance(self._weight_decay, keras.Variable):
            # Keras set it before it tracked variables: tracked now, as one set later is.
            self._tracker.track(self._weight_decay)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.momentum_dtype = momentum_dtype
        self.cautious = cautious
        self.skip_nonfinite = skip_nonfinite
        self._exclusion_patterns = _checks.patterns(
            "exclude_from_weight_decay", exclude_from_weight_decay)
        self._excluded_variable_keys: set[Any] = set()
        self._fast_path = _fastpaths.for_backend(keras.backend.backend())

    def _follow_learning_rate(self, variable: keras.Variable) -> None:
        """Uses the user's variable as the learning rate (read at every step,
        saved and loaded) in place of the copy Keras made of its value."""
        copy = self._learning_rate
        self._learning_rate = variable  # which Keras's tracking appends to the variables
        # In the copy's place (compared by identity: == compares values).
        self._variables[:] = [variable if v is copy else v
                              for v in self._variables if v is not variable]

    def build(self, variables: list[keras.Variable]) -> None:
        if self.built:
            return
        _checks.keras_variables(variables)
        _fastpaths.forget(self)  # (Built again: `built` was reset.)
        super().build(variables)
        self._momentums = [
            None if self._overwrite_variable_with_gradient(variable)
            else self._add_momentum(variable)
            for variable in variables
        ]
        if self.skip_nonfinite:
            self._nonfinite_steps = self.add_variable(
                shape=(), dtype="int", name="nonfinite_steps",
                aggregation="only_first_replica")
        # Decided here, by the Keras variables' paths: under a tf.distribute
        # strategy the steps see raw tf.Variables, named "dense/bias:0".
        self._decays = [self._decays_by_name(variable) for variable in variables]

    def _add_momentum(self, variable: keras.Variable) -> keras.Variable:
        if self.momentum_dtype is None:
            return self.add_variable_from_reference(variable, name="momentum")
        shape = tuple(variable.shape)
        quantized = self.momentum_dtype == "int8" and int8.is_quantized(shape)
        layout = getattr(variable, "_layout", None)
        name = f"{variable.path.replace('/', '_')}_momentum"
        if quantized:  # Codes and block scales in one array (`int8.pack`).
            return self.add_variable(shape=int8.packed_shape(shape), dtype="int8",
                                     layout=_packed_layout(layout, shape), name=name)
        # As add_variable_from_reference (same name and sharding layout), in another dtype.
        return self.add_variable(shape=shape, dtype=_float_momentum(self.momentum_dtype),
                                 layout=layout, name=name)

    def _int8_state(self, index: int) -> keras.Variable | None:
        """The int8 state (`int8.pack`) of the variable at `index`, or None
        for a float momentum (or none)."""
        momentum = self._momentums[index]
        return momentum if momentum is not None and momentum.dtype == "int8" else None

    def __setattr__(self, name: str, value: Any) -> None:
        # Keras tracks a variable before a property's setter checks it, so a
        # refused one stayed among the variables (and in the checkpoint). A
        # setter sets a private attribute, tracked then, once the value is taken.
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # Hyperparameters a user may change between steps, checked when set ----------

    @property
    def learning_rate(self) -> Any:
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        value = _checks.learning_rate(value)
        if value is self._learning_rate:
            return
        held = isinstance(self._learning_rate, keras.Variable)
        if isinstance(value, keras.Variable):
            instead = ("assign a number to change the learning rate" if held else
                       "this optimizer's learning rate is a schedule or a function: set another")
            raise TypeError(
                "A `keras.Variable` can be followed as the learning rate only when it is given "
                f"to `Lion(learning_rate=...)`; {instead}. Received: learning_rate={value!r}")
        if held and callable(value) and self.built:
            # Keras would drop the variable from the optimizer's state.
            raise ValueError(
                "The learning rate of a built optimizer is its variable `learning_rate`, "
                "saved with its state: assign a number to change it. A schedule or a function "
                "can be given before the optimizer's first step, or to a new optimizer. "
                f"Nothing was changed. Received: learning_rate={value!r}")
        if not held and not callable(value):
            raise TypeError(
                "The learning rate was given as a schedule or a function, so there is no "
                "variable to assign a number to: give a schedule or a function, or give the "
                "number to a new optimizer. Nothing was changed. "
                f"Received: learning_rate={value!r}")
        keras.optimizers.Optimizer.learning_rate.fset(self, value)

    def _get_current_learning_rate(self) -> Any:
        value = super()._get_current_learning_rate()
        if callable(self._learning_rate) and not isinstance(
                self._learning_rate,
                (keras.optimizers.schedules.LearningRateSchedule, keras.Variable)):
            return _checks.resolve_learning_rate(value)
        return value

    @property
    def weight_decay(self) -> float | None:
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value: float | None) -> None:
        self._set_hyperparameter(
            "_weight_decay", _checks.live_number_in("weight_decay", value, 0.0, float32=True))

    @property
    def clipnorm(self) -> float | None:
        return self._clipnorm

    @clipnorm.setter
    def clipnorm(self, value: float | None) -> None:
        self._clipnorm = _checks.clipping(self, "clipnorm", value)

    @property
    def clipvalue(self) -> float | None:
        return self._clipvalue

    @clipvalue.setter
    def clipvalue(self, value: float | None) -> None:
        self._clipvalue = _checks.clipping(self, "clipvalue", value)

    @property
    def global_clipnorm(self) -> float | None:
        return self._global_clipnorm

    @global_clipnorm.setter
    def global_clipnorm(self, value: float | None) -> None:
        self._global_clipnorm = _checks.clipping(self, "global_clipnorm", value)

    @property
    def cautious(self) -> bool:
        return self._cautious

    @cautious.setter
    def cautious(self, value: bool) -> None:
        self._cautious = _checks.boolean("cautious", value)

    @property
    def loss_scale_factor(self) -> float | None:
        return self._loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value: float | None) -> None:
        # Keras sets it in its __init__ (and a LossScaleOptimizer sets it to None).
        self._loss_scale_factor = _checks.divisor("loss_scale_factor", value)

    @property
    def use_ema(self) -> bool:
        return self._use_ema

    @use_ema.setter
    def use_ema(self, value: bool) -> None:
        value = _checks.boolean("use_ema", value)
        # The build made the moving averages, or not.
        _checks.fixed_once_built(self, "use_ema", getattr(self, "_use_ema", None), value)
        self._use_ema = value

    @property
    def momentum_dtype(self) -> str | None:
        return self._momentum_dtype

    @momentum_dtype.setter
    def momentum_dtype(self, value: str | None) -> None:
        value = _checks.momentum_dtype(value)
        # The build made the momentum variables in it.
        _checks.fixed_once_built(self, "momentum_dtype", getattr(self, "_momentum_dtype", None),
                                 value)
        self._momentum_dtype = value

    @property
    def skip_nonfinite(self) -> bool:
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value: bool) -> None:
        value = _checks.boolean("skip_nonfinite", value)
        # On: it would need the `nonfinite_steps` variable. Off: a compiled
        # train step has traced the check in and would go on skipping.
        _checks.fixed_once_built(self, "skip_nonfinite", getattr(self, "_skip_nonfinite", None),
                                 value)
        self._skip_nonfinite = value

    # Keras reads these two in `apply`; under a tf.distribute strategy it
    # cannot do what they ask (checked whenever they are set).

    @property
    def gradient_accumulation_steps(self) -> int | None:
        return self._gradient_accumulation_steps

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value: int | None) -> None:
        value = _checks.optional_whole_number("gradient_accumulation_steps", value, 2)
        # Keras makes the accumulators, or not, when the optimizer is built.
        _checks.fixed_once_built(self, "gradient_accumulation_steps",
                                 getattr(self, "_gradient_accumulation_steps", None), value)
        _checks.not_distributed(self, "gradient_accumulation_steps", value)
        self._gradient_accumulation_steps = value

    @property
    def ema_overwrite_frequency(self) -> int | None:
        return self._ema_overwrite_frequency

    @ema_overwrite_frequency.setter
    def ema_overwrite_frequency(self, value: int | None) -> None:
        value = _checks.optional_whole_number("ema_overwrite_frequency", value, 1)
        _checks.not_distributed(self, "ema_overwrite_frequency", value)
        self._ema_overwrite_frequency = value

    @property
    def beta_1(self) -> Hyperparameter:
        return self._beta_1

    @beta_1.setter
    def beta_1(self, value: Hyperparameter) -> None:
        self._set_hyperparameter("_beta_1", _checks.beta("beta_1", value))

    @property
    def beta_2(self) -> Hyperparameter:
        return self._beta_2

    @beta_2.setter
    def beta_2(self, value: Hyperparameter) -> None:
        self._set_hyperparameter("_beta_2", _checks.beta("beta_2", value))

    def _set_hyperparameter(self, attribute: str, value: Any) -> None:
        """Sets beta_1, beta_2 or weight_decay. Keras's tracking appends a
        `keras.Variable` to the optimizer's variables, so that a compiled step
        reads it as state (JAX's `fit()` would otherwise keep the value it had
        when traced); a variable it replaces leaves them, unless still in use."""
        previous = getattr(self, attribute, None)
        setattr(self, attribute, value)
        if (isinstance(previous, keras.Variable)
                and not any(previous is v for v in self._followed_hyperparameters())
                and previous is not self._learning_rate):
            self._untrack_variable(previous)

    def _followed_hyperparameters(self) -> list[keras.Variable]:
        """The `keras.Variable`s given as beta_1, beta_2 or weight_decay. Not
        saved with the optimizer's state: their values are their owner's (and
        the config keeps the value they had)."""
        values = (getattr(self, name, None) for name in ("_beta_1", "_beta_2", "_weight_decay"))
        return [v for v in values
                if isinstance(v, keras.Variable) and v is not self._learning_rate]

    def _saved_variables(self) -> list[keras.Variable]:
        """The optimizer's state, as saved: its variables but followed hyperparameters."""
        followed = [id(v) for v in self._followed_hyperparameters()]
        return [v for v in self.variables if id(v) not in followed]

    def _hyperparameters(self) -> Hyperparameters:
        """Their values for this step: callables called and checked, no decay as None.
        Within a step, those read as it began (`_backend_update_step`)."""
        during_step = _STEPS.get(id(self))
        if during_step is not None:
            return during_step[0]
        return Hyperparameters(
            beta_1=_checks.resolve_beta("beta_1", self.beta_1),
            beta_2=_checks.resolve_beta("beta_2", self.beta_2),
            weight_decay=None if _checks.is_zero_or_none(self.weight_decay) else self.weight_decay,
        )

    @property
    def nonfinite_steps(self) -> int:
        """The number of steps skipped because of NaN or Inf gradients."""
        if not hasattr(self, "_nonfinite_steps"):
            return 0
        return int(keras.ops.convert_to_numpy(self._nonfinite_steps.value))

    # The update ---------------------------------------------------------------

    def _momentum(self, variable: keras.Variable) -> keras.Variable:
        return self._momentums[self._get_variable_index(variable)]

    def _momentum_value(self, variable: keras.Variable,
                        read: Callable[[Any], Any] | None = None) -> Any:
        """The variable's momentum for its step: its variable, or int8 codes
        decoded. `read`, if given, reads each stored tensor (a fast path's hook)."""
        index = self._get_variable_index(variable)
        momentum = self._momentums[index]
        quantized = self._int8_state(index) is not None
        if read is not None:
            momentum = read(momentum)
        return int8.decode(*int8.unpack(momentum)) if quantized else momentum

    def _store_momentum(self, variable: keras.Variable, m: Any, noise_index: Any = None) -> None:
        """Stores a step's new momentum `m` (in the compute dtype) in its dtype.
        `noise_index`: the variable's index as a tensor, for a compiled
        function that several variables share (it seeds int8 rounding)."""
        index = self._get_variable_index(variable)
        momentum = self._momentums[index]
        if self._int8_state(index) is None:
            self.assign(momentum, stored_momentum(m, momentum.dtype))
            return
        # Rounded at random, by bits that the step, the variable and the element decide.
        noise = int8.noise_bits(self.iterations, index if noise_index is None else noise_index,
                                tuple(m.shape))
        self.assign(momentum, int8.pack(*int8.encode(m, noise)))

    def _step_inputs(self, theta: Any, m: Any, gradient: Any, decays: bool, learning_rate: Any,
                     hyperparameters: Hyperparameters | None = None,
                     scalars: dict[Any, Any] | None = None) -> StepInputs:
        """Gathers a step's weights, momentum and gradient, cast to their compute dtype.

        For the fast paths: `hyperparameters`, read once for all variables
        (a compiled path passes them in as tensors), and `scalars`, a dict
        shared by the variables of one step, which keeps the coefficients cast
        once per dtype instead of once per variable (fewer operations to trace).
        """
        dtype = compute_dtype(*(keras.backend.standardize_dtype(x.dtype) for x in (theta, m)))
        *coefficients, weight_decay = self._coefficients(dtype, learning_rate, hyperparameters,
                                                         scalars)
        return StepInputs(
            ops.cast(theta, dtype), ops.cast(m, dtype),
            ops.cast(ops.convert_to_tensor(gradient), dtype),
            *coefficients, weight_decay if decays else None)

    def _coefficients(self, dtype: str, learning_rate: Any,
                      hyperparameters: Hyperparameters | None = None,
                      scalars: dict[Any, Any] | None = None) -> list[Any]:
        """A step's learning rate, beta_1, 1 - beta_1, beta_2, 1 - beta_2 and
        weight decay (None for none) in `dtype`; kept in `scalars`, if given,
        to be cast once per dtype."""
        scalars = {} if scalars is None else scalars
        if dtype not in scalars:
            beta_1, beta_2, weight_decay = hyperparameters or self._hyperparameters()
            scalars[dtype] = opaque([
                None if x is None else cast_scalar(x, dtype)
                for x in (learning_rate, beta_1, 1 - beta_1, beta_2, 1 - beta_2, weight_decay)])
        return scalars[dtype]

    def update_step(self, gradient: Any, variable: keras.Variable, learning_rate: Any) -> None:
        """One Lion step for one variable, as written in the paper (Alg. 2)."""
        step = self._step_inputs(variable, self._momentum_value(variable), gradient,
                                 self._use_weight_decay(variable), learning_rate)
        theta, m = lion_update(step, self.cautious)
        self.assign(variable, ops.cast(theta, variable.dtype))
        self._store_momentum(variable, m)

    def _backend_update_step(self, grads: list[Any], trainable_variables: list[Any],
                             learning_rate: Any) -> None:
        # Callables given as betas are called once per step, and checked
        # before any variable steps: each variable's step would call them
        # again. (Under a tf.distribute strategy, the replicas' threads enter
        # here together, and the variables step in another thread.)
        with _STEPS_LOCK:
            if id(self) not in _STEPS:
                _STEPS[id(self)] = [self._hyperparameters(), 0]
            _STEPS[id(self)][1] += 1
        try:
            if self._fast_path is not None and self._fast_path.supports(self, trainable_variables):
                self._fast_path.update(self, grads, trainable_variables, learning_rate)
            else:
                if keras.backend.backend() == "torch":
                    # (`apply()`, which `stateless_apply()` calls too, made them
                    # dense. The fast path's `update` does this too.)
                    grads = _fastpaths.for_backend("torch").unaliased(self, grads,
                                                                      trainable_variables)
                super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            with _STEPS_LOCK:
                _STEPS[id(self)][1] -= 1
                if not _STEPS[id(self)][1]:
                    del _STEPS[id(self)]

    # Weight decay is part of the step (as in the paper), not a separate pass.

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        return

    def exclude_from_weight_decay(self, var_list: Iterable[keras.Variable] | None = None,
                                  var_names: str | Iterable[str] | None = None) -> None:
        """Excludes variables from weight decay; call it before the optimizer is built.

        Args:
            var_list: Variables to exclude (not saved with the optimizer).
            var_names: A string or a list of strings: Python regular expressions,
                added to `exclude_from_weight_decay` and saved with it; a
                variable whose path or name matches one is excluded.
        """
        if self.built:
            raise ValueError(
                "`exclude_from_weight_decay()` must be called before the optimizer is built "
                "(before its first step); it was already built, so nothing was changed.")
        patterns = _checks.patterns("var_names", var_names)
        self._excluded_variable_keys.update(self._var_key(v) for v in var_list or [])
        self._exclusion_patterns = [*self._exclusion_patterns, *patterns]

    def _use_weight_decay(self, variable: Any) -> bool:
        return self._decays[self._get_variable_index(variable)]

    def _decays_by_name(self, variable: keras.Variable) -> bool:
        if self._var_key(variable) in self._excluded_variable_keys:
            return False
        # Each tail of the path that starts at a "/" too: Keras puts a Sequential
        # model's name in front of its variables' paths when it is built in code
        # ("seq/head/kernel") but not once loaded ("head/kernel").
        parts = getattr(variable, "path", "").split("/")
        names = ["/".join(parts[i:]) for i in range(len(parts))] + [variable.name]
        return not any(re.search(pattern, name)
                       for pattern in self._exclusion_patterns for name in names)

    # Skipping steps with non-finite gradients ------------------------------------

    def apply(self, grads: list[Any], trainable_variables: list[Any] | None = None) -> None:
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
        _checks.gradient_shapes(grads, trainable_variables if trainable_variables is not None
                                else getattr(self, "_trainable_variables", []))
        if keras.backend.backend() == "jax":
            # Lion's step is dense (every momentum decays), and Keras's own
            # gradient accumulation cannot take a BCOO gradient.
            grads = [None if g is None else ops.convert_to_tensor(g, sparse=False)
                     for g in grads]
        elif keras.backend.backend() == "torch":
            grads = _fastpaths.for_backend("torch").dense(grads)
        elif keras.backend.backend() == "tensorflow" and (
                self.loss_scale_factor is not None or self.skip_nonfinite):
            # Keras divides every gradient by `loss_scale_factor`, which an
            # IndexedSlices (an Embedding's gradient) cannot take, and the
            # step sums its repeated rows, which may overflow where no slice
            # does: judged dense, as the step gets it (dense anyway).
            import tensorflow as tf

            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
        if not self.skip_nonfinite:
            return super().apply(grads, trainable_variables)
        if trainable_variables is not None:
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
        apply = super().apply
        if not self.built or all(g is None for g in grads):
            # Nothing to check: Keras's apply returns or raises its own error.
            return apply(grads, trainable_variables)

        backend = keras.backend.backend()
        if backend == "jax":
            self._apply_where_finite(apply, grads, trainable_variables)
        elif backend == "tensorflow":
            self._tf_apply_if_finite(apply, grads, trainable_variables)
        # Eager backends (torch): a Python branch, as keras.ops.cond would take,
        # but without its operation, whose new name at every step makes
        # torch.compile recompile; the check runs eagerly (see `all_finite`).
        elif _fastpaths.for_backend("torch").all_finite(self, grads, trainable_variables):
            apply(grads, trainable_variables)
        else:
            self._count_skipped()
        return None

    def _backend_apply_gradients(self, grads: list[Any], trainable_variables: list[Any]) -> None:
        # Keras adds a gradient to its accumulator, which has the weights'
        # dtype, inside a condition whose branches must agree in dtype on JAX,
        # and TensorFlow adds no two dtypes: a gradient of another dtype failed
        # on both. So each is cast to its weights' dtype first (here, after
        # Keras divided out `loss_scale_factor`).
        if self.gradient_accumulation_steps:
            grads = [_in_dtype(g, v.dtype) for g, v in zip(grads, trainable_variables)]
        super()._backend_apply_gradients(grads, trainable_variables)

    def _overwrite_variables_directly_with_gradients(self, grads: list[Any],
                                                     variables: list[Any]) -> Any:
        # The same for a variable overwritten with its gradient (Keras keeps
        # their maximum): in its dtype, as Keras assigns it anyway.
        if self.gradient_accumulation_steps:
            grads = [g if g is None or not self._overwrite_variable_with_gradient(v)
                     else _in_dtype(g, v.dtype) for g, v in zip(grads, variables)]
        return super()._overwrite_variables_directly_with_gradients(grads, variables)

    def _all_finite(self, grads: list[Any], trainable_variables: list[Any] | None) -> Any:
        """Whether every gradient is finite as the step gets it: divided by
        `loss_scale_factor`, and, when accumulated, added to its accumulator
        in its weights' dtype, as Keras adds it (a float32 gradient beyond
        float16's range is infinite there, and so is a sum of finite
        gradients beyond the dtype's range; an update averages that sum).
        A variable overwritten with its gradient gets it as given, in its
        dtype (accumulated by maximum, which cannot overflow)."""
        variables = (trainable_variables if trainable_variables is not None
                     else self._trainable_variables)
        checks = []
        for g, variable in zip(grads, variables):
            if g is None:
                continue
            g = ops.convert_to_tensor(g)
            if self._overwrite_variable_with_gradient(variable):
                g = _in_dtype(g, variable.dtype)
            else:
                if self.loss_scale_factor is not None:
                    g = g / self.loss_scale_factor
                if self.gradient_accumulation_steps:
                    accumulator = self._accumulated_gradients[self._get_variable_index(variable)]
                    g = _in_dtype(g, variable.dtype) + accumulator.value
            checks.append(ops.all(ops.isfinite(g)))
        return ops.all(ops.stack(checks))

    def _count_skipped(self) -> None:
        self._nonfinite_steps.assign_add(1)

    def _apply_where_finite(self, apply: Callable[..., Any], grads: list[Any],
                            trainable_variables: list[Any] | None) -> None:
        # JAX traces both branches of a cond without side effects, and
        # `stateless_apply` (used by fit()) runs this in a StatelessScope:
        # compute the step, then keep the old values if a gradient was not finite.
        finite = self._all_finite(grads, trainable_variables)
        state = [v for v in (*self._trainable_variables, *self.variables)
                 if v is not self._nonfinite_steps]
        before = [v.value for v in state]
        apply(grads, trainable_variables)
        for variable, old in zip(state, before):
            variable.assign(ops.where(finite, variable.value, old))
        self._nonfinite_steps.assign_add(
            ops.cast(ops.logical_not(finite), self._nonfinite_steps.dtype))

    def _tf_apply_if_finite(self, apply: Callable[..., Any], grads: list[Any],
                            trainable_variables: list[Any] | None) -> None:
        import tensorflow as tf

        replica_context = tf.distribute.get_replica_context()
        if not tf.distribute.has_strategy() or replica_context is None:
            # No strategy, or a cross-replica context: a plain cond.
            ops.cond(self._all_finite(grads, trainable_variables),
                     lambda: apply(grads, trainable_variables), self._count_skipped)
            return
        # Each replica holds its own gradients (Keras all-reduces them inside
        # `apply`), so the replicas must agree on whether to step; and `apply`
        # synchronizes them (`merge_call`), which cannot happen inside a cond in
        # a replica context. So decide, and step, in a cross-replica context
        # (as keras.optimizers.LossScaleOptimizer does).
        def nonfinite(grads: list[Any]) -> Any:
            return tf.cast(tf.logical_not(self._all_finite(grads, trainable_variables)),
                           tf.float32)

        def cross_replica(distribution: Any, grads: list[Any],
                          trainable_variables: list[Any] | None) -> None:
            # Counted over the replicas of every worker, not only this one's:
            # a worker that skips while another steps leaves that one waiting
            # for ever in the gradients' all-reduce.
            per_replica = distribution.extended.call_for_each_replica(nonfinite, args=(grads,))
            finite = tf.equal(
                distribution.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None), 0.0)

            def apply_on_each_replica() -> None:
                distribution.extended.call_for_each_replica(
                    apply, args=(grads, trainable_variables))

            ops.cond(finite, apply_on_each_replica, self._count_skipped)

        replica_context.merge_call(cross_replica, args=(grads, trainable_variables))

    # Moving averages --------------------------------------------------------------

    def _overwrite_model_variables_with_average_value(self, trainable_variables: list[Any]) -> None:
        super()._overwrite_model_variables_with_average_value(trainable_variables)
        if keras.backend.backend() == "jax":
            # Keras assigns each average itself, so on JAX the weight and its
            # average now share one buffer; the next fit() donates it twice
            # and fails, leaving the model without weights. Give each its own.
            for variable in trainable_variables:
                variable.assign(ops.copy(variable.value))

    # Serialization ---------------------------------------------------------------

    def save_own_variables(self, store: Any) -> None:
        # As Keras, by index, but without followed hyperparameters: the
        # layout stays what the options decide, which loading relies on.
        for i, variable in enumerate(self._saved_variables()):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store: Any) -> None:
        # Keras loads by index and skips everything when options add or drop
        # a variable; this matches by role and variable path instead.
        _restore.load_own_variables(self, store)

    def get_config(self) -> dict[str, Any]:
        if _is_plain_callable(self._learning_rate):
            _check_loadable("learning_rate", self._learning_rate)
        config = super().get_config()
        config.update({
            "beta_1": _serialize_hyperparameter("beta_1", self.beta_1),
            "beta_2": _serialize_hyperparameter("beta_2", self.beta_2),
            "weight_decay": _serialize_hyperparameter("weight_decay", self.weight_decay),
            "momentum_dtype": self.momentum_dtype,
            "cautious": self.cautious,
            "exclude_from_weight_decay": list(self._exclusion_patterns),
            "skip_nonfinite": self.skip_nonfinite,
        })
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Lion:
        config = dict(config)
        for key in ("beta_1", "beta_2"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects)
        return super().from_config(config, custom_objects=custom_objects)


#: For each optimizer's step under way: the hyperparameters read as it
#: began, and how many threads are in it.
_STEPS: dict[int, list[Any]] = {}
_STEPS_LOCK = threading.Lock()


def _in_dtype(x: Any, dtype: str) -> Any:
    """`x` (a tensor, an array, a list) in `dtype`: itself if it has it."""
    if hasattr(x, "dtype") and keras.backend.standardize_dtype(x.dtype) == dtype:
        return x
    return ops.cast(x, dtype)


def _float_momentum(momentum_dtype: str) -> str:
    """The dtype of a momentum that is not int8 codes: float32 for a variable
    too small to quantize."""
    return "float32" if momentum_dtype == "int8" else momentum_dtype


def _packed_layout(layout: Any, shape: tuple[int, ...]) -> Any:
    """The sharding of a variable's int8 state: its variable's layout, but
    for a last axis that does not split into whole blocks among its devices
    (then replicated along it: a device holds each block's codes with its
    exponent byte)."""
    from keras.distribution import TensorLayout

    if not isinstance(layout, TensorLayout):
        return None
    axes = list(layout.axes)
    mesh = layout.device_mesh
    names = axes[-1] if isinstance(axes[-1], (tuple, list)) else [axes[-1]]
    devices = math.prod(mesh.shape[mesh.axis_names.index(n)] for n in names if n is not None)
    if shape[-1] % (devices * int8.block_size(shape)):
        axes[-1] = None
    return TensorLayout(axes, mesh)


def _serialize_hyperparameter(name: str, value: Any) -> Any:
    if isinstance(value, keras.Variable):  # followed while training; saved as its value
        return float(keras.ops.convert_to_numpy(value))
    return _check_loadable(name, value) if callable(value) else value


def _is_plain_callable(value: Any) -> bool:
    """A function given as a hyperparameter (not a schedule, not a variable)."""
    return callable(value) and not isinstance(
        value, (keras.optimizers.schedules.LearningRateSchedule, keras.Variable))


def _check_loadable(name: str, function: Any) -> Any:
    """The function's saved form, checked at save time to load again: an R
    function, an unregistered Python one or a lambda (which `load_model()`'s
    safe mode refuses) would save and then fail to load."""
    config = keras.saving.serialize_keras_object(function)
    try:
        loaded = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:
        loaded, problem = None, f" ({error})"
    else:
        problem = ""
    if not callable(loaded):
        # Keras cannot turn a learning-rate function into a number later.
        fix = ("create the optimizer with a number, a `keras.Variable` or a "
               "`LearningRateSchedule` instead" if name == "learning_rate" else
               f"set `{name}` to a number before saving (from R, `optimizer${name} <- 0.9`)")
        raise ValueError(
            f"Argument `{name}` is a function that Keras cannot save so that it loads again"
            f"{problem}: {fix}, or give a Python function registered with "
            f"`@keras.saving.register_keras_serializable()`. An R function cannot be saved. "
            "(If this came from saving a model: Keras opens the model's file before it "
            "saves the optimizer, so a file that was at that path is now empty.) "
            f"Received: {name}={function!r}")
    return config
