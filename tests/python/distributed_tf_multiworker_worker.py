"""Helper for test_distributed.py (not a test): one TensorFlow multi-worker process.

    python distributed_tf_multiworker_worker.py OUT.npz single
    python distributed_tf_multiworker_worker.py OUT.npz INDEX PORT_0 PORT_1

With `single` it trains on its own; otherwise it is worker INDEX of a
`tf.distribute.MultiWorkerMirroredStrategy` whose two workers listen on
localhost:PORT_0 and localhost:PORT_1 (TF_CONFIG, read when the strategy is
created, at start-up). Either way it runs Keras's custom-loop recipe
(`strategy.run` of a step that calls `optimizer.apply_gradients`), eagerly and
inside a `tf.function`, with `Lion(skip_nonfinite=True)`, over the same global
batches: each worker takes its half of each batch, and one batch holds NaN in
the second worker's half only. It saves the weights, momenta and counters to
OUT.npz for the test to compare.
"""

import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "inst" / "python"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keraslion import Lion  # noqa: E402

GLOBAL_BATCH = 8
WORKERS = 2


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 2))).astype(np.float32)
    # A batch inserted after the second whose second half, the second
    # worker's share, holds NaN: only that worker sees them.
    bad = np.concatenate([x[:GLOBAL_BATCH // 2], np.full((GLOBAL_BATCH // 2, 5), np.nan)])
    x = np.concatenate([x[:2 * GLOBAL_BATCH], bad, x[2 * GLOBAL_BATCH:]]).astype(np.float32)
    y = np.concatenate([y[:2 * GLOBAL_BATCH], y[:GLOBAL_BATCH], y[2 * GLOBAL_BATCH:]])
    return x, y


def train(strategy, shard, compiled):
    """Two epochs of the custom loop; `shard` picks this process's rows of a batch."""
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(2)])
        optimizer = Lion(learning_rate=0.01, weight_decay=0.1, skip_nonfinite=True)
        optimizer.build(model.trainable_variables)

    def step(x, y):
        with tf.GradientTape() as tape:
            # Summed over this worker's rows, divided by the global batch:
            # the all-reduced (summed) gradient is the global batch's mean.
            loss = tf.reduce_sum(tf.square(model(x) - y)) / (2 * GLOBAL_BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    def distributed_step(x, y):
        strategy.run(step, args=(x, y))

    if compiled:
        distributed_step = tf.function(distributed_step)
    x, y = regression_data()
    for _ in range(2):
        for start in range(0, len(x), GLOBAL_BATCH):
            rows = slice(start, start + GLOBAL_BATCH)
            distributed_step(tf.constant(shard(x[rows])), tf.constant(shard(y[rows])))
    return model, optimizer


def record(results, name, model, optimizer):
    for i, (variable, momentum) in enumerate(zip(model.trainable_variables,
                                                 optimizer._momentums)):
        results[f"{name}/weight/{i}"] = keras.ops.convert_to_numpy(variable)
        results[f"{name}/momentum/{i}"] = keras.ops.convert_to_numpy(momentum)
    results[f"{name}/iterations"] = int(keras.ops.convert_to_numpy(optimizer.iterations))
    results[f"{name}/nonfinite_steps"] = optimizer.nonfinite_steps


def main(out, task, *ports):
    if task == "single":
        strategy = tf.distribute.get_strategy()  # the default one: no distribution

        def shard(batch):
            return batch
    else:
        index = int(task)
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"localhost:{port}" for port in ports]},
            "task": {"type": "worker", "index": index}})
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        assert strategy.num_replicas_in_sync == WORKERS

        def shard(batch):
            half = len(batch) // WORKERS
            return batch[index * half:(index + 1) * half]
    results = {"replicas": strategy.num_replicas_in_sync}
    for name, compiled in (("function", True), ("eager", False)):
        record(results, name, *train(strategy, shard, compiled))
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
