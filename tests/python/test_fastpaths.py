"""Each backend's fast path against the plain path (`Lion.update_step`).

The fast paths may compute the same step with other roundings (PyTorch's
blocks, XLA's fused loops), so `c` can differ in its last bits and `sign(c)`
can flip where `c` is within rounding of zero: a few elements may then differ
by about 2 * learning_rate. The momentum does not depend on the weights, so it
must match closely whatever the flips.
"""

import math
import types

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion

BACKEND = keras.backend.backend()
LR = 0.01
# Mixed shapes: small tensors, and one larger than a torch block (2**17).
SHAPES = [(17, 5), (5,), (3, 4, 2), (1,), (400, 401)]

SETTINGS = {
    "defaults": {},
    "weight_decay": {"weight_decay": 0.3},
    "exclusion": {"weight_decay": 0.3, "exclude_from_weight_decay": ["bias"]},
    "cautious": {"cautious": True, "weight_decay": 0.1},
    "bfloat16_momentum": {"momentum_dtype": "bfloat16", "weight_decay": 0.1},
    "callable_betas": {"beta_1": lambda: 0.95, "beta_2": lambda: 0.98},
    "beta_1_one": {"beta_1": 1.0},
}


def trajectory(settings, fast, steps=30, seed=1):
    rng = np.random.default_rng(seed)
    optimizer = Lion(learning_rate=LR, **settings)
    if not fast:
        optimizer._fast_path = None
    names = ["kernel", "bias", "kernel_3d", "scale", "embedding"]
    variables = [keras.Variable(rng.normal(size=s).astype(np.float32), name=n)
                 for s, n in zip(SHAPES, names)]
    for _ in range(steps):
        grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype(np.float32))
                 for s in SHAPES]
        optimizer.apply(grads, variables)
    momentums = [to_numpy(m).astype(np.float32) for m in optimizer._momentums]
    return [to_numpy(v) for v in variables], momentums, optimizer


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_fast_path_matches_plain_path(settings):
    fast, fast_m, _ = trajectory(settings, fast=True)
    plain, plain_m, _ = trajectory(settings, fast=False)
    assert_same_steps(fast, plain, fast_m, plain_m,
                      bf16=settings.get("momentum_dtype") == "bfloat16", steps=30)


def assert_same_steps(weights, expected_weights, momentums, expected_momentums, bf16, steps):
    """Two runs of `steps` steps agree but for rounding and its consequences."""
    for ours, theirs, m_ours, m_theirs in zip(weights, expected_weights, momentums,
                                              expected_momentums):
        # Momentum: rounding only (bfloat16: a unit in the last place, now and then).
        np.testing.assert_allclose(m_ours, m_theirs, rtol=1e-2 if bf16 else 1e-5,
                                   atol=1e-3 if bf16 else 1e-6)
        # Weights: equal but for rare sign flips where c is within rounding of zero
        # (more with a bfloat16 momentum, whose rounding the fast paths see once more).
        off = ~np.isclose(ours, theirs, rtol=1e-5, atol=1e-5)
        assert off.mean() <= (0.02 if bf16 else 0.002), f"{off.sum()} of {off.size} differ"
        assert np.all(np.abs(ours - theirs) <= 2 * LR * steps + 1e-5)


def spy_on_fast_path(optimizer):
    """Replaces the optimizer's fast path by one that counts its updates."""
    fast, calls = optimizer._fast_path, []

    def update(*args, **kwargs):
        calls.append(1)
        return fast.update(*args, **kwargs)

    optimizer._fast_path = types.SimpleNamespace(supports=fast.supports, update=update)
    return calls


@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.1},
                                      {"momentum_dtype": "bfloat16"}],
                         ids=["defaults", "weight_decay", "bfloat16_momentum"])
def test_fast_path_is_taken(settings):
    optimizer = Lion(learning_rate=LR, **settings)
    assert optimizer._fast_path is not None, f"no fast path on {BACKEND}"
    calls = spy_on_fast_path(optimizer)
    variables = [keras.Variable(np.ones(s, np.float32)) for s in SHAPES]
    for _ in range(3):
        optimizer.apply([keras.ops.ones(s) for s in SHAPES], variables)
    assert len(calls) == 3


