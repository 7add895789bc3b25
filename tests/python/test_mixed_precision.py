"""Mixed precision: `fit()` under the `mixed_float16` and `mixed_bfloat16` policies.

The weights are float32 (computations in float16/bfloat16); training must not
produce NaN, and the momentum of each float32 weight must stay float32. Under
`mixed_float16`, `compile()` wraps the optimizer in a LossScaleOptimizer.
Runs on the current Keras backend.
"""

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion


@pytest.fixture
def policy(request):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy(previous)


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype(np.float32)
    # Targets of tens: the loss times the initial loss scale (2**15)
    # overflows float16, so LossScaleOptimizer must skip and rescale first.
    y = (10 * x @ rng.normal(size=(6, 1))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_fit_under_mixed_precision(policy, tmp_path):
    x, y = regression_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1, dtype="float32"),  # float32 output, as Keras advises
    ])
    model.compile(optimizer=Lion(learning_rate=0.1, weight_decay=0.01), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0).history

    losses = history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.5 * losses[0], losses

    compute_dtype = policy.split("_")[1]
    assert model.layers[0].compute_dtype == compute_dtype
    optimizer = model.optimizer
    if policy == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        lion = optimizer.inner_optimizer
        # Overflowing steps were skipped (the scale went down) without NaN.
        assert float(to_numpy(optimizer.dynamic_scale)) < 2.0**15
    else:
        lion = optimizer
    assert isinstance(lion, Lion)
    for variable, momentum in zip(model.trainable_variables, lion._momentums):
        assert variable.dtype == "float32"
        assert momentum.dtype == "float32", momentum.path
        assert np.all(np.isfinite(to_numpy(variable))), variable.path
        assert np.all(np.isfinite(to_numpy(momentum))), momentum.path
