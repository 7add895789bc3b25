"""Compatibility corpus: files saved by keraslion 0.2.0 load, and train on, today.

`fixtures/keraslion-0.2.0/<backend>/` holds, for each option set, a model
saved with `model.save()` (`<set>.keras`) and `model.save_weights()`
(`<set>.weights.h5`) by keraslion 0.2.0 on that backend, and what training
on from it gave then (`<set>.expected.npz`, described by `<set>.manifest.json`);
`tools/make-compat-corpus.py` made them (see its docstring). As PyTorch's
`test_can_load_older_state_dict`, every later version must:

- load them with the current keraslion: `keras.saving.load_model()` with
  `safe_mode=True`, and `model.load_weights()` into the same model compiled
  with the same Lion options (optimizer built first, as Keras's own
  `compile_from_config()` does);
- restore the weights and every optimizer variable (iteration count, learning
  rate, momentum in its dtype, EMA averages, gradient accumulators,
  `nonfinite_steps`) bit for bit, with the same paths in the same order
  (Keras loads optimizer variables by position);
- train K more steps on the same data to the recorded result.

That last comparison is close, not exact: the iteration count and
`nonfinite_steps` must match exactly, every other value within rtol 1e-6 and
atol 1e-7. Later versions may round differently in the last bit (for
example, `1 - beta` computed in float64 and then rounded to float32 differs
from 0.2.0's float32 `1 - float32(beta)` by about 2e-7 relative), and another
CPU may order a sum differently; such differences stay within a few float32
ulps over K steps, while a wrongly restored or wrongly applied state (a
missing momentum, a step without weight decay, a skipped EMA) is off by at
least a learning-rate-sized step, orders of magnitude more.

The `.keras` files saved on the other backends are loaded too (state
restored bit for bit, counters' widths aside; the "everything" set trains
on), as Keras files are meant to move between backends.

Keras, not keraslion, makes two allowances necessary: variable paths are
compared without the model's name (a model built in code has
"compat/norm/gamma", the same model loaded "norm/gamma") nor the
optimizer's (Keras numbers default names), and the optimizer of a weights
file must be built before `load_weights()`.
"""

import json
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keraslion import Lion

CORPUS = Path(__file__).resolve().parent / "fixtures" / "keraslion-0.2.0"
BACKENDS = ("jax", "tensorflow", "torch")
BACKEND = keras.backend.backend()
# The option sets the corpus must hold, for every backend (see the generator).
OPTION_SETS = (
    "defaults",
    "weight_decay_named",
    "cautious_bfloat16_clipvalue",
    "skip_nonfinite_global_clipnorm",
    "ema_accumulation_clipnorm",
    "schedule_loss_scale",
    "everything",
)
SUFFIXES = (".keras", ".weights.h5", ".expected.npz", ".manifest.json")
RTOL, ATOL = 1e-6, 1e-7
# Counters, compared exactly after training on.
EXACT = ("iteration", "nonfinite_steps")


def read(backend, option_set):
    directory = CORPUS / backend
    manifest = json.loads((directory / f"{option_set}.manifest.json").read_text())
    with np.load(directory / f"{option_set}.expected.npz") as npz:
        arrays = dict(npz)
    return directory, manifest, arrays


def expected_state(manifest, arrays, when, kind):
    """[(path, dtype, value)] recorded for `when` ("saved", "continued") and
    `kind` ("weights", "optimizer")."""
    name = manifest["optimizer_config"]["name"] if kind == "optimizer" else None
    return [(normalized(v["path"], name), v["dtype"], arrays[f"{when}_{kind}_{i:03d}"])
            for i, v in enumerate(manifest["variables"][when][kind])]


def actual_state(variables, optimizer_name=None):
    """[(path, dtype, value)], bfloat16 and float16 values as float32 (exactly),
    as the corpus stores them."""
    result = []
    for variable in variables:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        value = np.array(to_numpy(variable))
        if dtype in ("bfloat16", "float16"):
            value = value.astype(np.float32)
        result.append((normalized(variable.path, optimizer_name), dtype, value))
    return result


def optimizer_state(optimizer):
    return actual_state(optimizer.variables, optimizer.name)


