"""Saving and resuming: `model.save()`, `keras.saving.load_model()`, training on.

A model saved mid-training and loaded again (with `safe_mode=True` and no
`custom_objects`: importing keraslion registers Lion) gets back a Lion with
the same hyperparameters, iteration count, momentum and every other optimizer
variable, and training the loaded model on gives bit for bit the weights of
a run that never stopped. Runs on the current Keras backend.
"""

import copy
import pickle
import warnings

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion, StateWarning


def regression_data():
    rng = np.random.default_rng(0)
    # 7 batches of 8 per epoch: an odd count, so that with gradient
    # accumulation over 2 steps the save falls in the middle of a cycle.
    x = rng.normal(size=(56, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 2))).astype(np.float32)
    return x, y


X, Y = regression_data()

RESUME_SETTINGS = {
    # A schedule: the learning rate depends on the restored iteration count.
    "schedule_weight_decay": {
        "learning_rate": keras.optimizers.schedules.CosineDecay(0.02, decay_steps=40),
        "weight_decay": 0.1, "exclude_from_weight_decay": ["bias"], "name": "my_lion"},
    # Accumulators (saved mid-cycle), moving averages, the skip counter and
    # bfloat16 momentum come back too.
    "accumulation_ema_options": {
        "learning_rate": 0.01, "beta_1": 0.95, "beta_2": 0.98, "cautious": True,
        "gradient_accumulation_steps": 2, "use_ema": True, "ema_overwrite_frequency": 3,
        "skip_nonfinite": True, "momentum_dtype": "bfloat16", "clipnorm": 1.0},
}


def build_model(optimizer):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def fit(model, initial_epoch, epochs):
    model.fit(X, Y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch,
              shuffle=False, verbose=0)


def optimizer_state(optimizer):
    return [(v.path, to_numpy(v).copy()) for v in optimizer.variables]


def assert_identical(actual, expected):
    assert len(actual) == len(expected)
    for (path, value), (_, reference) in zip(actual, expected):
        assert value.dtype == reference.dtype, path
        np.testing.assert_array_equal(value, reference, err_msg=path)


@pytest.mark.parametrize("settings", RESUME_SETTINGS.values(), ids=RESUME_SETTINGS.keys())
def test_resuming_from_a_saved_model_is_bit_exact(settings, tmp_path):
    model = build_model(Lion(**settings))
    model.optimizer.build(model.trainable_variables)
    state = [*model.weights, *model.optimizer.variables]
    initial = [to_numpy(v).copy() for v in state]
    fit(model, 0, 2)
    saved_state = optimizer_state(model.optimizer)
    saved_config = model.optimizer.get_config()
    path = tmp_path / "model.keras"
    model.save(path)
    reference = model
    if settings.get("use_ema"):
        # Each fit() ends by writing the moving averages into the weights, so the
        # run to match is this model trained on. (On JAX this second fit() failed
        # before keraslion copied the averages: see the moving-averages fix.)
        fit(reference, 2, 4)
    else:
        # The run that never stopped, from the same start (and compiled function).
        for variable, value in zip(state, initial):
            variable.assign(value)
        fit(reference, 0, 4)

    loaded = keras.saving.load_model(path, safe_mode=True)
    optimizer = loaded.optimizer
    assert type(optimizer) is Lion
    assert optimizer is not model.optimizer
    assert optimizer.get_config() == saved_config
    # Iteration count, momentum (in its dtype), and every other optimizer variable.
    assert_identical(optimizer_state(optimizer), saved_state)
    assert int(to_numpy(optimizer.iterations)) > 0
    assert any(np.any(value != 0) for path, value in saved_state if "momentum" in path)

    fit(loaded, 2, 4)
    for weight, expected in zip(loaded.weights, reference.weights):
        np.testing.assert_array_equal(to_numpy(weight), to_numpy(expected), err_msg=weight.path)
    assert_identical(optimizer_state(optimizer), optimizer_state(reference.optimizer))


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda x: pickle.loads(pickle.dumps(x))}


@pytest.mark.parametrize("make_copy", COPIES.values(), ids=COPIES.keys())
def test_a_copied_model_keeps_the_optimizer_state(make_copy):
    # Keras copies and pickles through its saving code: the copy's optimizer
    # is built with the copy's weights and loads the state.
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(300, activation="tanh"),
                              keras.layers.Dense(2)])  # a kernel large enough for int8 codes
    model.compile(optimizer=Lion(0.01, momentum_dtype="int8", use_ema=True,
                                 skip_nonfinite=True), loss="mse")
    fit(model, 0, 1)
    copied = make_copy(model)
    assert copied.optimizer is not model.optimizer
    assert copied.optimizer.get_config() == model.optimizer.get_config()
    assert_identical(optimizer_state(copied.optimizer), optimizer_state(model.optimizer))
    assert int(to_numpy(copied.optimizer.iterations)) == 7


@pytest.mark.parametrize("make_copy", COPIES.values(), ids=COPIES.keys())
def test_a_copied_optimizer_keeps_its_options_and_says_it_lost_the_state(make_copy):
    optimizer = Lion(0.01, beta_1=0.8, weight_decay=0.1, momentum_dtype="int8",
                     exclude_from_weight_decay=["bias"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_copy(optimizer).get_config() == optimizer.get_config()  # Keras's contract

    # Built before any step (as evaluate() does on JAX): nothing lost, nothing said.
    model = build_model(optimizer)
    optimizer.build(model.trainable_variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not make_copy(optimizer).built

    # After steps: the copy (not built, as Keras's own optimizers' copies)
    # has no place for the state, and says so; the original keeps it. Also
    # wrapped, as mixed precision does (Keras's loader warns for the wrapper).
    fit(model, 0, 1)
    before = optimizer_state(optimizer)
    for original in (optimizer, keras.optimizers.LossScaleOptimizer(optimizer)):
        with pytest.warns(StateWarning, match=r"starts afresh, without the state saved with it "
                          r"after 7 steps .* only a copy of the model keeps"):
            copied = make_copy(original)
        assert type(copied) is type(original)
        assert copied.get_config() == original.get_config()
        assert not copied.built
        assert_identical(optimizer_state(optimizer), before)
