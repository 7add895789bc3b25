"""Every bad argument gets a ValueError or TypeError naming it and the value received."""

import math
import re

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion, int8

BAD_ARGUMENTS = [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": math.nan}, "learning_rate"),
    ({"learning_rate": math.inf}, "learning_rate"),
    ({"learning_rate": "0.1"}, "learning_rate"),
    ({"beta_1": 0.0}, "beta_1"),
    ({"beta_1": 1.1}, "beta_1"),
    ({"beta_2": 1.0}, "beta_2"),
    ({"beta_2": -0.5}, "beta_2"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"weight_decay": math.nan}, "weight_decay"),
    ({"clipnorm": 0.0}, "clipnorm"),
    ({"clipvalue": -1.0}, "clipvalue"),
    ({"global_clipnorm": math.inf}, "global_clipnorm"),
    ({"use_ema": 1}, "use_ema"),
    ({"ema_momentum": 1.5}, "ema_momentum"),
    ({"ema_overwrite_frequency": 0}, "ema_overwrite_frequency"),
    ({"ema_overwrite_frequency": 2.5}, "ema_overwrite_frequency"),
    ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps"),
    ({"gradient_accumulation_steps": True}, "gradient_accumulation_steps"),
    ({"loss_scale_factor": 0.0}, "loss_scale_factor"),
    # Keras divides by these: on JAX and TensorFlow the gradients became 0 or NaN.
    ({"global_clipnorm": 3e38}, "global_clipnorm"),
    ({"loss_scale_factor": 1e-40}, "loss_scale_factor"),
    ({"loss_scale_factor": 1e38}, "loss_scale_factor"),
    ({"name": ""}, "name"),
    ({"name": 3}, "name"),
    ({"momentum_dtype": "int16"}, "momentum_dtype"),
    ({"momentum_dtype": "float31"}, "momentum_dtype"),
    # Accepted by Keras as float dtypes, but each backend saturates, overflows
    # or refuses to cast to them differently.
    ({"momentum_dtype": "float8_e4m3fn"}, "momentum_dtype"),
    ({"momentum_dtype": "float8_e5m2"}, "momentum_dtype"),
    ({"cautious": "yes"}, "cautious"),
    ({"skip_nonfinite": None}, "skip_nonfinite"),
    ({"exclude_from_weight_decay": ["bias", ""]}, "exclude_from_weight_decay"),
    ({"exclude_from_weight_decay": "(unclosed"}, "exclude_from_weight_decay"),
    # R's syntax: Python's `re` reads a nested set that matches none of the names.
    ({"exclude_from_weight_decay": "[[:alpha:]]+"}, "exclude_from_weight_decay"),
]


@pytest.mark.parametrize("kwargs, argument", BAD_ARGUMENTS,
                         ids=[f"{a}={v!r}" for (k, a) in BAD_ARGUMENTS for v in k.values()])
def test_bad_argument_is_named_with_its_value(kwargs, argument):
    with pytest.raises((ValueError, TypeError)) as error:
        Lion(**kwargs)
    message = str(error.value)
    assert f"`{argument}`" in message
    if "Received" in message:
        assert f"{argument}=" in message


@pytest.mark.parametrize("value", ["0.1", None, [0.1]])
def test_a_learning_rate_of_another_kind_is_told_the_kinds_accepted(value):
    with pytest.raises(TypeError, match="number >= 0, a `LearningRateSchedule`, a "
                       "`keras.Variable` or a function of no arguments"):
        Lion(learning_rate=value)


@pytest.mark.parametrize("argument, kinds", [
    ("beta_1", "number, a `keras.Variable` or a function of no arguments"),
    ("beta_2", "number, a `keras.Variable` or a function of no arguments"),
    ("weight_decay", "None, a number >= 0 or a `keras.Variable`"),
])
@pytest.mark.parametrize("value", ["0.1", [0.1], {"rate": 0.1}])
def test_a_beta_or_weight_decay_of_another_kind_is_told_the_kinds_accepted(argument, kinds,
                                                                           value):
    with pytest.raises(TypeError, match=re.escape(kinds)):
        Lion(**{argument: value})
    optimizer = Lion()
    with pytest.raises(TypeError, match=re.escape(kinds)):
        setattr(optimizer, argument, value)
    assert getattr(optimizer, argument) == Lion().get_config()[argument]


