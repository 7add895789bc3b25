"""keraslion's options beyond Keras's Lion: cautious updates and weight-decay exclusion."""

import keras
import numpy as np
import pytest
from conftest import apply_steps, assert_lion_close, numpy_lion, to_numpy

from keraslion import Lion

THETA = [1.0, -2.0, 0.5, 3.0]
GRADS = [[0.1, -0.3, 0.0, 2.0], [-0.2, 0.1, 0.05, -1.0], [0.3, 0.2, -0.1, 0.5]]


# Cautious Lion -------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_plain_matches_reference_numbers(fast):
    # Reference values computed independently from the paper's Algorithm 2.
    out = apply_steps(Lion(learning_rate=0.1, weight_decay=0.5), THETA, GRADS, fast)
    np.testing.assert_allclose(out, [0.762125, -1.8195, 0.4336875, 2.476875], rtol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
def test_cautious_matches_reference_numbers(fast):
    # Keep elements whose direction agrees with the gradient, scale by size/kept.
    # These are also timm's caution values (its 1/max(kept/size, 1e-3) equals
    # size/kept whenever anything is kept).
    out = apply_steps(Lion(learning_rate=0.1, weight_decay=0.5, cautious=True), THETA, GRADS, fast)
    np.testing.assert_allclose(out, [0.73204167, -1.78941667, 0.4336875, 2.44679167], rtol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
def test_cautious_matches_numpy_oracle_on_random_steps(fast):
    rng = np.random.default_rng(3)
    theta = rng.normal(size=(6, 5)).astype(np.float32)
    # Gradients correlated over time so that direction and gradient sometimes disagree.
    grads, g = [], np.zeros((6, 5), np.float32)
    for _ in range(25):
        g = (0.5 * g + rng.normal(size=(6, 5))).astype(np.float32)
        grads.append(g)
    out = apply_steps(Lion(learning_rate=0.01, weight_decay=0.1, cautious=True), theta, grads, fast)
    expected, _ = numpy_lion(theta, grads, 0.01, weight_decay=0.1, cautious=True)
    assert_lion_close(out, expected, 0.01)


@pytest.mark.parametrize("fast", [True, False])
def test_cautious_step_is_zero_when_nothing_agrees(fast):
    optimizer = Lion(learning_rate=0.1, beta_1=1.0, cautious=True)
    variable = keras.Variable(np.zeros(3, np.float32))
    if not fast:
        optimizer._fast_path = None
    optimizer.apply([keras.ops.convert_to_tensor(np.array([1.0, 2.0, -1.0], np.float32))],
                    [variable])
    # With beta_1 = 1 the direction follows the momentum: after one step it is
    # sign(0.01 * g); a gradient of the opposite sign everywhere keeps nothing.
    before = to_numpy(variable)
    optimizer.apply([keras.ops.convert_to_tensor(np.array([-1.0, -2.0, 1.0], np.float32))],
                    [variable])
    np.testing.assert_array_equal(to_numpy(variable), before)
    assert np.all(np.isfinite(to_numpy(variable)))


def test_cautious_momentum_update_is_unchanged():
    rng = np.random.default_rng(5)
    grads = [rng.normal(size=8).astype(np.float32) for _ in range(5)]
    momenta = []
    for cautious in (False, True):
        optimizer = Lion(learning_rate=0.1, cautious=cautious)
        apply_steps(optimizer, np.zeros(8), grads)
        momenta.append(to_numpy(optimizer._momentums[0]))
    np.testing.assert_allclose(momenta[0], momenta[1], rtol=1e-6)


def test_cautious_inside_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype(np.float32)
    y = (x[:, :1] * 2 - x[:, 1:2]).astype(np.float32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=Lion(learning_rate=3e-3, cautious=True), loss="mse")
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]


# Weight-decay exclusion ---------------------------------------------------------------

def decay_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    normed = keras.layers.LayerNormalization(name="norm")(hidden)
    outputs = keras.layers.Dense(1, name="head")(normed)
    return keras.Model(inputs, outputs)


def decayed_after_zero_steps(optimizer, model, steps=2):
    """Which variables shrank under weight decay alone (zero gradients)."""
    before = {v.path: to_numpy(v).copy() for v in model.trainable_variables}
    zeros = [keras.ops.zeros(v.shape) for v in model.trainable_variables]
    for _ in range(steps):
        optimizer.apply(zeros, model.trainable_variables)
    return {v.path: not np.allclose(to_numpy(v), before[v.path])
            for v in model.trainable_variables if np.any(before[v.path] != 0)}


def test_patterns_match_paths_and_names():
    model = decay_model()
    for v in model.trainable_variables:  # make every variable non-zero
        v.assign(keras.ops.ones(v.shape))
    optimizer = Lion(learning_rate=0.1, weight_decay=0.5,
                     exclude_from_weight_decay=["^head/", "gamma"])
    decayed = decayed_after_zero_steps(optimizer, model)
    assert decayed == {
        "dense/kernel": True, "dense/bias": True,
        "norm/gamma": False, "norm/beta": True,   # "gamma" matches a name
        "head/kernel": False, "head/bias": False,  # "^head/" matches paths
    }


def test_anchored_patterns_match_a_sequential_model_built_in_code_and_loaded(tmp_path):
    # Built in code, Keras puts the model's name in front ("seq/head/kernel");
    # loaded from a file, it does not ("head/kernel"). Both must decay alike.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="body"),
                              keras.layers.Dense(2, name="head")], name="seq")
    model.compile(optimizer=Lion(weight_decay=0.5,
                                 exclude_from_weight_decay=["^head/kernel$", "bias$"]),
                  loss="mse")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert model.layers[1].kernel.path == "seq/head/kernel"
    assert loaded.layers[1].kernel.path == "head/kernel"
    for m in (model, loaded):
        m.optimizer.build(m.trainable_variables)
        decays = {v.path.split("/", 1)[-1] if v.path.startswith("seq/") else v.path:
                  m.optimizer._use_weight_decay(v) for v in m.trainable_variables}
        assert decays == {"body/kernel": True, "body/bias": False,
                          "head/kernel": False, "head/bias": False}


