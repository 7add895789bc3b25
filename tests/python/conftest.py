"""Shared set-up: the package from inst/python, quiet TensorFlow, helpers."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The int8 kernel is built anew for the tests (and their worker processes),
# not taken from a user's cache.
os.environ.setdefault("KERASLION_CACHE_DIR", tempfile.mkdtemp(prefix="keraslion-kernel-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "inst" / "python"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    keras.utils.set_random_seed(0)


def numpy_lion(theta, grads, learning_rate, beta_1=0.9, beta_2=0.99, weight_decay=0.0,
               cautious=False, momentum=None, storage_dtype=None):
    """Independent oracle: the paper's three lines, step by step, in float64.

    With a `storage_dtype` (float16, bfloat16), the weights and momentum are
    stored in it: each step is computed in float32 and rounded once.
    Returns the parameters and momentum after applying every gradient in `grads`.
    """
    compute = np.float64 if storage_dtype is None else np.float32
    store = compute if storage_dtype is None else storage_dtype

    def stored(x):
        return np.asarray(x).astype(store).astype(compute)

    theta = stored(theta)
    m = np.zeros_like(theta) if momentum is None else stored(momentum)
    # 1 - beta before rounding, as the optimizer computes it.
    one_minus_beta_1, one_minus_beta_2 = compute(1 - beta_1), compute(1 - beta_2)
    beta_1, beta_2, weight_decay = compute(beta_1), compute(beta_2), compute(weight_decay)
    for step, g in enumerate(grads):
        g = stored(g)
        lr = compute(learning_rate(step) if callable(learning_rate) else learning_rate)
        c = beta_1 * m + one_minus_beta_1 * g
        u = np.sign(c)
        if cautious:
            keep = (u * g > 0).astype(compute)
            u = u * keep * (compute(keep.size) / max(keep.sum(), compute(1)))
        theta = stored(theta - lr * (u + weight_decay * theta))
        m = stored(beta_2 * m + one_minus_beta_2 * g)
    return theta, m


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def apply_steps(optimizer, theta, grads, fast=True):
    """Applies each gradient in turn to one variable; returns its final value.

    With `fast=False` the optimizer's backend fast path is switched off, so
    the plain `update_step` runs.
    """
    if not fast:
        optimizer._fast_path = None
    variable = keras.Variable(np.asarray(theta, np.float32))
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(np.asarray(g, np.float32))], [variable])
    return to_numpy(variable)


def assert_lion_close(actual, expected, learning_rate, max_sign_flips=0, atol=1e-5):
    """Close, except for at most `max_sign_flips` elements that took an opposite
    step where `c` was within rounding of zero (each off by about 2 * lr per flip)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    off = ~np.isclose(actual, expected, rtol=1e-5, atol=atol)
    assert off.sum() <= max_sign_flips, (
        f"{off.sum()} elements differ (allowed {max_sign_flips}); "
        f"largest difference {np.max(np.abs(actual - expected)):.3g} at lr={learning_rate}")
