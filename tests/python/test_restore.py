"""Loading a checkpoint into a Lion whose options add or drop a variable.

Keras stores optimizer variables by index and skipped them all when their
count changed; keraslion matches them by role and variable path. What
matches loads, what the new options add starts fresh, saved state with no
place here is dropped with a `StateWarning`, and what the checkpoint lacks
or what cannot be matched raises (or, with `skip_mismatch=True`, warns).
Runs on the current Keras backend.
"""

import warnings

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion, StateWarning, _restore

rng = np.random.default_rng(0)
X = rng.normal(size=(24, 5)).astype(np.float32)
Y = rng.normal(size=(24, 2)).astype(np.float32)


def make_model(optimizer, frozen_first=False, extra_layer=False, build=True):
    keras.utils.set_random_seed(3)
    layers = [keras.Input((5,)), keras.layers.Dense(4, activation="tanh", name="first"),
              keras.layers.Dense(2, name="second")]
    if extra_layer:
        layers.append(keras.layers.Dense(2, name="third"))
    model = keras.Sequential(layers)
    model.layers[0].trainable = not frozen_first
    model.compile(optimizer=optimizer, loss="mse")
    if build:
        model.optimizer.build(model.trainable_variables)
    return model


def trained(optimizer, **kwargs):
    model = make_model(optimizer, **kwargs)
    # 3 batches: with gradient accumulation over 2 steps, saved mid-cycle.
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model


def save(model, tmp_path, fmt, name="checkpoint"):
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "keras":
        model.save(path)
    else:
        model.save_weights(path)
    return path


def value(variable):
    return to_numpy(variable).copy()


def state(variables):
    return {v.path: value(v) for v in variables}


def by_role(optimizer):
    """Scalars and momentums by role and the path of their weight (names differ by class)."""
    out = {"iterations": value(optimizer._iterations)}
    if isinstance(optimizer._learning_rate, keras.Variable):
        out["learning_rate"] = value(optimizer._learning_rate)
    for variable, momentum in zip(optimizer._trainable_variables, optimizer._momentums):
        out[f"momentum/{variable.path.split('/', 1)[1]}"] = value(momentum)
    return out


def assert_same(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key].astype(np.float64),
                                      expected[key].astype(np.float64), err_msg=key)


def load_quietly(model, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StateWarning)
        model.load_weights(path, **kwargs)


FORMATS = ["weights.h5", "keras"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_skip_nonfinite_turned_on_loads_everything(fmt, tmp_path):
    source = trained(Lion(learning_rate=0.01))
    path = save(source, tmp_path, fmt)
    model = make_model(Lion(learning_rate=0.02, skip_nonfinite=True))
    load_quietly(model, path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))
    assert int(to_numpy(model.optimizer.iterations)) == 3
    assert model.optimizer.nonfinite_steps == 0
    # Training goes on from there, as the source's does.
    for m in (model, source):
        m.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 6
    for weight, expected in zip(model.weights, source.weights):
        np.testing.assert_allclose(to_numpy(weight), to_numpy(expected), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", FORMATS)
def test_skip_nonfinite_turned_off_warns_about_the_counter(fmt, tmp_path):
    source = trained(Lion(skip_nonfinite=True))
    nan = [keras.ops.full(v.shape, np.nan) for v in source.trainable_variables]
    source.optimizer.apply(nan, source.trainable_variables)
    assert source.optimizer.nonfinite_steps == 1
    path = save(source, tmp_path, fmt)
    model = make_model(Lion())
    with pytest.warns(StateWarning, match=r"skipped non-finite steps \(1\): skip_nonfinite is off"):
        model.load_weights(path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))


@pytest.mark.parametrize("fmt", FORMATS)
def test_keras_lion_checkpoint_loads_into_keraslion_with_skip_nonfinite(fmt, tmp_path):
    source = trained(keras.optimizers.Lion(learning_rate=0.01))
    path = save(source, tmp_path, fmt)
    model = make_model(Lion(skip_nonfinite=True, cautious=True))
    load_quietly(model, path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))
    assert model.optimizer.nonfinite_steps == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_keraslion_checkpoint_loads_into_keras_lion(fmt, tmp_path):
    source = trained(Lion(learning_rate=0.01, weight_decay=0.1))
    path = save(source, tmp_path, fmt)
    model = make_model(keras.optimizers.Lion())
    model.load_weights(path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))


@pytest.mark.parametrize("options", [{}, {"use_ema": True}, {"gradient_accumulation_steps": 2}])
@pytest.mark.parametrize("saved_by",
                         ["keras Lion", "keraslion 0.2", "keraslion 0.2 set after build"])
