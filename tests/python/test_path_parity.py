"""The path-parity matrix (issue 13, part 1): every way of running Lion, on
every backend, against one oracle.

Modelled on PyTorch's optimizer tests (optim_db / OptimizerInfo), which run
every implementation of an optimizer against the others over dtypes and
settings. Here one table of settings (CASES) is crossed with one table of
paths (RUNNERS); every (path, case) is a test, judged step by step by
`lion_oracle` (the paper's three lines in float64 NumPy, on the same inputs;
its docstring states the tolerances).

Paths: `plain` (`update_step`, fast path off), `fast` (the backend's fast
path, eager), `stateless` (`stateless_apply`, JAX and torch), `jit`
(`jax.jit(stateless_apply)` with donated buffers), `no_kernel` (the step
without the C kernel that the fast paths take, in the backend's own
operations: an int8 momentum's on PyTorch's and TensorFlow's `fast` and
JAX's `jit`, and float32 weights' with a float32 or bfloat16 momentum on
PyTorch's `fast`), `tf_function` and
`tf_xla` (`tf.function` of `optimizer.apply`, without and with
jit_compile), `fit` (`model.fit()` of a model whose gradient is a chosen
tensor), `mirrored` (`tf.distribute.MirroredStrategy` over 2 logical CPUs,
in a fresh process) and `compile` (`torch.compile` of the step). A path the
backend lacks is one skipped test.

Settings: weight dtype (float16, bfloat16, float32, float64) x
momentum_dtype (None, bfloat16, float32, float64; int8 in the core cases,
judged against `int8_oracle`, the same quantizer in NumPy, with dense/kernel
large enough for int8 codes), cautious, weight decay
with exclusion (anchored patterns `"bias$"`, `"^head/kernel$"`),
skip_nonfinite, EMA (with and without overwriting), gradient accumulation,
sparse gradients (TF `IndexedSlices`, JAX BCOO; given dense where a path
has none), a variable larger than the fast paths' block and XLA
thresholds, gradients of another dtype than the weights (not on `fit`,
whose gradients have the weights' dtype), clipping (`clipvalue`,
`clipnorm`, `global_clipnorm`), and hyperparameters changed between steps
as users change them (`varying`: beta_1, beta_2 and weight_decay given as
`keras.Variable`s and assigned before each step, the learning rate a
schedule or a variable assigned too; on `stateless` and `jit`, the state
passed in holds the new values, and `fit` assigns them in a callback), and
Keras's `LossScaleOptimizer` around the Lion (`loss_scale`: the oracle gets
the gradients divided by the scale, and expects the non-finite steps
skipped before the Lion and the scale halved; not on `mirrored`, nor on
JAX's `plain` and `fast`, where Keras's wrapper cannot `apply`).
CORE_CASES run every time: each edge value of beta_1 and of beta_2 (alone;
on torch.compile, slow to compile, in six pairs that hold them all, with
cases of narrower and cut momentum blocks, clipping, varying
hyperparameters, another gradient dtype and loss scaling), and each
dtype and feature. SAMPLED cases are drawn from the
full cross product with a fixed seed (SAMPLED_COUNT per backend), and
MIXED cases from a cross product that adds int8 momentum, gradient dtypes,
clipping, tame gradients, varying hyperparameters and loss scaling
(MIXED_COUNT per backend). Every case's
gradients hold the edge values 0, -0, subnormals, +-3e38, the dtype's
largest (`tame` cases: only 0, -0 and subnormals, so that a global norm
stays finite), among ordinary values, and steps 1 and 3 add +-Inf and NaN;
`overflowing_sum` cases add, at calls 0 and 2, one finite gradient whose
sum in the accumulator overflows the weights' dtype.

JAX has float64 only with `jax_enable_x64`, and MirroredStrategy needs its
logical devices before TensorFlow starts: those cases run in a fresh
process (path_parity_worker.py), started when the module starts, and each
test checks its own case's results. Without x64, `momentum_dtype="float64"`
must be refused when the optimizer is created.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import int8_oracle
import keras
import lion_oracle as oracle
import numpy as np
import pytest
from keras import ops

from keraslion import Lion, int8

BACKEND = keras.backend.backend()
HERE = Path(__file__).resolve().parent
# Exact in the optimizer's float32 learning-rate variable.
LEARNING_RATE = 2.0**-7
STEPS = 4
EMA_MOMENTUM = 0.9
# XLA (JAX, TensorFlow) flushes subnormals to zero on CPU; PyTorch does not.
FLUSHES_SUBNORMALS = BACKEND in ("jax", "tensorflow")
# How many sampled cases each backend runs (a prefix of one fixed sequence).
SAMPLED_COUNT = {"jax": 32, "tensorflow": 12, "torch": 60}
MIXED_COUNT = {"jax": 16, "tensorflow": 12, "torch": 24}
WORKER_TIMEOUT = 540

BETA_1_EDGES = (1e-40, 1e-7, 0.5, 0.9, 1 - 1e-7, 1.0)
BETA_2_EDGES = (0.0, 1e-50, 1e-7, 0.5, 0.99, 1 - 1e-7)
ANCHORED = ("bias$", "^head/kernel$")
INITIAL_SCALE = 2.0**15  # a LossScaleOptimizer's
# Each call's (beta_1, beta_2, weight_decay, learning_rate) in `varying`
# cases, exact in float32 (the variables' dtype). A schedule's learning rate
# is also the call's: Keras evaluates it at the count of calls, with
# gradient accumulation too.
VARYING = [(0.875, 0.984375, 0.125, 2.0**-7), (0.5, 0.5, 0.25, 2.0**-6),
           (1.0, 0.0, 0.0, 2.0**-8), (0.9375, 0.99609375, 0.125, 2.0**-5)]


# The settings table -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the settings table: a Lion configuration and its inputs."""

    id: str
    weight_dtype: str = "float32"
    momentum_dtype: str | None = None
    beta_1: float = 0.9
    beta_2: float = 0.99
    weight_decay: float | None = 0.1
    exclude: tuple[str, ...] | None = ANCHORED
    cautious: bool = False
    skip_nonfinite: bool = False
    use_ema: bool = False
    ema_overwrite_frequency: int | None = None
    accumulation: int | None = None
    sparse: bool = False
    large: bool = False
    compile: bool = False  # for torch.compile only (slow to compile: the edge cases)
    gradient_dtype: str | None = None  # None: the weight dtype
    clip: tuple[str, float] | None = None  # (Keras's clipping argument, its value)
    tame: bool = False  # no finite edge gradients but 0, -0 and subnormals
    varying: str | None = None  # "schedule" or "variables": hyperparameters set at each call
    loss_scale: bool = False  # stepped through Keras's LossScaleOptimizer
    loss_scale_factor: float | None = None  # Keras's own option (gradients divided by it)
    overflowing_sum: bool = False  # calls 0 and 2 accumulate finite gradients beyond range
    seed: int = 0

    @property
    def uses_float64(self) -> bool:
        return "float64" in (self.weight_dtype, self.momentum_dtype, self.gradient_dtype)

    @property
    def grads_dtype(self) -> str:
        return self.gradient_dtype or self.weight_dtype

    def lion_kwargs(self) -> dict[str, Any]:
        kwargs = dict(
            learning_rate=LEARNING_RATE, beta_1=self.beta_1, beta_2=self.beta_2,
            weight_decay=self.weight_decay, momentum_dtype=self.momentum_dtype,
            cautious=self.cautious, skip_nonfinite=self.skip_nonfinite,
            exclude_from_weight_decay=list(self.exclude) if self.exclude else None)
        if self.use_ema:
            kwargs.update(use_ema=True, ema_momentum=EMA_MOMENTUM,
                          ema_overwrite_frequency=self.ema_overwrite_frequency)
        if self.accumulation:
            kwargs["gradient_accumulation_steps"] = self.accumulation
        if self.clip:
            kwargs[self.clip[0]] = self.clip[1]
        if self.loss_scale_factor:
            kwargs["loss_scale_factor"] = self.loss_scale_factor
        return kwargs


