"""`skip_nonfinite=True`: a step whose gradients hold NaN or Inf changes nothing and is counted.

Also `keras.optimizers.LossScaleOptimizer` wrapping keraslion's Lion, which
skips such steps on its own. Each test runs on the current Keras backend.
"""

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion

BACKEND = keras.backend.backend()


def tensor(values):
    return keras.ops.convert_to_tensor(np.asarray(values, np.float32))


def snapshot(optimizer, variables):
    """(path, value) of every weight and optimizer variable except the skip counter."""
    state = [*variables, *optimizer.variables]
    return [(v.path, to_numpy(v).copy()) for v in state if "nonfinite_steps" not in v.path]


def assert_same_state(actual, expected):
    """Bit for bit, variable by variable (in order: paths differ between models)."""
    assert len(actual) == len(expected)
    for (path, value), (_, reference) in zip(actual, expected):
        np.testing.assert_array_equal(value, reference, err_msg=path)


# Eager `apply` -----------------------------------------------------------------------

SETTINGS = {
    "plain": {},
    "weight_decay_cautious": {"weight_decay": 0.1, "cautious": True},
    "ema": {"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2},
    "gradient_accumulation": {"gradient_accumulation_steps": 2},
    "momentum_dtype": {"momentum_dtype": "bfloat16"},
}

GOOD = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-1.0, 1.0, 0.5], [0.3, -0.2, 0.1]]
BAD = [[np.nan, 1.0, 1.0], [1.0, np.inf, 1.0], [1.0, 1.0, -np.inf]]


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_skipped_steps_change_nothing_and_are_counted(settings):
    optimizer = Lion(learning_rate=0.1, skip_nonfinite=True, **settings)
    variables = [keras.Variable(np.array([1.0, -2.0, 0.5], np.float32), name="w"),
                 keras.Variable(np.array([[0.1, 0.2], [0.3, 0.4]], np.float32), name="k")]
    second = tensor(np.ones((2, 2)))
    optimizer.apply([tensor(GOOD[0]), second], variables)  # momentum etc. now non-trivial
    before = snapshot(optimizer, variables)
    iterations = int(to_numpy(optimizer.iterations))
    for bad in BAD:
        # A bad gradient for one variable skips the whole step.
        optimizer.apply([tensor(bad), second], variables)
    optimizer.apply([tensor(GOOD[1]), tensor(np.full((2, 2), np.nan))], variables)
    assert_same_state(snapshot(optimizer, variables), before)
    assert int(to_numpy(optimizer.iterations)) == iterations
    assert optimizer.nonfinite_steps == len(BAD) + 1


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_training_on_after_skipped_steps_is_exactly_the_run_without_them(settings):
    runs = []
    for with_bad in (False, True):
        optimizer = Lion(learning_rate=0.1, skip_nonfinite=True, **settings)
        variable = keras.Variable(np.array([1.0, -2.0, 0.5], np.float32), name="w")
        for step, good in enumerate(GOOD):
            if with_bad and step in (1, 3):
                optimizer.apply([tensor(BAD[step // 2])], [variable])
            optimizer.apply([tensor(good)], [variable])
        optimizer.finalize_variable_values([variable])
        runs.append((snapshot(optimizer, [variable]), optimizer.nonfinite_steps))
    (clean, clean_skips), (skipped, skips) = runs
    assert_same_state(skipped, clean)
    assert (clean_skips, skips) == (0, 2)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_finite_gradients_whose_accumulated_sum_overflows_are_skipped(dtype):
    # Each gradient is finite, but the accumulator (in the weights' dtype)
    # would hold Inf: the momentum would become Inf, then NaN.
    big = 0.75 * float(np.finfo(dtype).max)
    optimizer = Lion(learning_rate=0.1, skip_nonfinite=True, gradient_accumulation_steps=2)
    variable = keras.Variable(np.array([1.0, -2.0], dtype), dtype=dtype, name="w")

    def gradient(first):
        return keras.ops.convert_to_tensor(np.array([first, 1.0], dtype))

    optimizer.apply([gradient(big)], [variable])
    before = snapshot(optimizer, [variable])
    optimizer.apply([gradient(big)], [variable])
    assert_same_state(snapshot(optimizer, [variable]), before)
    assert optimizer.nonfinite_steps == 1
    # The accumulator kept its sum: a gradient that cancels it completes the update.
    optimizer.apply([gradient(-big)], [variable])
    np.testing.assert_array_equal(to_numpy(variable), np.array([1.0, -2.1], dtype))
    assert np.isfinite(to_numpy(optimizer._momentums[0])).all()
    assert int(to_numpy(optimizer.iterations)) == 1  # updates, not calls


def test_repeated_embedding_rows_whose_sum_overflows_are_skipped():
    # Each row's gradient is finite, but an id twice in a batch sums two of
    # them (on TensorFlow an IndexedSlices holds them apart): Inf.
    model = keras.Sequential([keras.Input((2,), dtype="int32"),
                              keras.layers.Embedding(3, 1, embeddings_initializer="ones")])
    optimizer = Lion(learning_rate=0.1, skip_nonfinite=True)
    model.compile(optimizer=optimizer, loss=lambda y, p: keras.ops.sum(p[..., 0] * y))
    ids = np.array([[1, 1]], "int32")
    model.train_on_batch(ids, np.array([[2e38, 2e38]], "float32"))
    assert optimizer.nonfinite_steps == 1
    np.testing.assert_array_equal(to_numpy(model.layers[0].embeddings), np.ones((3, 1)))
    model.train_on_batch(ids, np.array([[1.0, 1.0]], "float32"))
    np.testing.assert_allclose(to_numpy(model.layers[0].embeddings).ravel(), [1.0, 0.9, 1.0])


@pytest.mark.parametrize("accumulation", [None, 2])
def test_variables_overwritten_with_their_gradient_are_judged_as_keras_assigns_them(
        accumulation):
    # Keras assigns such a gradient as given (not divided by
    # loss_scale_factor), in the variable's dtype.
    weights = keras.Variable(np.ones(2, np.float32), name="w")
    wide = keras.Variable(np.ones(2, np.float32), name="wide")
    narrow = keras.Variable(np.ones(2, np.float16), dtype="float16", name="narrow")
    wide.overwrite_with_gradient = narrow.overwrite_with_gradient = True
    variables = [weights, wide, narrow]

    def step(factor, wide_gradient, narrow_gradient):
        optimizer = Lion(learning_rate=0.1, skip_nonfinite=True, loss_scale_factor=factor,
                         gradient_accumulation_steps=accumulation)
        optimizer.build(variables)
        before = snapshot(optimizer, variables)
        optimizer.apply([tensor([1.0, 1.0]), tensor([wide_gradient, 1.0]),
                         tensor([narrow_gradient, 1.0])], variables)
        return optimizer, before

    # Finite as given (Inf only once divided by 1/4): stepped.
    optimizer, _ = step(0.25, 3e38, 1.0)
    assert optimizer.nonfinite_steps == 0
    assert int(to_numpy(optimizer._iterations)) == 1
    if not accumulation:
        np.testing.assert_array_equal(to_numpy(wide), np.array([3e38, 1.0], np.float32))
    # Inf in float16 as given (finite once divided by 4): skipped.
    optimizer, before = step(4.0, 1.0, 1e5)
    assert optimizer.nonfinite_steps == 1
    assert_same_state(snapshot(optimizer, variables), before)


def test_without_the_option_nan_spreads_and_nothing_is_counted():
    # The option is off by default; the optimizer then has exactly Keras's variables.
    optimizer = Lion(learning_rate=0.1)
    variable = keras.Variable(np.zeros(3, np.float32))
    optimizer.apply([tensor([np.nan, 1.0, 1.0])], [variable])
    assert np.isnan(to_numpy(optimizer._momentums[0])[0])
    assert optimizer.nonfinite_steps == 0
    reference = keras.optimizers.Lion(learning_rate=0.1)
    reference.build([variable])
    assert len(optimizer.variables) == len(reference.variables)


def test_counter_starts_at_zero_and_is_an_optimizer_variable():
    optimizer = Lion(skip_nonfinite=True)
    assert optimizer.nonfinite_steps == 0  # not built yet
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    assert optimizer.nonfinite_steps == 0
    assert any(v.path.endswith("nonfinite_steps") for v in optimizer.variables)


# Inside fit() ----------------------------------------------------------------------

def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 2))).astype(np.float32)
    return x, y


def with_bad_batch(x, y, after_batches, batch_size=8):
    """The same data with one batch of NaN inputs inserted after `after_batches` batches."""
    cut = after_batches * batch_size
    bad_x = np.full((batch_size, x.shape[1]), np.nan, np.float32)
    return (np.concatenate([x[:cut], bad_x, x[cut:]]),
            np.concatenate([y[:cut], y[:batch_size], y[cut:]]))


def compiled_model(optimizer, jit_compile="auto"):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    optimizer.build(model.trainable_variables)
    return model


def fit_from_the_same_start(model, datasets, epochs, measure):
    """Fits `model` on each (x, y) in turn, each time from the same initial
    weights and optimizer state (one compiled train function serves all runs);
    returns `measure(model)` after each."""
    state = [*model.weights, *model.optimizer.variables]
    initial = [to_numpy(v).copy() for v in state]
    results = []
    for x, y in datasets:
        for variable, value in zip(state, initial):
            variable.assign(value)
        model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)
        results.append(measure(model))
    return results