def test_fast_path_is_taken_inside_fit():
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    optimizer = Lion(learning_rate=LR)
    model.compile(optimizer=optimizer, loss="mse")
    model.build((None, 4))
    optimizer.build(model.trainable_variables)
    calls = spy_on_fast_path(optimizer)
    model.fit(x, x[:, :1], epochs=1, batch_size=16, verbose=0)
    assert calls  # traced once under jit/tf.function, called every step in eager torch


def _jax_full_size_copies(optimizer: Lion, dtype: str) -> dict[str, int]:
    """Full-size copies in jit(stateless_apply) with donated buffers, by dtype
    copied (an int8 momentum's block scales, 1/256 of its size, are copied:
    the old ones are read while the new ones are written)."""
    import jax

    shape = (256, 128)
    variables = [keras.Variable(np.ones(shape, dtype), dtype=dtype)]
    optimizer.build(variables)

    def step(trainable, state, grads):
        return optimizer.stateless_apply(state, grads, trainable)

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        [v.value for v in variables], [v.value for v in optimizer.variables],
        [keras.ops.ones(shape, dtype)]).compile()
    copies: dict[str, int] = {}
    for line in compiled.as_text().splitlines():
        if " copy(" in line and "[256,128]" in line:
            copied = line.split("=")[1].split("[")[0].strip()
            copies[copied] = copies.get(copied, 0) + 1
    return copies


@pytest.mark.skipif(BACKEND != "jax", reason="XLA buffer reuse under JAX")
@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
@pytest.mark.parametrize("betas", [(0.9, 0.99), (0.99, 0.9)])
def test_jax_step_copies_neither_weights_nor_momentum(momentum_dtype, betas):
    """float32 weights and their momentum are updated in place, whatever the
    momentum's dtype and the betas' order."""
    optimizer = Lion(weight_decay=0.01, momentum_dtype=momentum_dtype, beta_1=betas[0],
                     beta_2=betas[1])
    assert _jax_full_size_copies(optimizer, "float32") == {}


@pytest.mark.skipif(BACKEND != "jax", reason="XLA buffer reuse under JAX")
@pytest.mark.parametrize("options", [{}, {"skip_nonfinite": True}, {"use_ema": True}],
                         ids=["defaults", "skip_nonfinite", "ema"])
@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16", "float16"])
def test_jax_step_copies_at_most_one_buffer(options, weight_dtype):
    """Weights narrower than float32 (computed in float32, which XLA would
    recompute from the old weights: their momentum is copied), skipping a
    non-finite step (the old momentum is kept for a select after the step)
    and EMA (the old weights of a narrow dtype, copied): one full-size copy
    at most of each of weights and momentum, and of only one with float32
    weights."""
    optimizer = Lion(weight_decay=0.01, **options)
    copies = _jax_full_size_copies(optimizer, weight_dtype)
    narrow_with_ema = weight_dtype != "float32" and "use_ema" in options
    assert sum(copies.values()) <= (2 if narrow_with_ema else 1)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile")
def test_torch_fast_path_compiles_to_one_graph_that_reads_the_learning_rate():
    import torch
    import torch._dynamo.testing

    def run(compiled):
        optimizer = Lion(learning_rate=LR, weight_decay=0.1)
        variables = [keras.Variable(np.ones(s, np.float32)) for s in SHAPES[:3]]
        grads = [torch.linspace(-1, 1, math.prod(s)).reshape(s) for s in SHAPES[:3]]
        optimizer.apply(grads, variables)  # builds, and plans the blocks (once, not compiled)
        update = optimizer._fast_path.update
        if compiled:
            torch._dynamo.reset()
            counter = torch._dynamo.testing.CompileCounter()
            update = torch.compile(update, backend=counter)
        for learning_rate in (LR, 0.5, 0.25):  # a new value, not a new graph
            optimizer.learning_rate = learning_rate
            update(optimizer, grads, variables, optimizer.learning_rate)
        return [to_numpy(v) for v in variables], counter.frame_count if compiled else None

    (compiled, graphs), (eager, _) = run(compiled=True), run(compiled=False)
    assert graphs == 1  # no graph break (as reading the learning rate into Python made)
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile")
@pytest.mark.parametrize("weight_dtype, momentum_dtype", [
    ("float32", None), ("float32", "bfloat16"), ("float64", "float32")])