def test_older_checkpoints_with_hyperparameter_variables_load(saved_by, options, tmp_path):
    """Keras's Lion saves a `keras.Variable` beta, as keraslion 0.2 saved one
    given as beta or weight decay: after the learning rate, or last if set
    after the build. They are read and skipped, with a warning (a scalar
    weight's momentum would look the same)."""
    if saved_by == "keras Lion":
        optimizer = keras.optimizers.Lion(learning_rate=0.01, beta_1=keras.Variable(0.8),
                                          beta_2=keras.Variable(0.95), **options)
    else:
        optimizer = Lion(learning_rate=0.01, weight_decay=keras.Variable(0.1),
                         skip_nonfinite=True, **options)
        # Keras's own saving, which keeps every variable (as keraslion 0.2 did).
        optimizer.save_own_variables = lambda store: keras.optimizers.Optimizer.save_own_variables(
            optimizer, store)
    source = make_model(optimizer)
    if saved_by.endswith("after build"):
        optimizer.beta_2 = keras.Variable(0.95)
    source.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = save(source, tmp_path, "weights.h5")
    mine = keras.Variable(0.3)
    options = {**options, "skip_nonfinite": saved_by != "keras Lion"}
    skipped = {"keras Lion": "0.8, 0.95", "keraslion 0.2": "0.1"}.get(saved_by, "0.1, 0.95")
    for target in (Lion(learning_rate=0.02, **options),
                   Lion(learning_rate=0.02, weight_decay=mine, **options)):
        model = make_model(target)
        with pytest.warns(StateWarning, match=f"skipped the saved scalars {skipped}, read as"):
            model.load_weights(path)
        assert_same(by_role(model.optimizer), by_role(source.optimizer))
    assert float(to_numpy(mine)) == pytest.approx(0.3)


class Scalar(keras.layers.Layer):
    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


@pytest.mark.parametrize("where", ["first", "last"])
def test_the_momentum_of_a_scalar_weight_the_model_lost_is_dropped_with_a_warning(
        where, tmp_path):
    """Saved where a hyperparameter variable would be: not dropped quietly."""
    def model(scalar):
        keras.utils.set_random_seed(3)
        layers = [keras.Input((5,)), keras.layers.Dense(2, name="dense")]
        if scalar:
            layers.insert(1 if where == "first" else 2, Scalar(name="scalar"))
        built = keras.Sequential(layers)
        built.compile(optimizer=Lion(learning_rate=0.01), loss="mse")
        built.optimizer.build(built.trainable_variables)
        return built

    source = model(scalar=True)
    source.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = save(source, tmp_path, "weights.h5")
    target = model(scalar=False)
    with pytest.warns(StateWarning, match="scalar weights this model does not have"):
        target.load_weights(path)
    expected = by_role(source.optimizer)
    del expected["momentum/scalar/scale"]
    assert_same(by_role(target.optimizer), expected)


def test_keras_lion_skips_a_checkpoint_with_the_counter(tmp_path):
    # Keras's own loading, not keraslion's: one UserWarning, and nothing is
    # loaded (the counter makes the counts differ).
    source = trained(Lion(skip_nonfinite=True))
    path = save(source, tmp_path, "weights.h5")
    model = make_model(keras.optimizers.Lion())
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        model.load_weights(path)
    assert int(to_numpy(model.optimizer.iterations)) == 0
    assert all(not np.any(value(m)) for m in model.optimizer._momentums)


@pytest.mark.parametrize("fmt", FORMATS)
def test_use_ema_turned_on_starts_averages_at_the_weights(fmt, tmp_path):
    source = trained(Lion())
    path = save(source, tmp_path, fmt)
    model = make_model(Lion(use_ema=True))
    load_quietly(model, path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))
    averages = model.optimizer._model_variables_moving_average
    for weight, average in zip(model.trainable_variables, averages):
        assert np.any(value(average))
        np.testing.assert_array_equal(value(average), value(weight))
    # A copy, not the weight's own buffer.
    weight = model.trainable_variables[0]
    before = value(averages[0])
    weight.assign(keras.ops.zeros(weight.shape))
    np.testing.assert_array_equal(value(averages[0]), before)
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)


def test_use_ema_turned_off_warns(tmp_path):
    source = trained(Lion(use_ema=True))
    path = save(source, tmp_path, "weights.h5")
    model = make_model(Lion())
    # fit() ends with the averages copied into the weights: surely averages.
    with pytest.warns(StateWarning, match=r"dropped the moving averages of "
                      r".*first/kernel.*use_ema is off here\."):
        model.load_weights(path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))