def fit_modes():
    """fit() as Keras resolves "auto" (JAX: XLA; TensorFlow: tf.function;
    torch: eager), plus `jit_compile=True` where it is something else
    (TensorFlow: XLA; torch: torch.compile)."""
    modes = ["auto"]
    if BACKEND in ("tensorflow", "torch"):
        modes.append(True)
    return modes


@pytest.fixture
def reset_torch_compile():
    yield
    if BACKEND == "torch":
        import torch

        torch._dynamo.reset()


@pytest.mark.parametrize("jit_compile", fit_modes())
def test_fit_skips_nonfinite_batches_exactly(jit_compile, reset_torch_compile):
    x, y = regression_data()
    # Mid-way through an accumulation cycle (after 3 batches of 2 per update).
    bad_x, bad_y = with_bad_batch(x, y, after_batches=3)
    settings = {"learning_rate": 0.01, "weight_decay": 0.1, "skip_nonfinite": True}
    if not (BACKEND == "torch" and jit_compile is True):
        # (torch.compile on a CPU takes over a minute to compile these as well.)
        settings.update(use_ema=True, ema_overwrite_frequency=2, gradient_accumulation_steps=2)
    optimizer = Lion(**settings)
    model = compiled_model(optimizer, jit_compile)

    def measure(model):
        return (snapshot(optimizer, model.weights), optimizer.nonfinite_steps,
                int(to_numpy(optimizer.iterations)))

    clean, skipped = fit_from_the_same_start(model, [(x, y), (bad_x, bad_y)], 2, measure)
    updates = 12 // settings.get("gradient_accumulation_steps", 1)  # 2 epochs of 6 batches
    assert clean[1:] == (0, updates)
    assert skipped[1:] == (2, updates)  # one bad batch per epoch, skipped
    assert_same_state(skipped[0], clean[0])