def test_torch_compile_steps_another_set_of_variables(weight_dtype, momentum_dtype):
    """A compiled step recompiled for another set of variables (a layer
    frozen, a subset trained), with a momentum narrower than the weights
    (the blocks' second scratch buffer) and a variable cut into blocks
    beside one excluded from weight decay: it steps as eagerly does."""
    import torch

    shapes = [(1 << 17) + 3, 257, 3]

    def run(compiled):
        torch._dynamo.reset()
        rng = np.random.default_rng(0)
        optimizer = Lion(learning_rate=LR, weight_decay=0.1, momentum_dtype=momentum_dtype)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        layers = [[keras.Variable(rng.normal(size=n).astype(weight_dtype), name=name)
                   for n, name in zip(shapes, ["large", "kernel", "bias"])] for _ in range(2)]
        variables = [*layers[0], *layers[1]]
        optimizer.build(variables)
        step = torch.compile(optimizer.apply) if compiled else optimizer.apply
        for chosen in (layers[0], layers[0], layers[1], variables, layers[1]):
            step([keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype(weight_dtype))
                  for v in chosen], chosen)
        return ([to_numpy(v) for v in variables],
                [to_numpy(m).astype(np.float64) for m in optimizer._momentums])

    (weights, momentums), (eager, eager_momentums) = run(compiled=True), run(compiled=False)
    assert_same_steps(weights, eager, momentums, eager_momentums,
                      bf16=momentum_dtype == "bfloat16", steps=5)


@pytest.mark.skipif(BACKEND != "torch", reason="fit(jit_compile=True) compiles with torch.compile")
def test_torch_jit_compiled_fit_goes_on_after_a_layer_is_frozen():
    """A kernel cut into blocks, with a bfloat16 momentum: the step compiled
    again for fewer variables (its blocks planned again) trains on."""
    keras.utils.set_random_seed(0)
    x, y = synthetic_task(n=256)
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              keras.layers.Dense(600, activation="relu"),
                              keras.layers.Dense(600, activation="relu"), keras.layers.Dense(4)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = Lion(learning_rate=1e-3, weight_decay=0.05, momentum_dtype="bfloat16",
                     exclude_from_weight_decay=["bias"])
    model.compile(optimizer=optimizer, loss=loss, jit_compile=True)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    frozen = model.layers[0]
    frozen.trainable = False
    model.compile(optimizer=optimizer, loss=loss, jit_compile=True)
    before = [to_numpy(v) for v in [*frozen.weights, *optimizer.variables]]
    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0).history
    after = [to_numpy(v) for v in [*frozen.weights, *optimizer.variables]]
    frozen_state = [*frozen.weights, *(optimizer._momentum(v) for v in frozen.weights)]
    ids = [id(v) for v in frozen_state]
    for variable, old, new in zip([*frozen.weights, *optimizer.variables], before, after):
        if id(variable) in ids:
            np.testing.assert_array_equal(new, old)
    assert optimizer.iterations.numpy() == 16
    assert np.isfinite(history["loss"]).all()


# bfloat16 momentum -------------------------------------------------------------

def test_bfloat16_momentum_is_stored_in_bfloat16():
    optimizer = Lion(momentum_dtype="bfloat16")
    variables = [keras.Variable(np.ones(s, np.float32)) for s in [(3, 2), (2,)]]
    optimizer.build(variables)
    assert [m.dtype for m in optimizer._momentums] == ["bfloat16", "bfloat16"]
    optimizer.apply([keras.ops.ones((3, 2)), keras.ops.ones(2)], variables)
    assert [v.dtype for v in variables] == ["float32", "float32"]
    assert [m.dtype for m in optimizer._momentums] == ["bfloat16", "bfloat16"]