def _core_cases() -> list[Case]:
    cases = []
    for beta_1 in BETA_1_EDGES:
        cases.append(Case(f"beta_1={beta_1:.8g}", beta_1=beta_1))
    for beta_2 in BETA_2_EDGES:
        if beta_2 != Case.beta_2:
            cases.append(Case(f"beta_2={beta_2:.8g}", beta_2=beta_2))
    # Every edge value of each beta, paired: for torch.compile only.
    for beta_1, beta_2 in zip(BETA_1_EDGES, BETA_2_EDGES):
        cases.append(Case(f"betas={beta_1:.8g},{beta_2:.8g}", beta_1=beta_1, beta_2=beta_2,
                          compile=True))
    for weight, momentum in [("float16", None), ("bfloat16", None), ("float64", None),
                             ("float32", "bfloat16"), ("float32", "float64"),
                             ("float16", "float32"), ("bfloat16", "float16"),
                             ("float64", "bfloat16"), ("bfloat16", "float64"),
                             ("float16", "bfloat16")]:
        cases.append(Case(f"{weight}-momentum_{momentum}", weight_dtype=weight,
                          momentum_dtype=momentum))
    features = {
        "cautious": dict(cautious=True),
        "cautious-float16": dict(cautious=True, weight_dtype="float16"),
        "cautious-bfloat16_momentum": dict(cautious=True, momentum_dtype="bfloat16"),
        "no_weight_decay": dict(weight_decay=None, exclude=None),
        "decay_everything": dict(weight_decay=0.5, exclude=None),
        "exclude_unanchored": dict(weight_decay=0.5, exclude=("dense",)),
        "skip_nonfinite": dict(skip_nonfinite=True),
        "skip_nonfinite-cautious-float16": dict(skip_nonfinite=True, cautious=True,
                                                weight_dtype="float16"),
        "ema": dict(use_ema=True),
        "ema-overwrite": dict(use_ema=True, ema_overwrite_frequency=2),
        "accumulation": dict(accumulation=2),
        "accumulation-ema-skip_nonfinite": dict(accumulation=2, use_ema=True,
                                                skip_nonfinite=True),
        "accumulation-bfloat16": dict(accumulation=2, weight_dtype="bfloat16"),
        # Finite gradients whose sum overflows: skipped, and stepped without the check.
        "accumulation-overflowing_sum-skip_nonfinite": dict(
            accumulation=2, overflowing_sum=True, skip_nonfinite=True),
        "accumulation-overflowing_sum-float16-skip_nonfinite-int8": dict(
            accumulation=2, overflowing_sum=True, skip_nonfinite=True, weight_dtype="float16",
            momentum_dtype="int8"),
        "accumulation-overflowing_sum-bfloat16": dict(
            accumulation=2, overflowing_sum=True, weight_dtype="bfloat16"),
        "sparse": dict(sparse=True),
        "sparse-cautious-bfloat16_momentum": dict(sparse=True, cautious=True,
                                                  momentum_dtype="bfloat16"),
        "large": dict(large=True),
        "large-cautious": dict(large=True, cautious=True),
        "large-bfloat16_momentum": dict(large=True, momentum_dtype="bfloat16"),
        # One-byte momentum (int8 codes and block scales), against the oracle
        # of the same quantizer (int8_oracle).
        "int8": dict(momentum_dtype="int8"),
        "int8-large-beta_1>beta_2": dict(momentum_dtype="int8", large=True, beta_1=0.99,
                                         beta_2=0.9),
        "int8-bfloat16": dict(momentum_dtype="int8", weight_dtype="bfloat16"),
        "int8-float16-cautious": dict(momentum_dtype="int8", weight_dtype="float16",
                                      cautious=True),
        "int8-float64": dict(momentum_dtype="int8", weight_dtype="float64"),
        "int8-skip_nonfinite-ema": dict(momentum_dtype="int8", skip_nonfinite=True,
                                        use_ema=True),
        "int8-accumulation-sparse": dict(momentum_dtype="int8", accumulation=2, sparse=True),
    }
    cases += [Case(name, **settings) for name, settings in features.items()]
    # Gradients of another dtype than the weights (a NumPy float64 gradient
    # among them), accumulated too.
    for weight, gradient, settings in [
            ("float32", "float64", {}), ("float32", "bfloat16", {}),
            ("float16", "float32", {}), ("float64", "float32", {}),
            ("float32", "bfloat16", dict(momentum_dtype="bfloat16")),
            ("bfloat16", "float32", dict(momentum_dtype="int8")),
            ("float32", "float16", dict(accumulation=2)),
            ("float16", "float32", dict(accumulation=2, skip_nonfinite=True)),
            ("bfloat16", "float16", dict(accumulation=2))]:
        name = "-".join([f"{weight}-grad_{gradient}", *settings])
        cases.append(Case(name, weight_dtype=weight, gradient_dtype=gradient, **settings))
    # Clipping: by value, by each gradient's norm (Inf where the gradient
    # holds +-3e38 or Inf, so finite elements become +-0), by the global norm
    # (finite only with tame gradients, and steps 1 and 3 skipped).
    clipping = {
        "clipvalue": dict(clip=("clipvalue", 0.5)),
        "clipvalue-accumulation-float16": dict(clip=("clipvalue", 0.5), accumulation=2,
                                               weight_dtype="float16"),
        "clipnorm": dict(clip=("clipnorm", 0.5)),
        "clipnorm-overflows-large-int8": dict(clip=("clipnorm", 4.0), large=True,
                                              momentum_dtype="int8"),
        "clipnorm-tame-cautious-bfloat16_momentum": dict(
            clip=("clipnorm", 1.0), tame=True, cautious=True, momentum_dtype="bfloat16"),
        "global_clipnorm-tame-skip_nonfinite": dict(clip=("global_clipnorm", 1.0), tame=True,
                                                    skip_nonfinite=True),
        "global_clipnorm-tame-skip_nonfinite-large-float64": dict(
            clip=("global_clipnorm", 4.0), tame=True, skip_nonfinite=True, large=True,
            weight_dtype="float64"),
        "global_clipnorm": dict(clip=("global_clipnorm", 1.0)),
    }
    cases += [Case(name, **settings) for name, settings in clipping.items()]
    # Hyperparameters set before each call.
    varying = {
        "varying_schedule": dict(varying="schedule"),
        "varying_variables": dict(varying="variables"),
        "varying_schedule-accumulation-int8": dict(varying="schedule", accumulation=2,
                                                   momentum_dtype="int8"),
        "varying_variables-cautious-bfloat16_momentum-large": dict(
            varying="variables", cautious=True, momentum_dtype="bfloat16", large=True),
        "varying_variables-float16-skip_nonfinite": dict(varying="variables",
                                                         weight_dtype="float16",
                                                         skip_nonfinite=True),
    }
    cases += [Case(name, **settings) for name, settings in varying.items()]
    # Keras's LossScaleOptimizer around the Lion: it divides the gradients by
    # its scale, and skips (and halves the scale at) steps 1 and 3.
    loss_scale = {
        "loss_scale": {},
        "loss_scale-tame": dict(tame=True),
        "loss_scale-float16-accumulation": dict(weight_dtype="float16", accumulation=2),
        "loss_scale-int8-ema-cautious-skip_nonfinite": dict(momentum_dtype="int8", use_ema=True,
                                                            cautious=True, skip_nonfinite=True),
        "loss_scale-bfloat16-clipnorm-varying_schedule": dict(
            weight_dtype="bfloat16", clip=("clipnorm", 0.5), varying="schedule"),
        "loss_scale-large-float64": dict(large=True, weight_dtype="float64"),
    }
    cases += [Case(name, loss_scale=True, **settings) for name, settings in loss_scale.items()]
    # Keras's `loss_scale_factor`: gradients divided by it before anything else
    # (fit() multiplies the loss by it, which XLA may fold away: tame gradients
    # do not overflow there).
    cases += [Case("loss_scale_factor-tame", loss_scale_factor=2.0**10, tame=True),
              # TensorFlow's IndexedSlices cannot be divided by it.
              Case("loss_scale_factor-sparse-tame", loss_scale_factor=2.0**-3, sparse=True,
                   tame=True),
              # Scaled gradients beyond float16's range, within it once divided.
              Case("loss_scale_factor-float16-grad_float32-accumulation",
                   loss_scale_factor=2.0**10, weight_dtype="float16", gradient_dtype="float32",
                   accumulation=2),
              Case("loss_scale_factor-float16-grad_float32-accumulation-skip_nonfinite",
                   loss_scale_factor=2.0**-4, weight_dtype="float16", gradient_dtype="float32",
                   accumulation=2, skip_nonfinite=True)]
    # torch.compile of blocks with a momentum narrower than the weights, one cut into blocks.
    cases += [Case("compile-bfloat16_momentum", momentum_dtype="bfloat16", compile=True),
              # Inductor computes float16 in float32 without its roundings (of a
              # sum, a cast, a division): the check must run eagerly.
              Case("compile-accumulation-overflowing_sum-float16-skip_nonfinite",
                   accumulation=2, overflowing_sum=True, skip_nonfinite=True,
                   weight_dtype="float16", compile=True),
              Case("compile-accumulation-overflowing_sum-float16-grad_float32-skip_nonfinite",
                   accumulation=2, overflowing_sum=True, skip_nonfinite=True,
                   weight_dtype="float16", gradient_dtype="float32", compile=True),
              Case("compile-loss_scale_factor-float16-skip_nonfinite", loss_scale_factor=2.0**-4,
                   skip_nonfinite=True, weight_dtype="float16", compile=True),
              Case("compile-float64-momentum_float32", weight_dtype="float64",
                   momentum_dtype="float32", compile=True),
              Case("compile-large-bfloat16_momentum", large=True, momentum_dtype="bfloat16",
                   compile=True),
              # ... and of hyperparameters set between calls, clipping, another gradient dtype.
              Case("compile-varying_variables-clipnorm", varying="variables",
                   clip=("clipnorm", 0.5), compile=True),
              Case("compile-varying_schedule-int8-grad_bfloat16", varying="schedule",
                   momentum_dtype="int8", gradient_dtype="bfloat16", compile=True),
              Case("compile-loss_scale-bfloat16_momentum", loss_scale=True,
                   momentum_dtype="bfloat16", compile=True)]
    return [dataclasses.replace(case, seed=i) for i, case in enumerate(cases)]