# LossScaleOptimizer around keraslion's Lion ------------------------------------------

def test_loss_scale_optimizer_skips_nonfinite_steps_in_fit():
    x, y = regression_data()
    bad_x, bad_y = with_bad_batch(x, y, after_batches=2)
    lso = keras.optimizers.LossScaleOptimizer(Lion(learning_rate=0.01))
    model = compiled_model(lso)

    def measure(model):
        inner = lso.inner_optimizer
        return (snapshot(inner, model.weights), float(to_numpy(lso.dynamic_scale)),
                int(to_numpy(inner.iterations)))

    clean, skipped = fit_from_the_same_start(model, [(x, y), (bad_x, bad_y)], 1, measure)
    # The bad step halved the loss scale and did not reach Lion: its iterations,
    # momentum and the weights are those of the run without the bad batch
    # (gradients scaled by a power of two unscale exactly).
    assert clean[1:] == (2.0**15, 6)
    assert skipped[1:] == (2.0**14, 6)
    assert_same_state(skipped[0], clean[0])


@pytest.mark.skipif(BACKEND == "jax", reason="JAX's stateful LossScaleOptimizer.apply "
                    "traces a lax.cond with side effects; JAX uses stateless_apply (fit)")
def test_loss_scale_optimizer_skips_nonfinite_steps_in_apply():
    lso = keras.optimizers.LossScaleOptimizer(Lion(learning_rate=0.1), initial_scale=4.0)
    variable = keras.Variable(np.array([1.0, -2.0, 0.5], np.float32), name="w")
    lso.apply([tensor(GOOD[0])], [variable])
    before = snapshot(lso.inner_optimizer, [variable])
    lso.apply([tensor(BAD[0])], [variable])
    assert_same_state(snapshot(lso.inner_optimizer, [variable]), before)
    assert float(to_numpy(lso.dynamic_scale)) == 2.0