@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16"])
def test_numpy_gradients_of_any_float_dtype_step_as_tensors_do(weight_dtype, momentum_dtype):
    """NumPy bfloat16 (ml_dtypes, which torch.as_tensor refuses), float64
    and nested lists: each steps as the same values given as a tensor of
    the weights' dtype do."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    shape = (4, 300)  # int8 codes: a whole block and a shorter one per row
    start = rng.normal(size=shape).astype(np.float32)
    values = rng.normal(size=shape).astype(ml_dtypes.bfloat16)

    def stepped(gradient):
        optimizer = Lion(learning_rate=LR, weight_decay=0.1, momentum_dtype=momentum_dtype)
        variable = keras.Variable(start, dtype=weight_dtype)
        for _ in range(3):
            optimizer.apply([gradient], [variable])
        return [to_numpy(x).astype(np.float32) for x in (variable, *optimizer.variables[1:])]

    expected = stepped(keras.ops.convert_to_tensor(values.astype(np.float32), weight_dtype))
    for gradient in (values, values.astype(np.float64), values.astype(np.float64).tolist()):
        for ours, theirs in zip(stepped(gradient), expected):
            np.testing.assert_array_equal(ours, theirs)


def synthetic_task(seed=0, n=2048, features=20, classes=4):
    """A teacher network's labels on Gaussian inputs: nothing to download."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    hidden = np.tanh(x @ rng.normal(size=(features, 32)))
    y = np.argmax(hidden @ rng.normal(size=(32, classes)), axis=1)
    return x, y


def train(momentum_dtype):
    keras.utils.set_random_seed(0)
    x, y = synthetic_task()
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer=Lion(learning_rate=1e-3, weight_decay=0.05,
                                 momentum_dtype=momentum_dtype),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x[:1536], y[:1536], epochs=6, batch_size=64, verbose=0).history
    _, accuracy = model.evaluate(x[1536:], y[1536:], verbose=0)
    return history["loss"], accuracy


def test_bfloat16_momentum_training_tracks_float32():
    loss_32, accuracy_32 = train(None)
    loss_16, accuracy_16 = train("bfloat16")
    assert loss_32[-1] < 0.5 * loss_32[0]
    np.testing.assert_allclose(loss_16, loss_32, rtol=0.1)
    assert abs(accuracy_16 - accuracy_32) <= 0.03


def test_infinite_gradients_give_what_the_plain_path_gives():
    # +Inf in one element, -Inf in another, both in a third (momentum Inf - Inf = NaN).
    g = np.ones((4, 3), np.float32)
    first, second = g.copy(), -g
    first[0, 0] = first[2, 1] = np.inf
    second[1, 0] = second[2, 1] = -np.inf
    results = []
    for fast in (True, False):
        optimizer = Lion(learning_rate=LR, weight_decay=0.1)
        if not fast:
            optimizer._fast_path = None
        variable = keras.Variable(np.ones((4, 3), np.float32))
        for grads in (first, second, g, -g, g):
            optimizer.apply([keras.ops.convert_to_tensor(grads)], [variable])
        results.append([to_numpy(variable), to_numpy(optimizer._momentums[0])])
    momentum = results[1][1]
    assert np.isposinf(momentum[0, 0]) and np.isneginf(momentum[1, 0]) and np.isnan(momentum[2, 1])
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs))
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)  # NaN equals NaN here