def _sampled_cases(count: int, seed: int = 13) -> list[Case]:
    """`count` draws from the full cross product, the same on every run."""
    rng = np.random.default_rng(seed)
    decay = [(None, None), (0.1, None), (0.1, ANCHORED), (0.5, ("dense",))]
    ema = [(False, None), (False, None), (True, None), (True, 2)]
    cases = []
    for i in range(count):
        weight_decay, exclude = decay[rng.integers(len(decay))]
        use_ema, frequency = ema[rng.integers(len(ema))]
        case = Case(
            "",
            weight_dtype=str(rng.choice(["float16", "bfloat16", "float32", "float64"])),
            momentum_dtype=[None, "bfloat16", "float32", "float64"][rng.integers(4)],
            beta_1=float(rng.choice([*BETA_1_EDGES, 0.95])),
            beta_2=float(rng.choice([*BETA_2_EDGES, 0.98])),
            weight_decay=weight_decay, exclude=exclude,
            cautious=bool(rng.random() < 0.4),
            skip_nonfinite=bool(rng.random() < 0.3),
            use_ema=use_ema, ema_overwrite_frequency=frequency,
            accumulation=2 if rng.random() < 0.25 else None,
            sparse=bool(rng.random() < 0.25),
            large=bool(rng.random() < 0.08),
            seed=1000 + i)
        cases.append(dataclasses.replace(case, id=f"sampled{i:02d}-{label(case)}"))
    return cases


def label(case: Case) -> str:
    """A sampled case's settings, for its id."""
    settings = [case.weight_dtype, f"m_{case.momentum_dtype}"]
    if not case.varying:  # (varying cases set their own betas)
        settings += [f"b1={case.beta_1:.8g}", f"b2={case.beta_2:.8g}"]
    clip = case.clip and f"{case.clip[0]}={case.clip[1]:g}"
    settings += [name for name, on in [
        ("wd" if not case.exclude else "wd_excl", case.weight_decay),
        ("cautious", case.cautious), ("skip", case.skip_nonfinite), ("ema", case.use_ema),
        ("overwrite", case.ema_overwrite_frequency), ("accum", case.accumulation),
        ("sparse", case.sparse), ("large", case.large),
        (f"grad_{case.gradient_dtype}", case.gradient_dtype), (clip, clip),
        ("tame", case.tame), (f"varying_{case.varying}", case.varying),
        ("loss_scale", case.loss_scale)] if on]
    return "-".join(settings)


def _mixed_cases(count: int, seed: int = 29) -> list[Case]:
    """`count` sampled cases, each with some of the later features drawn
    too (each present about as often as absent), the same on every run."""
    rng = np.random.default_rng(seed)
    dtypes = ["float16", "bfloat16", "float32", "float64"]
    cases = []
    for i, sampled in enumerate(_sampled_cases(count, seed)):
        clip = [None, ("clipvalue", 0.5), ("clipnorm", 0.5), ("clipnorm", 4.0),
                ("global_clipnorm", 1.0)][rng.integers(5)]
        case = dataclasses.replace(
            sampled,
            momentum_dtype="int8" if rng.random() < 0.25 else sampled.momentum_dtype,
            gradient_dtype=str(rng.choice(dtypes)) if rng.random() < 0.4 else None,
            clip=clip, tame=bool(rng.random() < 0.3),
            varying=[None, None, "schedule", "variables"][rng.integers(4)],
            loss_scale=bool(rng.random() < 0.3), seed=2000 + i)
        cases.append(dataclasses.replace(case, id=f"mixed{i:02d}-{label(case)}"))
    return cases