def normalized(path, optimizer_name=None):
    """A path without the model's name, nor the optimizer's (which a weights
    file does not hold, and which Keras numbers: "lion", "lion_1", ...).

    Keras gives the corpus's model, a Sequential named "compat", paths such as
    "compat/norm/gamma" (optimizer: "lion/compat_norm_gamma_momentum") when
    built in code and "norm/gamma" ("lion/norm_gamma_momentum") when loaded
    from a file.
    """
    if optimizer_name is not None:
        assert path.startswith(f"{optimizer_name}/"), (path, optimizer_name)
        path = "<optimizer>" + path[len(optimizer_name):]
    return re.sub(r"(^|/)compat[/_]", r"\1", path)


def assert_same_variables(actual, expected, what, exact_dtype=True):
    # From another backend, counters may differ in width (TensorFlow's
    # iteration count is an int64, JAX's an int32).
    def listing(state):
        return [(p, d if exact_dtype or "int" not in d else "int", v.shape)
                for p, d, v in state]

    assert listing(actual) == listing(expected), (
        f"{what}: the variables (path, dtype, shape), in order, differ from those saved")


def assert_identical(actual, expected, what, exact_dtype=True):
    assert_same_variables(actual, expected, what, exact_dtype)
    for (path, _, value), (_, _, reference) in zip(actual, expected):
        np.testing.assert_array_equal(value, reference, err_msg=f"{what}: {path}")