@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
def test_variables_that_are_all_empty_step_without_error(momentum_dtype):
    """Variables with no elements (and nothing else) step as a no-op on every
    path (PyTorch's C step had no run to give a thread, and failed)."""
    variables = [keras.Variable(np.ones(shape, "float32")) for shape in ((0, 5), (3, 0))]
    optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype=momentum_dtype)
    optimizer.apply([np.ones(v.shape, "float32") for v in variables], variables)
    assert [tuple(v.shape) for v in variables] == [(0, 5), (3, 0)]
    assert int(to_numpy(optimizer.iterations)) == 1


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch swaps a module's parameters' data")
@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
@pytest.mark.parametrize("swap", ["to_bfloat16", "to_float32", "channels_last"])
def test_torch_parameters_swapped_in_place_step_as_on_the_plain_path(swap, momentum_dtype):
    """`module.to(torch.bfloat16)`, `module.to(torch.float32)` (of a bfloat16
    model) or `module.to(memory_format=channels_last)` between steps gives
    each parameter new data of another dtype or layout, under the same
    tensor: the fast paths plan anew for it (the C step wrote float32 into
    bfloat16 memory, and stepped a channels-last kernel in memory order;
    the float32 data of bfloat16 variables kept float32 weights where the
    plain path rounds them to bfloat16), and step as the plain path does,
    bit for bit."""
    import torch

    states = {}
    for fast in (True, False):
        keras.utils.set_random_seed(0)
        dtype = "bfloat16" if swap == "to_float32" else None
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(64, 3, dtype=dtype),
                                  keras.layers.Flatten(), keras.layers.Dense(300, dtype=dtype)])
        optimizer = Lion(1e-2, weight_decay=0.5, momentum_dtype=momentum_dtype)
        optimizer.build(model.trainable_variables)
        if not fast:
            optimizer._fast_path = None
        rng = np.random.default_rng(0)
        for step in range(3):
            if step == 1:
                model.to(**{"to_bfloat16": {"dtype": torch.bfloat16},
                            "to_float32": {"dtype": torch.float32},
                            "channels_last": {"memory_format": torch.channels_last}}[swap])
            optimizer.apply([rng.standard_normal(v.shape).astype("float32")
                             for v in model.trainable_variables], model.trainable_variables)
        states[fast] = [to_numpy(v.value).astype("float32")
                        for v in (*model.trainable_variables, *optimizer.variables)]
    if swap == "channels_last":
        assert not model.trainable_variables[0].value.is_contiguous()
    if swap == "to_float32":
        assert model.trainable_variables[0].value.dtype == torch.float32
    for ours, theirs in zip(states[True], states[False]):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch swaps a tensor's data")
@pytest.mark.parametrize("when", [0, 2])
@pytest.mark.parametrize(("weight_dtype", "momentum_dtype", "stored"), [
    ("float32", None, ["bfloat16"]),
    ("float32", None, ["float16"]),
    ("float32", None, ["float64"]),
    ("float32", None, ["float64", "float16"]),
    ("float32", "bfloat16", ["float32"]),
    ("float32", "int8", ["uint8"]),
    ("float32", "int8", ["int16"]),
    ("bfloat16", "int8", ["float16"]),
    ("float64", "bfloat16", ["float32"])])
def test_torch_state_stored_in_another_dtype_steps_as_on_the_plain_path(
        weight_dtype, momentum_dtype, stored, when):
    """Optimizer state whose data is swapped for another dtype (once or
    twice: the second may lie where the first state did), before the first
    step or between steps (after the routes were made), takes the plain
    step: the C steps wrote float32 into bfloat16 or float16 memory (heap
    corruption), and misread other dtypes; the blocked step kept its route."""
    import torch

    states = {}
    for fast in (True, False):
        variable = keras.Variable(np.linspace(-1, 1, 90000).reshape(300, 300),
                                  dtype=weight_dtype)
        optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype=momentum_dtype)
        optimizer.build([variable])
        if not fast:
            optimizer._fast_path = None
        rng = np.random.default_rng(0)
        for step in range(4):
            if step == when:
                tensor = optimizer._momentums[0].value
                for dtype in stored:
                    tensor.data = tensor.data.to(getattr(torch, dtype))
            optimizer.apply([rng.standard_normal((300, 300)).astype("float32")], [variable])
        states[fast] = [to_numpy(x).astype("float32") for x in (variable, *optimizer.variables)]
    for ours, theirs in zip(states[True], states[False]):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch swaps a tensor's data")
