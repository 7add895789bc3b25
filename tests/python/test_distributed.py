"""Distributed training on the engines Keras already has, on this CPU machine.

Each engine needs devices configured before it starts, so each test runs a
helper script (distributed_*_worker.py) in a fresh Python process and checks
what it saved:

- TensorFlow: `tf.distribute.MirroredStrategy` over 2 logical CPU devices;
  `MultiWorkerMirroredStrategy` with 2 worker processes on localhost;
- JAX: `keras.distribution.DataParallel` over 4 virtual CPU devices, and
  `ModelParallel` with a Dense kernel sharded across 2 of them; both again
  over 2 processes joined by `jax.distributed`, 2 devices each.

Each runs only under its own backend (KERAS_BACKEND), and so once per
`make test`; on the others it is skipped. The processes of one run start
together and are killed (their whole process group, with SIGKILL: a hung
TensorFlow worker ignores SIGTERM) if they outlive a time limit, so that a
deadlock fails the test instead of hanging it.
"""

import os
import signal
import socket
import subprocess
import sys
import time
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


def run_workers(script, tmp_path, tasks, timeout=300):
    """Runs `script NAME.npz *args` for each (name, args) in `tasks`, all at
    once; returns what they saved, each key prefixed with its task's name."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = {}
    for name, args in tasks.items():
        command = [sys.executable, str(HERE / script), str(tmp_path / f"{name}.npz"), *args]
        with (tmp_path / f"{name}.log").open("w") as log:
            processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=log,
                                               start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        for process in processes.values():
            process.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script} {list(tasks)} still running after {timeout} s (deadlock?)")
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    results = {}
    for name, process in processes.items():
        log = (tmp_path / f"{name}.log").read_text()
        assert process.returncode == 0, f"{script} {name} failed:\n{log[-5000:]}"
        with np.load(tmp_path / f"{name}.npz") as saved:
            results.update({f"{name}/{key}": saved[key] for key in saved.files})
    return results


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [str(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports


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


@pytest.fixture(scope="module")
def tf_multiworker_results(tmp_path_factory):
    ports = free_ports(2)
    return run_workers("distributed_tf_multiworker_worker.py",
                       tmp_path_factory.mktemp("tf_multiworker"),
                       {"single": ["single"], "worker0": ["0", *ports], "worker1": ["1", *ports]})


@pytest.fixture(scope="module")
def jax_multiprocess_results(tmp_path_factory):
    port = free_ports(1)
    return run_workers("distributed_jax_multiprocess_worker.py",
                       tmp_path_factory.mktemp("jax_multiprocess"),
                       {"single": ["single"], "process0": ["0", *port],
                        "process1": ["1", *port]})


def assert_workers_agree(results, run, workers):
    """Every worker ends with the same weights and state, bit for bit."""
    first, *others = workers
    keys = [key.removeprefix(f"{first}/") for key in results
            if key.startswith(f"{first}/{run}/")]
    assert keys
    for other in others:
        for key in keys:
            np.testing.assert_array_equal(results[f"{other}/{key}"], results[f"{first}/{key}"],
                                          err_msg=f"{other}/{key}")


# TensorFlow: MirroredStrategy ------------------------------------------------------

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.distribute.MirroredStrategy is TensorFlow's engine (KERAS_BACKEND=tensorflow)")


@tensorflow_only
def test_mirrored_strategy_matches_single_device(tf_results):
    assert tf_results["mirrored/replicas"] == 2
    assert_same_training(tf_results, "mirrored")


@tensorflow_only
def test_mirrored_strategy_reads_a_callable_beta_once_per_step(tf_results):
    # fit() traces its step once: one call, where each variable's update called it.
    assert tf_results["mirrored_callable_beta/calls"] == 1
    assert_same_training(tf_results, "mirrored_callable_beta")


@tensorflow_only
def test_mirrored_strategy_with_int8_momentum_matches_single_device(tf_results):
    assert tf_results["mirrored_int8/replicas"] == 2
    assert [str(tf_results[f"mirrored_int8/momentum_dtype/{i}"]) for i in range(4)] == [
        "int8", "int8", "float32", "float32"]
    # Both replicas round with the same bits: as one device.
    assert_same_training(tf_results, "mirrored_int8", reference="single_int8")


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
        if key.startswith("loss_scale_skip/") and "/momentum_dtype/" not in key:
            assert np.all(np.isfinite(value)), key


# TensorFlow: MultiWorkerMirroredStrategy (custom loop; Keras's fit() does not run
# under it) ------------------------------------------------------------------------------

@tensorflow_only
@pytest.mark.parametrize("run", ["eager", "function"])
def test_multi_worker_skips_a_nonfinite_step_seen_by_one_worker(tf_multiworker_results, run):
    # The NaN reached only the second worker. Both skipped the step, once per
    # epoch (a worker that skipped alone would leave the other waiting for
    # ever), and trained on as one process over the same global batches.
    results = tf_multiworker_results
    workers = ["worker0", "worker1"]
    assert [results[f"{w}/replicas"] for w in workers] == [2, 2]
    assert_workers_agree(results, run, workers)
    for worker in workers:
        assert results[f"{worker}/{run}/nonfinite_steps"] == 2
        assert results[f"{worker}/{run}/iterations"] == 12
        assert_same_training(results, f"{worker}/{run}", reference=f"single/{run}")


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
def test_model_parallel_shards_int8_state_as_its_kernel(jax_results):
    # The kernel (6, 512) is split by columns over 2 devices; its int8 state
    # (6, 514) alike: one block of 256 codes and its exponent byte per device.
    spec = "PartitionSpec(None, 'model')"
    assert jax_results["int8_model_parallel/spec"] == spec
    assert jax_results["int8_model_parallel/state_spec"] == spec
    assert list(jax_results["int8_model_parallel/state_local_shape"]) == [6, 257]
    # Trained alike: the same random bits per element wherever it lives (a
    # code may differ by one where the sharded gradients round differently).
    single, sharded = (jax_results[f"int8_{run}/weight"] for run in ("single", "model_parallel"))
    assert np.mean(np.abs(single - sharded) > 1e-5) < 0.01
    m_single, m_sharded = (jax_results[f"int8_{run}/momentum"]
                           for run in ("single", "model_parallel"))
    np.testing.assert_allclose(m_sharded, m_single, rtol=0.15, atol=1e-6)


@jax_only
def test_model_parallel_matches_single_device(jax_results):
    assert_same_training(jax_results, "model_parallel")


@jax_only
@pytest.mark.parametrize("run", ["data_parallel", "model_parallel"])
def test_two_processes_train_as_one(jax_multiprocess_results, run):
    # DataParallel: each process fed its half of every global batch, and the
    # NaN only reached the second; ModelParallel: each fed whole batches and
    # held half of the hidden kernel. Both processes skipped the NaN batch
    # (once per epoch) and ended as one process over the same global batches.
    results = jax_multiprocess_results
    processes = ["process0", "process1"]
    assert [results[f"{p}/devices"] for p in processes] == [4, 4]
    assert [results[f"{p}/local_devices"] for p in processes] == [2, 2]
    assert_workers_agree(results, run, processes)
    for process in processes:
        assert results[f"{process}/{run}/nonfinite_steps"] == 2
        assert results[f"{process}/{run}/iterations"] == 8
        assert_same_training(results, f"{process}/{run}", reference=f"single/{run}")


@jax_only
def test_model_parallel_across_processes_shards_the_momentum_as_its_variable(
        jax_multiprocess_results):
    results = jax_multiprocess_results
    prefix = "process0/model_parallel"
    paths = [str(results[f"{prefix}/path/{i}"]) for i in range(4)]
    kernel = next(i for i, path in enumerate(paths) if path.endswith("hidden/kernel"))
    assert results[f"{prefix}/spec/{kernel}"] == "PartitionSpec(None, 'model')"
    # Each process holds 4 of the kernel's 8 columns, and of its momentum's.
    assert tuple(results[f"{prefix}/local_shape/{kernel}"]) == (6, 4)
    for i in range(4):
        assert results[f"{prefix}/momentum_spec/{i}"] == results[f"{prefix}/spec/{i}"]
        assert results[f"{prefix}/momentum_sharded_alike/{i}"]
        np.testing.assert_array_equal(results[f"{prefix}/momentum_local_shape/{i}"],
                                      results[f"{prefix}/local_shape/{i}"])