@pytest.mark.parametrize("cls", [keras.optimizers.schedules.ExponentialDecay, keras.Variable],
                         ids=["schedule", "variable"])
@pytest.mark.parametrize("argument", ["learning_rate", "beta_1", "beta_2"])
def test_a_class_is_not_taken_for_a_function(argument, cls):
    """A schedule's class, not an instance, would fail only at the first step."""
    with pytest.raises(TypeError, match=f"`{argument}`.*`keras.Variable`.*not a class"):
        Lion(**{argument: cls})
    optimizer = Lion()
    with pytest.raises(TypeError, match="not a class"):
        setattr(optimizer, argument, cls)
    assert optimizer.get_config()[argument] == Lion().get_config()[argument]


def test_two_clipping_arguments_are_refused():
    with pytest.raises(ValueError, match="Only one of"):
        Lion(clipnorm=1.0, clipvalue=1.0)


@pytest.mark.parametrize("options", [{"global_clipnorm": 2.0**126},
                                     {"loss_scale_factor": 2.0**-126}])
def test_divisors_at_the_edges_of_their_range_step(options):
    # (At the other edges, 2^-126 and 2^126, they are accepted too, but make
    # gradients so small that the float32 step flushes them: no step on CPU.)
    assert Lion(global_clipnorm=2.0**-126, loss_scale_factor=2.0**126).get_config()[
        "loss_scale_factor"] == 2.0**126
    optimizer = Lion(learning_rate=0.5, **options)
    variable = keras.Variable(np.zeros(2, np.float32))
    optimizer.apply([keras.ops.convert_to_tensor(np.array([1.0, -1.0], np.float32))], [variable])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), [-0.5, 0.5])


def test_numpy_booleans_are_taken_as_booleans():
    optimizer = Lion(cautious=np.bool_(True), use_ema=np.bool_(False))
    optimizer.skip_nonfinite = np.bool_(True)
    values = (optimizer.cautious, optimizer.use_ema, optimizer.skip_nonfinite)
    assert values == (True, False, True)
    assert all(type(value) is bool for value in values)
    assert type(optimizer.get_config()["cautious"]) is bool


def test_a_second_clipping_argument_set_later_is_refused():
    # Keras would apply only the first; another can replace it once it is None.
    optimizer = Lion(clipnorm=1.0)
    for name in ("clipvalue", "global_clipnorm"):
        with pytest.raises(ValueError, match=f"Only one of.*`clipnorm` is 1.0.*{name}=0.5"):
            setattr(optimizer, name, 0.5)
    optimizer.clipnorm = None
    optimizer.global_clipnorm = 0.5
    config = optimizer.get_config()
    assert (config["clipnorm"], config["clipvalue"], config["global_clipnorm"]) == (
        None, None, 0.5)
    with pytest.raises(ValueError, match="`global_clipnorm`.*-1.0"):
        optimizer.global_clipnorm = -1.0


def test_use_ema_is_fixed_once_built():
    # The build makes the moving averages, or not: a later change broke the next step.
    optimizer = Lion(learning_rate=0.1)
    optimizer.use_ema = True
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer.apply([keras.ops.ones(3)], [variable])
    with pytest.raises(ValueError, match="`use_ema` can only be changed before"):
        optimizer.use_ema = False
    optimizer.use_ema = True  # unchanged: accepted
    optimizer.apply([keras.ops.ones(3)], [variable])
    assert optimizer.get_config()["use_ema"] is True


def test_the_learning_rate_keeps_its_kind_once_it_holds_state():
    """A built optimizer's learning-rate variable is saved with its state:
    a schedule or function would drop it. A function or schedule has no
    variable to assign a number to."""
    optimizer = Lion(learning_rate=0.1)
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer.apply([keras.ops.ones(3)], [variable])
    count = len(optimizer.variables)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    for value in (schedule, lambda: 0.01):
        with pytest.raises(ValueError, match="built optimizer.*assign a number"):
            optimizer.learning_rate = value
    assert len(optimizer.variables) == count
    optimizer.learning_rate = 0.05
    assert float(to_numpy(optimizer.learning_rate)) == pytest.approx(0.05)
    for given in (schedule, lambda: 0.01):
        optimizer = Lion(learning_rate=given)
        with pytest.raises(TypeError, match="schedule or a function.*learning_rate=0.5"):
            optimizer.learning_rate = 0.5
        optimizer.learning_rate = lambda: 0.02  # another function is fine
        assert float(to_numpy(optimizer.learning_rate)) == pytest.approx(0.02)
    # Before the first step, a schedule may replace the number.
    optimizer = Lion(learning_rate=0.1)
    optimizer.learning_rate = schedule
    assert optimizer.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"


