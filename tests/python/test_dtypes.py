"""Weights in float64 are computed in float64; float16 and bfloat16 in float32,
rounded once per step. On every path: fast and plain, with and without caution.

JAX has float64 only with `jax_enable_x64`, which changes every array made
after it is set; so on JAX the float64 cases run in a subprocess of their own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import ml_dtypes
import numpy as np
import pytest
from conftest import numpy_lion, to_numpy

from keraslion import Lion

BACKEND = keras.backend.backend()
# Keras keeps the learning rate in a float32 variable, as for its own
# optimizers: 2**-7 is exact there, so the float64 step can be exact too.
LR = 2.0**-7
SETTINGS = {
    "defaults": {},
    "weight_decay": {"weight_decay": 0.1},
    "cautious": {"cautious": True},
    "cautious_weight_decay": {"cautious": True, "weight_decay": 0.1},
}
CASES = [f"{name}-{path}" for name in SETTINGS for path in ("fast", "plain")]


def problem(steps=30, shape=(6, 5), seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=shape)
    # Gradients correlated over time, so that caution keeps some elements and not others.
    grads, g = [], np.zeros(shape)
    for _ in range(steps):
        g = 0.5 * g + rng.normal(size=shape)
        grads.append(g.copy())
    return theta, grads


def run(dtype, settings, fast):
    """Weights and momentum after 30 steps on a variable of `dtype`."""
    theta, grads = problem()
    optimizer = Lion(learning_rate=LR, **settings)
    if not fast:
        optimizer._fast_path = None
    variable = keras.Variable(theta.astype(dtype), dtype=keras.backend.standardize_dtype(dtype))
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g.astype(dtype))], [variable])
    assert variable.dtype == optimizer._momentums[0].dtype == keras.backend.standardize_dtype(dtype)
    return to_numpy(variable).astype(np.float64), to_numpy(optimizer._momentums[0]).astype(
        np.float64)


def float64_errors():
    """Per case, the largest distance of weights and momentum from the float64 oracle."""
    errors = {}
    theta, grads = problem()
    for name, settings in SETTINGS.items():
        expected_theta, expected_m = numpy_lion(theta, grads, LR, **settings)
        for path in ("fast", "plain"):
            actual_theta, actual_m = run(np.float64, settings, path == "fast")
            errors[f"{name}-{path}"] = max(np.max(np.abs(actual_theta - expected_theta)),
                                           np.max(np.abs(actual_m - expected_m)))
    return errors


@pytest.fixture(scope="module")
def errors_in_float64():
    if BACKEND != "jax":
        return float64_errors()
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_ENABLE_X64="1")
    script = "import json, conftest, test_dtypes; print(json.dumps(test_dtypes.float64_errors()))"
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_float64_is_computed_in_float64(errors_in_float64, case):
    assert errors_in_float64[case] <= 1e-12


NARROW = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
@pytest.mark.parametrize("dtype", NARROW)
def test_narrow_dtypes_are_computed_in_float32_and_rounded_once(dtype, settings, fast):
    theta, grads = problem()
    # The oracle starts from the stored (rounded) values, as the optimizer does.
    stored_grads = [g.astype(NARROW[dtype]) for g in grads]
    expected_theta, expected_m = numpy_lion(theta, stored_grads, LR, storage_dtype=NARROW[dtype],
                                            **settings)
    actual_theta, actual_m = run(NARROW[dtype], settings, fast)
    eps = float(ml_dtypes.finfo(NARROW[dtype]).eps)
    for actual, expected in [(actual_theta, expected_theta), (actual_m, expected_m)]:
        expected = expected.astype(np.float64)
        if fast:
            # A compiled path may fuse a multiply-add, and so round the float32
            # value differently before its one rounding: at most one unit in
            # the last place of the dtype (|x| * eps is one to two).
            assert np.all(np.abs(actual - expected) <= np.abs(expected) * eps)
        else:
            np.testing.assert_array_equal(actual, expected)


def compiled_apply(optimizer, grads, variables):
    """`optimizer.apply` as a compiled `fit()` runs it: JAX's jitted
    `stateless_apply`, TensorFlow's `tf.function` compiled by XLA."""
    if keras.backend.backend() == "jax":
        import jax

        optimizer.build(variables)
        step = jax.jit(lambda state, g, w: optimizer.stateless_apply(state, g, w))
        weights, state = step([v.value for v in optimizer.variables], grads,
                              [v.value for v in variables])
        for variable, value in zip([*variables, *optimizer.variables], [*weights, *state],
                                   strict=True):
            variable.assign(value)
    else:
        import tensorflow as tf

        tf.function(lambda: optimizer.apply(grads, variables), jit_compile=True)()


def steps_under(floatx, options, path):
    keras.config.set_floatx(floatx)
    try:
        rng = np.random.default_rng(0)
        variables = [keras.Variable(rng.normal(size=shape).astype(np.float32), dtype="float32")
                     for shape in ((8, 512), (7,))]
        # LR: exact in bfloat16 too, in which Keras keeps the learning rate under this floatx.
        optimizer = Lion(learning_rate=LR, weight_decay=0.1, **options)
        if path == "plain":
            optimizer._fast_path = None
        apply = compiled_apply if path == "compiled" else type(optimizer).apply
        for _ in range(3):
            apply(optimizer, [keras.ops.convert_to_tensor(rng.normal(size=v.shape), "float32")
                              for v in variables], variables)
        return [to_numpy(v) for v in variables] + [
            to_numpy(optimizer._momentum_value(v)) for v in variables]
    finally:
        keras.config.set_floatx("float32")


@pytest.mark.parametrize("path", ["fast", "plain", "compiled"])
@pytest.mark.parametrize("options", [{}, {"momentum_dtype": "int8"},
                                     {"momentum_dtype": "bfloat16"}, {"cautious": True},
                                     {"skip_nonfinite": True}])
def test_a_bfloat16_floatx_changes_no_float32_step(options, path):
    # On JAX, keras.ops made the Python ints of the int8 codes and of XLA's
    # ordering float32 under it: the step failed.
    if path == "compiled" and keras.backend.backend() == "torch":
        pytest.skip("JAX's jit and TensorFlow's XLA (torch.compile: test_path_parity)")
    for under_bfloat16, under_float32 in zip(steps_under("bfloat16", options, path),
                                             steps_under("float32", options, path), strict=True):
        np.testing.assert_array_equal(under_bfloat16, under_float32)


def test_a_bfloat16_model_with_a_float32_head_trains_with_int8_momentum():
    keras.config.set_floatx("bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(512),
                                  keras.layers.Dense(1, dtype="float32")])
        model.compile(optimizer=Lion(1e-3, momentum_dtype="int8"), loss="mse")
        before = [to_numpy(v).astype(np.float32) for v in model.trainable_variables]
        model.fit(np.ones((8, 16)), np.zeros((8, 1)), epochs=1, verbose=0)
    finally:
        keras.config.set_floatx("float32")
    for start, variable in zip(before, model.trainable_variables, strict=True):
        after = to_numpy(variable).astype(np.float32)
        assert np.all(np.isfinite(after)) and not np.array_equal(after, start)