CORE_CASES = _core_cases()
SAMPLED = _sampled_cases(max(SAMPLED_COUNT.values()))
MIXED = _mixed_cases(max(MIXED_COUNT.values()))
CASES = (CORE_CASES + SAMPLED[:SAMPLED_COUNT.get(BACKEND, 0)]
         + MIXED[:MIXED_COUNT.get(BACKEND, 0)])
CASES_BY_ID = {case.id: case for case in CORE_CASES + SAMPLED + MIXED}


# Variables and gradients ------------------------------------------------------

# (scope, name, shape): paths "head/kernel", ... . The large one is bigger
# than a torch block (2**17 elements) and TensorFlow's XLA threshold.
VARIABLES = [("head", "kernel", (4, 8)), ("head", "bias", (8,)),
             ("dense", "kernel", (4, 8)), ("dense", "bias", (8,))]
LARGE = ("embed", "embeddings", (257, 512))
SPARSE_VARIABLE = 2  # dense/kernel: gradient rows SPARSE_ROWS only
INT8_KERNEL = (4, 300)  # dense/kernel's shape with an int8 momentum
SPARSE_ROWS = np.array([0, 2])


def variable_specs(case: Case) -> list[tuple[str, str, tuple[int, ...]]]:
    specs = VARIABLES + ([LARGE] if case.large else [])
    if case.momentum_dtype == "int8":  # dense/kernel with int8 codes (rows of 256 + 44)
        specs[2] = (*specs[2][:2], INT8_KERNEL)
    return specs


def decays(case: Case) -> list[bool]:
    """Which variables get weight decay: those whose path and name match no pattern."""
    return [not any(re.search(p, s) for p in case.exclude or () for s in (f"{scope}/{name}", name))
            for scope, name, _ in variable_specs(case)]


def edge_values(case: Case) -> tuple[list[float], list[float]]:
    """(finite, non-finite) edge gradients, as the gradients' dtype holds them."""
    info = oracle.finfo(case.grads_dtype)
    candidates = [0.0, -0.0, float(info.smallest_subnormal), -float(info.smallest_subnormal),
                  2.0**-149, -(2.0**-149), 3e38, -3e38, float(info.max), -float(info.max)]
    if case.accumulation or case.tame:
        # Sums of two: exact in the dtype whether rounded once or twice.
        candidates = candidates[:6]
        weights_max = float(oracle.finfo(case.weight_dtype).max)
        if case.accumulation and not case.tame and float(info.max) > 2 * weights_max:
            # A wider gradient beyond the weights' range: Inf once accumulated.
            candidates += [2 * weights_max, -2 * weights_max]
    values = [float(oracle.rounded(v, case.grads_dtype)) for v in candidates]
    values = [v for v in values if v != 0] + [0.0, -0.0]  # keep one +0 and one -0
    finite = [v for v in values if np.isfinite(v)]
    nonfinite = [v for v in values if not np.isfinite(v)] + [np.inf, -np.inf, np.nan]
    return finite, nonfinite


def overflowing_half(case: Case) -> float:
    """A gradient, finite in every dtype of the case, that overflows the
    weights' dtype when two are summed in the accumulator."""
    half = float(oracle.rounded(0.75 * float(oracle.finfo(case.weight_dtype).max),
                                case.grads_dtype))
    assert np.isfinite(half) and not np.isfinite(oracle.rounded(2 * half, case.weight_dtype))
    return half


def problem(case: Case) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """The initial weights and each step's gradients, as their dtypes hold
    them (float64 arrays): ordinary values, edge values at random
    places of both kernels at every step, and Inf and NaN at steps 1 and 3
    (at step 3, the opposite infinity where step 1 put one)."""
    rng = np.random.default_rng(case.seed)
    specs = variable_specs(case)
    dtype = case.weight_dtype
    init = [oracle.rounded(rng.normal(0, 0.5, shape), dtype) for _, _, shape in specs]
    init[0].flat[:2] = [0.0, -0.0]
    finite, nonfinite = edge_values(case)
    grads = []
    for step in range(STEPS):
        step_grads = []
        for index, (_, _, shape) in enumerate(specs):
            g = rng.normal(0, 1, shape)
            if case.accumulation and not case.gradient_dtype:
                # Sums and halves exact in every dtype (a gradient of another
                # dtype is rounded to the weights' first: left as it is, to show it).
                g = np.round(g * 8) / 8
            if index in (0, 2):
                places = rng.permutation(g.size)
                g.flat[places[:len(finite)]] = finite
                if case.overflowing_sum and index == 0:
                    g.flat[-1] = overflowing_half(case)
                if step in (1, 3):
                    bad = nonfinite if step == 1 else [-v for v in nonfinite]
                    # The same places at both steps (from the same stream).
                    fixed = np.random.default_rng(case.seed + index).permutation(g.size)
                    g.flat[fixed[:len(bad)]] = bad
            if case.sparse and index == SPARSE_VARIABLE:
                keep = np.zeros(shape[0], bool)
                keep[SPARSE_ROWS] = True
                g[~keep] = 0.0
            step_grads.append(oracle.rounded(g, case.grads_dtype))
        grads.append(step_grads)
    return init, grads


def oracle_config(case: Case, finalize_ema: bool = False, call: int = 0,
                  iterations: int = 0) -> oracle.Config:
    """The settings of call `call`, from `iterations` (the raw count) before it."""
    learning_rate, beta_1, beta_2 = LEARNING_RATE, case.beta_1, case.beta_2
    weight_decay = case.weight_decay
    if case.varying:
        beta_1, beta_2, weight_decay, learning_rate = VARYING[call]
        if case.varying == "schedule":  # Keras's schedules count every call
            learning_rate = VARYING[iterations][3]
    return oracle.Config(
        learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
        weight_decay=weight_decay, decays=decays(case),
        paths=[f"{scope}/{name}" for scope, name, _ in variable_specs(case)],
        cautious=case.cautious, weight_dtype=case.weight_dtype,
        momentum_dtype=case.momentum_dtype, accumulation_steps=case.accumulation,
        use_ema=case.use_ema, ema_momentum=EMA_MOMENTUM,
        ema_overwrite_frequency=case.ema_overwrite_frequency,
        skip_nonfinite=case.skip_nonfinite, finalize_ema=finalize_ema,
        flushes_subnormals=FLUSHES_SUBNORMALS,
        gradient_dtype=unscaled_dtype(case) if case.loss_scale else case.gradient_dtype,
        clip=case.clip, wrapper_skips=case.loss_scale,
        loss_scale_factor=case.loss_scale_factor)


