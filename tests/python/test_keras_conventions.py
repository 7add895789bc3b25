"""Hyperparameters as Keras users set them (issue 13, part 2), on the current backend.

Each test here failed on keraslion 0.2.0 (commit 7e804b7):
- a `keras.Variable` learning rate was copied once; a learning-rate function
  was not checked when called (NaN, negative, `None` or `True` trained);
- numbers that do not survive float32 were accepted (and became 0 or Inf);
- a float16 momentum overflowed to Inf on one spike and froze its element;
- two optimizers created without a name shared the name "lion";
- `skip_nonfinite` turned on after the first step crashed at the next NaN;
- a beta given as a function that cannot be loaded again saved without
  complaint, and `load_model()` failed;
- setting the learning rate or weight decay to a tensor inside a
  `tf.function` raised (it works with Keras's Lion).
"""

import warnings

import keras
import numpy as np
import pytest
from conftest import numpy_lion, to_numpy

from keraslion import Lion

BACKEND = keras.backend.backend()


def one_variable(values=(1.0, -2.0, 3.0)):
    return keras.Variable(np.asarray(values, np.float32), name="kernel")


def test_a_keras_variable_learning_rate_is_followed_at_every_step():
    rate = keras.Variable(0.25, dtype="float32", name="my_rate")
    optimizer = Lion(learning_rate=rate)
    variable = one_variable()
    gradient = [keras.ops.ones((3,))]
    optimizer.apply(gradient, [variable])
    np.testing.assert_allclose(to_numpy(variable), [0.75, -2.25, 2.75])
    rate.assign(0.5)
    optimizer.apply(gradient, [variable])
    np.testing.assert_allclose(to_numpy(variable), [0.25, -2.75, 2.25])
    # It is the optimizer's learning-rate variable: saved and loaded with it.
    assert any(v is rate for v in optimizer.variables)
    assert optimizer.get_config()["learning_rate"] == 0.5
    # A number assigned later goes into the followed variable.
    optimizer.learning_rate = 0.125
    assert float(to_numpy(rate)) == 0.125


def test_a_variable_learning_rate_keeps_the_step_count_and_saves(tmp_path):
    rate = keras.Variable(0.01, dtype="float32", name="my_rate")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=Lion(learning_rate=rate), loss="mse")
    optimizer = model.optimizer
    # Only the learning-rate slot is the user's variable; the count stays.
    assert [v is rate for v in optimizer.variables] == [False, True]
    assert optimizer.variables[0] is optimizer._iterations
    x = np.ones((8, 2), np.float32)
    model.fit(x, np.zeros((8, 1), np.float32), batch_size=4, epochs=1, verbose=0)
    assert int(to_numpy(optimizer.iterations)) == 2
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    assert float(to_numpy(loaded.optimizer.learning_rate)) == pytest.approx(0.01)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_variable_betas_and_weight_decay_are_followed(fast):
    beta_1, beta_2 = keras.Variable(0.9), keras.Variable(0.99)
    weight_decay = keras.Variable(0.0)
    optimizer = Lion(learning_rate=2.0**-4, beta_1=beta_1, beta_2=beta_2,
                     weight_decay=weight_decay)
    if not fast:
        optimizer._fast_path = None
    variable = keras.Variable(np.array([1.0, -2.0, 4.0], np.float32))
    gradient = np.array([1.0, -1.0, 0.5], np.float32)
    theta, m = np.array([1.0, -2.0, 4.0]), None
    for b1, b2, wd in [(0.9, 0.99, 0.0), (0.5, 0.25, 0.5)]:
        beta_1.assign(b1)
        beta_2.assign(b2)
        weight_decay.assign(wd)
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        theta, m = numpy_lion(theta, [gradient], 2.0**-4, b1, b2, wd, momentum=m)
        np.testing.assert_allclose(to_numpy(variable), theta, rtol=1e-6)
    config = optimizer.get_config()
    assert (config["beta_1"], config["beta_2"], config["weight_decay"]) == (0.5, 0.25, 0.5)


