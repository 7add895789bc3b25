"""Helper for test_distributed.py (not a test): one JAX process of two.

    python distributed_jax_multiprocess_worker.py OUT.npz single
    python distributed_jax_multiprocess_worker.py OUT.npz INDEX PORT

Each process has 2 virtual CPU devices. With `single` it trains on its own;
otherwise it is process INDEX of 2 joined by `jax.distributed` (coordinator on
localhost:PORT, gloo collectives across the processes), 4 devices in all.
Either way it runs `fit()` with `Lion(skip_nonfinite=True)` over the same
global batches (each process feeds its half of each, as Keras expects), one
of which holds NaN in the second process's half only, under
`keras.distribution.DataParallel`; then under `ModelParallel` with the hidden
kernel sharded across the two processes, where each process holds the whole
batch (the batch axis is within a process) and so feeds all of it. It saves the weights, momenta,
counters and shardings to OUT.npz for the test to compare.
"""

import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "inst" / "python"))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from keras import distribution  # noqa: E402

from keraslion import Lion  # noqa: E402

GLOBAL_BATCH = 16
PROCESSES = 2


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 2))).astype(np.float32)
    # A batch inserted after the first whose second half, the second
    # process's share, holds NaN: only that process reads them.
    bad = np.concatenate([x[:GLOBAL_BATCH // 2], np.full((GLOBAL_BATCH // 2, 6), np.nan)])
    x = np.concatenate([x[:GLOBAL_BATCH], bad, x[GLOBAL_BATCH:]]).astype(np.float32)
    y = np.concatenate([y[:GLOBAL_BATCH], y[:GLOBAL_BATCH], y[GLOBAL_BATCH:]])
    return x, y


def build():
    # Seeded initializers rather than keras.utils.set_random_seed(), which
    # imports TensorFlow (seconds) to seed it too.
    def dense(units, name, **kwargs):
        return keras.layers.Dense(units, name=name, **kwargs,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed=7))

    model = keras.Sequential([keras.Input((6,)), dense(8, "hidden", activation="tanh"),
                              dense(2, "out")])
    model.compile(loss="mse", optimizer=Lion(learning_rate=0.01, weight_decay=0.1,
                                             skip_nonfinite=True))
    return model


def train(shard):
    """Builds and fits a model, each process on its rows of every global batch."""
    x, y = regression_data()
    batches = range(0, len(x), GLOBAL_BATCH)
    x, y = (np.concatenate([shard(data[i:i + GLOBAL_BATCH]) for i in batches]) for data in (x, y))
    model = build()
    model.optimizer.build(model.trainable_variables)
    model.fit(x, y, batch_size=len(shard(np.zeros(GLOBAL_BATCH))), epochs=2, shuffle=False,
              verbose=0)
    return model


def gather(variable):
    """The whole value, also where other processes hold parts of it."""
    return np.asarray(multihost_utils.process_allgather(variable.value, tiled=True))


def record(results, name, model):
    optimizer = model.optimizer
    for i, (variable, momentum) in enumerate(zip(model.trainable_variables,
                                                 optimizer._momentums)):
        results[f"{name}/path/{i}"] = variable.path
        results[f"{name}/weight/{i}"] = gather(variable)
        results[f"{name}/momentum/{i}"] = gather(momentum)
        results[f"{name}/spec/{i}"] = str(variable.value.sharding.spec)
        results[f"{name}/momentum_spec/{i}"] = str(momentum.value.sharding.spec)
        results[f"{name}/momentum_sharded_alike/{i}"] = momentum.value.sharding.is_equivalent_to(
            variable.value.sharding, len(variable.shape))
        # The part of each that this process's first device holds.
        for key, value in (("local_shape", variable), ("momentum_local_shape", momentum)):
            results[f"{name}/{key}/{i}"] = value.value.addressable_shards[0].data.shape
    results[f"{name}/iterations"] = int(gather(optimizer.iterations))
    results[f"{name}/nonfinite_steps"] = int(gather(optimizer._nonfinite_steps))


def main(out, task, port=None):
    if task == "single":
        def shard(batch):
            return batch
    else:
        index = int(task)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                                   num_processes=PROCESSES, process_id=index)

        def shard(batch):
            half = len(batch) // PROCESSES
            return batch[index * half:(index + 1) * half]
    devices = distribution.list_devices("cpu")
    results = {"devices": len(devices), "local_devices": jax.local_device_count()}
    # Each process feeds NumPy arrays it has sharded itself (Keras shards only
    # a tf.data.Dataset on its own).
    data_parallel = distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    with data_parallel.scope():
        record(results, "data_parallel", train(shard))
    # The model axis spans the processes: each holds half of the hidden kernel.
    mesh = distribution.DeviceMesh((2, len(devices) // 2), ("model", "batch"), devices)
    layout_map = distribution.LayoutMap(mesh)
    layout_map[".*hidden/kernel"] = (None, "model")
    model_parallel = distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch",
                                                auto_shard_dataset=False)
    with model_parallel.scope():
        record(results, "model_parallel", train(lambda batch: batch))
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