def unscaled_dtype(case: Case) -> str:
    """The dtype of the gradients a LossScaleOptimizer passes on, divided by
    its float32 scale: at least float32, but on PyTorch, whose division
    keeps a tensor's dtype against a 0-d one."""
    if BACKEND == "torch" or case.grads_dtype == "float64":
        return case.grads_dtype
    return "float32"


# Reading an optimizer's state -------------------------------------------------


def as_float64(x: Any) -> np.ndarray:
    if BACKEND == "torch":
        import torch

        if isinstance(x, torch.Tensor):  # a copy, not a view of the variable
            return x.detach().to("cpu", torch.float64, copy=True).numpy()
    return np.array(ops.convert_to_numpy(x), np.float64, copy=True)


def dtype_of(x: Any) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def state_of(optimizer: Lion, variables: list[Any],
             values: dict[int, Any] | None = None) -> oracle.State:
    """The state after a step: from the variables, or, for a stateless path,
    from `values` (the returned tensors, by id of their variable)."""

    def value(variable: Any) -> Any:
        return values[id(variable)] if values is not None else variable.value

    def aligned(name: str) -> list[Any]:
        slots = getattr(optimizer, name)
        return [None if slots[optimizer._get_variable_index(v)] is None
                else value(slots[optimizer._get_variable_index(v)]) for v in variables]

    # An int8 momentum as its codes and scales (`int8.unpack`).
    stored = [(m, None) if m is None or keras.backend.standardize_dtype(m.dtype) != "int8"
              else int8.unpack(m) for m in aligned("_momentums")]
    scales = [None if s is None else as_float64(s) for _, s in stored]
    return oracle.State(
        weights=[as_float64(value(v)) for v in variables],
        momentums=[as_float64(m) if s is None
                   else int8_oracle.decode(as_float64(m), s).astype(np.float32).astype(np.float64)
                   for (m, _), s in zip(stored, scales)],
        scales=scales,
        indices=[optimizer._get_variable_index(v) for v in variables],
        accumulators=([as_float64(a) for a in aligned("_accumulated_gradients")]
                      if optimizer.gradient_accumulation_steps else None),
        averages=([as_float64(a) for a in aligned("_model_variables_moving_average")]
                  if optimizer.use_ema else None),
        iterations=int(as_float64(value(optimizer._iterations))),
        nonfinite_steps=(int(as_float64(value(optimizer._nonfinite_steps)))
                         if optimizer.skip_nonfinite else 0),
        weight_dtypes=[dtype_of(value(v)) for v in variables],
        momentum_dtypes=[dtype_of(m) for m, _ in stored],
    )


@dataclasses.dataclass
class Run:
    """What a path did: the state before and after each step, the gradients
    as given to the optimizer (read back, float64), and problems found on the
    way (e.g. a stateless path that wrote into the variables)."""

    states: list[oracle.State]
    grads: list[list[np.ndarray]]
    problems: list[str] = dataclasses.field(default_factory=list)
    finalized: list[int] = dataclasses.field(default_factory=list)  # fit()'s last step
    refused: str | None = None  # the error of an optimizer refused at creation


# Building blocks of the paths -------------------------------------------------


class Refused(Exception):
    """The optimizer was refused at creation (a ValueError of Lion's constructor)."""


def new_optimizer(case: Case, fast: bool = True) -> Lion:
    kwargs = case.lion_kwargs()
    if case.varying:
        # The first call's values; `vary` assigns each call's.
        beta_1, beta_2, weight_decay, learning_rate = VARYING[0]
        kwargs.update(beta_1=keras.Variable(beta_1, name="beta_1", trainable=False),
                      beta_2=keras.Variable(beta_2, name="beta_2", trainable=False),
                      weight_decay=keras.Variable(weight_decay, name="weight_decay",
                                                  trainable=False))
        kwargs["learning_rate"] = (
            keras.optimizers.schedules.PiecewiseConstantDecay(
                [0, 1, 2], [values[3] for values in VARYING]) if case.varying == "schedule"
            else keras.Variable(learning_rate, name="learning_rate", trainable=False))
    try:
        optimizer = Lion(**kwargs)
    except ValueError as error:
        raise Refused(str(error)) from error
    if not fast:
        optimizer._fast_path = None
    return optimizer


def hyperparameter_variables(case: Case, optimizer: Lion) -> list[Any]:
    """The `keras.Variable`s a `varying` case gives as hyperparameters."""
    if not case.varying:
        return []
    given = [optimizer.beta_1, optimizer.beta_2, optimizer.weight_decay]
    return given + ([optimizer._learning_rate] if case.varying == "variables" else [])


def wrapped(case: Case, optimizer: Lion) -> Any:
    """What a path steps: the Lion, or Keras's LossScaleOptimizer around it."""
    if not case.loss_scale:
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=INITIAL_SCALE)


def through_loss_scale(case: Case, given: list[np.ndarray], scale: float, new_scale: Any,
                       problems: list[str]) -> tuple[list[np.ndarray], float]:
    """For a LossScaleOptimizer at `scale` before a call: the gradients the
    Lion got (those `given` to the wrapper, divided by its scale), and the
    scale after the call, which must be `new_scale` (halved after non-finite
    gradients, else unchanged: it grows only after 2000 finite steps)."""
    if not case.loss_scale:
        return given, scale
    expected = scale if all(np.isfinite(g).all() for g in given) else scale / 2
    if float(as_float64(new_scale)) != expected:
        problems.append(f"loss scale {float(as_float64(new_scale))} after a call, not {expected}")
    return [oracle.rounded(g / scale, unscaled_dtype(case)) for g in given], expected


def vary(case: Case, optimizer: Lion, call: int) -> None:
    """Assigns call `call`'s hyperparameters to a `varying` case's variables."""
    beta_1, beta_2, weight_decay, learning_rate = VARYING[call]
    for variable, value in zip(hyperparameter_variables(case, optimizer),
                               (beta_1, beta_2, weight_decay, learning_rate)):
        variable.assign(value)


def host_array(x: np.ndarray, dtype: str) -> np.ndarray:
    """Values of `dtype` in a NumPy dtype every backend takes (exact)."""
    return x.astype(np.float64 if dtype == "float64" else np.float32)


def new_variables(case: Case, init: list[np.ndarray]) -> list[keras.Variable]:
    variables = []
    for (scope, name, _), value in zip(variable_specs(case), init):
        with keras.name_scope(scope):
            variables.append(keras.Variable(host_array(value, case.weight_dtype),
                                            dtype=case.weight_dtype, name=name))
    assert [v.path for v in variables] == oracle_config(case).paths
    return variables


def gradient_tensors(case: Case, grads: list[np.ndarray],
                     sparse: bool) -> tuple[list[Any], list[np.ndarray]]:
    """The step's gradients as backend tensors (sparse for dense/kernel if
    the case and path have sparse gradients), and their values read back."""
    dtype = case.grads_dtype
    tensors, seen = [], []
    for index, g in enumerate(grads):
        if sparse and case.sparse and index == SPARSE_VARIABLE:
            values = ops.convert_to_tensor(host_array(g[SPARSE_ROWS], dtype), dtype=dtype)
            if BACKEND == "tensorflow":
                import tensorflow as tf

                tensor = tf.IndexedSlices(values, tf.constant(SPARSE_ROWS), tf.constant(g.shape))
            else:
                import jax.experimental.sparse as jax_sparse

                tensor = jax_sparse.BCOO((values, SPARSE_ROWS[:, None]), shape=g.shape)
            dense = np.zeros(g.shape)
            dense[SPARSE_ROWS] = as_float64(values)
            tensors.append(tensor)
            seen.append(dense)
        else:
            tensor = ops.convert_to_tensor(host_array(g, dtype), dtype=dtype)
            tensors.append(tensor)
            seen.append(as_float64(tensor))
    return tensors, seen