def test_unknown_keyword_is_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        Lion(amsgrad=True)


def test_good_values_at_the_edges_are_accepted():
    optimizer = Lion(learning_rate=0, beta_1=1.0, beta_2=0.0, weight_decay=0.0,
                     ema_momentum=0.0, ema_overwrite_frequency=3.0,
                     gradient_accumulation_steps=2.0, momentum_dtype="bfloat16")
    config = optimizer.get_config()
    assert config["learning_rate"] == 0.0
    assert config["ema_overwrite_frequency"] == 3 and isinstance(
        config["ema_overwrite_frequency"], int)
    assert isinstance(config["gradient_accumulation_steps"], int)


def test_int_learning_rate_is_accepted_as_float():
    assert Lion(learning_rate=1).get_config()["learning_rate"] == 1.0


def test_zero_dimensional_tensor_betas_are_accepted():
    optimizer = Lion(beta_1=np.float32(0.8), beta_2=keras.ops.convert_to_tensor(0.95))
    assert optimizer.beta_1 == pytest.approx(0.8)
    assert optimizer.beta_2 == pytest.approx(0.95)


def test_a_failed_call_leaves_weights_and_state_untouched():
    optimizer = Lion(learning_rate=0.1, weight_decay=0.1)
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer.apply([keras.ops.ones((3,))], [variable])
    weights = keras.ops.convert_to_numpy(variable).copy()
    state = [keras.ops.convert_to_numpy(v).copy() for v in optimizer.variables]
    with pytest.raises(ValueError):
        optimizer.exclude_from_weight_decay(var_names="bias")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), weights)
    for before, after in zip(state, optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after), before)



@pytest.mark.parametrize("momentum_dtype", [None, "int8"])
@pytest.mark.parametrize("shape", [(64, 128), (1, 128), (128,)], ids=str)
def test_a_gradient_of_another_shape_is_refused_and_changes_nothing(shape, momentum_dtype):
    """Transposed, broadcastable or flattened: each gradient must have its
    variable's shape (a fast path would reshape it, the plain one broadcast)."""
    optimizer = Lion(learning_rate=0.1, weight_decay=0.1, momentum_dtype=momentum_dtype)
    variables = [keras.Variable(np.ones((128, 64), np.float32), name="kernel"),
                 keras.Variable(np.ones(64, np.float32), name="bias")]
    optimizer.apply([keras.ops.ones((128, 64)), keras.ops.ones((64,))], variables)
    before = [keras.ops.convert_to_numpy(v).copy() for v in (*variables, *optimizer.variables)]
    with pytest.raises(ValueError, match=r"shape \(.*kernel.*\(128, 64\).*Nothing was updated"):
        optimizer.apply([keras.ops.ones(shape), keras.ops.ones((64,))], variables)
    with pytest.raises(ValueError, match="kernel"):
        optimizer.apply([keras.ops.ones(shape), keras.ops.ones((64,))])
    with pytest.raises(ValueError, match="bias"):  # As lists: checked before kernel steps.
        optimizer.apply([np.ones((128, 64)).tolist(), [1.0] * 65], variables)
    for value, after in zip(before, (*variables, *optimizer.variables)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after), value)

@pytest.mark.parametrize("count", [1, 3])
def test_another_count_of_gradients_than_of_variables_is_refused(count):
    optimizer = Lion(learning_rate=0.1)
    variables = [keras.Variable(np.ones(4, np.float32)), keras.Variable(np.ones(2, np.float32))]
    optimizer.build(variables)
    grads = [keras.ops.ones((4,)), keras.ops.ones((2,)), keras.ops.ones((2,))][:count]
    before = [keras.ops.convert_to_numpy(v).copy() for v in (*variables, *optimizer.variables)]
    with pytest.raises(ValueError, match=f"{count} gradients for 2 variables.*Nothing was"):
        optimizer.apply(grads, variables)
    with pytest.raises(ValueError, match=f"{count} gradients for 2 variables"):
        optimizer.apply(grads)
    for value, after in zip(before, (*variables, *optimizer.variables)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after), value)


@pytest.mark.parametrize("options", [{}, {"gradient_accumulation_steps": 2},
                                     {"gradient_accumulation_steps": 2, "skip_nonfinite": True}],
                         ids=["plain", "accumulation", "accumulation-skip_nonfinite"])