@pytest.mark.parametrize("fmt", FORMATS)
def test_gradient_accumulation_turned_on_and_off(fmt, tmp_path):
    source = trained(Lion())
    path = save(source, tmp_path, fmt)
    model = make_model(Lion(gradient_accumulation_steps=2))
    load_quietly(model, path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))
    assert all(not np.any(value(a)) for a in model.optimizer._accumulated_gradients)
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    # Saved mid-cycle: the accumulated gradients are lost, so said.
    accumulating = trained(Lion(gradient_accumulation_steps=2))
    assert any(np.any(value(a)) for a in accumulating.optimizer._accumulated_gradients)
    path = save(accumulating, tmp_path, fmt, "accumulating")
    model = make_model(Lion())
    # From the store alone, accumulators and averages are alike.
    with pytest.warns(StateWarning, match=r"moving averages or the gradient accumulators "
                      r"of .*first/kernel.*use_ema is off here and gradient_accumulation_steps"):
        model.load_weights(path)
    assert_same(by_role(model.optimizer), by_role(accumulating.optimizer))


def test_schedule_and_float_learning_rate(tmp_path):
    schedule = keras.optimizers.schedules.CosineDecay(0.01, decay_steps=10)
    source = trained(Lion(learning_rate=schedule))
    path = save(source, tmp_path, "weights.h5")
    model = make_model(Lion(learning_rate=0.005, skip_nonfinite=True))
    load_quietly(model, path)
    expected = by_role(source.optimizer)
    expected["learning_rate"] = np.float32(0.005)  # Its own: the checkpoint has none.
    assert_same(by_role(model.optimizer), expected)

    source = trained(Lion(learning_rate=0.0025))
    path = save(source, tmp_path, "weights.h5", "float")
    model = make_model(Lion(learning_rate=schedule))
    with pytest.warns(StateWarning, match=r"dropped the learning rate \(0.0025\): the learning "
                      "rate here is a schedule"):
        model.load_weights(path)
    expected = by_role(source.optimizer)
    del expected["learning_rate"]
    assert_same(by_role(model.optimizer), expected)


def test_checkpoint_lacking_a_momentum_raises_and_loses_nothing(tmp_path):
    # Saved with the first layer frozen; loaded with it trainable.
    source = trained(Lion(), frozen_first=True)
    path = save(source, tmp_path, "weights.h5")
    model = trained(Lion(learning_rate=0.003))
    before = state(model.optimizer.variables)
    with pytest.raises(ValueError, match=r"lacks the momentum of .*first/kernel and the "
                       r"momentum of .*first/bias.*skip_mismatch=True"):
        model.load_weights(path)
    assert_same(state(model.optimizer.variables), before)

    with pytest.warns(StateWarning, match=r"lacks the momentum of .*first/kernel.*start fresh"):
        model.load_weights(path, skip_mismatch=True)
    loaded = by_role(model.optimizer)
    assert not np.any(loaded.pop("momentum/first/kernel"))
    assert not np.any(loaded.pop("momentum/first/bias"))
    assert_same(loaded, by_role(source.optimizer))


def test_momentums_of_a_layer_now_frozen_are_dropped_with_a_warning(tmp_path):
    source = trained(Lion())
    path = save(source, tmp_path, "weights.h5")
    model = make_model(Lion(), frozen_first=True)
    with pytest.warns(StateWarning, match=r"dropped the momentums of shape \(5, 4\) and shape "
                      r"\(4,\): this model has no variable of that shape in that place"):
        model.load_weights(path)
    expected = by_role(source.optimizer)
    del expected["momentum/first/kernel"], expected["momentum/first/bias"]
    assert_same(by_role(model.optimizer), expected)


# Keras's own warning, for the layer "third".
@pytest.mark.filterwarnings("ignore:A total of 1 objects could not be loaded")
def test_model_with_an_extra_layer_and_skip_mismatch(tmp_path):
    source = trained(Lion())
    path = save(source, tmp_path, "weights.h5")
    model = make_model(Lion(), extra_layer=True)
    with pytest.raises(ValueError, match="could not be loaded"):
        model.load_weights(path)  # Keras's message: the layer "third" has no weights.
    with pytest.warns(StateWarning, match=r"lacks the momentum of .*third/kernel"):
        model.load_weights(path, skip_mismatch=True)
    loaded = by_role(model.optimizer)
    assert not np.any(loaded.pop("momentum/third/kernel"))
    assert not np.any(loaded.pop("momentum/third/bias"))
    assert_same(loaded, by_role(source.optimizer))


OTHER_OPTIMIZERS = {
    "adamw": lambda: keras.optimizers.AdamW(),
    "adam-amsgrad": lambda: keras.optimizers.Adam(amsgrad=True),
    "nadam": lambda: keras.optimizers.Nadam(),
    "adamax": lambda: keras.optimizers.Adamax(),
    "lamb": lambda: keras.optimizers.Lamb(),
    "adadelta": lambda: keras.optimizers.Adadelta(),
    "ftrl": lambda: keras.optimizers.Ftrl(),
}