SPARSE_BACKENDS = ("tensorflow", "jax")


def run_steps(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]], *,
              fast: bool = True, wrap: Callable[..., Any] | None = None,
              optimizer: Lion | None = None, variables: list[Any] | None = None,
              sparse: bool = BACKEND in SPARSE_BACKENDS) -> Run:
    """`optimizer.apply` at each step, called as it is or through `wrap`."""
    optimizer = optimizer or new_optimizer(case, fast)
    variables = variables or new_variables(case, init)
    target = wrapped(case, optimizer)
    target.build(variables)

    def step(tensors: list[Any]) -> None:
        target.apply(tensors, variables)

    if wrap is not None:
        step = wrap(step)
    run, scale = Run([state_of(optimizer, variables)], []), INITIAL_SCALE
    for call, step_grads in enumerate(grads):
        vary(case, optimizer, call)
        tensors, seen = gradient_tensors(case, step_grads, sparse)
        step(tensors)
        run.states.append(state_of(optimizer, variables))
        seen, scale = through_loss_scale(case, seen, scale, getattr(target, "dynamic_scale", 0),
                                         run.problems)
        run.grads.append(seen)
    return run


# The paths --------------------------------------------------------------------


def run_plain(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    return run_steps(case, init, grads, fast=False)


def run_fast(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    optimizer = new_optimizer(case)
    assert optimizer._fast_path is not None, f"no fast path on {BACKEND}"
    return run_steps(case, init, grads, optimizer=optimizer)


def run_no_kernel(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    """The step without its C kernel (`has_kernel`), in the backend's own
    operations: PyTorch's and TensorFlow's fast paths, and JAX's `jit`."""
    os.environ["KERASLION_NATIVE"] = "0"
    try:
        return (run_jit if BACKEND == "jax" else run_fast)(case, init, grads)
    finally:
        del os.environ["KERASLION_NATIVE"]


def run_stateless(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]],
                  jit: bool = False) -> Run:
    """`stateless_apply` (under `jax.jit` with donated buffers if `jit`): its
    results are the state; the variables themselves must not change."""
    optimizer = new_optimizer(case)
    variables = new_variables(case, init)
    target = wrapped(case, optimizer)
    target.build(variables)
    slots = [*variables, *target.variables]
    given = [id(v) for v in hyperparameter_variables(case, optimizer)]  # assigned by `vary`
    kept = [v for v in slots if id(v) not in given]
    before = [as_float64(v.value) for v in kept]

    def step(trainable: list[Any], state: list[Any], tensors: list[Any]) -> Any:
        return target.stateless_apply(state, tensors, trainable)

    if jit:
        import jax

        step = jax.jit(step, donate_argnums=(0, 1))
    trainable = [ops.copy(v.value) for v in variables]
    state = [ops.copy(v.value) for v in target.variables]
    # Where the state holds the hyperparameters given as variables: a
    # stateless step reads their values there.
    places = {id(v): i for i, v in enumerate(target.variables)}
    run, scale = Run([state_of(optimizer, variables)], []), INITIAL_SCALE
    for call, step_grads in enumerate(grads):
        vary(case, optimizer, call)
        for variable in hyperparameter_variables(case, optimizer):
            state[places[id(variable)]] = ops.copy(variable.value)
        tensors, seen = gradient_tensors(case, step_grads, sparse=BACKEND in SPARSE_BACKENDS)
        trainable, state = step(trainable, state, tensors)
        trainable, state = list(trainable), list(state)
        values = dict(zip(map(id, slots), [*trainable, *state]))
        run.states.append(state_of(optimizer, variables, values))
        seen, scale = through_loss_scale(
            case, seen, scale, values.get(id(getattr(target, "dynamic_scale", None))),
            run.problems)
        run.grads.append(seen)
    for variable, old in zip(kept, before):
        if not oracle.identical(as_float64(variable.value), old):
            run.problems.append(f"stateless_apply changed the variable {variable.path}")
    return run


def run_jit(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    return run_stateless(case, init, grads, jit=True)


def run_tf_function(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]],
                    jit_compile: bool = False) -> Run:
    import tensorflow as tf

    return run_steps(case, init, grads, wrap=lambda step: tf.function(step,
                                                                      jit_compile=jit_compile))


