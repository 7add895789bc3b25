"""Numerics of keraslion.Lion on the current Keras backend (KERAS_BACKEND)."""

import keras
import numpy as np
import pytest
from conftest import apply_steps, assert_lion_close, numpy_lion, to_numpy

from keraslion import Lion, lion_hparams_from_adamw

rng = np.random.default_rng(42)


def random_problem(steps=25, shape=(64,)):
    theta = rng.normal(size=shape).astype(np.float32)
    grads = [rng.normal(size=shape).astype(np.float32) for _ in range(steps)]
    return theta, grads


# Keras's published values for Lion (keras/src/optimizers/lion_test.py) ----------

@pytest.mark.parametrize("fast", [True, False])
def test_single_step_matches_keras_published_value(fast):
    out = apply_steps(Lion(learning_rate=0.5), [1.0, 2.0, 3.0, 4.0], [[1.0, 6.0, 7.0, 2.0]], fast)
    np.testing.assert_allclose(out, [0.5, 1.5, 2.5, 3.5])


@pytest.mark.parametrize("fast", [True, False])
def test_weight_decay_matches_keras_published_value(fast):
    out = apply_steps(Lion(learning_rate=1.0, weight_decay=0.004), [2.0], [[0.0]] * 3, fast)
    np.testing.assert_allclose(out, [2 * 0.996**3], rtol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
def test_golden_sequence_matches_keras_published_values(fast):
    optimizer = Lion()
    if not fast:
        optimizer._fast_path = None
    x = keras.Variable(np.ones(10, np.float32))
    grads = [np.full(10, 0.01, np.float32)] + [np.arange(0.1, 1.1, 0.1, dtype=np.float32)] * 4
    for step, g in enumerate(grads):
        optimizer.apply([keras.ops.convert_to_tensor(g)], [x])
        np.testing.assert_allclose(to_numpy(x), np.full(10, 0.999 - 0.001 * step), atol=5e-4)


# Against an independent float64 transcription of the paper ---------------------

@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    "settings",
    [{}, {"weight_decay": 0.1}, {"beta_1": 0.95, "beta_2": 0.98}, {"beta_1": 1.0}],
    ids=["defaults", "weight_decay", "stable_betas", "beta_1_one"],
)
def test_matches_numpy_oracle(settings, fast):
    theta, grads = random_problem()
    out = apply_steps(Lion(learning_rate=0.01, **settings), theta, grads, fast)
    expected, _ = numpy_lion(theta, grads, 0.01, **settings)
    assert_lion_close(out, expected, 0.01)


def test_beta_2_zero_uses_the_plain_path_exactly():
    theta, grads = random_problem()
    out = apply_steps(Lion(learning_rate=0.01, beta_2=0.0), theta, grads)
    expected, _ = numpy_lion(theta, grads, 0.01, beta_2=0.0)
    assert_lion_close(out, expected, 0.01)


def test_callables_for_learning_rate_and_betas():
    theta, grads = random_problem()
    optimizer = Lion(learning_rate=lambda: 0.02, beta_1=lambda: 0.8, beta_2=lambda: 0.9)
    out = apply_steps(optimizer, theta, grads)
    expected, _ = numpy_lion(theta, grads, 0.02, beta_1=0.8, beta_2=0.9)
    assert_lion_close(out, expected, 0.02)


def test_callable_betas_are_read_at_every_step():
    beta_1 = {"value": 0.9}
    optimizer = Lion(learning_rate=0.1, beta_1=lambda: beta_1["value"])
    variable = keras.Variable(np.zeros(2, np.float32))
    optimizer.apply([keras.ops.convert_to_tensor(np.array([1.0, -1.0], np.float32))], [variable])
    # The momentum is now 0.01 * [1, -1]; with beta_1 = 1 the step follows it
    # against a gradient of the opposite sign.
    beta_1["value"] = 1.0
    optimizer.apply([keras.ops.convert_to_tensor(np.array([-5.0, 5.0], np.float32))], [variable])
    np.testing.assert_allclose(to_numpy(variable), [-0.2, 0.2], atol=1e-6)


def test_learning_rate_schedule_scales_step_and_decay():
    theta, grads = random_problem()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=5, decay_rate=0.5)
    out = apply_steps(Lion(learning_rate=schedule, weight_decay=0.2), theta, grads)
    expected, _ = numpy_lion(theta, grads, lambda s: 0.05 * 0.5 ** (s / 5), weight_decay=0.2)
    assert_lion_close(out, expected, 0.05)


# Parity with keras.optimizers.Lion for every base-optimizer feature -------------