@pytest.mark.parametrize("other", OTHER_OPTIMIZERS.values(), ids=OTHER_OPTIMIZERS.keys())
@pytest.mark.parametrize("lion_trained", [True, False])
def test_another_optimizers_checkpoint_loads_the_weights_and_leaves_the_lion_as_it_is(
        other, lion_trained, tmp_path):
    # Switching from AdamW to Lion (as lion_hparams_from_adamw() helps to):
    # read as a Lion's, Adam's velocities (or its first momentums) became momentums.
    source = trained(other())
    path = save(source, tmp_path, "weights.h5")
    model = trained(Lion(use_ema=True)) if lion_trained else make_model(Lion(), build=False)
    before = state(model.optimizer.variables)
    with pytest.warns(StateWarning, match=r"the checkpoint is another optimizer's, not a "
                      r"Lion's: it holds [23] values per trainable variable.*None of it was "
                      r"loaded, and the optimizer's state was left as it is"):
        model.load_weights(path)
    assert_same(state(model.optimizer.variables), before)
    for loaded, saved in zip(model.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)


def same_shapes(optimizer, layers=1, train=True):
    """A model whose variables all have one shape: an optimizer's values for
    them, two side by side, lie as a Lion's averages (or accumulators) and
    momentums do."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((2,))] + [
        keras.layers.Dense(2, use_bias=False, name=f"dense{i}") for i in range(layers)])
    model.compile(optimizer=optimizer, loss="mse")
    if train:
        # Positive inputs, targets far below: every gradient, so every momentum, is positive.
        model.fit(np.abs(X[:, :2]), -10 - np.abs(Y), batch_size=8, epochs=1, shuffle=False,
                  verbose=0)
    return model


@pytest.mark.parametrize("layers", [1, 2])
def test_another_optimizers_checkpoint_of_variables_of_one_shape_is_said_to_be_one(
        layers, tmp_path):
    path = save(same_shapes(keras.optimizers.AdamW(), layers), tmp_path, "weights.h5")
    model = same_shapes(Lion(), layers)
    before = state(model.optimizer.variables)
    with pytest.warns(StateWarning, match="another optimizer's"):
        model.load_weights(path)
    assert_same(state(model.optimizer.variables), before)


@pytest.mark.parametrize("options", [{"use_ema": True}, {"gradient_accumulation_steps": 2}])
def test_a_lions_checkpoint_of_variables_of_one_shape_is_not_taken_for_another_optimizers(
        options, tmp_path):
    source = same_shapes(Lion(**options))
    assert np.all(value(source.optimizer._momentums[0]) > 0)
    path = save(source, tmp_path, "weights.h5")
    # Into its own options: it loads, and not built yet, it says to build first.
    model = same_shapes(Lion(**options))
    load_quietly(model, path)
    for loaded, saved in zip(model.optimizer.variables, source.optimizer.variables, strict=True):
        np.testing.assert_array_equal(value(loaded), value(saved))
    model = same_shapes(Lion(**options), train=False)
    with pytest.raises(ValueError, match="not built"):
        model.load_weights(path)
    if "use_ema" in options:
        # Into other options, moving averages lying near the weights are a Lion's.
        model = same_shapes(Lion())
        with pytest.warns(StateWarning, match="dropped the moving averages of"):
            model.load_weights(path)
        assert_same(by_role(model.optimizer), by_role(source.optimizer))


def saved_store(optimizer):
    store = {}
    optimizer.save_own_variables(store)
    return store


def test_shapes_that_differ_raise_and_change_nothing():
    source = make_model(Lion())
    source.optimizer.apply([keras.ops.ones(v.shape) for v in source.trainable_variables])
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    other.compile(optimizer=Lion(skip_nonfinite=True), loss="mse")
    other.optimizer.build(other.trainable_variables)
    other.optimizer.apply([keras.ops.ones(v.shape) for v in other.trainable_variables])
    before = state(other.optimizer.variables)
    with pytest.raises(ValueError, match=r"the momentum of .*kernel has shape \(5, 3\) here but "
                       r"\(5, 4\) in the checkpoint"):
        other.optimizer.load_own_variables(saved_store(source.optimizer))
    assert_same(state(other.optimizer.variables), before)


def test_a_layout_that_fits_nothing_raises():
    model = make_model(Lion())
    store = saved_store(model.optimizer)
    store["2"] = np.zeros((5, 4), np.int32)  # Not a momentum.
    before = state(model.optimizer.variables)
    with pytest.raises(ValueError, match=r"fits none .*6 saved variables"):
        model.optimizer.load_own_variables(store)
    assert_same(state(model.optimizer.variables), before)


def test_unbuilt_optimizer(tmp_path):
    source = trained(Lion())
    path = save(source, tmp_path, "weights.h5")
    model = make_model(Lion(), build=False)
    with pytest.raises(ValueError, match=r"not built.*optimizer.build\(model.trainable_variables"):
        model.load_weights(path)
    assert int(to_numpy(model.optimizer.iterations)) == 0
    with pytest.warns(StateWarning, match="not built"):
        model.load_weights(path, skip_mismatch=True)
    assert int(to_numpy(model.optimizer.iterations)) == 3
    # Built first, it loads.
    model = make_model(Lion(), build=False)
    model.optimizer.build(model.trainable_variables)
    load_quietly(model, path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))


def test_a_checkpoint_saved_before_training_restarts_the_optimizer_and_says_so(tmp_path):
    # Saved compiled but never trained: its optimizer is unbuilt, at step 0.
    path = save(make_model(Lion(), build=False), tmp_path, "weights.h5")
    built = make_model(Lion())
    load_quietly(built, path)  # A fresh optimizer loses nothing.
    model = trained(Lion())
    with pytest.warns(StateWarning, match="had taken no step.*state after 3 steps"):
        model.load_weights(path)
    assert int(to_numpy(model.optimizer.iterations)) == 0
    assert not any(value(m).any() for m in model.optimizer._momentums)


def test_empty_checkpoint():
    fresh = make_model(Lion(), build=False)
    fresh.optimizer.load_own_variables({})  # Nothing on either side.
    model = make_model(Lion())
    with pytest.raises(ValueError, match="holds no optimizer state"):
        model.optimizer.load_own_variables({})


def test_momentum_dtype_changed(tmp_path):
    source = trained(Lion(momentum_dtype="bfloat16"))
    path = save(source, tmp_path, "weights.h5")
    model = make_model(Lion())
    load_quietly(model, path)
    assert_same(by_role(model.optimizer), by_role(source.optimizer))


def test_a_momentum_loaded_into_float16_saturates(tmp_path):
    source = trained(Lion())
    momentum = source.optimizer._momentums[0]
    big = np.full(momentum.shape, 1e5, np.float32)
    big[0] = -np.inf
    momentum.assign(big)
    path = save(source, tmp_path, "weights.h5")
    model = make_model(Lion(momentum_dtype="float16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's overflow warning included
        load_quietly(model, path)
    loaded = value(model.optimizer._momentums[0]).astype(np.float64)
    expected = np.full(big.shape, 65504.0)
    expected[0] = -65504.0
    np.testing.assert_array_equal(loaded, expected)


def test_state_warnings_can_be_routed(monkeypatch):
    shown, routed = [], []
    monkeypatch.setattr(warnings, "showwarning", lambda *args, **kwargs: shown.append(args[0]))
    _restore.route_state_warnings(routed.append)
    _restore.route_state_warnings(routed.append)  # Twice: still once.
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("state", StateWarning, stacklevel=1)
        warnings.warn("other", UserWarning, stacklevel=1)
    assert routed == ["state"]
    assert [str(w) for w in shown] == ["other"]


def fitted(optimizer, batches):
    model = make_model(optimizer)
    model.fit(X, Y, batch_size=len(X) // batches, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("saved, loaded, batches, dropped", [
    # fit() ends with the averages copied into the weights: surely averages.
    ({"use_ema": True}, {"gradient_accumulation_steps": 2}, 3, "moving averages"),
    # Reset at the update: surely accumulators.
    ({"gradient_accumulation_steps": 2}, {"use_ema": True}, 4, "gradient accumulators"),
], ids=["ema_into_accumulators", "accumulators_at_an_update_into_ema"])
def test_averages_and_accumulators_load_as_their_values_say(saved, loaded, batches, dropped,
                                                            tmp_path):
    # Alike in the store; read as this Lion's options say, saved averages
    # would be added in as gradients at the next update.
    source = fitted(Lion(**saved), batches)
    path = save(source, tmp_path, "weights.h5")
    model = trained(Lion(**loaded))
    with pytest.warns(StateWarning, match=f"dropped the {dropped} of .*is off here"):
        model.load_weights(path)
    lion = model.optimizer
    assert_same(by_role(lion), by_role(source.optimizer))
    # What this Lion's options add starts fresh: accumulators at zero, averages at the weights.
    for accumulator in getattr(lion, "_accumulated_gradients", []):
        assert not value(accumulator).any()
    for average, weight in zip(getattr(lion, "_model_variables_moving_average", []),
                               model.trainable_variables):
        np.testing.assert_array_equal(value(average), value(weight))
    # Resumed with its own options, each loads as it was saved.
    model = make_model(Lion(**saved))
    load_quietly(model, path)
    for ours, theirs in zip(model.optimizer.variables, source.optimizer.variables,
                            strict=True):
        np.testing.assert_array_equal(value(ours), value(theirs))


def test_nonzero_accumulators_at_a_count_that_resets_them_are_said(tmp_path):
    # Far from the weights, the values only hint; but this Lion's own
    # accumulators would be zero after 4 steps of 2: moving averages, or
    # another accumulation's sums. Loaded as the options say, with a warning.
    source = fitted(Lion(learning_rate=0.05, use_ema=True), 4)
    averages = source.optimizer._model_variables_moving_average
    averages[0].assign(-10 * value(source.trainable_variables[0]))
    path = save(source, tmp_path, "weights.h5")
    model = trained(Lion(gradient_accumulation_steps=2))
    with pytest.warns(StateWarning, match="after 4 steps its own would have been reset"):
        model.load_weights(path)
    for accumulator, average in zip(model.optimizer._accumulated_gradients, averages,
                                    strict=True):
        np.testing.assert_array_equal(value(accumulator), value(average))


@pytest.mark.parametrize("saved, loaded", [
    ({"use_ema": True}, {"use_ema": True}),
    ({"gradient_accumulation_steps": 2}, {"gradient_accumulation_steps": 2}),
    ({"use_ema": True}, {"use_ema": True, "gradient_accumulation_steps": 2}),
], ids=["ema", "accumulation", "ema_into_both"])
def test_a_checkpoint_before_the_first_step_loads_quietly(saved, loaded, tmp_path):
    # Built, not stepped: averages not yet set are zero, as accumulators are.
    path = save(make_model(Lion(**saved)), tmp_path, "weights.h5")
    model = make_model(Lion(**loaded))
    load_quietly(model, path)
    assert int(value(model.optimizer._iterations)) == 0


def test_values_far_from_the_weights_load_as_the_options_say_with_a_warning(tmp_path):
    # Saved mid-cycle and far from the weights, they may be sums of
    # gradients, or this Lion's own averages far behind fast-moving weights
    # (ema_momentum 0.999, a large learning rate): loaded as its own, said.
    source = trained(Lion(gradient_accumulation_steps=2))
    path = save(source, tmp_path, "weights.h5")
    model = trained(Lion(use_ema=True))
    with pytest.warns(StateWarning, match="loaded the saved moving averages.*lie far from"):
        model.load_weights(path)
    for average, saved in zip(model.optimizer._model_variables_moving_average,
                              source.optimizer._accumulated_gradients, strict=True):
        np.testing.assert_array_equal(value(average), value(saved))
    # Its own averages, far behind: loaded as they were saved.
    source = make_model(Lion(learning_rate=0.05, use_ema=True, ema_momentum=0.999))
    source.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    averages = source.optimizer._model_variables_moving_average
    averages[0].assign(value(averages[0]) + 100.0)  # (mid-training: far from the weights)
    path = save(source, tmp_path, "weights.h5", "own")
    model = make_model(Lion(learning_rate=0.05, use_ema=True, ema_momentum=0.999))
    with pytest.warns(StateWarning, match="lie far from"):
        model.load_weights(path)
    for ours, theirs in zip(model.optimizer.variables, source.optimizer.variables, strict=True):
        np.testing.assert_array_equal(value(ours), value(theirs))


@pytest.mark.parametrize("fmt", ["keras", "weights.h5"])
def test_use_ema_resumes_with_its_own_options_after_many_steps(fmt, tmp_path):
    # Biases start at 0 and move far from their averages relative to
    # themselves: the averages must still load as averages.
    source = make_model(Lion(learning_rate=1e-3, use_ema=True))
    source.fit(X, Y, batch_size=8, epochs=10, shuffle=False, verbose=0)
    path = save(source, tmp_path, fmt)
    if fmt == "keras":
        model = keras.saving.load_model(path)
    else:
        model = make_model(Lion(learning_rate=1e-3, use_ema=True))
        load_quietly(model, path)
    for ours, theirs in zip(model.optimizer.variables, source.optimizer.variables,
                            strict=True):
        np.testing.assert_array_equal(value(ours), value(theirs))


LOSS_SCALED = {
    # Another count of variables: Keras's loader skipped the loss scale.
    "ema_added": ({}, {"use_ema": True}),
    # The same count, other shapes: Keras's loader failed.
    "schedule_into_rate": ({"learning_rate": keras.optimizers.schedules.ExponentialDecay(
        0.01, 10, 0.5), "skip_nonfinite": True}, {}),
    # The same count and shapes: Keras's loader put the averages into the
    # accumulators, where they stayed when the Lion's loader refused them.
    "averages_into_accumulators": ({"use_ema": True, "skip_nonfinite": True},
                                   {"gradient_accumulation_steps": 2, "skip_nonfinite": True}),
    "variable_weight_decay_dropped": ({"weight_decay": keras.Variable(0.1)}, {}),
}


@pytest.mark.parametrize("saved, loaded", LOSS_SCALED.values(), ids=LOSS_SCALED.keys())
def test_a_loss_scale_optimizer_loads_its_own_state_whatever_the_lions_options(
        saved, loaded, tmp_path):
    # Mixed precision wraps the Lion in Keras's LossScaleOptimizer, which
    # saves its own variables and then the Lion's, all by position.
    def wrapped(**options):
        return keras.optimizers.LossScaleOptimizer(Lion(**options), initial_scale=64.0)

    source = trained(wrapped(**saved))
    source.optimizer.dynamic_scale.assign(8.0)
    source.optimizer.step_counter.assign(5)
    path = save(source, tmp_path, "weights.h5")
    model = trained(wrapped(**loaded))
    lion = model.optimizer.inner_optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StateWarning)  # the Lion's own (dropped state)
        model.load_weights(path)
    assert value(model.optimizer.dynamic_scale) == 8.0
    assert value(model.optimizer.step_counter) == 5
    expected = by_role(source.optimizer.inner_optimizer)  # (no learning rate for a schedule)
    assert_same({key: x for key, x in by_role(lion).items() if key in expected}, expected)
    if loaded.get("gradient_accumulation_steps"):
        # Fresh: neither this model's partial sums nor the saved moving averages.
        assert not any(value(a).any() for a in lion._accumulated_gradients)


def test_a_loss_scale_optimizer_around_another_optimizer_loads_as_keras_loads(tmp_path):
    source = trained(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()))
    path = save(source, tmp_path, "weights.h5")
    model = make_model(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(amsgrad=True)))
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        model.load_weights(path)


class Scalars(keras.layers.Layer):
    """Two scalar weights first: their momentums are scalars, as the loss scale is."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        self.shift = self.add_weight(shape=(), initializer="zeros", name="shift")

    def call(self, x):
        return x * self.scale + self.shift