def test_plain_string_is_one_pattern_not_its_characters():
    model = decay_model()
    for v in model.trainable_variables:
        v.assign(keras.ops.ones(v.shape))
    optimizer = Lion(learning_rate=0.1, weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names="bias")
    decayed = decayed_after_zero_steps(optimizer, model)
    # Keras's own method would also exclude "gamma", "beta" and "kernel"
    # (each holds a character of "bias").
    assert decayed["norm/gamma"] and decayed["norm/beta"] and decayed["dense/kernel"]
    assert not decayed["dense/bias"] and not decayed["head/bias"]
    assert optimizer.get_config()["exclude_from_weight_decay"] == ["bias"]


def test_method_after_build_is_an_error_that_changes_nothing():
    model = decay_model()
    optimizer = Lion(weight_decay=0.1, exclude_from_weight_decay="bias")
    optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        optimizer.exclude_from_weight_decay(var_names=["kernel"])
    assert optimizer.get_config()["exclude_from_weight_decay"] == ["bias"]


def test_options_survive_save_and_load(tmp_path):
    model = decay_model()
    model.compile(optimizer=Lion(learning_rate=1e-3, weight_decay=0.1, cautious=True,
                                 exclude_from_weight_decay=["bias", "norm"],
                                 momentum_dtype="bfloat16", skip_nonfinite=True),
                  loss="mse")
    x = np.ones((8, 3), np.float32)
    model.fit(x, np.zeros((8, 1), np.float32), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    config = loaded.optimizer.get_config()
    assert isinstance(loaded.optimizer, Lion)
    assert config["cautious"] is True and config["skip_nonfinite"] is True
    assert config["exclude_from_weight_decay"] == ["bias", "norm"]
    assert config["momentum_dtype"] == "bfloat16"
    assert {m.dtype for m in loaded.optimizer._momentums} == {"bfloat16"}


def test_exclusion_inside_fit():
    # The "idle" layer's output is multiplied by zero: its gradient is zero, so
    # only weight decay moves it, by a factor (1 - lr * wd) per step.
    inputs = keras.Input((3,))
    used = keras.layers.Dense(1, name="used")(inputs)
    idle = keras.layers.Dense(1, name="idle", kernel_initializer="ones",
                              bias_initializer="ones")(inputs)
    model = keras.Model(inputs, used + 0.0 * idle)
    model.compile(optimizer=Lion(learning_rate=0.01, weight_decay=0.5,
                                 exclude_from_weight_decay="idle/bias"), loss="mse")
    x = np.ones((32, 3), np.float32)
    steps = 4
    model.fit(x, np.zeros((32, 1), np.float32), batch_size=8, epochs=1, verbose=0)
    kernel, bias = (to_numpy(v) for v in model.get_layer("idle").trainable_variables)
    np.testing.assert_allclose(kernel, np.full((3, 1), (1 - 0.01 * 0.5) ** steps), rtol=1e-6)
    np.testing.assert_array_equal(bias, [1.0])
