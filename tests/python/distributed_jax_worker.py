"""Helper for test_distributed.py (not a test): JAX on 4 virtual CPU devices.

`--xla_force_host_platform_device_count` only works if it is set before JAX
starts, so test_distributed.py runs this file in a fresh process:

    python distributed_jax_worker.py OUT.npz

It trains the same small model on one device, under
`keras.distribution.DataParallel` over 4 devices, and under `ModelParallel`
with a `LayoutMap` that shards a Dense kernel across 2 devices, and saves the
weights, momenta and shardings to OUT.npz for the test to check.
"""

import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "inst" / "python"))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import distribution  # noqa: E402

from keraslion import Lion  # noqa: E402

BATCH = 16


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 2))).astype(np.float32)
    # The same data with a batch holding NaN inserted after the first batch.
    bad_x = np.concatenate([x[:BATCH], np.full((BATCH, 6), np.nan, np.float32), x[BATCH:]])
    bad_y = np.concatenate([y[:BATCH], y[:BATCH], y[BATCH:]])
    return x, y, bad_x, bad_y


def build(**settings):
    # Seeded initializers rather than keras.utils.set_random_seed(), which
    # imports TensorFlow (seconds) to seed it too.
    def dense(units, name, **kwargs):
        return keras.layers.Dense(units, name=name, **kwargs,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed=7))

    model = keras.Sequential([keras.Input((6,)), dense(8, "hidden", activation="tanh"),
                              dense(2, "out")])
    model.compile(optimizer=Lion(learning_rate=0.01, weight_decay=0.1, **settings), loss="mse")
    return model


def build_wide(**settings):
    """A hidden kernel of (6, 512): rows of 512, two blocks, stored in int8."""
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(512, name="hidden", activation="tanh",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=7)),
        keras.layers.Dense(2, name="out",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=8))])
    model.compile(optimizer=Lion(learning_rate=0.01, momentum_dtype="int8", **settings),
                  loss="mse")
    return model


def record_int8(results, name, model):
    """The hidden kernel's weights, decoded momentum, and the sharding of
    its int8 state (codes and exponent bytes in one array)."""
    optimizer = model.optimizer
    kernel = next(v for v in model.trainable_variables if v.path.endswith("hidden/kernel"))
    state = optimizer._momentums[optimizer._get_variable_index(kernel)]
    results[f"{name}/weight"] = keras.ops.convert_to_numpy(kernel)
    results[f"{name}/momentum"] = keras.ops.convert_to_numpy(optimizer._momentum_value(kernel))
    for key, variable in (("spec", kernel), ("state_spec", state)):
        results[f"{name}/{key}"] = str(getattr(variable.value.sharding, "spec", None))
    results[f"{name}/state_local_shape"] = list(state.value.addressable_shards[0].data.shape)


def train(model, x, y):
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    return model


def record(results, name, model):
    optimizer = model.optimizer
    for i, (variable, momentum) in enumerate(zip(model.trainable_variables,
                                                 optimizer._momentums)):
        results[f"{name}/weight/{i}"] = keras.ops.convert_to_numpy(variable)
        results[f"{name}/momentum/{i}"] = keras.ops.convert_to_numpy(momentum).astype(np.float32)
        results[f"{name}/devices/{i}"] = len(variable.value.sharding.device_set)
    results[f"{name}/iterations"] = int(keras.ops.convert_to_numpy(optimizer.iterations))
    results[f"{name}/nonfinite_steps"] = optimizer.nonfinite_steps


def record_shardings(results, name, model):
    """Each trainable variable's sharding, and whether each of its optimizer
    variables (momentum, moving average) has the same one."""
    optimizer = model.optimizer
    averages = getattr(optimizer, "_model_variables_moving_average", None) or []
    for i, variable in enumerate(model.trainable_variables):
        sharding = variable.value.sharding
        results[f"{name}/path/{i}"] = variable.path
        results[f"{name}/spec/{i}"] = str(sharding.spec)
        state = [optimizer._momentums[i], *(averages[i:i + 1])]
        results[f"{name}/state_count/{i}"] = len(state)
        results[f"{name}/state_specs/{i}"] = " | ".join(str(s.value.sharding.spec) for s in state)
        results[f"{name}/state_same/{i}"] = all(
            s.value.sharding.is_equivalent_to(sharding, len(variable.shape)) for s in state)


def main(out):
    x, y, bad_x, bad_y = regression_data()
    results = {"device_count": jax.device_count()}
    record(results, "single", train(build(), x, y))

    devices = distribution.list_devices("cpu")
    with distribution.DataParallel(devices=devices).scope():
        record(results, "data_parallel", train(build(), x, y))
        record(results, "data_parallel_skip",
               train(build(skip_nonfinite=True), bad_x, bad_y))

    mesh = distribution.DeviceMesh((2, 2), ("batch", "model"), devices)
    layout_map = distribution.LayoutMap(mesh)
    layout_map[".*hidden/kernel"] = (None, "model")
    model_parallel = distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    for name, settings in [("model_parallel", {}),
                           ("model_parallel_bf16_ema",
                            {"momentum_dtype": "bfloat16", "use_ema": True})]:
        with model_parallel.scope():
            model = build(**settings)
            model.optimizer.build(model.trainable_variables)
            record_shardings(results, f"{name}/built", model)
            train(model, x, y)
        record_shardings(results, f"{name}/trained", model)
        record(results, name, model)
    record_int8(results, "int8_single", train(build_wide(), x, y))
    with model_parallel.scope():
        record_int8(results, "int8_model_parallel", train(build_wide(), x, y))
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
