"""Helper for test_distributed.py (not a test): TensorFlow MirroredStrategy on 2 CPUs.

Logical devices can only be configured before TensorFlow initializes, which
other tests have done in the pytest process, so test_distributed.py runs this
file in a fresh process:

    python distributed_tf_worker.py OUT.npz

It trains the same small model on one device and under
`tf.distribute.MirroredStrategy` over 2 logical CPU devices (plain; with
`skip_nonfinite=True` and a NaN batch; the same where the strategy does not
use merge_call; inside a LossScaleOptimizer) and saves the results to OUT.npz
for the test to check.
"""

import contextlib
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "inst" / "python"))

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tensorflow.python.distribute import mirrored_strategy  # noqa: E402

from keraslion import Lion  # noqa: E402

BATCH = 8


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 2))).astype(np.float32)
    # The same data with one batch inserted after the second whose second half,
    # the second replica's share, holds NaN: only that replica sees them.
    bad = np.concatenate([x[:BATCH // 2], np.full((BATCH // 2, 5), np.nan, np.float32)])
    bad_x = np.concatenate([x[:2 * BATCH], bad, x[2 * BATCH:]])
    bad_y = np.concatenate([y[:2 * BATCH], y[:BATCH], y[2 * BATCH:]])
    return x, y, bad_x, bad_y


def build(optimizer, width=4):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(width, activation="tanh"),
                              keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def train(x, y, strategy=None, epochs=2, lion=None, loss_scale=False, width=4):
    # Under a strategy, the optimizer too must be created in its scope.
    with strategy.scope() if strategy else contextlib.nullcontext():
        optimizer = Lion(learning_rate=0.01, weight_decay=0.1, **(lion or {}))
        model = build(keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer,
                      width)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return model, optimizer


def record(results, name, model, lion, strategy=None):
    for i, variable in enumerate(model.trainable_variables):
        results[f"{name}/weight/{i}"] = keras.ops.convert_to_numpy(variable)
        results[f"{name}/momentum/{i}"] = keras.ops.convert_to_numpy(
            lion._momentum_value(variable))
        results[f"{name}/momentum_dtype/{i}"] = lion._momentums[i].dtype
    results[f"{name}/iterations"] = int(keras.ops.convert_to_numpy(lion.iterations))
    results[f"{name}/nonfinite_steps"] = lion.nonfinite_steps
    results[f"{name}/replicas"] = strategy.num_replicas_in_sync if strategy else 1


def new_mirrored_strategy(merge_call=True):
    # Each strategy in one process needs its own collective keys (as in
    # TensorFlow's strategy_combinations, which also stubs out merge_call
    # this way to test strategies that run without it, e.g. XLA on GPUs).
    mirrored_strategy.MirroredStrategy._collective_key_base += 100000
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if not merge_call:
        strategy.extended._use_merge_call = lambda: False
    return strategy


def main(out):
    x, y, bad_x, bad_y = regression_data()
    results = {}
    record(results, "single", *train(x, y))
    strategy = new_mirrored_strategy()
    record(results, "mirrored", *train(x, y, strategy), strategy)
    skip = {"lion": {"skip_nonfinite": True}}
    record(results, "mirrored_skip", *train(bad_x, bad_y, strategy, **skip), strategy)
    no_merge_call = new_mirrored_strategy(merge_call=False)
    record(results, "no_merge_call_skip",
           *train(bad_x, bad_y, no_merge_call, **skip), no_merge_call)
    record(results, "loss_scale_skip",
           *train(bad_x, bad_y, strategy, epochs=1, loss_scale=True, **skip), strategy)
    # A callable beta: called once per traced step, though the replicas'
    # threads and the merged update (in another) each read it.
    calls = []
    callable_beta = {"lion": {"beta_2": lambda: calls.append(1) or 0.99}}
    record(results, "mirrored_callable_beta", *train(x, y, strategy, **callable_beta), strategy)
    results["mirrored_callable_beta/calls"] = len(calls)
    # A hidden layer of 256: its kernel and bias have int8 momentums.
    int8 = {"lion": {"momentum_dtype": "int8"}, "width": 256}
    record(results, "single_int8", *train(x, y, **int8))
    record(results, "mirrored_int8", *train(x, y, strategy, **int8), strategy)
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