@pytest.mark.parametrize("when", [0, 2])
@pytest.mark.parametrize("swap", ["strided", "expanded", "resized"])
@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
def test_torch_state_swapped_for_another_layout_steps_as_on_the_plain_path(
        momentum_dtype, swap, when):
    """Optimizer state whose data is swapped for a tensor of its dtype that is
    not contiguous (equal values, strided; or one element, expanded), or of
    another shape, takes the plain step, which steps the strided data and
    refuses the others: the C steps read and wrote memory in order, as if
    contiguous and of the variable's size (wrong values, or a crash)."""
    import torch

    outcomes = {}
    for fast in (True, False):
        variable = keras.Variable(np.linspace(-1, 1, 90000).reshape(300, 300), dtype="float32")
        optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype=momentum_dtype)
        optimizer.build([variable])
        if not fast:
            optimizer._fast_path = None
        rng = np.random.default_rng(0)
        error = None
        for step in range(4):
            if step == when:
                tensor = optimizer._momentums[0].value
                tensor.data = {"strided": lambda x: x.t().contiguous().t(),
                               "expanded": lambda x: torch.zeros(1, dtype=x.dtype).expand(x.shape),
                               "resized": lambda x: x.flatten()[:10].clone()}[swap](tensor.data)
            try:
                optimizer.apply([rng.standard_normal((300, 300)).astype("float32")], [variable])
            except RuntimeError as caught:
                error = type(caught)
                break
        outcomes[fast] = error, [to_numpy(x).astype("float32")
                                 for x in (variable, *optimizer.variables)]
    assert outcomes[True][0] == outcomes[False][0]
    assert (outcomes[True][0] is None) == (swap == "strided")
    for ours, theirs in zip(outcomes[True][1], outcomes[False][1]):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(BACKEND != "torch", reason="a Keras variable made from a PyTorch tensor")
@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
def test_torch_variables_made_from_one_parameter_keep_their_own_momentums(momentum_dtype):
    """Two Keras variables made from one `torch.nn.Parameter` share its
    tensor, and have a momentum each: the routes, kept by the weights' tensor,
    stepped the second with the first one's momentum."""
    import torch

    momentums = {}
    for fast in (True, False):
        parameter = torch.nn.Parameter(torch.linspace(-1, 1, 4096).reshape(64, 64))
        first, second = keras.Variable(parameter), keras.Variable(parameter)
        optimizer = Lion(1e-2, momentum_dtype=momentum_dtype)
        optimizer.build([first, second])
        if not fast:
            optimizer._fast_path = None
        optimizer.apply([np.ones((64, 64), "float32")], [first])
        optimizer.apply([-np.ones((64, 64), "float32")], [second])
        momentums[fast] = [to_numpy(x).astype("float32") for x in optimizer.variables]
    for ours, theirs in zip(momentums[True], momentums[False]):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's tensors that share a momentum")
@pytest.mark.parametrize("given", ["variable", "tensor"])
@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16"])
def test_torch_a_gradient_that_is_another_variable_s_momentum_is_read_as_it_was(
        momentum_dtype, given):
    """A gradient that is a momentum of the step (its Keras variable, or its
    tensor) is copied before any variable steps, as one that shares weights
    is: the plain path read it after that momentum's update, a C step (which
    widens a bfloat16 gradient first) before."""
    momentums = {}
    for fast in (True, False):
        first = keras.Variable(np.full((64, 64), 1.0), dtype="float32")
        second = keras.Variable(np.full((64, 64), 2.0), dtype="float32")
        optimizer = Lion(0.5, beta_2=0.5, momentum_dtype=momentum_dtype)
        optimizer.build([first, second])
        if not fast:
            optimizer._fast_path = None
        optimizer.apply([np.full((64, 64), 0.25, "float32"), np.ones((64, 64), "float32")],
                        [first, second])
        momentum = optimizer._momentum(first)  # 0.5 * 0.25
        optimizer.apply([np.ones((64, 64), "float32"),
                         momentum if given == "variable" else momentum.value], [first, second])
        momentums[fast] = [to_numpy(x).astype("float32") for x in optimizer.variables]
        # The second's: 0.5 * 0.5 + 0.5 * 0.125, from the first's as it was.
        np.testing.assert_array_equal(
            to_numpy(optimizer._momentum(second)).astype("float32"), 0.3125)
    for ours, theirs in zip(momentums[True], momentums[False]):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch swaps a tensor's data")