def test_gradients_without_variables_before_build_are_refused(options):
    # With accumulation, a gradient cast done before Keras's check once made
    # this call do nothing, silently.
    optimizer = Lion(**options)
    with pytest.raises(ValueError, match="must already be built"):
        optimizer.apply([keras.ops.ones((3,))])
    assert not optimizer.built


def test_a_variable_listed_twice_is_refused():
    # PyTorch's int8 step stepped it once (the last write won), others twice.
    optimizer = Lion(learning_rate=0.1, momentum_dtype="int8")
    variable = keras.Variable(np.ones((40, 64), np.float32), name="twice")
    with pytest.raises(ValueError, match="'twice' more than once.*Nothing was updated"):
        optimizer.apply([keras.ops.ones((40, 64))] * 2, [variable, variable])
    assert not optimizer.built
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), 1.0)


def test_a_variable_that_is_not_keras_s_is_refused():
    # A tf.Variable (or a backend's tensor) has no path to name its momentum
    # by: apply failed with an AttributeError, build too.
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        foreign = tf.Variable(np.ones((40, 64), np.float32), name="raw")
    else:
        foreign = keras.ops.ones((40, 64))
    kept = keras.Variable(np.ones((40, 64), np.float32), name="kept")
    optimizer = Lion(learning_rate=0.1, momentum_dtype="int8")
    with pytest.raises(TypeError, match="position 2.*keras.Variable.*Nothing was updated"):
        optimizer.apply([keras.ops.ones((40, 64))] * 2, [kept, foreign])
    with pytest.raises(TypeError, match="position 1.*keras.Variable"):
        optimizer.build([foreign])
    assert not optimizer.built
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kept), 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(foreign), 1.0)


def test_a_meta_device_gradient_is_refused():
    # Keras read it as uninitialised memory: with cautious, weights changed at random.
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch's meta device")
    import torch

    optimizer = Lion(learning_rate=0.1, cautious=True)
    variable = keras.Variable(np.ones((64,), np.float32), name="weights")
    with pytest.raises(ValueError, match="meta device.*'weights'.*Nothing was updated"):
        optimizer.apply([torch.empty((64,), device="meta")], [variable])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), 1.0)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0


@pytest.mark.parametrize("options", [{}, {"cautious": True}], ids=["fast", "plain"])
def test_a_gradient_that_cannot_be_read_leaves_the_next_step_as_it_should_be(options):
    # On PyTorch the gradients are read before the step's try block ended it:
    # a failure there kept that step's hyperparameters for every later step.
    optimizer = Lion(learning_rate=0.5, beta_1=0.5, beta_2=0.5, **options)
    variable = keras.Variable(np.ones((4,), np.float32))
    optimizer.build([variable])
    refusals = (ValueError, TypeError)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        refusals += (tf.errors.OpError,)  # Raised where a step compiled by XLA runs.
    with pytest.raises(refusals):
        optimizer.apply([np.array(["not", "a", "gradient", "!"])], [variable])
    optimizer.learning_rate = 0.25
    optimizer.beta_2 = 0.75
    optimizer.apply([np.full((4,), 2.0, np.float32)], [variable])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), 0.75)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(optimizer._momentum(variable)), 0.5)


ONE_STEP_OPTIONS = {
    "default": ({}, "float32"),
    "cautious": ({"cautious": True}, "float32"),
    "float16_momentum": ({"momentum_dtype": "float16"}, "float32"),
    "int8_momentum": ({"momentum_dtype": "int8"}, "float32"),
    "int8_bfloat16_weights": ({"momentum_dtype": "int8"}, "bfloat16"),
    "bfloat16_weights": ({}, "bfloat16"),
}


@pytest.mark.parametrize("options, dtype", ONE_STEP_OPTIONS.values(), ids=ONE_STEP_OPTIONS.keys())
def test_callable_betas_are_read_once_per_step_before_any_variable_steps(options, dtype):
    calls = []

    def beta_2():
        calls.append(1)  # Valid at the first step only.
        return 0.99 if len(calls) == 1 else 1.0

    variables = [keras.Variable(np.ones((4, 64), dtype), dtype=dtype) for _ in range(4)]
    optimizer = Lion(learning_rate=0.1, beta_2=beta_2, **options)
    grads = [keras.ops.ones((4, 64), dtype) for _ in variables]
    optimizer.apply(grads, variables)
    assert len(calls) == 1
    before = [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32")).copy()
              for v in (*variables, *optimizer.variables)]
    with pytest.raises(ValueError, match="beta_2"):
        optimizer.apply(grads, variables)
    for value, after in zip(before, (*variables, *optimizer.variables)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.cast(after, "float32")),
                                      value)