def run_tf_xla(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    return run_tf_function(case, init, grads, jit_compile=True)


def run_compile(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    import torch

    torch._dynamo.reset()
    return run_steps(case, init, grads, wrap=torch.compile)


class GradientLayer(keras.layers.Layer):
    """Weights w whose loss sum(w * x) has the gradient x, exactly; x is
    the part of the input from `start` on."""

    def __init__(self, shapes: list[tuple[str, tuple[int, ...]]], start: int,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shapes, self.start = shapes, start

    def build(self, input_shape: Any) -> None:
        self.slots = [self.add_weight(name=name, shape=shape, initializer="zeros")
                      for name, shape in self.shapes]

    def call(self, x: Any) -> Any:
        x = ops.cast(x, self.compute_dtype)
        total, start = 0.0, self.start
        for weight, (_, shape) in zip(self.slots, self.shapes):
            size = int(np.prod(shape))
            part = ops.reshape(x[:, start:start + size], (-1, *shape))
            start += size
            total = total + ops.sum(ops.reshape(weight[None] * part, (-1, size)), axis=1)
        return ops.cast(total, "float32")


def gradient_model(case: Case) -> tuple[keras.Model, int]:
    """A functional model (its weights' paths are "head/kernel", ...: no
    model name in front) with one GradientLayer per scope; and its input size."""
    host = "float64" if case.weight_dtype == "float64" else "float32"
    specs = variable_specs(case)
    size = sum(int(np.prod(shape)) for _, _, shape in specs)
    inputs = keras.Input((size,), dtype=host)
    outputs, start = [], 0
    for scope in dict.fromkeys(scope for scope, _, _ in specs):
        shapes = [(name, shape) for s, name, shape in specs if s == scope]
        outputs.append(GradientLayer(shapes, start, name=scope, dtype=case.weight_dtype)(inputs))
        start += sum(int(np.prod(shape)) for _, shape in shapes)
    return keras.Model(inputs, keras.layers.Add()(outputs)), size


def run_fit(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    """One `model.fit()` over the steps (a batch each) of a model whose
    gradient is its input; the state is read after each batch, and after
    fit() ends with Keras's `finalize_variable_values` (EMA: the weights
    become their averages)."""
    host = np.float64 if case.weight_dtype == "float64" else np.float32
    model, _ = gradient_model(case)
    by_path = {v.path: v for v in model.trainable_variables}
    variables = [by_path[path] for path in oracle_config(case).paths]
    for variable, value in zip(variables, init):
        variable.assign(host_array(value, case.weight_dtype))
    optimizer = new_optimizer(case)
    target = wrapped(case, optimizer)
    model.compile(optimizer=target, loss=lambda y_true, y_pred: y_pred)
    target.build(model.trainable_variables)
    run, scale = Run([state_of(optimizer, variables)], []), [INITIAL_SCALE]

    class Record(keras.callbacks.Callback):
        """Reads the state after each batch, and sets the next call's
        hyperparameters (after `self.model`, which on JAX syncs fit()'s state)."""

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            assert self.model is model  # reading it syncs fit()'s state on JAX
            run.states.append(state_of(optimizer, variables))
            given = grads[batch]
            # The gradient of the loss scaled (by the wrapper or by the
            # optimizer's own factor), in the weights' dtype.
            factor = scale[0] if case.loss_scale else case.loss_scale_factor
            if factor:
                given = [oracle.rounded(g * factor, case.weight_dtype) for g in given]
            seen, scale[0] = through_loss_scale(case, given, scale[0],
                                                getattr(target, "dynamic_scale", 0), run.problems)
            run.grads.append(seen)
            if batch + 1 < len(grads):
                vary(case, optimizer, batch + 1)

    x = np.stack([np.concatenate([g.ravel() for g in step_grads]) for step_grads in grads])
    floatx = keras.config.floatx()
    # fit() casts float inputs to floatx: float64 ones would lose their edge values.
    keras.config.set_floatx(keras.backend.standardize_dtype(host))
    try:
        model.fit(x.astype(host), np.zeros((len(x),), host), batch_size=1, epochs=1,
                  verbose=0, shuffle=False, callbacks=[Record()])
    finally:
        keras.config.set_floatx(floatx)
    if case.use_ema:
        run.states[-1] = state_of(optimizer, variables)
        run.finalized.append(len(grads) - 1)
    return run


_STRATEGY: list[Any] = []


def run_mirrored(case: Case, init: list[np.ndarray], grads: list[list[np.ndarray]]) -> Run:
    """`strategy.run(optimizer.apply)` in a `tf.function` under
    MirroredStrategy over 2 logical CPUs (path_parity_worker.py sets them up).
    Replica 0 gets the gradients, replica 1 zeros of the sign that leaves
    every sum unchanged (-0); both replicas must hold the same values."""
    import tensorflow as tf

    if not _STRATEGY:
        assert len(tf.config.list_logical_devices("CPU")) >= 2, "needs 2 logical CPUs"
        _STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    strategy = _STRATEGY[0]
    with strategy.scope():
        optimizer = new_optimizer(case)
        variables = new_variables(case, init)
        optimizer.build(variables)

    @tf.function
    def step(per_replica: Any) -> None:
        strategy.run(lambda tensors: optimizer.apply(tensors, variables), args=(per_replica,))

    run = Run([state_of(optimizer, variables)], [])
    for call, step_grads in enumerate(grads):
        vary(case, optimizer, call)
        tensors, seen = gradient_tensors(case, step_grads, sparse=False)
        zeros = [tf.fill(t.shape, tf.constant(-0.0, t.dtype)) for t in tensors]
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context, tensors=tensors, zeros=zeros:
                tensors if context.replica_id_in_sync_group == 0 else zeros)
        step(per_replica)
        run.states.append(state_of(optimizer, variables))
        run.grads.append(seen)
        for variable in [*variables, *optimizer.variables]:
            copies = [as_float64(c) for c in variable.value.values]
            if not all(oracle.identical(copies[0], c) for c in copies[1:]):
                run.problems.append(f"replicas differ in {variable.path}")
    return run


RUNNERS: dict[str, tuple[Callable[..., Run], tuple[str, ...]]] = {
    "plain": (run_plain, ("jax", "tensorflow", "torch")),
    "fast": (run_fast, ("jax", "tensorflow", "torch")),
    "no_kernel": (run_no_kernel, ("jax", "tensorflow", "torch")),
    "stateless": (run_stateless, ("jax", "torch")),
    "jit": (run_jit, ("jax",)),
    "tf_function": (run_tf_function, ("tensorflow",)),
    "tf_xla": (run_tf_xla, ("tensorflow",)),
    "fit": (run_fit, ("jax", "tensorflow", "torch")),
    "mirrored": (run_mirrored, ("tensorflow",)),
    "compile": (run_compile, ("torch",)),
}
NOT_ON = {"stateless": "Keras's TensorFlow optimizer has no stateless_apply"}


def cases_for(path: str) -> list[Case]:
    """torch.compile, slow to compile, runs the paired edge cases (every edge
    value of each beta) and its own; the other paths run the rest, but for
    `fit` those with gradients of another dtype (fit's have the weights'),
    and `no_kernel` only those that a kernel steps (`has_kernel`)."""
    return [case for case in CASES if case.compile == (path == "compile")
            and not (path == "fit" and case.gradient_dtype)
            and not (path == "no_kernel" and not has_kernel(case))
            and not (case.loss_scale and path in LOSS_SCALE_LACKS)]


def has_kernel(case: Case) -> bool:
    """Whether a C kernel takes the case's step on the backend's fast path:
    an int8 momentum's, and on PyTorch float32 weights' with a float32 or
    bfloat16 momentum (without caution, which takes the plain path)."""
    float_kernel = (BACKEND == "torch" and case.weight_dtype == "float32" and not case.cautious
                    and case.momentum_dtype in (None, "float32", "bfloat16"))
    return case.momentum_dtype == "int8" or float_kernel


# Keras's LossScaleOptimizer under MirroredStrategy checks only the first
# replica's gradients (test_distributed.py); on JAX its `apply` runs a
# `lax.cond` with side effects (JAX steps it by `stateless_apply`, as fit() does).
LOSS_SCALE_LACKS = ("mirrored",) + (("plain", "fast") if BACKEND == "jax" else ())


def run_case(path: str, case: Case) -> Run:
    init, grads = problem(case)
    try:
        return RUNNERS[path][0](case, init, grads)
    except Refused as refusal:
        return Run([], [], refused=str(refusal))


def refusals(path: str, case: Case) -> set[str]:
    """The arguments whose combination must be refused when the optimizer is
    created; the refusal's ValueError must name one of them.

    (JAX without x64 must refuse momentum_dtype="float64": the matrix runs
    float64 cases with x64, and test_float64_momentum_without_x64_... checks it.)
    """
    # Not a normal float32: rounded, or flushed by XLA, to 0 (varying cases
    # give their own betas).
    must = {name for name in ("beta_1", "beta_2")
            if 0.0 < getattr(case, name) < float(np.finfo(np.float32).tiny)
            and not case.varying}
    if path == "mirrored":
        # Keras's own accumulation and EMA overwriting synchronize replicas
        # inside a cond, which tf.distribute cannot do.
        if case.accumulation:
            must.add("gradient_accumulation_steps")
        if case.ema_overwrite_frequency:
            must.add("ema_overwrite_frequency")
    return must


# Paths in a fresh process -----------------------------------------------------


def jax_x64() -> bool:
    if BACKEND != "jax":
        return False
    import jax

    return bool(jax.config.jax_enable_x64)


def worker_for(path: str, case: Case) -> str | None:
    """Which fresh process runs this (path, case), if not this one."""
    if BACKEND == "tensorflow" and path == "mirrored":
        return "tf_mirrored"
    if BACKEND == "jax" and case.uses_float64 and not jax_x64():
        return "jax_x64"
    return None


class Workers:
    """The worker processes of this session: started together, read once."""

    def __init__(self) -> None:
        self.processes: dict[str, tuple[subprocess.Popen, Path, Path]] = {}
        self.results: dict[str, dict[tuple[str, str], Any]] = {}

    def start(self, tmp: Path, requests: dict[str, list[tuple[str, str]]]) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        for mode, pairs in requests.items():
            if mode in self.processes:
                continue
            (tmp / f"{mode}.json").write_text(json.dumps(pairs))
            out, log = tmp / f"{mode}.pkl", tmp / f"{mode}.log"
            with log.open("w") as stream:
                process = subprocess.Popen(
                    [sys.executable, str(HERE / "path_parity_worker.py"), mode,
                     str(tmp / f"{mode}.json"), str(out)],
                    cwd=HERE, env=env, stdout=stream, stderr=subprocess.STDOUT,
                    start_new_session=True)
            self.processes[mode] = (process, out, log)

    def result(self, mode: str, path: str, case: Case) -> Any:
        if mode not in self.results:
            process, out, log = self.processes[mode]
            try:
                process.wait(timeout=WORKER_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode != 0 or not out.exists():
                self.results[mode] = {}
                pytest.fail(f"path_parity_worker.py {mode} failed (rc {process.returncode}):\n"
                            + log.read_text()[-5000:])
            with out.open("rb") as stream:
                self.results[mode] = pickle.load(stream)
        if (path, case.id) not in self.results[mode]:
            pytest.fail(f"path_parity_worker.py {mode} has no result for {path} {case.id}")
        return self.results[mode][(path, case.id)]

    def stop(self) -> None:
        for process, _, _ in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()


@pytest.fixture(scope="module", autouse=True)
def workers(request: Any, tmp_path_factory: Any) -> Any:
    """Starts, with the module, the worker processes its selected tests need."""
    requests: dict[str, list[tuple[str, str]]] = {}
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if item.module is not sys.modules[__name__] or spec is None:
            continue
        path, case = spec.params.get("path"), spec.params.get("case")
        if isinstance(case, Case) and worker_for(path, case):
            requests.setdefault(worker_for(path, case), []).append((path, case.id))
    pool = Workers()
    pool.start(tmp_path_factory.mktemp("path_parity"), requests)
    yield pool
    pool.stop()


# The matrix -------------------------------------------------------------------


def matrix() -> list[Any]:
    """Every (path, case) of this backend; those a worker process runs come
    last, so that this process works while the worker does."""
    params, later = [], []
    for path, (_, backends) in RUNNERS.items():
        if BACKEND not in backends:
            reason = NOT_ON.get(path, f"no {path} path on {BACKEND}")
            params.append(pytest.param(path, reason, id=f"{path}-not-on-{BACKEND}"))
            continue
        for case in cases_for(path):
            param = pytest.param(path, case, id=f"{path}-{case.id}")
            (later if worker_for(path, case) else params).append(param)
    return params + later


def verify(case: Case, path: str, run: Run) -> list[str]:
    must = refusals(path, case)
    if run.refused is not None:
        if not any(name in run.refused for name in must):
            return [f"refused at creation: {run.refused}"]
        return []
    problems = [f"not refused at creation (must name {sorted(must)})"] if must else []
    problems += run.problems
    for step in range(len(run.grads)):
        config = oracle_config(case, finalize_ema=step in run.finalized, call=step,
                               iterations=run.states[step].iterations)
        for problem_ in oracle.check_apply(run.states[step], run.states[step + 1],
                                           run.grads[step], config):
            problems.append(f"step {step}: {problem_}")
    return problems


@pytest.mark.parametrize("path,case", matrix())
def test_path_matches_oracle(path: str, case: Any, workers: Workers) -> None:
    if not isinstance(case, Case):
        pytest.skip(case)
    mode = worker_for(path, case)
    if mode is None:
        run = run_case(path, case)
    else:
        saved = workers.result(mode, path, case)
        if isinstance(saved, str):  # the worker's traceback
            pytest.fail(f"{path} raised in path_parity_worker.py {mode}:\n{saved[-3000:]}")
        run = Run([oracle.State(**state) for state in saved["states"]], saved["grads"],
                  saved["problems"], saved["finalized"], saved["refused"])
    problems = verify(case, path, run)
    # What differs, then the first details.
    summary = [p.splitlines()[0] for p in problems[:40]]
    assert not problems, "\n".join([f"{path} {case.id}:", *summary, "details:", *problems[:6]])


# Refused combinations -----------------------------------------------------------


def test_float64_momentum_without_x64_is_refused_at_creation() -> None:
    if BACKEND != "jax" or jax_x64():
        pytest.skip("JAX without x64 only (float64 exists on the other backends)")
    with pytest.raises(ValueError, match="momentum_dtype"):
        Lion(momentum_dtype="float64")


# Keras's contract for sparse gradients --------------------------------------------


@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.1}, {"cautious": True},
                                      {"momentum_dtype": "bfloat16"}],
                         ids=["defaults", "weight_decay", "cautious", "bfloat16_momentum"])
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_sparse_gradients_update_through_optimizer_assign(fast: bool, settings: dict) -> None:
    """As Keras's own optimizer_sparse_test: a sparse gradient's update goes
    through `optimizer.assign` (which can apply it sparsely), never through
    the variable's own `assign`, which would densify it."""
    from unittest import mock

    if BACKEND not in SPARSE_BACKENDS:
        pytest.skip(f"no sparse gradients on {BACKEND}")
    variable = keras.Variable(np.ones((5, 10), np.float32))
    optimizer = Lion(**settings)
    if not fast:
        optimizer._fast_path = None
    if BACKEND == "tensorflow":
        import tensorflow as tf

        grad = tf.IndexedSlices(0.5 * tf.ones((3, 10)), tf.constant([0, 2, 4]), (5, 10))
        variable_class = variable._value.__class__
    else:
        import jax.experimental.sparse as jax_sparse

        grad = jax_sparse.BCOO((0.5 * np.ones((3, 10), np.float32), np.array([[0], [2], [4]])),
                               shape=(5, 10))
        variable_class = variable.__class__
    optimizer.build([variable])
    direct = []

    def variable_assign(target: Any, value: Any) -> None:
        if len(target.shape):
            direct.append(getattr(target, "path", getattr(target, "name", "?")))

    with (mock.patch.object(variable_class, "assign", autospec=True,
                            side_effect=variable_assign),
          mock.patch.object(variable_class, "assign_add", autospec=True,
                            side_effect=variable_assign),
          mock.patch.object(variable_class, "assign_sub", autospec=True,
                            side_effect=variable_assign),
          mock.patch.object(optimizer, "assign", autospec=True)):
        optimizer.apply([grad], [variable])
    assert not direct, f"assigned directly, not through optimizer.assign: {direct}"