def test_torch_weights_seen_in_another_shape_step_as_on_the_plain_path():
    """Weights whose data is swapped for a view of itself in another shape
    (same memory, dtype and layout) take the plain step, which refuses them:
    the routes, kept by the weights, kept stepping them in C."""
    outcomes = {}
    for fast in (True, False):
        variable = keras.Variable(np.linspace(-1, 1, 384).reshape(24, 16), dtype="float32")
        optimizer = Lion(1e-2)
        optimizer.build([variable])
        if not fast:
            optimizer._fast_path = None
        optimizer.apply([np.ones((24, 16), "float32")], [variable])
        variable.value.data = variable.value.data.view(16, 24)
        with pytest.raises(RuntimeError) as caught:
            optimizer.apply([np.ones((24, 16), "float32")], [variable])
        outcomes[fast] = str(caught.value), [to_numpy(x) for x in (variable,
                                                                      *optimizer.variables)]
    assert outcomes[True][0] == outcomes[False][0]
    for ours, theirs in zip(outcomes[True][1], outcomes[False][1]):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("momentum_dtype", [None, "bfloat16", "int8"])
def test_an_optimizer_built_again_steps_its_new_state(momentum_dtype):
    """With `built` reset, `build()` makes new state: the fast paths' caches
    (PyTorch's routes and runs, TensorFlow's plans and functions) held the
    old state, and kept stepping it."""
    states = {}
    for fast in (True, False):
        variables = [keras.Variable(np.linspace(-1, 1, 4096).reshape(64, 64), dtype="float32"),
                     keras.Variable(np.linspace(1, 2, 300), dtype="float32")]
        optimizer = Lion(1e-2, weight_decay=0.1, momentum_dtype=momentum_dtype)
        optimizer.build(variables)
        if not fast:
            optimizer._fast_path = None
        rng = np.random.default_rng(0)
        for step in range(4):
            if step == 2:
                optimizer.built = False
                optimizer.build(variables)
            optimizer.apply([rng.standard_normal(v.shape).astype("float32") for v in variables],
                            variables)
        states[fast] = [to_numpy(x).astype("float32") for x in (*variables, *optimizer.variables)]
    for ours, theirs in zip(states[True], states[False]):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch swaps a tensor's data")
@pytest.mark.parametrize("weight_dtype", ["float32", "float64"])
def test_torch_momentum_data_swapped_in_place_steps_as_on_the_plain_path(monkeypatch,
                                                                         weight_dtype):
    """A momentum whose data is swapped between steps (a new tensor under
    the same one) is stepped where it now lies: the blocked step (float64
    weights; float32 without the C kernel) planned views of its old memory,
    and kept updating them."""
    monkeypatch.setenv("KERASLION_NATIVE", "0")
    states = {}
    for fast in (True, False):
        variable = keras.Variable(np.ones((400, 400)), dtype=weight_dtype)
        optimizer = Lion(1e-2)
        optimizer.build([variable])
        if not fast:
            optimizer._fast_path = None
        for step in range(3):
            if step == 1:
                momentum = optimizer._momentums[0].value
                momentum.data = momentum.data.clone()
            optimizer.apply([np.full((400, 400), 0.5 + step)], [variable])
        states[fast] = [to_numpy(x) for x in (variable, optimizer._momentums[0])]
    for ours, theirs in zip(states[True], states[False]):
        np.testing.assert_array_equal(ours, theirs)
