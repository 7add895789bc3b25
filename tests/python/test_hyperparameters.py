"""Hyperparameters changed between steps take effect at the next step, as in Keras.

`weight_decay` (also from `None` to a number and back), `beta_1`, `beta_2`,
`learning_rate` and `cautious`, on the fast and the plain path of the
current backend.
"""

import keras
import numpy as np
import pytest
from conftest import numpy_lion, to_numpy

from keraslion import Lion

# Each step's settings, changed between steps as a user or a callback would.
SCHEDULE = [
    {"learning_rate": 0.1, "beta_1": 0.9, "beta_2": 0.99, "weight_decay": None},
    {"learning_rate": 0.1, "beta_1": 0.9, "beta_2": 0.99, "weight_decay": 0.5},
    {"learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9, "weight_decay": 0.5},
    {"learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9, "weight_decay": None},
    {"learning_rate": 0.2, "beta_1": 0.95, "beta_2": 0.5, "weight_decay": 0.25},
]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("first", [0, 1], ids=["from_none", "from_a_number"])
def test_changes_between_steps_take_effect_at_the_next_step(fast, first):
    rng = np.random.default_rng(0)
    shapes = [(6, 4), (4,)]
    thetas = [rng.normal(size=s) for s in shapes]
    momenta = [np.zeros(s) for s in shapes]
    optimizer = Lion(**SCHEDULE[first], exclude_from_weight_decay="bias")
    if not fast:
        optimizer._fast_path = None
    variables = [keras.Variable(t.astype(np.float32), name=n)
                 for t, n in zip(thetas, ["kernel", "bias"])]
    for settings in SCHEDULE[first:] * 2:
        for key, value in settings.items():
            setattr(optimizer, key, value)
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        for i, name in enumerate(["kernel", "bias"]):
            oracle = dict(settings, weight_decay=0.0 if name == "bias" else
                          settings["weight_decay"] or 0.0)
            thetas[i], momenta[i] = numpy_lion(thetas[i], [grads[i]], momentum=momenta[i],
                                               **oracle)
            np.testing.assert_allclose(to_numpy(variables[i]), thetas[i], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(to_numpy(optimizer._momentums[i]), momenta[i],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("momentum_dtype", [None, "int8"])
def test_cautious_set_between_steps_is_used_at_the_next_step(fast, momentum_dtype):
    # TensorFlow's fast path kept the step it had compiled without it.
    optimizer = Lion(learning_rate=0.1, beta_1=1.0, momentum_dtype=momentum_dtype)
    if not fast:
        optimizer._fast_path = None
    variable = keras.Variable(np.zeros((4, 512), np.float32))
    optimizer.apply([keras.ops.ones((4, 512))], [variable])
    optimizer.cautious = True
    before = to_numpy(variable).copy()
    # The momentum (the interpolation, with beta_1 = 1) is positive: cautious
    # Lion holds back the elements whose gradient is negative and doubles the rest.
    gradient = np.tile([1.0, -1.0], (4, 256)).astype(np.float32)
    optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
    np.testing.assert_allclose(to_numpy(variable) - before,
                               np.where(gradient > 0, -0.2, 0.0), atol=1e-6)


class ChangeHyperparameters(keras.callbacks.Callback):
    """Sets new values at the start of the second epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.model.optimizer.weight_decay = 0.5
            self.model.optimizer.learning_rate = 0.02
            self.model.optimizer.beta_1 = 0.5
            self.model.optimizer.beta_2 = 0.9


def fit_with_callback(optimizer, run_eagerly):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 1))).astype(np.float32)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=run_eagerly)
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
              callbacks=[ChangeHyperparameters()])
    return [to_numpy(v) for v in model.trainable_variables]


@pytest.mark.parametrize("weight_decay", [None, 0.1], ids=["from_none", "from_a_number"])
@pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "compiled"])
def test_callback_changes_inside_fit_act_as_in_keras_lion(run_eagerly, weight_decay):
    # Eager: the new values act from the second epoch. Compiled: as in Keras,
    # a Python number traced into the step keeps its traced value, and the
    # learning rate, a variable, changes.
    settings = {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.99,
                "weight_decay": weight_decay}
    ours = fit_with_callback(Lion(**settings), run_eagerly)
    theirs = fit_with_callback(keras.optimizers.Lion(**settings), run_eagerly)
    constant = fit_with_callback(keras.optimizers.Lion(**dict(settings, weight_decay=0.5)),
                                 run_eagerly)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The change itself made a difference: it is not a decay of 0.5 from the start.
    assert max(np.max(np.abs(a - c)) for a, c in zip(ours, constant)) > 1e-3