# Hyperparameters a user may set between steps ------------------------------------

BAD_ASSIGNMENTS = [
    ("weight_decay", -1.0), ("weight_decay", "a"), ("weight_decay", float("nan")),
    ("beta_1", 0.0), ("beta_1", 1.5), ("beta_2", 1.0), ("beta_2", "0.9"),
    ("beta_1", keras.optimizers.schedules.ExponentialDecay(0.9, 10, 0.9)),
    ("cautious", "yes"), ("cautious", None),
    ("loss_scale_factor", 1e-40), ("loss_scale_factor", -1.0), ("loss_scale_factor", math.nan),
]


@pytest.mark.parametrize("argument, value", BAD_ASSIGNMENTS,
                         ids=[f"{a}={v!r}" for a, v in BAD_ASSIGNMENTS])
def test_bad_assignment_is_refused_and_changes_nothing(argument, value):
    optimizer = Lion(weight_decay=0.1, beta_1=0.8, beta_2=0.95)
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`") as error:
        setattr(optimizer, argument, value)
    assert f"{argument}=" in str(error.value)
    assert (optimizer.weight_decay, optimizer.beta_1, optimizer.beta_2, optimizer.cautious,
            optimizer.loss_scale_factor) == (0.1, 0.8, 0.95, False, None)


def test_schedule_as_a_beta_is_refused_at_construction():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.9, 10, 0.9)
    for argument in ("beta_1", "beta_2"):
        with pytest.raises(TypeError, match=f"`{argument}`.*LearningRateSchedule"):
            Lion(**{argument: schedule})


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("argument, value", [("beta_1", 5), ("beta_1", 0.0), ("beta_2", 1.0),
                                             ("beta_2", "x"), ("beta_1", float("nan"))])
def test_callable_beta_is_checked_when_called_and_trains_nothing(argument, value, fast):
    current = {"value": 0.9}
    optimizer = Lion(learning_rate=0.1, **{argument: lambda: current["value"]})
    if not fast:
        optimizer._fast_path = None
    variables = [keras.Variable(np.ones(3, np.float32)), keras.Variable(np.ones(2, np.float32))]
    grads = [keras.ops.ones((3,)), keras.ops.ones((2,))]
    optimizer.apply(grads, variables)
    before = [keras.ops.convert_to_numpy(v).copy() for v in [*variables, *optimizer.variables]]
    current["value"] = value
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`") as error:
        optimizer.apply(grads, variables)
    assert f"{argument}=" in str(error.value)
    after = [keras.ops.convert_to_numpy(v) for v in [*variables, *optimizer.variables]]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [-0.1, float("inf"), "0.1", None])
def test_bad_learning_rate_assignment_is_refused_and_changes_nothing(value):
    optimizer = Lion(learning_rate=0.01)
    with pytest.raises((ValueError, TypeError), match="`learning_rate`.*learning_rate="):
        optimizer.learning_rate = value
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.01)
    optimizer.learning_rate = np.float64(0.5)  # as ReduceLROnPlateau sets it
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == 0.5


@pytest.mark.parametrize("options, dtype", ONE_STEP_OPTIONS.values(), ids=ONE_STEP_OPTIONS.keys())
@pytest.mark.parametrize("given", ["weights", "variables", "views", "detached", "numpy",
                                   "strided", "numpy_arrays"])
