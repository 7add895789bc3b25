#!/usr/bin/env python3
"""Generates keraslion's compatibility corpus for one Keras backend.

For each option set below, a tiny deterministic model is compiled with Lion
under those options, trained a few steps on fixed data and saved twice,
`<set>.keras` (`model.save()`) and `<set>.weights.h5` (`model.save_weights()`);
then it trains K more steps on the same data and records what a later
version, loading these files, must reproduce: `<set>.expected.npz` (the data,
the weights and every optimizer variable at save time and after the K steps)
and `<set>.manifest.json` (versions, backend, options, model, the variables'
paths and dtypes). `tests/python/test_compat_corpus.py` checks them.

Run it against any tree (the keraslion imported is the one under --tree):

    git worktree add /tmp/keraslion-0.2.0 <release commit>
    for b in jax tensorflow torch; do
      KERAS_BACKEND=$b .venv/bin/python tools/make-compat-corpus.py \\
        --tree /tmp/keraslion-0.2.0/inst/python \\
        --out tests/python/fixtures/keraslion-0.2.0/$b
    done
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

FORMAT = 1
DATA_SEED = 20240613
MODEL_SEED = 7
BATCH_SIZE = 8
# 7 batches an epoch; 3 epochs before saving is 21 steps, an odd count, so
# with gradient accumulation over 2 steps the save falls mid-cycle.
SAMPLES = 56
EPOCHS_BEFORE_SAVE = 3
CONTINUATION_STEPS = SAMPLES // BATCH_SIZE  # K: one more epoch
NAN_BATCH = 2  # with skip_nonfinite, this batch's targets are NaN (in every epoch)
# Matched against variable paths such as "compat/hidden/bias" and names such
# as "bias": anchored at the end, at a path component, and a whole name. Not
# at the model's name ("^compat/"): Keras gives a Sequential model built in
# code paths under its name, "compat/norm/gamma", and the same model loaded
# from a file paths without it, "norm/gamma", so such a pattern would stop
# matching once the model is loaded (in keraslion 0.2.0 too).
EXCLUDE = ["bias$", "(^|/)norm/gamma$", "^beta$"]


def option_sets(keras: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """The option sets: name -> (what it covers, Lion's keyword arguments)."""
    cosine = keras.optimizers.schedules.CosineDecay(
        0.01, decay_steps=40, alpha=0.1, warmup_target=0.02, warmup_steps=5)
    return {
        "defaults": ("Lion() as it comes", {}),
        "weight_decay_named": (
            "weight decay with exclusion patterns (anchored), non-default betas, a custom name",
            {"learning_rate": 0.003, "beta_1": 0.95, "beta_2": 0.98, "weight_decay": 0.5,
             "exclude_from_weight_decay": EXCLUDE, "name": "my_lion"}),
        "cautious_bfloat16_clipvalue": (
            "cautious Lion, bfloat16 momentum, clipvalue",
            {"learning_rate": 0.005, "cautious": True, "momentum_dtype": "bfloat16",
             "clipvalue": 0.05}),
        "skip_nonfinite_global_clipnorm": (
            "skip_nonfinite with a NaN batch in every epoch (nonfinite_steps > 0 when saved), "
            "global_clipnorm",
            {"learning_rate": 0.005, "skip_nonfinite": True, "global_clipnorm": 0.5}),
        "ema_accumulation_clipnorm": (
            "EMA with overwrite frequency, gradient accumulation saved mid-cycle, clipnorm",
            {"learning_rate": 0.005, "use_ema": True, "ema_momentum": 0.9,
             "ema_overwrite_frequency": 3, "gradient_accumulation_steps": 2, "clipnorm": 0.3}),
        "schedule_loss_scale": (
            "a CosineDecay schedule (with warm-up) and weight decay, loss_scale_factor",
            {"learning_rate": cosine, "weight_decay": 0.1, "loss_scale_factor": 128.0}),
        "everything": (
            "every option at once",
            {"learning_rate": cosine, "beta_1": 0.8, "beta_2": 0.995, "weight_decay": 0.2,
             "exclude_from_weight_decay": EXCLUDE, "cautious": True,
             "momentum_dtype": "bfloat16", "skip_nonfinite": True, "use_ema": True,
             "ema_momentum": 0.95, "ema_overwrite_frequency": 4,
             "gradient_accumulation_steps": 2, "global_clipnorm": 1.0,
             "loss_scale_factor": 32.0, "name": "lion_everything"}),
    }


def data(nonfinite: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fixed regression data (seeded NumPy); NaN targets in one batch if `nonfinite`."""
    rng = np.random.default_rng(DATA_SEED)
    x = rng.normal(size=(SAMPLES, 5)).astype(np.float32)
    w = rng.normal(size=(5, 3))
    y = (np.tanh(x @ w) + 0.1 * rng.normal(size=(SAMPLES, 3))).astype(np.float32)
    if nonfinite:
        y[NAN_BATCH * BATCH_SIZE:(NAN_BATCH + 1) * BATCH_SIZE] = np.nan
    return x, y


def build_model(keras: Any) -> Any:
    """179 parameters: layers named so that the exclusion patterns match."""
    keras.utils.set_random_seed(MODEL_SEED)
    return keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(16, activation="tanh", name="hidden"),
        keras.layers.LayerNormalization(name="norm"),
        keras.layers.Dense(3, name="head"),
    ], name="compat")


def state(keras: Any, variables: list[Any]) -> list[tuple[str, str, np.ndarray]]:
    """(path, dtype, value) of each variable; a bfloat16 or float16 value as
    float32 (exactly), as NumPy cannot save bfloat16."""
    result = []
    for variable in variables:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        value = np.array(keras.ops.convert_to_numpy(variable))
        if dtype in ("bfloat16", "float16"):
            value = value.astype(np.float32)
        result.append((variable.path, dtype, value))
    return result


def jsonable(keras: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Options as JSON: a schedule as its Keras serialization."""
    return {key: keras.saving.serialize_keras_object(value)
            if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) else value
            for key, value in options.items()}


def backend_version(backend: str) -> str:
    """The version of the backend's Python module."""
    return importlib.import_module(backend).__version__


def generate(keras: Any, keraslion: Any, out: Path, only: list[str] | None) -> None:
    """Writes the four files of every option set (or of those in `only`) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    backend = keras.backend.backend()
    lion_parameters = [name for name, parameter in
                       inspect.signature(keraslion.Lion.__init__).parameters.items()
                       if name != "self" and parameter.kind is not parameter.VAR_KEYWORD]
    for name, (description, options) in option_sets(keras).items():
        if only and name not in only:
            continue
        nonfinite = bool(options.get("skip_nonfinite"))
        x, y = data(nonfinite)
        model = build_model(keras)
        model.compile(optimizer=keraslion.Lion(**options), loss="mse")
        fit = {"batch_size": BATCH_SIZE, "shuffle": False, "verbose": 0}
        model.fit(x, y, epochs=EPOCHS_BEFORE_SAVE, **fit)
        model.save(out / f"{name}.keras")
        model.save_weights(out / f"{name}.weights.h5")
        optimizer = model.optimizer
        saved = {"weights": state(keras, model.weights),
                 "optimizer": state(keras, optimizer.variables)}
        config = keras.saving.serialize_keras_object(optimizer)["config"]
        nonfinite_steps = optimizer.nonfinite_steps
        model.fit(x, y, epochs=1, **fit)
        continued = {"weights": state(keras, model.weights),
                     "optimizer": state(keras, optimizer.variables)}

        arrays = {"x": x, "y": y}
        for when, states in (("saved", saved), ("continued", continued)):
            for kind, values in states.items():
                for i, (_, _, value) in enumerate(values):
                    arrays[f"{when}_{kind}_{i:03d}"] = value
        np.savez_compressed(out / f"{name}.expected.npz", **arrays)
        manifest = {
            "format": FORMAT,
            "option_set": name,
            "description": description,
            "keraslion_version": keraslion.__version__,
            "keras_version": keras.__version__,
            "backend": backend,
            "backend_version": backend_version(backend),
            "numpy_version": np.__version__,
            "options": jsonable(keras, options),
            "optimizer_config": config,
            "lion_parameters": lion_parameters,
            "model": json.loads(model.to_json()),
            "loss": "mse",
            "data_seed": DATA_SEED,
            "model_seed": MODEL_SEED,
            "nan_batch": NAN_BATCH if nonfinite else None,
            "fit": {"batch_size": BATCH_SIZE, "shuffle": False,
                    "epochs_before_save": EPOCHS_BEFORE_SAVE},
            "continuation_steps": CONTINUATION_STEPS,
            "nonfinite_steps_at_save": nonfinite_steps,
            "nonfinite_steps_after_continuing": optimizer.nonfinite_steps,
            "variables": {
                when: {kind: [{"path": path, "dtype": dtype, "shape": list(value.shape)}
                              for path, dtype, value in values]
                       for kind, values in states.items()}
                for when, states in (("saved", saved), ("continued", continued))},
            "files": {"keras": f"{name}.keras", "weights": f"{name}.weights.h5",
                      "expected": f"{name}.expected.npz"},
        }
        (out / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"{backend}: {name}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Parses the arguments, imports keraslion from --tree, generates the corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, type=Path,
                        help="the inst/python directory of the keraslion tree to save with")
    parser.add_argument("--out", required=True, type=Path, help="directory to write into")
    parser.add_argument("--only", nargs="*", help="option sets to generate (default: all)")
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    import keras

    import keraslion

    if not Path(keraslion.__file__).resolve().is_relative_to(tree):
        sys.exit(f"keraslion was imported from {keraslion.__file__}, not from {tree}")
    generate(keras, keraslion, args.out, args.only)


if __name__ == "__main__":
    main()