def assert_continued(actual, expected, what):
    assert_same_variables(actual, expected, what)
    for (path, _, value), (_, _, reference) in zip(actual, expected):
        if path.rsplit("/", 1)[-1] in EXACT:
            np.testing.assert_array_equal(value, reference, err_msg=f"{what}: {path}")
        else:
            np.testing.assert_allclose(value, reference, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{what}: {path}")


def lion_options(manifest):
    return {key: keras.saving.deserialize_keras_object(value) if isinstance(value, dict)
            else value for key, value in manifest["options"].items()}


def optimizer_loading_warnings(caught):
    # Keras's Optimizer.load_own_variables() only warns when the saved
    # variables do not match the optimizer's, and then loads none of them;
    # keraslion warns (StateWarning) of saved state it drops.
    return [f"{w.category.__name__}: {w.message}" for w in caught
            if w.category.__name__ == "StateWarning"
            or any(word in str(w.message).lower() for word in ("optimizer", "skipping"))]


def load_keras_file(directory, manifest):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.saving.load_model(directory / manifest["files"]["keras"], safe_mode=True)
    assert not optimizer_loading_warnings(caught), optimizer_loading_warnings(caught)
    return model


def load_weights_file(directory, manifest):
    model = keras.models.model_from_json(json.dumps(manifest["model"]))
    model.compile(optimizer=Lion(**lion_options(manifest)), loss=manifest["loss"])
    # Built first, as compile_from_config() does, or there is nothing to load into.
    model.optimizer.build(model.trainable_variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(directory / manifest["files"]["weights"])
    assert not optimizer_loading_warnings(caught), optimizer_loading_warnings(caught)
    return model


LOADERS = {".keras": load_keras_file, ".weights.h5": load_weights_file}


def check_loaded(model, manifest, arrays, what, keys=None):
    """Checks the loaded optimizer's configuration (its `keys`, by default all
    those saved) and the weights' and optimizer's state."""
    optimizer = model.optimizer
    assert type(optimizer) is Lion, what
    # As the generator recorded it: a schedule as its serialization. Options
    # added later may add keys; those saved must keep their values.
    config = keras.saving.serialize_keras_object(optimizer)["config"]
    for key, value in manifest["optimizer_config"].items():
        if keys is not None and key not in keys:
            continue
        assert config.get(key) == value, f"{what}: {key} is {config.get(key)!r}, saved {value!r}"
    exact_dtype = manifest["backend"] == BACKEND
    assert_identical(actual_state(model.weights),
                     expected_state(manifest, arrays, "saved", "weights"), f"{what}, weights",
                     exact_dtype)
    assert_identical(optimizer_state(optimizer),
                     expected_state(manifest, arrays, "saved", "optimizer"),
                     f"{what}, optimizer", exact_dtype)
    assert optimizer.nonfinite_steps == manifest["nonfinite_steps_at_save"], what


def train_on(model, manifest, arrays):
    fit = manifest["fit"]
    assert len(arrays["x"]) // fit["batch_size"] == manifest["continuation_steps"]
    model.fit(arrays["x"], arrays["y"], batch_size=fit["batch_size"], epochs=1,
              shuffle=fit["shuffle"], verbose=0)


def test_the_corpus_is_complete_for_every_backend():
    """The corpus cannot silently disappear: every backend's directory holds
    every option set, and the option sets together set every Lion option."""
    assert CORPUS.is_dir(), (
        f"The keraslion 0.2.0 compatibility corpus is missing: {CORPUS} does not exist. "
        "Restore it from git; do not regenerate it with a newer keraslion.")
    for backend in BACKENDS:
        directory = CORPUS / backend
        assert directory.is_dir(), (
            f"The keraslion 0.2.0 compatibility corpus for the {backend} backend is missing: "
            f"{directory} does not exist. Restore it from git.")
        missing = [f"{s}{suffix}" for s in OPTION_SETS for suffix in SUFFIXES
                   if not (directory / f"{s}{suffix}").is_file()]
        assert not missing, f"Missing from {directory}: {', '.join(missing)}"
        covered = set()
        for option_set in OPTION_SETS:
            _, manifest, _ = read(backend, option_set)
            assert manifest["keraslion_version"] == "0.2.0", option_set
            assert manifest["backend"] == backend, option_set
            covered.update(manifest["options"])
        parameters = set(manifest["lion_parameters"])
        assert parameters - covered == set(), f"{backend}: options never set in the corpus"


@pytest.mark.parametrize("suffix", LOADERS)
@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_loads_and_trains_on_as_keraslion_0_2_0(option_set, suffix):
    directory, manifest, arrays = read(BACKEND, option_set)
    what = f"{BACKEND}/{option_set}{suffix}"
    model = LOADERS[suffix](directory, manifest)
    # A model's weights file holds no configuration: only the options given
    # to Lion() here are compared (a default name, say, is numbered "lion_1").
    keys = manifest["options"] if suffix == ".weights.h5" else None
    check_loaded(model, manifest, arrays, what, keys)

    train_on(model, manifest, arrays)
    assert model.optimizer.nonfinite_steps == manifest["nonfinite_steps_after_continuing"]
    assert_continued(actual_state(model.weights),
                     expected_state(manifest, arrays, "continued", "weights"),
                     f"{what} trained on, weights")
    assert_continued(optimizer_state(model.optimizer),
                     expected_state(manifest, arrays, "continued", "optimizer"),
                     f"{what} trained on, optimizer")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != BACKEND])
def test_loads_files_saved_on_another_backend(backend):
    """Every option set's `.keras` file from another backend: state restored bit
    for bit. The "everything" set also trains on (to the recorded counters and
    finite weights; the numbers are that backend's, so they are not compared),
    the others not, to keep this cheap (a fit() compiles its step)."""
    for option_set in OPTION_SETS:
        directory, manifest, arrays = read(backend, option_set)
        what = f"{backend}/{option_set}.keras on {BACKEND}"
        model = load_keras_file(directory, manifest)
        check_loaded(model, manifest, arrays, what)
        if option_set != "everything":
            continue
        if BACKEND == "torch":
            # Saved with jit_compile=True (JAX's default, TensorFlow's where XLA
            # can), which on torch is torch.compile: some 20 s a model.
            model.jit_compile = False
        train_on(model, manifest, arrays)
        counters = [(p, v) for p, _, v in optimizer_state(model.optimizer)
                    if p.rsplit("/", 1)[-1] in EXACT]
        recorded = [(p, v) for p, _, v in
                    expected_state(manifest, arrays, "continued", "optimizer")
                    if p.rsplit("/", 1)[-1] in EXACT]
        assert counters == recorded, what
        for weight in model.weights:
            assert np.all(np.isfinite(to_numpy(weight))), f"{what}: {weight.path}"