def test_gradients_that_are_variables_weights_are_read_as_they_were(options, dtype, given):
    # PyTorch steps weights in place: a gradient that was another variable's
    # weights was read again after that variable stepped (as Keras's Lion
    # does), on some paths and not others; then the result hung on the order.
    if (given in ("detached", "numpy", "strided", "numpy_arrays")
            and keras.backend.backend() != "torch"):
        pytest.skip("PyTorch's tensors that share the weights' memory")
    if given == "numpy_arrays" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    lion = Lion(learning_rate=0.5, beta_2=0.5, **options)
    a = keras.Variable(np.full((40, 64), 1.0, dtype), dtype=dtype, name="a")
    b = keras.Variable(np.full((40, 64), 5.0, dtype), dtype=dtype, name="b")
    if given == "detached":
        import torch

        # A variable made from a tensor holds that tensor's memory.
        source = torch.full((40, 64), 3.0, dtype=getattr(torch, dtype))
        c = keras.Variable(source, dtype=dtype, name="c")
        grads = [b.value.detach(), a.value.data, source[:]]
    elif given == "numpy":
        import torch

        # A slice of one tensor, through NumPy: a storage of its own that
        # starts in the middle of the variable's.
        def through_numpy(tensor, first_row=0):
            # NumPy has no bfloat16: its bits go through as int16.
            bits = tensor.detach().view(torch.int16).numpy()[first_row:]
            return torch.from_numpy(bits).view(tensor.dtype)

        source = torch.full((41, 64), 3.0, dtype=getattr(torch, dtype))
        source[0] = 7.0
        c = keras.Variable(source[1:], dtype=dtype, name="c")
        grads = [through_numpy(b.value), a.value.detach(), through_numpy(source, first_row=1)]
    elif given == "strided":
        import torch

        # Every other row of a tensor whose second half, through NumPy, is
        # a's weights (a storage of its own): the gradient's first rows lie
        # before a's memory, its last ones in it.
        whole = torch.full((80, 64), 1.0, dtype=getattr(torch, dtype))
        bits = whole.view(torch.int16).numpy()
        a = keras.Variable(torch.from_numpy(bits[40:]).view(whole.dtype), dtype=dtype, name="a")
        c = keras.Variable(np.full((40, 64), 3.0, dtype), dtype=dtype, name="c")
        grads = [b.value.detach(), torch.from_numpy(bits).view(whole.dtype)[::2],
                 c.value.detach()]
    elif given == "numpy_arrays":
        # A memoryview, a NumPy array and a list of rows that read the
        # weights, converted only in each variable's turn on the plain path.
        c = keras.Variable(np.full((40, 64), 3.0, dtype), dtype=dtype, name="c")
        grads = [b.value.detach().numpy(), memoryview(a.value.detach().numpy()),
                 list(c.value.detach())]
    else:
        c = keras.Variable(np.full((40, 64), 3.0, dtype), dtype=dtype, name="c")
        grads = {"weights": [b.value, a.value, c.value], "variables": [b, a, c],
                 "views": [b.value[:], a.value[:], c.value[:]]}[given]
    lion.apply(grads, [a, b, c])
    # m = (1 - beta_2) * g, from zero; each weight steps by -lr * sign(g).
    for variable, before, gradient in ((a, 1.0, 5.0), (b, 5.0, 1.0), (c, 3.0, 3.0)):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32")), before - 0.5)
        momentum = lion._momentum(variable)
        value = (int8.decode(*int8.unpack(momentum.value)) if momentum.dtype == "int8"
                 else momentum)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(keras.ops.cast(value, "float32")), 0.5 * gradient)


def _sparse(dense):
    """`dense` (rows 1 and 3 nonzero) as the backend's sparse gradient."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.tensor(dense).to_sparse()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(tf.constant(dense[[1, 3]]), tf.constant([1, 3]),
                                tf.constant(dense.shape))
    from jax.experimental import sparse

    return sparse.BCOO.fromdense(dense)


@pytest.mark.parametrize("options", [{"cautious": True}, {"gradient_accumulation_steps": 2},
                                     {"skip_nonfinite": True}, {"momentum_dtype": "int8"}],
                         ids=["cautious", "accumulation", "skip_nonfinite", "int8"])
def test_a_sparse_gradient_steps_as_its_dense_form(options):
    # On PyTorch, caution, skip_nonfinite and Keras's accumulation failed:
    # no sparse kernels for their comparisons.
    dense = np.zeros((8, 64), np.float32)
    dense[[1, 3]] = np.linspace(-1.0, 1.0, 128, dtype=np.float32).reshape(2, 64)
    results = []
    for gradient in (dense, _sparse(dense)):
        variable = keras.Variable(np.ones((8, 64), np.float32))
        optimizer = Lion(learning_rate=0.1, **options)
        for _ in range(2):
            optimizer.apply([gradient], [variable])
        results.append([keras.ops.convert_to_numpy(v) for v in (variable, *optimizer.variables)])
    assert results[0][0].min() < 1.0  # It stepped.
    for expected, got in zip(*results):
        np.testing.assert_array_equal(got, expected)
