"""momentum_dtype="int8": the codes against a NumPy model of the format, every
path against a float64 oracle of the step and the same quantizer, small
momenta next to large ones, determinism, saving and resuming, the options."""

from __future__ import annotations

import os
from typing import Any

import int8_oracle as oracle
import keras
import numpy as np
import pytest
from conftest import to_numpy
from keras import ops

from keraslion import Lion, int8

BACKEND = keras.backend.backend()
# XLA (JAX) and TensorFlow's CPU kernels flush subnormal floats to zero.
FLUSHES = BACKEND in ("jax", "tensorflow")
EPS = float(np.finfo(np.float32).eps)


def momenta(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Momenta over 12 decades, with edge values: 0, -0, +-Inf, NaN, and a block
    whose largest element is near float32's largest."""
    rng = np.random.default_rng(seed)
    m = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-12, 0, shape)).astype(np.float32)
    flat = m.reshape(-1)
    flat[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30]
    if flat.size > 600:
        flat[300:302] = [3e38, -1e-3]
    return m


SHAPES = [(3, 300), (4, 64), (2, 2, 256), (512,), (40, 33)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_codes_are_the_formats_with_the_hash_of_step_variable_and_element(shape: Any) -> None:
    m = momenta(shape)
    if FLUSHES:  # Subnormal momenta read as 0 there; none here.
        m = np.where(np.abs(m) < np.finfo(np.float32).tiny, 0, m).astype(np.float32)
    bits = to_numpy(int8.noise_bits(7, 3, shape))
    np.testing.assert_array_equal(bits, oracle.noise(7, 3, shape))
    codes, scales = (to_numpy(x) for x in int8.encode(ops.convert_to_tensor(m),
                                                      ops.convert_to_tensor(bits)))
    expected, expected_scales, ambiguous = oracle.encode(m, bits)
    assert codes.dtype == np.int8 and codes.shape == shape
    assert scales.shape == (*shape[:-1], -(-shape[-1] // oracle.block_size(shape)))
    np.testing.assert_array_equal(scales, expected_scales)
    differ = codes != expected
    wrong = differ & ~ambiguous
    assert not wrong.any(), (codes[wrong], expected[wrong])
    assert (np.abs(codes.astype(int) - expected.astype(int))[differ] == 1).all()
    assert ambiguous.mean() < 1e-3  # the ambiguity excused is a rounding's, not more
    decoded = to_numpy(int8.decode(ops.convert_to_tensor(codes), ops.convert_to_tensor(scales)))
    exact = oracle.decode(codes, scales)
    np.testing.assert_array_equal(np.isnan(decoded), np.isnan(m))
    np.testing.assert_array_equal(decoded[~np.isnan(m)], exact.astype(np.float32)[~np.isnan(m)])
    # Infinities saturate at the largest scale, 2**126, with their sign.
    # So do momenta beyond it (3e38).
    flat = decoded.reshape(-1)
    assert flat[2] == 2.0**126 and flat[3] == -(2.0**126)
    if flat.size > 600:
        assert flat[300] == 2.0**126


def test_rounding_is_unbiased_over_steps() -> None:
    shape = (8, 256)
    m = momenta(shape, seed=1)
    # (Beyond the largest scale, 2**126, a momentum saturates: see above.)
    m = np.where(np.isfinite(m) & (np.abs(m) <= 2.0**126), m, 1.0).astype(np.float32)
    total = np.zeros(shape)
    steps = 400
    for step in range(steps):
        codes, scales = int8.encode(ops.convert_to_tensor(m), int8.noise_bits(step, 0, shape))
        total += to_numpy(int8.decode(codes, scales))
    scales = oracle.scales_of(m)
    spread = oracle.spacing(m, scales) / np.sqrt(steps)
    # Within 5 standard errors of a uniform rounding, for every element.
    assert (np.abs(total / steps - m) <= 5 * spread + 1e-45).all()


def test_noise_of_different_elements_is_uncorrelated() -> None:
    """The rounding's bits over 1000 steps: between two elements of a row
    (up to 4032 apart), or down a column of rows 233 long (a Fibonacci
    number: 233 times the golden ratio is near an integer, where a Weyl
    sequence's bits would nearly repeat), correlation at most 0.05."""
    steps = ops.reshape(ops.arange(1000, dtype="int32"), (1000, 1, 1))
    row = to_numpy(int8.noise_bits(steps, 5, (2, 4096))) / 2**20 - 0.5
    n = row.shape[-1]
    spectrum = np.abs(np.fft.rfft(row, 2 * n)) ** 2
    products = np.fft.irfft(spectrum, 2 * n)[..., 1:n - 63].mean(axis=(0, 1))
    within_a_row = 12 * products / (n - np.arange(1, n - 63))  # uniform's variance: 1/12
    column = to_numpy(int8.noise_bits(steps, 5, (16, 233))) / 2**20 - 0.5
    down_a_column = [12 * np.mean(column[:, :-lag] * column[:, lag:]) for lag in range(1, 16)]
    assert np.abs(within_a_row).max() < 0.05, np.abs(within_a_row).argmax() + 1
    assert np.abs(down_a_column).max() < 0.05, down_a_column


def small_and_large_gradients(ratio: float) -> np.ndarray:
    """One element in 64 with a `ratio`-times larger gradient, signs random."""
    rng = np.random.default_rng(3)
    g = np.where(rng.random((64, 256)) < 0.5, -1.0, 1.0) * 1e-3
    g.reshape(-1)[::64] *= ratio
    return g.astype(np.float32)


@pytest.mark.parametrize(("ratio", "beta_2"), [(1e3, 0.99), (1e4, 0.99), (1e3, 0.999)])
def test_small_momenta_survive_next_to_large_ones(ratio: float, beta_2: float) -> None:
    """After 300 steps, the small elements' gradient is reversed: with float32
    momentum their step keeps its direction (momentum outweighs one gradient),
    so it must with int8 too. Absmax-linear int8 codes round them to zero and
    flip every one (bench/int8_codes.py)."""
    g = small_and_large_gradients(ratio)
    small = np.ones(g.shape, bool)
    small.reshape(-1)[::64] = False
    reversed_g = np.where(small, -g, g)
    final = {}
    for dtype in ("float32", "int8"):
        optimizer = Lion(learning_rate=1e-3, beta_2=beta_2, momentum_dtype=dtype)
        variable = keras.Variable(np.zeros(g.shape, np.float32))
        for _ in range(300):
            optimizer.apply([ops.convert_to_tensor(g)], [variable])
        before = to_numpy(variable)
        optimizer.apply([ops.convert_to_tensor(reversed_g)], [variable])
        final[dtype] = (to_numpy(variable) - before, to_numpy(optimizer._momentum_value(variable)))
    step32, m32 = final["float32"]
    step8, m8 = final["int8"]
    assert (np.sign(step32[small]) == -np.sign(g[small])).all()  # float32 does not flip
    assert (np.sign(step8[small]) == np.sign(step32[small])).all()
    # Unbiased: on average as large as float32's (at 1e4x, each is one of the
    # two codes next to it, 8 units of 2**-17 of the scale apart).
    ratio_to_float32 = m8[small] / m32[small]
    assert 0.9 < np.mean(ratio_to_float32) < 1.1, np.mean(ratio_to_float32)


# One step on every path, against a float64 oracle of Lion and the quantizer ------

def _paths() -> list[str]:
    return {"jax": ["plain", "fast", "jit"],
            "tensorflow": ["plain", "fast", "tf.function", "tf.function+XLA"],
            "torch": ["plain", "fast", "stateless"]}[BACKEND]


CASES = {
    "default": {},
    "weight-decay-excluded": {"weight_decay": 0.5, "exclude_from_weight_decay": "bias"},
    "beta_1>beta_2": {"beta_1": 0.99, "beta_2": 0.9},
    "cautious": {"cautious": True},
}
VARIABLES = [("kernel", (3, 300)), ("short_rows", (10, 40)), ("bias", (512,)), ("small", (16,))]


def _step(path: str, optimizer: Lion, grads: list[Any], variables: list[Any]) -> None:
    if path == "plain":
        optimizer._fast_path = None
    if path in ("plain", "fast"):
        optimizer.apply(grads, variables)
    elif path in ("jit", "stateless"):
        optimizer.build(variables)
        state = [v.value for v in optimizer.variables]
        apply = optimizer.stateless_apply
        if path == "jit":
            import jax

            apply = jax.jit(apply)
        new_trainable, new_state = apply(state, grads, [v.value for v in variables])
        for v, value in zip((*variables, *optimizer.variables), (*new_trainable, *new_state)):
            v.assign(value)
    else:
        import tensorflow as tf

        tf.function(lambda: optimizer.apply(grads, variables),
                    jit_compile=path.endswith("XLA"), autograph=False)()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("path", _paths())
def test_every_path_matches_the_oracle(path: str, case: str) -> None:
    settings = CASES[case]
    rng = np.random.default_rng(5)
    variables = [keras.Variable(rng.standard_normal(shape).astype(np.float32), name=name)
                 for name, shape in VARIABLES]
    optimizer = Lion(learning_rate=0.01, momentum_dtype="int8", **settings)
    optimizer.build(variables)
    beta_1, beta_2 = settings.get("beta_1", 0.9), settings.get("beta_2", 0.99)
    for step in range(4):
        grads = [(rng.standard_normal(v.shape) * 10.0 ** rng.uniform(-6, 1, v.shape))
                 .astype(np.float32) for v in variables]
        if step == 2:
            grads[0][0, :3] = [np.inf, -np.inf, 1e30]
        before = [(to_numpy(v), to_numpy(optimizer._momentum_value(v))) for v in variables]
        iteration = int(to_numpy(optimizer.iterations))
        _step(path, optimizer, [ops.convert_to_tensor(g) for g in grads], variables)
        for v, g, (theta, m) in zip(variables, grads, before):
            _check_step(optimizer, v, g, theta, m, iteration, beta_1, beta_2, settings, path)


def _check_step(optimizer: Lion, variable: Any, g: np.ndarray, theta: np.ndarray,
                m: np.ndarray, iteration: int, beta_1: float, beta_2: float,
                settings: dict[str, Any], path: str) -> None:
    theta64, m64, g64 = (np.asarray(x, np.float64) for x in (theta, m, g))
    with np.errstate(invalid="ignore", over="ignore"):
        c = beta_1 * m64 + (1 - beta_1) * g64
        bound = 8 * EPS * (np.abs(beta_1 * m64) + np.abs((1 - beta_1) * g64)) + 1e-37
        ambiguous = np.abs(c) <= bound
        direction = np.sign(c)
        if settings.get("cautious"):
            keep = direction * g64 > 0
            direction = direction * keep * (keep.size / max(keep.sum(), 1))
        decays = "weight_decay" in settings and variable.name != "bias"
        decay = settings.get("weight_decay", 0.0) if decays else 0.0
        expected = theta64 - 0.01 * (direction + decay * theta64)
        new_m = beta_2 * m64 + (1 - beta_2) * g64
    actual = to_numpy(variable).astype(np.float64)
    tolerance = 4 * EPS * (np.abs(theta64) + 0.01 * (np.abs(direction) + abs(decay * theta64)))
    tolerance = np.maximum(tolerance, np.spacing(np.abs(expected).astype(np.float32)))
    wrong = (np.abs(actual - expected) > tolerance) & ~ambiguous
    assert not wrong.any(), f"{path} {variable.name}: {actual[wrong][:4]} vs {expected[wrong][:4]}"
    index = optimizer._get_variable_index(variable)
    if not oracle.is_quantized(tuple(variable.shape)):
        assert optimizer._momentums[index].dtype == "float32"
        np.testing.assert_allclose(to_numpy(optimizer._momentums[index]), new_m, rtol=4 * EPS,
                                   atol=1e-38)
        return
    codes, scales = (to_numpy(x) for x in _momentum_state(optimizer, variable))
    bits = oracle.noise(iteration, index, codes.shape)
    expected_codes, expected_scales, either = oracle.encode(new_m.astype(np.float32), bits)
    np.testing.assert_allclose(scales, expected_scales, rtol=8 * EPS)
    differ = codes != expected_codes
    assert not (differ & ~either).any(), (
        f"{path} {variable.name}: codes {codes[differ & ~either][:6]} where the oracle's are "
        f"{expected_codes[differ & ~either][:6]}")
    assert (np.abs(codes.astype(int) - expected_codes.astype(int))[differ] <= 1).all()


def test_a_step_is_the_same_in_two_optimizers_and_after_resuming(tmp_path: Any) -> None:
    def run(steps: int, optimizer: Lion, variable: Any) -> None:
        rng = np.random.default_rng(11)
        grads = [rng.standard_normal((32, 256)).astype(np.float32) for _ in range(6)]
        for g in grads[:steps] if steps > 0 else grads[steps:]:
            optimizer.apply([ops.convert_to_tensor(g)], [variable])

    init = np.random.default_rng(2).standard_normal((32, 256)).astype(np.float32)
    results = []
    for _ in range(2):
        variable = keras.Variable(init)
        optimizer = Lion(learning_rate=1e-2, momentum_dtype="int8")
        run(6, optimizer, variable)
        results.append([to_numpy(x) for x in (variable, *optimizer.variables)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def digits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    y = (x[:, :10].argmax(axis=1)).astype(np.int32)
    return x, y


def _model(**options: Any) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=Lion(learning_rate=1e-3, momentum_dtype="int8", **options),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


OPTIONS = {
    "default": {},
    "skip_nonfinite+cautious": {"skip_nonfinite": True, "cautious": True},
    "ema": {"use_ema": True, "ema_overwrite_frequency": 3},
    "accumulation": {"gradient_accumulation_steps": 2},
    "weight-decay-excluded": {"weight_decay": 0.1, "exclude_from_weight_decay": ["bias"]},
}


@pytest.mark.parametrize("options", list(OPTIONS))
def test_fit_save_load_and_resume_continue_bit_for_bit(options: str, digits: Any,
                                                        tmp_path: Any) -> None:
    x, y = digits
    model = _model(**OPTIONS[options])
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    path = os.fspath(tmp_path / "model.keras")
    model.save(path)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    resumed = keras.saving.load_model(path)
    assert resumed.optimizer.momentum_dtype == "int8"
    resumed.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    kernel = model.optimizer._momentums[0]
    assert kernel.dtype == "int8" and to_numpy(kernel).any()


def test_a_step_with_nonfinite_gradients_leaves_codes_and_scales_untouched() -> None:
    variable = keras.Variable(np.ones((4, 256), np.float32))
    optimizer = Lion(momentum_dtype="int8", skip_nonfinite=True)
    optimizer.apply([ops.ones((4, 256)) * 0.5], [variable])
    state = [to_numpy(v) for v in optimizer.variables]
    bad = np.full((4, 256), 0.5, np.float32)
    bad[1, 7] = np.nan
    optimizer.apply([ops.convert_to_tensor(bad)], [variable])
    assert optimizer.nonfinite_steps == 1
    for before, v in zip(state, optimizer.variables):
        if v is not optimizer._nonfinite_steps:
            np.testing.assert_array_equal(before, to_numpy(v))


def test_checkpoints_load_between_int8_and_float_momentum(digits: Any, tmp_path: Any) -> None:
    x, y = digits
    model = _model()
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    path = os.fspath(tmp_path / "int8.weights.h5")
    model.save_weights(path)
    held = [to_numpy(model.optimizer._momentum_value(v)) for v in model.trainable_variables]

    wide = keras.models.clone_model(model)
    wide.compile(optimizer=Lion(learning_rate=1e-3), loss="mse")
    wide.optimizer.build(wide.trainable_variables)
    wide.load_weights(path)
    for m, v in zip(held, wide.optimizer._momentums):
        assert v.dtype == "float32"
        np.testing.assert_array_equal(to_numpy(v), m)  # decoded exactly

    back_path = os.fspath(tmp_path / "float.weights.h5")
    wide.save_weights(back_path)
    narrow = _model()
    narrow.optimizer.build(narrow.trainable_variables)
    narrow.load_weights(back_path)
    for m, v in zip(held, narrow.trainable_variables):
        # Codes' values are codes again: rounding to the nearest gives them back.
        np.testing.assert_array_equal(to_numpy(narrow.optimizer._momentum_value(v)), m)


@pytest.mark.parametrize("shape", [(300,), (2, 300), (3, 256), (4, 64), (2, 3, 600)])
def test_state_is_each_blocks_codes_then_its_exponent_byte(shape: tuple[int, ...]) -> None:
    """The int8 state's layout, which checkpoints keep: along each row, each
    block's codes, then the byte of its scale's float32 exponent field."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-120, 121, shape).astype(np.int8)
    exponents = rng.integers(0, 254, int8.scale_shape(shape))
    scales = (exponents << 23).astype(np.int32).view(np.float32)
    size = int8.block_size(shape)
    rows = []
    for row_codes, row_exponents in zip(codes.reshape(-1, shape[-1]),
                                        exponents.reshape(-1, exponents.shape[-1])):
        rows.append(np.concatenate([
            np.append(row_codes[b * size:(b + 1) * size], np.uint8(e).view(np.int8))
            for b, e in enumerate(row_exponents)]))
    expected = np.stack(rows).reshape(int8.packed_shape(shape))
    state = to_numpy(int8.pack(ops.convert_to_tensor(codes), ops.convert_to_tensor(scales)))
    np.testing.assert_array_equal(state, expected)
    unpacked_codes, unpacked_scales = (to_numpy(x) for x in int8.unpack(
        ops.convert_to_tensor(expected)))
    np.testing.assert_array_equal(unpacked_codes, codes)
    np.testing.assert_array_equal(unpacked_scales.view(np.int32), scales.view(np.int32))
    assert all(int8.unpacked_shape(int8.packed_shape((2, n))) == (2, n) for n in range(32, 3000))


def test_state_takes_at_most_1_1_bytes_per_parameter_on_a_million_parameters() -> None:
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(1024),
                              keras.layers.Dense(256), keras.layers.Dense(10)])
    params = model.count_params()
    assert params >= 1_000_000
    optimizer = Lion(momentum_dtype="int8")
    optimizer.build(model.trainable_variables)
    state = [v for v in optimizer.variables
             if v is not optimizer.iterations and v is not optimizer._learning_rate]
    total = sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in state)
    assert total / params <= 1.1
    # One byte per element and one per block of 256 (or shorter row), and
    # float32 for the last layer: 1.011 bytes per parameter here.
    blocks = 784 * 4 + 4 + 1024 + 1
    assert total == params - 10 * 256 - 10 + blocks + 4 * (10 * 256 + 10)
    # The 10 biases and the (256, 10) kernel's short rows keep float32.
    assert [v.dtype for v in optimizer._momentums] == [
        "int8", "int8", "int8", "int8", "float32", "float32"]


def test_int8_is_refused_where_it_is_misspelt() -> None:
    with pytest.raises(ValueError,
                       match=r"momentum_dtype.*'int8'.*Received: momentum_dtype='int4'"):
        Lion(momentum_dtype="int4")


def test_digits_train_as_well_with_int8_momentum_as_with_float32() -> None:
    """scikit-learn's digits (real 8x8 images, bundled): test accuracy of an
    MLP over 3 seeds, int8 momentum against float32, within seed noise."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target.astype(np.int32)
    test = np.random.default_rng(7).permutation(len(y))[:450]
    train = np.setdiff1d(np.arange(len(y)), test)
    accuracy: dict[str, list[float]] = {"float32": [], "int8": []}
    for dtype in accuracy:
        for seed in range(3):
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((64,)),
                                      keras.layers.Dense(128, activation="relu"),
                                      keras.layers.Dense(10)])
            model.compile(optimizer=Lion(learning_rate=1e-3, weight_decay=0.03,
                                         momentum_dtype=dtype),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            model.fit(x[train], y[train], batch_size=64, epochs=10, verbose=0)
            accuracy[dtype].append(model.evaluate(x[test], y[test], verbose=0)[1])
    f32, i8 = (np.array(accuracy[d]) for d in ("float32", "int8"))
    assert f32.mean() > 0.9
    noise = 2 * max(f32.std(ddof=1), i8.std(ddof=1), 0.005)
    assert abs(i8.mean() - f32.mean()) <= noise, (f32, i8)


def test_many_alike_variables_keep_their_own_scales_and_rounding(monkeypatch: Any) -> None:
    """Two full chunks of alike variables (TensorFlow's fast path shares its
    compiled functions between chunks of one shape): each variable's step
    must use its own scales and random bits, as the plain path does."""
    count = 16
    if BACKEND == "tensorflow":  # Chunks of 8, not 64: two of them, compiled quickly.
        from keraslion._fastpaths import tensorflow as tf_path

        monkeypatch.setattr(tf_path, "MAX_CHUNK", count // 2)
    rng = np.random.default_rng(4)
    init = [rng.standard_normal((4, 64)).astype(np.float32) for _ in range(count)]
    grads = [[(rng.standard_normal((4, 64)) * (1 + i)).astype(np.float32)
              for i in range(count)] for _ in range(2)]
    momenta = {}
    for fast in (True, False):
        variables = [keras.Variable(x) for x in init]
        optimizer = Lion(learning_rate=1e-2, momentum_dtype="int8")
        if not fast:
            optimizer._fast_path = None
        for step in grads:
            optimizer.apply([ops.convert_to_tensor(g) for g in step], variables)
        momenta[fast] = [to_numpy(optimizer._momentum_value(v)) for v in variables]
    for fast, plain in zip(momenta[True], momenta[False]):
        # Within a code (1/8) where rounding differs by an ulp; far off otherwise.
        np.testing.assert_allclose(fast, plain, rtol=0.13, atol=1e-6)


def test_compiled_fit_matches_eager_fit_on_rows_that_are_not_whole_blocks() -> None:
    """Rows of 300 (a block of 256 and a padded one). Compiled by PyTorch's
    inductor, decoding them gave NaN weights; each backend's compiled
    train step must match its eager one."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 20)).astype("f4"), rng.standard_normal((32, 2)).astype("f4")
    losses, codes = {}, {}
    for jit in (True, False):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(300),
                                  keras.layers.Dense(2)])
        model.compile(Lion(momentum_dtype="int8"), "mse", jit_compile=jit)
        losses[jit] = model.fit(x, y, batch_size=8, epochs=2, verbose=0,
                                shuffle=False).history["loss"]
        codes[jit] = to_numpy(int8.unpack(model.optimizer._momentums[0])[0])
        assert np.isfinite(model.get_weights()[0]).all()
    assert np.abs(codes[True]).max() <= oracle.ONE_CODE
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-3)


def test_momentum_dtype_is_checked_when_set_and_fixed_once_built() -> None:
    optimizer = Lion()
    with pytest.raises(ValueError, match="momentum_dtype.*Received: momentum_dtype='INT8'"):
        optimizer.momentum_dtype = "INT8"
    optimizer.momentum_dtype = np.int8
    assert optimizer.momentum_dtype == "int8"
    optimizer.build([keras.Variable(np.zeros((4, 256), np.float32))])
    with pytest.raises(ValueError, match="before the optimizer is built.*momentum_dtype=None"):
        optimizer.momentum_dtype = None
    assert optimizer.get_config()["momentum_dtype"] == "int8"
    assert optimizer._momentums[0].dtype == "int8"


TORCH_CASES = {
    # Parts of long rows, cut at whole int8 blocks (and a ragged last block).
    "long rows": [(2**18 + 300,), (2, 2**17 + 40)],
    # Runs of whole rows, the last run shorter; rows not whole blocks.
    "runs of rows": [(700, 200), (300, 600), (64, 2000)],
    # Small variables gathered into pieces by row length (and weight decay),
    # more than one piece of them, among variables with a float momentum.
    "gathered": [(5, 256), (40, 33), (512,), *[(8, 300)] * 60, (8, 40), (7, 40), (16,)],
}


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's int8 fast path")
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "pieces"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_fast_path_is_the_plain_path_bit_for_bit(case: str, dtype: str, kernel: bool,
                                                      monkeypatch: Any) -> None:
    """The C kernel and PyTorch's in-place pieces (long rows cut, runs of
    rows, small variables gathered) give the plain path's weights, codes and
    scales, bit for bit, whatever the weights' dtype, with bfloat16
    gradients, non-finite ones, a variable left out of a step, and weight
    decay excluded for some; the kernel on two threads, its runs cutting
    variables between threads."""
    import torch

    from keraslion._fastpaths import native, torch_int8

    assert torch_int8.PIECE == 2**17  # The cases' shapes are made for its pieces.
    monkeypatch.setenv("KERASLION_NATIVE", "1" if kernel else "0")
    monkeypatch.setattr(native, "PER_THREAD", 2**10)  # Two threads for most pieces.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    steps_taken, kernel_steps = [], []
    monkeypatch.setattr(torch_int8, "_step", _spy(torch_int8._step, steps_taken))
    for name in ("_kernel_step", "_whole_variables"):  # pieces, and float32 variables
        monkeypatch.setattr(torch_int8, name, _spy(getattr(torch_int8, name), kernel_steps))
    shapes = TORCH_CASES[case]
    rng = np.random.default_rng(6)
    init = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    steps = []
    for step in range(4):
        grads = [(rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 1, shape))
                 .astype(np.float32) for shape in shapes]
        grads[0].reshape(-1)[:3] = [np.inf, -np.inf, np.nan] if step == 2 else grads[0].flat[:3]
        steps.append(grads)
    state = {}
    for fast in (True, False):
        variables = [keras.Variable(x, dtype=dtype, name=f"v{i}") for i, x in enumerate(init)]
        optimizer = Lion(learning_rate=1e-2, weight_decay=0.1, momentum_dtype="int8")
        optimizer.exclude_from_weight_decay(var_names=["v1$", "v6$"])
        optimizer.build(variables)
        if not fast:
            optimizer._fast_path = None
        for step, grads in enumerate(steps):
            pairs = [(ops.convert_to_tensor(g, "bfloat16" if i % 3 == 1 else "float32"), v)
                     for i, (g, v) in enumerate(zip(grads, variables)) if i != step]
            optimizer.apply(*zip(*pairs))
        quantized = [v for v in variables if oracle.is_quantized(tuple(v.shape))]
        state[fast] = [to_numpy(x).astype(np.float64) if x.dtype != "int8" else to_numpy(x)
                       for v in quantized for x in (v, *_momentum_state(optimizer, v))]
    for fast, plain in zip(state[True], state[False]):
        np.testing.assert_array_equal(fast, plain)
    # Float64 weights take a float64 step (the plain path's); the kernel
    # takes float32 ones whole, and the others by pieces.
    assert bool(steps_taken) == (dtype != "float64" and not (kernel and dtype == "float32"))
    assert bool(kernel_steps) == (kernel and dtype != "float64")


#: Scales about the kernel's two ways of decoding: by one product up to
#: 2**15, by `decode` above; zero, subnormal, not a power of two (as the
#: first 0.3.0 versions saved), and the largest.
SCALES = [0.0, 1e-40, 2.0**-126, 0.3, 1.0, 2.0**15, 2.0**16, 3e5, 2.0**126]
#: Binades of the "narrow" momenta, one per block: about the kernel's
#: encoding of blocks whose every code is normal (scales from 2**-112 up).
NARROW = [-140, -126, -113, -112, -100, -20, 0, 20, 100]


def _gradient(momenta: str, shape: tuple[int, int], rng: Any) -> Any:
    """Gradients over 14 decades in each block ("wide"), or within a binade
    of its own ("narrow"), with one element in 16 at 2**-13 to 2**-15 of it
    (about the smallest normal code)."""
    if momenta == "wide":
        return rng.standard_normal(shape) * 10.0 ** rng.uniform(-8, 6, shape)
    gradient = rng.uniform(1.0, 2.0, shape) * np.exp2(np.array(NARROW, np.float64))[:, None]
    low = rng.random(shape) < 1 / 16
    gradient[low] *= np.exp2(-rng.integers(13, 16, shape))[low]
    return gradient * rng.choice([-1.0, 1.0], shape)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's int8 kernel")
@pytest.mark.parametrize("momenta", ["wide", "narrow"])
@pytest.mark.parametrize("flushed", [False, True], ids=["subnormals", "flushed"])
def test_torch_kernel_decodes_every_code_at_every_scale_as_the_plain_path(
        flushed: bool, momenta: str, monkeypatch: Any) -> None:
    """Each of the 256 codes in a block of each scale of `SCALES`: one step
    gives the plain path's weights, codes and scales bit for bit, with
    subnormals kept or flushed to zero (`torch.set_flush_denormal`), for new
    momenta spread wide in each block or narrow (`beta_2 = 0`: the
    gradient's, within a binade of `NARROW`, the NaN codes left out)."""
    import torch

    from keraslion._fastpaths import torch_int8

    monkeypatch.setenv("KERASLION_NATIVE", "1")
    kernel_steps = []
    monkeypatch.setattr(torch_int8, "_whole_variables",
                        _spy(torch_int8._whole_variables, kernel_steps))
    codes = np.tile(np.arange(-128, 128, dtype=np.int8), (len(SCALES), 1))
    if momenta == "narrow":  # No NaN code (times beta_2 = 0, a NaN momentum).
        codes[np.abs(codes) == int8.NAN_CODE] = 0
    scales = np.array(SCALES, np.float32)[:, None]
    rng = np.random.default_rng(7)
    init = rng.standard_normal(codes.shape).astype(np.float32)
    grad = _gradient(momenta, codes.shape, rng).astype(np.float32)
    state = []
    torch.set_flush_denormal(flushed)
    try:
        for fast in (True, False):
            variable = keras.Variable(init)
            optimizer = Lion(learning_rate=1e-2, weight_decay=0.1, momentum_dtype="int8",
                             beta_2=0.0 if momenta == "narrow" else 0.99)
            optimizer.build([variable])
            optimizer._momentums[0].assign(int8.pack(ops.convert_to_tensor(codes),
                                                     ops.convert_to_tensor(scales)))
            if not fast:
                optimizer._fast_path = None
            optimizer.apply([ops.convert_to_tensor(grad)], [variable])
            state.append([to_numpy(x) for x in (variable, *_momentum_state(optimizer, variable))])
    finally:
        torch.set_flush_denormal(False)
    assert kernel_steps
    for fast, plain in zip(*state):
        np.testing.assert_array_equal(fast.view(np.uint8 if fast.dtype == np.int8 else np.uint32),
                                      plain.view(np.uint8 if plain.dtype == np.int8 else np.uint32))


def _spy(function: Any, calls: list[Any]) -> Any:
    def spied(*args: Any) -> Any:
        calls.append(args)
        return function(*args)

    return spied


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's int8 fast path")
def test_torch_fast_path_takes_odd_variables_and_gradients_as_the_plain_path() -> None:
    """A gradient that is the variable itself (its weights are read again
    after they change in place), weights that are not contiguous and a
    sparse gradient (plain steps), and PyTorch's default dtype set to float64."""
    import torch

    shape = (64, 4, 256)
    init = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    state = {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for fast in (True, False):
            variables = [keras.Variable(init.clone(), name="aliased"),
                         keras.Variable(init.clone().permute(2, 1, 0), name="strided"),
                         keras.Variable(init.cos(), name="plain")]
            optimizer = Lion(learning_rate=1e-2, weight_decay=0.1, momentum_dtype="int8")
            if not fast:
                optimizer._fast_path = None
            for _ in range(3):
                optimizer.apply([variables[0], variables[1].value.sin(),
                                 variables[2].value.sin().to_sparse()], variables)
            state[fast] = [to_numpy(x) for x in (*variables, *optimizer.variables)]
    finally:
        torch.set_default_dtype(previous)
    for fast, plain in zip(state[True], state[False]):
        np.testing.assert_array_equal(fast, plain)


def _momentum_state(optimizer: Lion, variable: Any) -> tuple[Any, Any]:
    """The variable's int8 codes and scales."""
    return int8.unpack(optimizer._momentums[optimizer._get_variable_index(variable)])