def scalars_first(optimizer):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), Scalars(name="scalars"),
                              keras.layers.Dense(2, name="dense")])
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model


def test_checkpoints_load_between_mixed_precision_and_without(tmp_path):
    # Mixed precision wraps the Lion: its checkpoint holds the wrapper's
    # variables, then the Lion's; one saved without holds the Lion's alone.
    plain = scalars_first(Lion())
    wrapped = scalars_first(keras.optimizers.LossScaleOptimizer(Lion()))
    wrapped.optimizer.dynamic_scale.assign(8.0)
    wrapped.optimizer.step_counter.assign(3)
    plain_path = save(plain, tmp_path, "weights.h5", name="plain")
    wrapped_path = save(wrapped, tmp_path, "weights.h5", name="wrapped")
    expected = by_role(plain.optimizer)
    assert expected["momentum/scalars/scale"].shape == ()

    # Into mixed precision: all of the Lion's state (the scalars' momentums
    # are not the loss scale), and the wrapper's, never saved, left as it is.
    target = scalars_first(keras.optimizers.LossScaleOptimizer(Lion()))
    target.optimizer.dynamic_scale.assign(5.0)
    load_quietly(target, plain_path)
    assert_same(by_role(target.optimizer.inner_optimizer), expected)
    assert value(target.optimizer.dynamic_scale) == 5.0
    load_quietly(target, wrapped_path)  # and then its own kind, as usual
    inner = by_role(wrapped.optimizer.inner_optimizer)
    assert_same(by_role(target.optimizer.inner_optimizer), inner)
    assert value(target.optimizer.dynamic_scale) == 8.0

    # Out of mixed precision: the Lion's state, the wrapper's dropped with a warning.
    target = scalars_first(Lion())
    with pytest.warns(StateWarning, match=r"dropped the step counter \(3\) and loss scale \(8\)"):
        target.load_weights(wrapped_path)
    assert_same(by_role(target.optimizer), inner)


