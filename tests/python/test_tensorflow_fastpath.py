"""TensorFlow's compiled update: chunks of alike variables, functions shared and bounded.

The update compiles one function per kind of variable (shape, dtypes, weight
decay) and chunk length, with the variables as arguments, in a bounded cache:
new sets of variables (eager loops whose `None` gradients change) reuse what
is compiled, and every variable still gets its own momentum and decay.
Results are compared with the plain path (`Lion.update_step`) as in
test_fastpaths.py: equal but for rare sign flips where `c` is within rounding
of zero.
"""

import functools

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion

if keras.backend.backend() != "tensorflow":
    pytest.skip("TensorFlow's compiled update (KERAS_BACKEND=tensorflow)",
                allow_module_level=True)

import tensorflow as tf  # noqa: E402

from keraslion._fastpaths import tensorflow as fastpath  # noqa: E402

LR = 0.01
SHAPES = [(6, 5), (5,), (3, 2, 2)]


def make_variables(count, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    names = ["kernel", "bias", "kernel_3d"]
    return [keras.Variable(rng.normal(size=shapes[i % len(shapes)]).astype(np.float32),
                           name=f"{names[i % len(names)]}_{i}") for i in range(count)]


def gradient_steps(count, steps, shapes=SHAPES, subsets=False, seed=1):
    """Per step, a gradient for each variable, or None for those left out
    (with `subsets`: a different random subset at each step)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        keep = (rng.permutation(count)[:rng.integers(1, count)] if subsets
                else range(count))
        yield [keras.ops.convert_to_tensor(rng.normal(size=shapes[i % len(shapes)])
                                           .astype(np.float32)) if i in keep else None
               for i in range(count)]


def train(optimizer, variables, steps):
    optimizer.build(variables)  # no-op if it is built already
    for grads in steps:
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
    return [to_numpy(v) for v in variables], [to_numpy(m) for m in optimizer._momentums]


def assert_matches_plain_path(settings, count, steps, shapes=SHAPES, subsets=False):
    """Fast and plain paths over the same steps; returns the fast optimizer."""
    results = []
    for fast in (True, False):
        optimizer = Lion(learning_rate=LR, **settings)
        if not fast:
            optimizer._fast_path = None
        results.append(train(optimizer, make_variables(count, shapes),
                             gradient_steps(count, steps, shapes, subsets)))
        if fast:
            fast_optimizer = optimizer
    (weights, momentums), (plain_weights, plain_momentums) = results
    for ours, theirs in zip(momentums, plain_momentums):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    ours, theirs = np.concatenate([w.ravel() for w in weights]), np.concatenate(
        [w.ravel() for w in plain_weights])
    off = ~np.isclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert off.mean() <= 0.002, f"{off.sum()} of {off.size} differ"
    return fast_optimizer


def compiled_updates(optimizer):
    """The tf.functions (each may have several traces)."""
    return list(optimizer._tf_update_functions.values())


def test_chunks_cover_the_group_in_order():
    for size in range(0, 3 * fastpath.MAX_CHUNK + 2):
        chunks = fastpath._chunks(list(range(size)))
        assert [i for chunk in chunks for i in chunk] == list(range(size))
        assert all(len(chunk) == fastpath.MAX_CHUNK for chunk in chunks[:-1])
        assert len(chunks) == -(-size // fastpath.MAX_CHUNK)


def test_small_variables_share_functions_across_shapes():
    optimizer = Lion(learning_rate=LR, beta_1=lambda: 0.9)
    train(optimizer, make_variables(7), gradient_steps(7, 4))
    # 3 shapes, of 3, 2 and 2 variables: one function per length, traced for
    # one shape, then for any; one concrete function per shape.
    functions = compiled_updates(optimizer)
    assert len(functions) == 2
    assert all(f.experimental_get_tracing_count() <= 2 for f in functions)
    assert len(optimizer._tf_compiled_updates) == 3


def test_large_variables_get_one_xla_function_per_shape_traced_once(monkeypatch):
    monkeypatch.setattr(fastpath, "XLA_MIN_SIZE", 6)  # (6, 5) and (3, 2, 2): large
    optimizer = Lion(learning_rate=LR)
    train(optimizer, make_variables(7), gradient_steps(7, 4))
    # 3 of (6, 5), 2 of (3, 2, 2) and 2 of (5,): 2 XLA functions, each of its
    # shape, and 1 for small variables of any shape.
    shapes = sorted(str(key[0]) for key in optimizer._tf_update_functions)
    assert shapes == ["(3, 2, 2)", "(6, 5)", "None"]
    for key, function in optimizer._tf_update_functions.items():
        assert function.experimental_get_tracing_count() == 1 or key[0] is None


@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.3, "exclude_from_weight_decay":
                                           ["bias"]}, {"cautious": True}],
                         ids=["defaults", "exclusion", "cautious"])
def test_changing_subsets_reuse_a_bounded_set_of_functions(settings):
    # 80 steps, each on another subset of 30 variables (10 of each shape): one
    # function per kind and chunk length (at most 10) whatever the subsets.
    optimizer = assert_matches_plain_path(settings, count=30, steps=80, subsets=True)
    # Kinds: with and without weight decay; cautious Lion's are per shape.
    shapes = len(SHAPES) if settings.get("cautious") else 1
    kinds = shapes * (2 if "exclude_from_weight_decay" in settings else 1)
    assert len(compiled_updates(optimizer)) <= kinds * 10
    assert all(f.experimental_get_tracing_count() <= 3 for f in compiled_updates(optimizer))


def test_variables_of_one_kind_share_functions_and_keep_their_own_state():
    # Two models' variables, alike: the second reuses the first's functions,
    # and each variable is updated with its own momentum and weight decay.
    settings = {"weight_decay": 0.3, "exclude_from_weight_decay": ["bias"]}
    optimizer = Lion(learning_rate=LR, **settings)
    first, second = make_variables(6, seed=0), make_variables(6, seed=2)
    optimizer.build(first + second)
    train(optimizer, first, gradient_steps(6, 3, seed=3))
    functions = compiled_updates(optimizer)
    train(optimizer, second, gradient_steps(6, 5, seed=4))
    assert compiled_updates(optimizer) == functions
    for variables, seed, steps in ((first, 0, gradient_steps(6, 3, seed=3)),
                                   (second, 2, gradient_steps(6, 5, seed=4))):
        plain = Lion(learning_rate=LR, **settings)
        plain._fast_path = None
        expected, expected_momentums = train(plain, make_variables(6, seed=seed), steps)
        for variable, theirs, theirs_m in zip(variables, expected, expected_momentums):
            momentum = optimizer._momentums[optimizer._get_variable_index(variable)]
            np.testing.assert_allclose(to_numpy(momentum), theirs_m, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(to_numpy(variable), theirs, rtol=1e-5, atol=1e-5)


def test_more_variables_of_a_kind_than_a_chunk_match_the_plain_path():
    assert_matches_plain_path({"weight_decay": 0.1}, count=3 * fastpath.MAX_CHUNK + 5, steps=3,
                              shapes=[(4,)])


def test_the_cache_evicts_the_least_recently_used(monkeypatch):
    monkeypatch.setattr(fastpath, "CACHE_SIZE", 3)
    monkeypatch.setattr(fastpath, "XLA_MIN_SIZE", 1)  # a function per shape
    shapes = [(n,) for n in range(1, 9)]  # 8 kinds
    optimizer = assert_matches_plain_path({}, count=8, steps=4, shapes=shapes)
    assert len(optimizer._tf_update_functions) == len(optimizer._tf_compiled_updates) == 3


def test_plans_are_kept_per_set_of_variables_and_bounded(monkeypatch):
    # Each step's set of variables is grouped once; changing subsets keep at
    # most CACHE_SIZE of those groupings, and every step still matches.
    monkeypatch.setattr(fastpath, "CACHE_SIZE", 3)
    optimizer = assert_matches_plain_path({"weight_decay": 0.1}, count=30, steps=10, subsets=True)
    assert len(optimizer._tf_plans) == 3


@pytest.mark.parametrize("jit_compile", [True, False])
def test_traced_chunks_are_updated_variable_by_variable(jit_compile):
    # Inside a caller's tf.function (fit()'s train step) chunks are not
    # stacked (XLA would compile stacks slowly); eagerly they are. Both
    # match the plain path.
    results = []
    for mode in ("traced", "eager", "plain"):
        optimizer = Lion(learning_rate=LR, weight_decay=0.1)
        if mode == "plain":
            optimizer._fast_path = None
        variables = make_variables(7)
        optimizer.build(variables)
        grads = list(gradient_steps(7, 1))[0]
        apply = functools.partial(optimizer.apply, grads, variables)
        if mode == "traced":
            apply = tf.function(apply, jit_compile=jit_compile, autograph=False)
        for _ in range(3):
            apply()
        results.append([to_numpy(v) for v in (*variables, *optimizer._momentums)])
        if mode != "plain":
            stacked = {key[-1] for key in optimizer._tf_update_functions}
            assert stacked == {mode == "eager"}
    for traced, eager, plain in zip(*results):
        np.testing.assert_allclose(traced, plain, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eager, plain, rtol=1e-5, atol=1e-5)
