"""Distributed training on the engines Keras already has, on this CPU machine.

Each engine needs devices configured before it starts, so each test runs a
helper script (distributed_*_worker.py) in a fresh Python process and checks
what it saved:

- TensorFlow: `tf.distribute.MirroredStrategy` over 2 logical CPU devices;
- JAX: `keras.distribution.DataParallel` over 4 virtual CPU devices, and
  `ModelParallel` with a Dense kernel sharded across 2 of them.

Each runs only under its own backend (KERAS_BACKEND), and so once per
`make test`; on the others it is skipped.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import assert_lion_close

BACKEND = keras.backend.backend()
HERE = Path(__file__).resolve().parent


def run_worker(script, tmp_path):
    out = tmp_path / "results.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(HERE / script), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    with np.load(out) as results:
        return {key: results[key] for key in results.files}


def assert_same_training(results, name, reference="single", learning_rate=0.01):
    """Weights as the reference's (but for a rare sign flip where the momentum
    mix is within rounding of zero), momenta close, same iteration count."""
    count = sum(key.startswith(f"{reference}/weight/") for key in results)
    assert count > 0
    for i in range(count):
        assert_lion_close(results[f"{name}/weight/{i}"], results[f"{reference}/weight/{i}"],
                          learning_rate, max_sign_flips=1)
        np.testing.assert_allclose(results[f"{name}/momentum/{i}"],
                                   results[f"{reference}/momentum/{i}"], rtol=1e-3, atol=1e-5)
    assert results[f"{name}/iterations"] == results[f"{reference}/iterations"]


@pytest.fixture(scope="module")
def tf_results(tmp_path_factory):
    return run_worker("distributed_tf_worker.py", tmp_path_factory.mktemp("tf"))


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    return run_worker("distributed_jax_worker.py", tmp_path_factory.mktemp("jax"))


# TensorFlow: MirroredStrategy ------------------------------------------------------

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.distribute.MirroredStrategy is TensorFlow's engine (KERAS_BACKEND=tensorflow)")


@tensorflow_only
def test_mirrored_strategy_matches_single_device(tf_results):
    assert tf_results["mirrored/replicas"] == 2
    assert_same_training(tf_results, "mirrored")


@tensorflow_only
@pytest.mark.parametrize("run", ["mirrored_skip", "no_merge_call_skip"])
def test_mirrored_strategy_skips_nonfinite_steps_seen_by_one_replica(tf_results, run):
    # The NaN batch reached only the second replica; both skipped it (once per
    # epoch), and the rest trained as on one device without it.
    assert tf_results[f"{run}/replicas"] == 2
    assert tf_results[f"{run}/nonfinite_steps"] == 2
    assert_same_training(tf_results, run)


@tensorflow_only
def test_loss_scale_optimizer_under_mirrored_strategy_stays_finite(tf_results):
    # Keras's LossScaleOptimizer checks only the first replica's gradients
    # under MirroredStrategy; with skip_nonfinite=True Lion checks them all.
    # (One epoch: the NaN batch once, and 6 good batches.)
    assert tf_results["loss_scale_skip/nonfinite_steps"] == 1
    assert tf_results["loss_scale_skip/iterations"] == 6
    for key, value in tf_results.items():
        if key.startswith("loss_scale_skip/"):
            assert np.all(np.isfinite(value)), key


# JAX: keras.distribution -------------------------------------------------------------

jax_only = pytest.mark.skipif(
    BACKEND != "jax", reason="keras.distribution runs on JAX only (KERAS_BACKEND=jax)")


@jax_only
def test_data_parallel_matches_single_device(jax_results):
    assert jax_results["device_count"] == 4
    assert_same_training(jax_results, "data_parallel")
    # The variables live, replicated, on all 4 devices.
    assert all(jax_results[f"data_parallel/devices/{i}"] == 4 for i in range(4))


@jax_only
def test_data_parallel_skips_nonfinite_steps(jax_results):
    assert jax_results["data_parallel_skip/nonfinite_steps"] == 2
    assert_same_training(jax_results, "data_parallel_skip")


@jax_only
@pytest.mark.parametrize("run", ["model_parallel", "model_parallel_bf16_ema"])
@pytest.mark.parametrize("stage", ["built", "trained"])
def test_model_parallel_state_has_its_variables_sharding(jax_results, run, stage):
    prefix = f"{run}/{stage}"
    paths = {str(jax_results[f"{prefix}/path/{i}"]): i for i in range(4)}
    kernel = paths[next(p for p in paths if p.endswith("hidden/kernel"))]
    assert jax_results[f"{prefix}/spec/{kernel}"] == "PartitionSpec(None, 'model')"
    expected_state = 2 if "ema" in run else 1  # momentum, and moving average
    for i in paths.values():
        assert jax_results[f"{prefix}/state_count/{i}"] == expected_state
        specs = str(jax_results[f"{prefix}/state_specs/{i}"]).split(" | ")
        assert specs == [str(jax_results[f"{prefix}/spec/{i}"])] * expected_state
        assert jax_results[f"{prefix}/state_same/{i}"]


@jax_only
def test_model_parallel_matches_single_device(jax_results):
    assert_same_training(jax_results, "model_parallel")