def test_between_mixed_precision_and_without_what_does_not_fit_is_said(tmp_path):
    wrapped = scalars_first(keras.optimizers.LossScaleOptimizer(Lion()))
    path = save(wrapped, tmp_path, "weights.h5")
    plain_path = save(scalars_first(Lion()), tmp_path, "weights.h5", name="plain")

    # A model with one more layer: the real cause, not the wrapper's layout,
    # and with skip_mismatch what matches loads.
    keras.utils.set_random_seed(3)
    larger = keras.Sequential([keras.Input((5,)), Scalars(name="scalars"),
                               keras.layers.Dense(2, name="dense"),
                               keras.layers.Dense(2, name="extra")])
    larger.compile(optimizer=Lion(), loss="mse")
    larger.optimizer.build(larger.trainable_variables)
    with pytest.warns(StateWarning, match="lacks the momentum of"):
        larger.load_weights(path, skip_mismatch=True)
    loaded = by_role(larger.optimizer)
    for key, expected in by_role(wrapped.optimizer.inner_optimizer).items():
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)

    # Into a mixed-precision model not built yet: the Lion's error, as unwrapped.
    keras.utils.set_random_seed(3)
    unbuilt = keras.Sequential([keras.Input((5,)), Scalars(name="scalars"),
                                keras.layers.Dense(2, name="dense")])
    unbuilt.compile(optimizer=keras.optimizers.LossScaleOptimizer(Lion()), loss="mse")
    with pytest.raises(ValueError, match="the optimizer is not built"):
        unbuilt.load_weights(plain_path)


