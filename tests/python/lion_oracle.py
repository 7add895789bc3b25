"""The oracle of the path-parity matrix (test_path_parity.py), and its tolerances.

Not a test file: plain NumPy, no Keras, so that it can judge every path alike.

The oracle is the paper's three lines, in float64, on the values the
optimizer really saw:

    c      = beta_1 * m + (1 - beta_1) * g
    u      = sign(c)           (cautious: keep = u * g > 0,
                                u = u * keep * size / max(kept, 1))
    theta' = theta - lr * (u + weight_decay * theta)   (weight_decay = 0 if excluded)
    m'     = beta_2 * m + (1 - beta_2) * g

- theta and m are the stored values (as their dtypes hold them, widened to
  float64), g the gradient as given to the optimizer (in its dtype, widened),
  lr the float32 value of the optimizer's learning-rate variable, the betas
  and the weight decay Python floats (float64).
- What is stored: theta' rounded once to the weight dtype; m' rounded once to
  the momentum dtype, after saturating to +-65504 if that is float16 (every
  |m'| > 65504, Inf included, becomes +-65504 with its sign; NaN stays NaN).
- The compute dtype is float64 if the weight or the momentum is float64,
  else float32; eps_c is its machine epsilon, tiny_c its smallest subnormal.

Subnormals on CPU: JAX (XLA) and TensorFlow (with or without XLA) run with
flush-to-zero and denormals-are-zero, so there a subnormal input or result
is 0. For these backends (`flushes_subnormals=True`), and only there:
tiny_c is the smallest *normal* number of the compute dtype; a gradient
subnormal in its dtype, or a momentum subnormal in the momentum
dtype, may be read as 0, so the terms it contributes (|(1 - beta_1) g|,
|beta_1 m| to c; |(1 - beta_2) g|, |beta_2 m| to m') are added to the
ambiguity bound and the momentum's tolerance; a stored value may be off by
tiny_c; and a cautious element whose gradient is subnormal may count as
not agreeing. A coefficient that is itself subnormal (beta_1 = 1e-40 in
float32) is not excused: flushing it changes c = beta_1 * m by far more
than a rounding wherever |beta_1 * m| is normal.

Tolerances (one rounding, no more):

- An element is *ambiguous* where |c| <= 8 eps_c (|beta_1 m| + |(1 - beta_1) g|)
  + 4 tiny_c (c finite): its direction may be -1, 0 or +1, so theta' is
  accepted for any of them. Cautious: an ambiguous element can change the
  kept count and so every element's scale, so any kept count between the
  definite count and definite + ambiguous is accepted (the same count for
  the whole tensor).
- Elsewhere the direction must be the oracle's, and
  |theta_actual - theta'| <= max(1 ulp of the weight dtype at theta',
                                 4 eps_c (|theta| + lr |u| + lr |wd theta|)),
  |m_actual - m'| <= max(1 ulp of the momentum dtype at m',
                         4 eps_c (|beta_2 m| + |(1 - beta_2) g|)).
  Where the expected value is NaN the actual must be NaN; where it is +-Inf,
  the same Inf.

Gradients of another dtype than the weights: the step reads g in its
compute dtype (a wider gradient, float64 on float32 weights, is rounded
to it, and may overflow to Inf there, as the step does).

Keras's semantics around the step (`check_apply`):

- gradient accumulation (Keras's base optimizer): a call whose
  `(iterations + 1) % steps != 0` adds the gradient to its accumulator (in
  the weight dtype) and changes nothing else; the others step with
  `(g + accumulator) / steps` (in the weight dtype, a gradient of another
  dtype cast to it first) and zero the accumulators. `_iterations` counts
  every call.
- clipping (Keras's `_clip_gradients`, on the gradients the step uses,
  after accumulation's average): `clipvalue` clips each element (exact);
  `clipnorm` scales each gradient by `clipnorm / max(norm, clipnorm)`
  (`g * clipnorm` first, Inf where that overflows; a NaN norm makes the
  gradient NaN, an infinite one its finite elements +-0); `global_clipnorm`
  scales all by `clipnorm * min(1 / norm, 1 / clipnorm)`, NaN for all if
  the global norm is not finite. Each operation is rounded to the
  gradients' dtype (overflowing to Inf as it does); a sum of squares may be
  added up in any order, so a scaled element is accepted within 4 eps of
  the gradients' dtype plus n eps of the dtype the sum accumulates in
  (float32 for float16 and bfloat16; n: the elements summed), relative,
  plus float32's eps for float64 (PyTorch's Keras rounds the norm or the
  scale to float32), plus that dtype's smallest normal number where
  subnormals are flushed: this bound
  (`g_error`) widens the ambiguity of c and the momentum's tolerance.
- EMA (`_update_model_variables_moving_average`): after every call's step,
  `average = mu * average + (1 - mu) * weight` in the weight dtype, with
  mu = 0 while `optimizer.iterations` (before the increment) is 0, else
  `ema_momentum` rounded to the weight dtype (JAX, TensorFlow) or to
  float32 (PyTorch's promotion of a 0-d tensor); every `ema_overwrite_frequency` steps
  (and at the end of each `fit()`) the weights are set to their averages.
  Tolerance: 2 ulp of the weight dtype + 2 eps of it (|mu average| +
  |(1 - mu) weight|) (the three operations may be fused and rounded once,
  or rounded each).
- loss_scale_factor: the gradients are divided by it first (in their dtype).
- skip_nonfinite: a call with any non-finite gradient (as the step gets it:
  divided by loss_scale_factor; when accumulated, added to its accumulator
  in the weight dtype, so that a sum of finite gradients may overflow)
  changes nothing (weights, momentum, accumulators, EMA, iterations, all bit
  for bit) and increments `nonfinite_steps`. A LossScaleOptimizer around the
  Lion (`wrapper_skips`) skips a call whose gradients, as it passes them on,
  are not finite before the Lion sees it: the same, but `nonfinite_steps`
  unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import int8_oracle
import ml_dtypes
import numpy as np

NUMPY_DTYPES = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
    "float64": np.float64,
}
FLOAT16_MAX = 65504.0


def finfo(dtype: str) -> Any:
    return ml_dtypes.finfo(NUMPY_DTYPES[dtype])


def rounded(x: Any, dtype: str) -> np.ndarray:
    """`x` rounded once to `dtype` (Inf beyond its range), as float64."""
    with np.errstate(all="ignore"):
        return np.asarray(x, np.float64).astype(NUMPY_DTYPES[dtype]).astype(np.float64)


def saturated_float16(x: np.ndarray) -> np.ndarray:
    """Every |x| > 65504 (Inf too) as +-65504 with its sign; NaN unchanged."""
    with np.errstate(all="ignore"):
        return np.where(np.abs(x) > FLOAT16_MAX, np.sign(x) * FLOAT16_MAX, x)


def ulp(x: Any, dtype: str) -> np.ndarray:
    """The spacing of `dtype` at |x| (the one above a power of two; the
    smallest subnormal at and near zero); Inf for non-finite x."""
    info = finfo(dtype)
    ax = np.abs(np.asarray(x, np.float64))
    with np.errstate(all="ignore"):
        _, exponent = np.frexp(np.where(np.isfinite(ax), ax, 1.0))
        spacing = np.ldexp(1.0, exponent - 1 - int(info.nmant))
    spacing = np.maximum(spacing, float(info.smallest_subnormal))
    return np.where(np.isfinite(ax), spacing, np.inf)


def compute_dtype(weight_dtype: str, momentum_dtype: str) -> str:
    return "float64" if "float64" in (weight_dtype, momentum_dtype) else "float32"


def matches(actual: np.ndarray, expected: np.ndarray, tolerance: np.ndarray) -> np.ndarray:
    """Per element: NaN where NaN is expected, the same Inf where Inf is,
    else a finite value within `tolerance`."""
    actual = np.asarray(actual, np.float64)
    with np.errstate(all="ignore"):
        close = np.isfinite(actual) & (np.abs(actual - expected) <= tolerance)
    return np.where(np.isnan(expected), np.isnan(actual),
                    np.where(np.isinf(expected), actual == expected, close))


@dataclasses.dataclass
class Expected:
    """The accepted values of one stored tensor.

    `scenarios`: alternatives that hold for the whole tensor at once (a
    cautious step's kept count); in each, per element, one or more candidate
    values (axis 0) with their tolerances. An element passes if it matches
    any of its candidates; the tensor passes if one scenario passes all of
    its elements.
    """

    scenarios: list[tuple[np.ndarray, np.ndarray]]
    # For messages: per element, what the oracle saw (c, m, g, ...).
    notes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def exactly(cls, values: np.ndarray) -> Expected:
        values = np.asarray(values, np.float64)
        return cls([(values[None], np.zeros((1, *values.shape)))])

    @classmethod
    def within(cls, values: np.ndarray, tolerance: np.ndarray) -> Expected:
        values = np.asarray(values, np.float64)
        return cls([(values[None], np.broadcast_to(tolerance, values.shape)[None])])

    def mapped(self, function: Any, extra_tolerance: Any = 0.0) -> Expected:
        """Each candidate v as function(v), with tolerance
        extra_tolerance(v) + d function/d v * tol (a linear function)."""
        scenarios = []
        for values, tolerance in self.scenarios:
            new_values, slope = function(values)
            scenarios.append((new_values, np.abs(slope) * tolerance + extra_tolerance(new_values)))
        return Expected(scenarios, self.notes)

    def union(self, other: Expected) -> Expected:
        """Either's candidates, scenario by scenario."""
        return Expected([(np.concatenate([a, c]), np.concatenate([b, d]))
                         for (a, b), (c, d) in zip(self.scenarios, other.scenarios)], self.notes)

    def failures(self, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The elements that fail in the best scenario: (mask, its candidates, tolerances)."""
        actual = np.asarray(actual, np.float64)
        best = None
        for values, tolerance in self.scenarios:
            if values.shape[1:] != actual.shape:
                raise AssertionError(f"shape {actual.shape}, expected {values.shape[1:]}")
            ok = np.zeros(actual.shape, bool)
            for candidate, tol in zip(values, tolerance):
                ok |= matches(actual, candidate, tol)
            if best is None or (~ok).sum() < (~best[0]).sum():
                best = (ok, values, tolerance)
        ok, values, tolerance = best
        return ~ok, values, tolerance


def smallest(dtype: str, flushes_subnormals: bool) -> float:
    """tiny_c: the smallest subnormal of `dtype`, or its smallest normal
    number where subnormals are flushed to zero."""
    info = finfo(dtype)
    return float(info.smallest_normal if flushes_subnormals else info.smallest_subnormal)


def lion_step(theta: np.ndarray, m: np.ndarray, g: np.ndarray, *, learning_rate: float,
              beta_1: float, beta_2: float, weight_decay: float, cautious: bool,
              weight_dtype: str, momentum_dtype: str,
              flushes_subnormals: bool = False, gradient_dtype: str | None = None,
              g_error: Any = 0.0) -> tuple[Expected, Expected]:
    """What one Lion step must store for one variable: (weights, momentum).

    `weight_decay` is 0 for a variable excluded from it. `gradient_dtype`:
    the dtype `g` comes in (the weight dtype if None). `g_error`: how far
    the gradient the step saw may be from `g` (per element; clipping's sums).
    """
    theta, m, g = (np.asarray(x, np.float64) for x in (theta, m, g))
    dtype = compute_dtype(weight_dtype, momentum_dtype)
    eps, tiny = float(finfo(dtype).eps), smallest(dtype, flushes_subnormals)
    # Where subnormals are flushed: the gradient (in the weight dtype) and
    # momentum (in its dtype) that may be read as 0.
    flushed = np.zeros(g.shape, bool)
    lost_g, lost_m = np.zeros(g.shape), np.zeros(m.shape)
    if flushes_subnormals:
        flushed = (g != 0) & (np.abs(g) < float(finfo(dtype).smallest_normal))
        smallest_g = float(finfo(gradient_dtype or weight_dtype).smallest_normal)
        lost_g = np.where((g != 0) & (np.abs(g) < smallest_g), np.abs(g), 0.0)
        lost_m = np.where((m != 0) & (np.abs(m) < float(finfo(momentum_dtype).smallest_normal)),
                          np.abs(m), 0.0)
        flushed |= lost_g > 0
    lr = float(np.float32(learning_rate))
    with np.errstate(all="ignore"):
        from_m, from_g = beta_1 * m, (1 - beta_1) * g
        c = from_m + from_g
        ambiguous = np.isfinite(c) & (np.abs(c) <= 8 * eps * (np.abs(from_m) + np.abs(from_g))
                                      + 4 * tiny + abs(beta_1) * lost_m
                                      + abs(1 - beta_1) * (lost_g + g_error))
        direction = np.sign(c)  # NaN where c is NaN
        decay = weight_decay * theta
        if not cautious:
            # Candidates -1, 0, +1 where ambiguous; the direction elsewhere.
            options = [np.stack([np.where(ambiguous, k, direction) for k in (-1.0, 0.0, 1.0)])]
        else:
            agrees = ~ambiguous & (direction * g > 0)
            kept = agrees & ~flushed
            could_keep = (ambiguous & (g != 0)) | (agrees & flushed)
            options = []
            for count in range(int(kept.sum()), int(kept.sum() + could_keep.sum()) + 1):
                scale = g.size / max(count, 1)
                definite = direction * kept * scale  # NaN stays NaN, as in the paper's maths
                options.append(np.stack([
                    np.where(ambiguous, 0.0, definite),
                    np.where(could_keep, np.sign(g) * scale, np.where(ambiguous, 0.0, definite)),
                ]))
        weights = []
        for u in options:
            expected = rounded(theta - lr * (u + decay), weight_dtype)
            tolerance = np.maximum(ulp(expected, weight_dtype),
                                   4 * eps * (np.abs(theta) + lr * np.abs(u) + lr * np.abs(decay)))
            if flushes_subnormals:
                tolerance = np.maximum(tolerance, tiny)
            weights.append((expected, tolerance))
        new_m = beta_2 * m + (1 - beta_2) * g
        if momentum_dtype == "float16":
            new_m = saturated_float16(new_m)
        expected_m = rounded(new_m, momentum_dtype)
        tolerance_m = np.maximum(ulp(expected_m, momentum_dtype),
                                 4 * eps * (np.abs(beta_2 * m) + np.abs((1 - beta_2) * g))
                                 + abs(1 - beta_2) * g_error)
        if flushes_subnormals:
            tolerance_m = np.maximum(tolerance_m, tiny + abs(beta_2) * lost_m
                                     + abs(1 - beta_2) * lost_g)
    notes = {"theta": theta, "m": m, "g": g, "c": c, "ambiguous": ambiguous}
    return Expected(weights, notes), Expected([(expected_m[None], tolerance_m[None])], notes)


def int8_momentum(momentum: Expected, iteration: int, index: int,
                  flushes_subnormals: bool) -> tuple[Expected, Expected]:
    """The int8 momentum a step must store, as its codes decoded, and its
    block scales: the float32 momentum `momentum` encoded with the rounding
    bits of (iteration, index). Any code between those of the momentum's
    extremes (within its tolerance: where `beta_2 * m` and `(1 - beta_2) * g`
    cancel, many float32 values apart; coded against the momentum's scales)
    is accepted, and either neighbour where the backends' float32 r may
    round either way."""
    (values, tolerance), = momentum.scenarios
    m, tolerance = values[0], np.where(np.isfinite(tolerance[0]), tolerance[0], 0.0)
    bits = int8_oracle.noise(iteration, index, m.shape)
    codes, scales, either = int8_oracle.encode(m.astype(np.float32), bits)
    with np.errstate(all="ignore"):
        extremes = [codes.astype(np.int64)] + [
            int8_oracle.encode((m + sign * tolerance).astype(np.float32), bits,
                               scales)[0].astype(np.int64)
            for sign in (-1, 1)]
    nan = codes == int8_oracle.NAN_CODE
    low = np.where(nan, codes, np.min(extremes, axis=0) - either)
    high = np.where(nan, codes, np.max(extremes, axis=0) + either)
    low, high = (int8_oracle.decode(np.clip(k, -int8_oracle.ONE_CODE, int8_oracle.NAN_CODE),
                                    scales).astype(np.float32).astype(np.float64)
                 for k in (low, high))
    eps = float(np.finfo(np.float32).eps)
    tiny = float(np.finfo(np.float32).smallest_normal) if flushes_subnormals else 0.0
    with np.errstate(invalid="ignore"):
        middle, spread = (low + high) / 2, (high - low) / 2
    slack = spread + 8 * eps * np.maximum(np.abs(low), np.abs(high)) + tiny
    return (Expected.within(np.where(nan, np.nan, middle), np.where(nan, 0.0, slack)),
            Expected.within(scales.astype(np.float64), 8 * eps * scales + tiny))


# Keras's semantics around the step ------------------------------------------------


@dataclasses.dataclass
class State:
    """What a path's optimizer holds after a step (all as float64 arrays),
    and the dtypes it holds them in."""

    weights: list[np.ndarray]
    momentums: list[np.ndarray]
    accumulators: list[np.ndarray] | None = None
    averages: list[np.ndarray] | None = None
    iterations: int = 0  # the raw count (`_iterations`), every call
    nonfinite_steps: int = 0
    weight_dtypes: list[str] = dataclasses.field(default_factory=list)
    momentum_dtypes: list[str] = dataclasses.field(default_factory=list)
    # An int8 momentum: `momentums` holds the codes decoded (by int8_oracle,
    # rounded to float32, as the step reads them), `scales` the block scales
    # (None for a float momentum), `indices` each variable's index in the
    # optimizer (it seeds the rounding).
    scales: list[np.ndarray | None] | None = None
    indices: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Config:
    """The settings the oracle needs (per variable: its path and whether it decays)."""

    learning_rate: float
    beta_1: float
    beta_2: float
    weight_decay: float | None
    decays: list[bool]
    paths: list[str]
    cautious: bool
    weight_dtype: str
    momentum_dtype: str | None
    accumulation_steps: int | None = None
    use_ema: bool = False
    ema_momentum: float = 0.99
    ema_overwrite_frequency: int | None = None
    skip_nonfinite: bool = False
    finalize_ema: bool = False  # fit(): weights set to their averages at its end
    flushes_subnormals: bool = False  # the backend's CPU kernels flush subnormals to zero
    gradient_dtype: str | None = None  # None: the weight dtype
    clip: tuple[str, float] | None = None  # ("clipnorm" | "global_clipnorm" | "clipvalue", value)
    wrapper_skips: bool = False  # a LossScaleOptimizer skips non-finite steps before the Lion
    loss_scale_factor: float | None = None  # Keras divides the gradients by it first

    def stored_momentum_dtype(self, shape: tuple[int, ...]) -> str:
        if self.momentum_dtype == "int8":
            return "int8" if int8_oracle.is_quantized(shape) else "float32"
        return self.momentum_dtype or self.weight_dtype


def identical(a: np.ndarray, b: np.ndarray) -> bool:
    """The same values, as float64: -0 differs from +0, and NaN equals NaN
    (whatever its sign and payload, which XLA does not keep)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(
        ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))))


def _all_finite(arrays: list[np.ndarray]) -> bool:
    return all(np.isfinite(x).all() for x in arrays)


def _in_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(x, np.float64).astype(NUMPY_DTYPES[dtype])


def describe(name: str, actual: np.ndarray, expected: Expected, limit: int = 4) -> str | None:
    """None if `actual` passes, else a message naming the worst elements."""
    bad, values, tolerance = expected.failures(actual)
    if not bad.any():
        return None
    actual = np.asarray(actual, np.float64)
    lines = [f"{name}: {int(bad.sum())} of {bad.size} elements differ"]
    for index in list(zip(*np.nonzero(bad)))[:limit]:
        candidates = ", ".join(f"{v:.9g}" for v in np.unique(values[(slice(None), *index)]))
        tol = float(np.max(tolerance[(slice(None), *index)]))
        seen = " ".join(f"{k}={float(v[index]):.6g}" for k, v in expected.notes.items()
                        if v.shape == actual.shape)
        lines.append(f"  [{','.join(map(str, index))}] actual {actual[index]:.9g}, "
                     f"expected {candidates} (tol {tol:.3g}); {seen}")
    return "\n".join(lines)


def clipped(grads: list[np.ndarray], kind: str, value: float, dtype: str,
            flushes_subnormals: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Keras's clipping of `grads` (values of `dtype`), each operation
    rounded to `dtype`, and a bound on each element's error (see above)."""
    eps = float(finfo(dtype).eps)
    floor = float(finfo(dtype).smallest_normal) if flushes_subnormals else 0.0
    # Sums of float16 and bfloat16 squares accumulate in float32 (every backend).
    sum_eps = float(finfo("float64" if dtype == "float64" else "float32").eps)
    # PyTorch's Keras rounds a float64 norm or scale to float32 (in `maximum`
    # or `minimum` with a number).
    number_eps = float(finfo("float32").eps) if dtype == "float64" else 0.0

    def bound(result: np.ndarray, count: int) -> np.ndarray:
        return np.abs(result) * (4 * eps + count * sum_eps + number_eps) + floor

    def squares(g: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            return float(rounded(np.sum(rounded(g * g, dtype)), dtype))

    with np.errstate(all="ignore"):
        if kind == "clipvalue":
            return ([np.where(np.isnan(g), g, np.clip(g, -value, value)) for g in grads],
                    [np.zeros(g.shape) for g in grads])
        if kind == "clipnorm":
            result, errors = [], []
            for g in grads:
                norm = np.sqrt(squares(g))
                scaled = rounded(rounded(g * value, dtype) / max(norm, value), dtype)
                if np.isnan(norm):
                    scaled = np.full(g.shape, np.nan)
                result.append(scaled)
                errors.append(bound(scaled, g.size))
            return result, errors
        assert kind == "global_clipnorm", kind
        norm = np.sqrt(float(rounded(sum(squares(g) for g in grads), dtype)))
        count = sum(g.size for g in grads)
        scale = float(rounded(value * min(1 / norm, 1 / value), dtype)) if np.isfinite(
            norm) else np.nan
        result = [rounded(g * scale, dtype) for g in grads]
        return result, [bound(r, count) for r in result]


def check_apply(before: State, after: State, grads: list[np.ndarray], config: Config) -> list[str]:
    """Everything wrong in `after`, the state after one `optimizer.apply(grads)`
    from `before`; an empty list if it is right."""
    problems = []
    wdtype = config.weight_dtype
    mdtypes = [config.stored_momentum_dtype(w.shape) for w in before.weights]
    for i, path in enumerate(config.paths):
        if after.weight_dtypes and after.weight_dtypes[i] != wdtype:
            problems.append(f"{path}: weight stored as {after.weight_dtypes[i]}, not {wdtype}")
        if after.momentum_dtypes and after.momentum_dtypes[i] != mdtypes[i]:
            problems.append(
                f"{path}: momentum stored as {after.momentum_dtypes[i]}, not {mdtypes[i]}")

    def unchanged(kind: str) -> None:
        for i, path in enumerate(config.paths):
            old, new = getattr(before, kind), getattr(after, kind)
            if old is not None and old[i] is not None and not identical(old[i], new[i]):
                problems.append(f"{path}: {kind} changed by a step that must change nothing")

    finalized = config.use_ema and config.finalize_ema
    steps = config.accumulation_steps
    gradient_dtype = config.gradient_dtype or wdtype
    if config.loss_scale_factor is not None:
        grads = [rounded(g / config.loss_scale_factor, gradient_dtype) for g in grads]
    sums = None
    if steps:
        with np.errstate(all="ignore"):
            sums = [_in_dtype(g, wdtype) + _in_dtype(a, wdtype)
                    for g, a in zip(grads, before.accumulators)]
    # A LossScaleOptimizer judges the gradients as it passes them on; the Lion,
    # as the step gets them: when accumulated, summed in the weight dtype.
    wrapper_skipped = config.wrapper_skips and not _all_finite(grads)
    judged = grads if sums is None else sums
    if wrapper_skipped or (config.skip_nonfinite and not _all_finite(judged)):
        for kind in ("momentums", "scales", "accumulators", "averages",
                     *(() if finalized else ("weights",))):
            unchanged(kind)
        for i, path in enumerate(config.paths):
            if finalized and not identical(after.weights[i], after.averages[i]):
                problems.append(f"{path}: weights not set to their EMA average by fit()")
        if after.iterations != before.iterations:
            problems.append(
                f"iterations {before.iterations} -> {after.iterations} in a skipped step")
        counted = 0 if wrapper_skipped else 1  # the Lion never saw them
        if after.nonfinite_steps != before.nonfinite_steps + counted:
            problems.append(f"nonfinite_steps {before.nonfinite_steps} -> "
                            f"{after.nonfinite_steps} in a skipped step")
        return problems
    if after.iterations != before.iterations + 1:
        problems.append(f"iterations {before.iterations} -> {after.iterations} (one call)")
    if after.nonfinite_steps != before.nonfinite_steps:
        problems.append(f"nonfinite_steps {before.nonfinite_steps} -> {after.nonfinite_steps} "
                        "in a finite step")

    stepping = not steps or (before.iterations + 1) % steps == 0
    used, used_dtype = grads, gradient_dtype
    if sums is not None:
        used_dtype = wdtype
        if stepping:
            with np.errstate(all="ignore"):
                used = [np.asarray(s / steps, np.float64) for s in sums]
        for i, path in enumerate(config.paths):
            want = np.asarray(sums[i], np.float64)
            if stepping:
                want = np.zeros_like(want)
            tolerance = ulp(want, wdtype)
            if config.flushes_subnormals:
                tolerance = np.maximum(tolerance, smallest(wdtype, True))
            message = describe(f"{path}: accumulator", after.accumulators[i],
                               Expected.within(want, tolerance))
            if message:
                problems.append(message)

    errors = [0.0] * len(used)
    if stepping and config.clip:
        used, errors = clipped(used, *config.clip, used_dtype, config.flushes_subnormals)
    new_weights = []
    for i, path in enumerate(config.paths):
        quantized = mdtypes[i] == "int8"
        if stepping:
            # An int8 momentum: computed and rounded to float32, then encoded.
            step_dtype = compute_dtype(wdtype, "float32" if quantized else mdtypes[i])
            weights, momentum = lion_step(
                before.weights[i], before.momentums[i], rounded(used[i], step_dtype),
                learning_rate=config.learning_rate, beta_1=config.beta_1, beta_2=config.beta_2,
                weight_decay=(config.weight_decay or 0.0) if config.decays[i] else 0.0,
                cautious=config.cautious, weight_dtype=wdtype,
                momentum_dtype="float32" if quantized else mdtypes[i],
                flushes_subnormals=config.flushes_subnormals, gradient_dtype=used_dtype,
                g_error=errors[i])
            if quantized:
                # Seeded by `iterations`, which Keras counts in applied steps
                # when it accumulates gradients.
                momentum, scales = int8_momentum(
                    momentum, before.iterations // steps if steps else before.iterations,
                    after.indices[i], config.flushes_subnormals)
                message = describe(f"{path}: scales", after.scales[i], scales)
                if message:
                    problems.append(message)
        else:
            weights, momentum = (Expected.exactly(before.weights[i]),
                                 Expected.exactly(before.momentums[i]))
        new_weights.append(weights)
        message = describe(f"{path}: momentum", after.momentums[i], momentum)
        if message:
            problems.append(message)
    if not stepping:
        unchanged("scales")

    overwritten = finalized
    if config.use_ema:
        iterations = before.iterations // steps if steps else before.iterations
        frequency = config.ema_overwrite_frequency
        overwritten = overwritten or bool(frequency and (iterations + 1) % frequency == 0)
        # mu as Keras computes it: `cast(iterations != 0, dtype) * ema_momentum`,
        # which JAX and TensorFlow round to the weight dtype and PyTorch keeps
        # in float32 (a 0-d float32 tensor): either is accepted.
        mus = [0.0] if iterations == 0 else sorted(
            {float(rounded(config.ema_momentum, wdtype)), float(np.float32(config.ema_momentum))})
        eps = float(finfo(wdtype).eps)
        for i, path in enumerate(config.paths):
            # The average of the new weights: those seen where they are not
            # overwritten, else those the oracle expects.
            source = new_weights[i] if overwritten else Expected.exactly(after.weights[i])
            expected = None
            for mu in mus:
                one_minus = float(rounded(1 - mu, wdtype)) if mu == float(
                    rounded(mu, wdtype)) else float(np.float32(1 - np.float32(mu)))

                def ema(values: np.ndarray, mu: float = mu, one_minus: float = one_minus,
                        average: np.ndarray = before.averages[i]) -> tuple[Any, float]:
                    with np.errstate(all="ignore"):
                        return rounded(mu * average + one_minus * values, wdtype), one_minus

                def ema_tolerance(values: np.ndarray, mu: float = mu, one_minus: float = one_minus,
                                  average: np.ndarray = before.averages[i]) -> np.ndarray:
                    with np.errstate(all="ignore"):
                        return 2 * ulp(values, wdtype) + 2 * eps * (
                            np.abs(mu * average) + np.abs(one_minus * values)) + (
                            smallest(wdtype, True) if config.flushes_subnormals else 0.0)

                mapped = source.mapped(ema, ema_tolerance)
                expected = mapped if expected is None else expected.union(mapped)
            message = describe(f"{path}: EMA average", after.averages[i], expected)
            if message:
                problems.append(message)
    for i, path in enumerate(config.paths):
        if overwritten:
            if not identical(after.weights[i], after.averages[i]):
                problems.append(f"{path}: weights not overwritten by their EMA average")
            continue
        message = describe(f"{path}: weights", after.weights[i], new_weights[i])
        if message:
            problems.append(message)
    return problems