def fit_twice(optimizer, change):
    """Two one-step fits of a small model, with `change()` run between them."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    x = np.linspace(-1.0, 1.0, 24, dtype=np.float32).reshape(8, 3)
    for _ in range(2):
        model.fit(x, x[:, :2] ** 2, batch_size=8, epochs=1, shuffle=False, verbose=0)
        change(model)
    return [to_numpy(w) for w in model.weights]


@pytest.mark.parametrize("name, first, then", [("beta_1", 0.9, 0.5), ("beta_2", 0.99, 0.5),
                                               ("weight_decay", 0.0, 2.0)])
@pytest.mark.parametrize("given", [True, False], ids=["given", "set later"])
def test_variable_hyperparameters_are_followed_by_a_compiled_fit(name, first, then, given):
    """A compiled step (JAX's fit() above all) reads only the optimizer's
    variables as state: a variable hyperparameter must be among them."""
    variable = keras.Variable(first)
    optimizer = Lion(learning_rate=0.1, **{name: variable if given else first})
    if not given:
        setattr(optimizer, name, variable)

    def set_number(model):
        setattr(model.optimizer, name, then)
        model.make_train_function(force=True)  # a number is a constant of a compiled step

    expected = fit_twice(Lion(learning_rate=0.1, **{name: first}), set_number)
    actual = fit_twice(optimizer, lambda model: variable.assign(then))
    for weight, wanted in zip(actual, expected):
        np.testing.assert_allclose(weight, wanted, rtol=1e-6)


def test_a_number_set_between_compiled_fits_is_used_as_the_docs_say():
    """A constant of a compiled step on JAX and TensorFlow until the step is
    rebuilt; at once on PyTorch, whose torch.compile compiles it again."""
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    optimizer = Lion(learning_rate=0.25, weight_decay=0.5)
    # A zero gradient: each step only decays the weights, by 1 - 0.25 * weight_decay.
    model.compile(optimizer=optimizer, loss=lambda y, pred: 0.0 * keras.ops.sum(pred),
                  jit_compile=True)
    x, y = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # compiled with 0.5
    factors = []
    for rebuild in (False, True):
        before = to_numpy(model.weights[0])[0, 0]
        optimizer.weight_decay = 2.0 if rebuild else 1.0
        if rebuild:
            model.make_train_function(force=True)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        factors.append(to_numpy(model.weights[0])[0, 0] / before)
    assert factors == [0.75 if keras.backend.backend() == "torch" else 0.875, 0.5]


def test_variable_hyperparameters_are_not_saved_as_state():
    """Their values are their owner's (the config keeps the value they had):
    the state saved is what numbers would save, and loads either way."""
    mine = keras.Variable(0.25)
    with_variables = Lion(beta_1=keras.Variable(0.8), weight_decay=keras.Variable(0.1))
    with_variables.beta_2 = keras.Variable(0.95)
    with_numbers = Lion(beta_1=0.8, beta_2=0.95, weight_decay=0.1)
    gradient = [keras.ops.convert_to_tensor(np.array([1.0, -0.5, 2.0], np.float32))]
    stores = []
    for optimizer in (with_variables, with_numbers):
        optimizer.apply(gradient, [one_variable()])
        store = {}
        optimizer.save_own_variables(store)
        stores.append(store)
    assert stores[0].keys() == stores[1].keys()
    for key in stores[1]:  # 1 - beta_2 rounds otherwise from a variable
        assert stores[0][key].dtype == stores[1][key].dtype
        np.testing.assert_allclose(stores[0][key], stores[1][key], rtol=1e-6)
    loading = Lion(weight_decay=mine)
    loading.build([one_variable()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading.load_own_variables(stores[0])
    assert float(to_numpy(mine)) == 0.25
    np.testing.assert_array_equal(to_numpy(loading._momentums[0]), stores[0]["2"])


def test_a_replaced_hyperparameter_variable_leaves_the_variables():
    optimizer = Lion()
    count = len(optimizer.variables)
    shared = keras.Variable(0.5)
    optimizer.weight_decay = keras.Variable(0.1)
    optimizer.weight_decay = shared
    optimizer.beta_1 = shared
    assert len(optimizer.variables) == count + 1
    optimizer.weight_decay = 0.1
    assert any(v is shared for v in optimizer.variables)  # still beta_1
    optimizer.beta_1 = 0.9
    assert len(optimizer.variables) == count


@pytest.mark.parametrize("name, bad", [("beta_1", 0.0), ("beta_2", 1.0), ("weight_decay", -1.0),
                                       ("learning_rate", 0.5)])
def test_a_refused_variable_does_not_join_the_variables(name, bad):
    """Keras tracks a variable set on an optimizer before the setter checks it."""
    optimizer = Lion()
    optimizer.build([one_variable()])
    before = list(optimizer.variables)
    with pytest.raises((ValueError, TypeError), match=f"{name}[`=]"):
        setattr(optimizer, name, keras.Variable(bad))
    assert [id(v) for v in optimizer.variables] == [id(v) for v in before]


def test_a_variable_with_a_bad_value_is_refused():
    for argument, value in [("learning_rate", -0.01), ("beta_1", 0.0), ("weight_decay", -0.5)]:
        with pytest.raises(ValueError, match=f"`{argument}`"):
            Lion(**{argument: keras.Variable(value)})


def test_another_variable_cannot_replace_the_learning_rate():
    optimizer = Lion(learning_rate=0.1)
    with pytest.raises(TypeError, match="`keras.Variable`.*assign a number.*learning_rate="):
        optimizer.learning_rate = keras.Variable(0.5)
    assert float(to_numpy(optimizer.learning_rate)) == pytest.approx(0.1)
    # Where there is no variable to assign a number to, the error says what to set.
    optimizer = Lion(learning_rate=lambda: 0.1)
    with pytest.raises(TypeError, match="a schedule or a function: set another"):
        optimizer.learning_rate = keras.Variable(0.5)
    assert optimizer.learning_rate == pytest.approx(0.1)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a tf.Variable needs TensorFlow")
def test_a_tf_variable_learning_rate_is_refused_not_copied():
    import tensorflow as tf

    with pytest.raises(TypeError, match="`learning_rate`.*keras.Variable"):
        Lion(learning_rate=tf.Variable(0.1))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("result", [None, -0.05, float("nan"), float("inf"), True, "0.1", 1e39],
                         ids=repr)
def test_a_learning_rate_function_is_checked_when_called(result, fast):
    current = {"value": 0.1}
    optimizer = Lion(learning_rate=lambda: current["value"])
    if not fast:
        optimizer._fast_path = None
    variable = one_variable()
    optimizer.apply([keras.ops.ones((3,))], [variable])
    before = [to_numpy(v).copy() for v in (variable, *optimizer.variables)]
    current["value"] = result
    with pytest.raises((ValueError, TypeError), match="`learning_rate"):
        optimizer.apply([keras.ops.ones((3,))], [variable])
    for old, new in zip(before, [to_numpy(v) for v in (variable, *optimizer.variables)]):
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("argument, value", [
    ("learning_rate", 1e39), ("learning_rate", 1e-46), ("weight_decay", 1e39),
    ("clipnorm", 1e-46), ("clipvalue", 1e39), ("global_clipnorm", 1e-46),
    ("loss_scale_factor", 1e39)])
def test_numbers_that_do_not_survive_float32_are_refused(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`.*float32.*{argument}="):
        Lion(**{argument: value})


def test_float32_limits_apply_when_set_too_and_the_betas_keep_their_whole_range():
    optimizer = Lion(weight_decay=0.1)
    with pytest.raises(ValueError, match="`weight_decay`.*float32"):
        optimizer.weight_decay = 1e39
    assert optimizer.weight_decay == 0.1
    # Edge values of the betas' ranges: each beta must be a normal float32
    # (beta_2 may be 0), or the float32 step (flushing subnormals on XLA)
    # would drop beta * m.
    Lion(beta_1=2.0**-126, beta_2=2.0**-126)
    Lion(beta_2=0.0)
    for name, value in [("beta_1", 1e-40), ("beta_2", 1e-40), ("beta_2", 1e-50)]:
        with pytest.raises(ValueError, match=f"`{name}` must be at least 2\\^-126"):
            Lion(**{name: value})
    with pytest.raises(ValueError, match="`beta_1` must be at least"):
        optimizer.beta_1 = 1e-40
    assert optimizer.beta_1 == 0.9


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_a_float16_momentum_saturates_and_keeps_following_the_gradient(fast):
    optimizer = Lion(learning_rate=2.0**-10, momentum_dtype="float16")
    if not fast:
        optimizer._fast_path = None
    variable = keras.Variable(np.zeros(4, np.float32))
    spike = np.array([1e9, -1e9, 1.0, -1.0], np.float32)
    optimizer.apply([keras.ops.convert_to_tensor(spike)], [variable])
    momentum = to_numpy(optimizer._momentums[0]).astype(np.float64)
    assert np.all(np.isfinite(momentum))
    np.testing.assert_array_equal(momentum[:2], [65504.0, -65504.0])
    # The opposite gradient wears the saturated momentum down and turns the
    # step round, as a float32 momentum does (an infinite one never would).
    reverse = keras.ops.convert_to_tensor(-np.sign(spike) * 100.0)
    before = to_numpy(variable).copy()
    for _ in range(1200):
        optimizer.apply([reverse], [variable])
    before_last = to_numpy(variable).copy()
    optimizer.apply([reverse], [variable])
    step = to_numpy(variable) - before_last
    np.testing.assert_array_equal(np.sign(step), np.sign(spike))
    assert np.all(to_numpy(variable) != before)


def test_a_nan_in_a_float16_momentum_stays_nan():
    optimizer = Lion(momentum_dtype="float16")
    variable = keras.Variable(np.zeros(2, np.float32))
    optimizer.apply([keras.ops.convert_to_tensor(np.array([np.nan, 1e9], np.float32))],
                    [variable])
    momentum = to_numpy(optimizer._momentums[0]).astype(np.float64)
    assert np.isnan(momentum[0]) and momentum[1] == 65504.0


def test_default_names_are_numbered_as_keras_numbers_them():
    first, second = Lion(), Lion(name=None)
    assert first.name != second.name
    assert first.name.startswith("lion") and second.name.startswith("lion")
    assert Lion(name="mine").name == "mine"
    paths = set()
    for optimizer in (first, second):
        optimizer.build([one_variable()])
        paths.update(v.path for v in optimizer.variables)
    assert len(paths) == 2 * 3  # iteration, learning rate and momentum each


@pytest.mark.parametrize("initially", [False, True])
def test_skip_nonfinite_changed_after_build_is_refused(initially):
    # On, it would need a variable; off, a compiled step would go on skipping.
    optimizer = Lion(learning_rate=0.1, skip_nonfinite=initially)
    variable = one_variable()
    optimizer.apply([keras.ops.ones((3,))], [variable])
    with pytest.raises(ValueError, match="`skip_nonfinite`.*before the optimizer is built"):
        optimizer.skip_nonfinite = not initially
    assert optimizer.skip_nonfinite is initially
    optimizer.skip_nonfinite = initially  # no change: fine
    nan = keras.ops.convert_to_tensor(np.array([np.nan, 1.0, 1.0], np.float32))
    optimizer.apply([nan], [variable])  # no AttributeError
    assert np.isnan(to_numpy(variable)[0]) != initially


@keras.saving.register_keras_serializable(package="keraslion_tests")
def registered_beta():
    return 0.9


def test_a_beta_function_that_would_not_load_fails_at_save_time(tmp_path):
    local = {"beta": 0.9}

    def beta_from_a_closure():
        return local["beta"]

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=Lion(beta_1=beta_from_a_closure), loss="mse")
    with pytest.raises(ValueError, match="`beta_1` is a function that Keras cannot save"):
        model.save(tmp_path / "model.keras")
    model.optimizer.beta_1 = 0.9  # the fix the message gives
    model.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras").optimizer.beta_1 == 0.9
    # A lambda saves, but load_model() (safe_mode) refuses it: refused at save time.
    model.optimizer.beta_2 = lambda: 0.99
    with pytest.raises(ValueError, match="`beta_2` is a function that Keras cannot save"):
        model.save(tmp_path / "lambda.keras")


def test_a_registered_beta_function_saves_and_loads(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=Lion(beta_2=registered_beta), loss="mse")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.optimizer.beta_2() == 0.9


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_tensors_set_inside_a_tf_function_are_used(fast):
    import tensorflow as tf

    optimizer = Lion(learning_rate=0.5, weight_decay=0.0)
    if not fast:
        optimizer._fast_path = None
    variable = keras.Variable(np.array([1.0, -2.0, 4.0], np.float32))
    gradient = np.array([1.0, -1.0, 1.0], np.float32)

    @tf.function
    def step(learning_rate, weight_decay):
        optimizer.learning_rate = learning_rate
        optimizer.weight_decay = weight_decay
        optimizer.apply([tf.constant(gradient)], [variable])

    step(tf.constant(2.0**-4), tf.constant(0.5))
    expected, _ = numpy_lion([1.0, -2.0, 4.0], [gradient], 2.0**-4, weight_decay=0.5)
    np.testing.assert_allclose(to_numpy(variable), expected, rtol=1e-6)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's 64-bit mode")
def test_a_float64_momentum_without_jax_x64_is_refused():
    import jax

    if jax.config.jax_enable_x64:
        pytest.skip("JAX's 64-bit mode is on in this process")
    with pytest.raises(ValueError, match="`momentum_dtype`.*JAX_ENABLE_X64"):
        Lion(momentum_dtype="float64")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
@pytest.mark.parametrize("argument,value", [("gradient_accumulation_steps", 2),
                                            ("ema_overwrite_frequency", 2)])
def test_what_keras_cannot_do_under_a_strategy_is_refused_at_creation(argument, value):
    import tensorflow as tf

    settings = {argument: value, "use_ema": argument == "ema_overwrite_frequency"}
    with (tf.distribute.MirroredStrategy(["/cpu:0"]).scope(),
          pytest.raises(ValueError, match=f"`{argument}`.*tf.distribute")):
        Lion(**settings)
    Lion(**settings)  # without a strategy
    # Set later, inside the strategy's scope or outside it.
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        optimizer = Lion(use_ema=True)
        with pytest.raises(ValueError, match=f"`{argument}`.*tf.distribute"):
            setattr(optimizer, argument, value)
    with pytest.raises(ValueError, match=f"`{argument}`.*tf.distribute"):
        setattr(optimizer, argument, value)
    assert getattr(optimizer, argument) is None


@pytest.mark.parametrize("value", [2, None])
def test_gradient_accumulation_cannot_change_after_build(value):
    optimizer = Lion(gradient_accumulation_steps=None if value else 3)
    optimizer.build([keras.Variable(np.ones(3, np.float32))])
    with pytest.raises(ValueError, match="`gradient_accumulation_steps` can only be changed"):
        optimizer.gradient_accumulation_steps = value
    assert optimizer.gradient_accumulation_steps == (None if value else 3)
    with pytest.raises(ValueError, match="`gradient_accumulation_steps` must be None or"):
        Lion().gradient_accumulation_steps = 1