def decaying():
    return keras.optimizers.schedules.ExponentialDecay(3e-3, decay_steps=10, decay_rate=0.5)


def assert_learning_rate(optimizer, schedule):
    if schedule:
        assert isinstance(optimizer._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    else:
        assert value(optimizer._learning_rate) == np.float32(3e-3)


def test_keras_lions_mixed_precision_checkpoint_before_training_is_not_read_as_trained(tmp_path):
    # Its unbuilt wrapper saves 5 scalars: its iteration count and learning
    # rate, then the Lion's iteration count, learning rate and a variable
    # given as beta_1. Read as a trained wrapper's, the learning rate became
    # the loss scale, or the load failed.
    source = make_model(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Lion(learning_rate=3e-3, beta_1=keras.Variable(0.8))), build=False)
    path = save(source, tmp_path, "weights.h5")
    model = trained(keras.optimizers.LossScaleOptimizer(Lion(learning_rate=5e-3),
                                                        initial_scale=64.0))
    with pytest.warns(StateWarning, match="skipped the saved scalars 0.8.*had taken no step"):
        model.load_weights(path)
    assert value(model.optimizer.dynamic_scale) == 64.0
    assert value(model.optimizer.inner_optimizer._learning_rate) == np.float32(3e-3)
    plain = make_model(Lion(learning_rate=5e-3))
    with pytest.warns(StateWarning, match="skipped the saved scalars 0.8"):
        plain.load_weights(path)
    assert value(plain.optimizer._learning_rate) == np.float32(3e-3)