BASE_FEATURES = {
    "plain": {},
    "weight_decay": {"weight_decay": 0.05},
    "clipnorm": {"clipnorm": 0.5},
    "clipvalue": {"clipvalue": 0.3},
    "global_clipnorm": {"global_clipnorm": 0.7},
    "ema": {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 4},
    "gradient_accumulation": {"gradient_accumulation_steps": 3},
    "loss_scale_factor": {"loss_scale_factor": 128.0},
}


@pytest.mark.parametrize("settings", BASE_FEATURES.values(), ids=BASE_FEATURES.keys())
def test_parity_with_keras_lion(settings):
    shapes = [(8, 4), (4,), (3, 3, 2)]
    values = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(24)]
    results = []
    for cls in (Lion, keras.optimizers.Lion):
        optimizer = cls(learning_rate=0.01, **settings)
        variables = [keras.Variable(v) for v in values]
        for step in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
        optimizer.finalize_variable_values(variables)
        results.append([to_numpy(v) for v in variables])
    for ours, theirs in zip(*results):
        assert_lion_close(ours, theirs, 0.01)


def test_exclusion_by_method_matches_keras():
    results = []
    for cls in (Lion, keras.optimizers.Lion):
        optimizer = cls(learning_rate=1.0, weight_decay=0.004)
        kept = keras.Variable(np.full(2, 2.0, np.float32), name="kept")
        excluded = keras.Variable(np.full(2, 2.0, np.float32), name="exclude_me")
        listed = keras.Variable(np.full(2, 2.0, np.float32), name="listed")
        optimizer.exclude_from_weight_decay(var_list=[listed], var_names=["exclude"])
        zero = keras.ops.zeros((2,))
        for _ in range(3):
            optimizer.apply([zero, zero, zero], [kept, excluded, listed])
        results.append([to_numpy(v) for v in (kept, excluded, listed)])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    np.testing.assert_allclose(results[0][0], 2 * 0.996**3, rtol=1e-6)


# Training --------------------------------------------------------------------------

# "auto" is XLA on JAX and TensorFlow; on torch it is eager (torch.compile is slow to start).
@pytest.mark.parametrize("jit_compile", ["auto", False])
def test_fit_lowers_the_loss(jit_compile):
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 1)) > 0).astype(np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=Lion(learning_rate=3e-3, weight_decay=0.01),
                  loss="binary_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9


def test_fit_with_embedding_gradients_matches_plain_path():
    # On TensorFlow, an Embedding's gradient is sparse (IndexedSlices).
    x = rng.integers(0, 50, size=(64, 5))
    y = rng.normal(size=(64, 1)).astype(np.float32)
    losses = []
    for fast in (True, False):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 4),
                                  keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
        optimizer = Lion(learning_rate=1e-2, weight_decay=0.01)
        if not fast:
            optimizer._fast_path = None
        model.compile(optimizer=optimizer, loss="mse")
        losses.append(model.fit(x, y, epochs=3, shuffle=False, verbose=0).history["loss"])
    assert losses[0][-1] < losses[0][0]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_is_a_keras_optimizer_with_one_momentum_per_variable():
    optimizer = Lion()
    variables = [keras.Variable(np.zeros((3, 2), np.float32)), keras.Variable(np.zeros(2))]
    optimizer.build(variables)
    assert isinstance(optimizer, keras.optimizers.Optimizer)
    # iteration, learning rate, and one momentum each.
    assert len(optimizer.variables) == 2 + len(variables)
    assert [tuple(m.shape) for m in optimizer._momentums] == [(3, 2), (2,)]


def test_config_round_trip():
    optimizer = Lion(learning_rate=0.002, beta_1=0.95, beta_2=0.98, weight_decay=0.1,
                     clipnorm=1.0, use_ema=True, ema_overwrite_frequency=10,
                     gradient_accumulation_steps=2, name="my_lion")
    config = optimizer.get_config()
    clone = Lion.from_config(config)
    assert clone.get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, Lion)
    assert restored.get_config() == config


def test_hparams_from_adamw():
    hp = lion_hparams_from_adamw(1e-3, 0.01)
    assert hp == pytest.approx({"learning_rate": 1e-3 / 3, "weight_decay": 0.03})
    hp = lion_hparams_from_adamw(3e-4, 0.1, factor=10)
    assert hp["learning_rate"] * hp["weight_decay"] == pytest.approx(3e-5)
    with pytest.raises(ValueError, match="factor"):
        lion_hparams_from_adamw(1e-3, 0.01, factor=0.5)
    # Results Lion would refuse (infinite in float32, or rounded to 0) are refused here.
    with pytest.raises(ValueError, match=r"factor=10, Lion's `weight_decay` would be 1e\+39"):
        lion_hparams_from_adamw(1e-3, 1e38, factor=10)
    with pytest.raises(ValueError, match=r"factor=100, Lion's `learning_rate` would be 1e-48"):
        lion_hparams_from_adamw(1e-46, 0.0, factor=100)