@pytest.mark.parametrize("schedule", [False, True], ids=["number", "schedule"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_mixed_precision_checkpoint_saved_before_training_loads_quietly(fmt, schedule,
                                                                          tmp_path):
    # Not built, the wrapper saves its iteration count and learning rate,
    # then the Lion's (with a schedule, its iteration count alone): read as
    # a Lion's store, or as the wrapper's step counter and loss scale, they
    # gave false warnings, an error, or a loss scale of 3e-3.
    def lion():
        return Lion(learning_rate=decaying() if schedule else 3e-3)

    source = make_model(keras.optimizers.LossScaleOptimizer(lion()), build=False)
    path = save(source, tmp_path, fmt)
    if fmt == "keras":
        with warnings.catch_warnings():
            warnings.simplefilter("error", StateWarning)
            model = keras.saving.load_model(path)
    else:
        model = make_model(keras.optimizers.LossScaleOptimizer(lion()))
        load_quietly(model, path)
        unbuilt = make_model(keras.optimizers.LossScaleOptimizer(lion()), build=False)
        load_quietly(unbuilt, path)
        assert int(value(unbuilt.optimizer.inner_optimizer._iterations)) == 0
    assert_learning_rate(model.optimizer.inner_optimizer, schedule)
    assert int(value(model.optimizer.inner_optimizer._iterations)) == 0
    if fmt != "keras":
        # Into a model without mixed precision: the Lion's part, as its own.
        for build in (True, False):
            plain = make_model(lion(), build=build)
            load_quietly(plain, path)
            assert_learning_rate(plain.optimizer, schedule)
        plain = trained(lion())
        with pytest.warns(StateWarning, match="had taken no step") as caught:
            plain.load_weights(path)
        assert len(caught) == 1
        assert_learning_rate(plain.optimizer, schedule)
    # Into a trained model: the Lion restarts (said), the loss scale stays its own.
    model = trained(keras.optimizers.LossScaleOptimizer(lion(), initial_scale=64.0))
    model.optimizer.dynamic_scale.assign(16.0)
    with pytest.warns(StateWarning, match="had taken no step") as caught:
        model.load_weights(save(source, tmp_path, "weights.h5", "again"))
    assert len(caught) == 1
    assert value(model.optimizer.dynamic_scale) == 16.0
