"""Issue 10's figures for items 1, 4 and 6, for any checkout of keraslion.

    python bench/field_checks.py [--tree PATH/inst/python] [--backends jax,tensorflow,torch]

Prints a markdown table, one column per backend, for the keraslion package at
`--tree` (default: this checkout's), so that the same command gives the
"before" figures on an older tree (`git worktree add /tmp/old 79fb7c3`, then
`--tree /tmp/old/inst/python`) and the "after" figures on this one:

1. float64: the worst distance of weights and momentum from a float64 NumPy
   oracle after 30 steps (with and without `cautious` and weight decay, fast
   and plain path), and the error of one plain step on `[-2.718281828459045]`;
2. (item 4) `weight_decay` set to 0.5 by a callback at epoch 2 of an eager
   `fit()`: the largest difference from Keras's Lion after 2 epochs;
3. (item 6) Inf gradients: momentum elements NaN on one path and not on the
   other; `beta_1 = lambda: 5.0`; the pattern `"[[:alpha:]]+"`.

Items 2, 3, 5 and 7 have their own tests and benchmarks. Each item runs in a
fresh process per backend (JAX's float64 needs `JAX_ENABLE_X64` from the
start); a check that fails to run shows its error in its cell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_TREE = HERE.parent / "inst" / "python"
BACKENDS = ("jax", "tensorflow", "torch")
TIMEOUT_S = 300

# Exact in Keras's float32 learning-rate variable, so a float64 step can be exact.
LEARNING_RATE = 2.0**-7
STEPS = 30
SETTINGS = {
    "defaults": {},
    "weight_decay": {"weight_decay": 0.1},
    "cautious": {"cautious": True},
    "cautious_weight_decay": {"cautious": True, "weight_decay": 0.1},
}
ONE_STEP_THETA = -2.718281828459045


# The float64 oracle: the paper's three lines, written out here so that it does
# not depend on the tree being measured. ----------------------------------------

def oracle(theta: np.ndarray, grads: list[np.ndarray], learning_rate: float,
           weight_decay: float = 0.0, cautious: bool = False,
           beta_1: float = 0.9, beta_2: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """Weights and momentum after Lion steps with each gradient, in float64."""
    theta, m = theta.astype(np.float64), np.zeros_like(theta, np.float64)
    for g in grads:
        c = beta_1 * m + (1 - beta_1) * g
        direction = np.sign(c)
        if cautious:
            agrees = (direction * g > 0).astype(np.float64)
            direction = direction * agrees * (agrees.size / max(agrees.sum(), 1.0))
        theta = theta - learning_rate * (direction + weight_decay * theta)
        m = beta_2 * m + (1 - beta_2) * g
    return theta, m


def problem(shape: tuple[int, ...] = (6, 5), seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Weights, and gradients correlated over time (so that caution keeps some elements)."""
    rng = np.random.default_rng(seed)
    theta, g, grads = rng.normal(size=shape), np.zeros(shape), []
    for _ in range(STEPS):
        g = 0.5 * g + rng.normal(size=shape)
        grads.append(g.copy())
    return theta, grads


# Checks, each run in a worker process with the tree on sys.path ----------------

def lion_steps(settings: dict[str, Any], theta: np.ndarray, grads: list[np.ndarray],
               fast: bool, dtype: str = "float64",
               learning_rate: float = LEARNING_RATE) -> tuple[np.ndarray, np.ndarray]:
    """keraslion's weights and momentum after a step with each gradient."""
    import keras

    from keraslion import Lion

    optimizer = Lion(learning_rate=learning_rate, **settings)
    if not fast:
        optimizer._fast_path = None
    variable = keras.Variable(theta.astype(dtype), dtype=dtype)
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g.astype(dtype))], [variable])
    momentum = optimizer._momentums[0]
    if variable.dtype != dtype or momentum.dtype != dtype:
        raise TypeError(f"stored as {variable.dtype} and {momentum.dtype}, not {dtype}")
    return (keras.ops.convert_to_numpy(variable).astype(np.float64),
            keras.ops.convert_to_numpy(momentum).astype(np.float64))


def check_float64() -> dict[str, str]:
    """Item 1."""
    theta, grads = problem()
    errors = {}
    for name, settings in SETTINGS.items():
        expected = oracle(theta, grads, LEARNING_RATE, **settings)
        for path in ("fast", "plain"):
            actual = lion_steps(settings, theta, grads, fast=path == "fast")
            errors[f"{name}, {path}"] = max(float(np.max(np.abs(a - b)))
                                            for a, b in zip(actual, expected))
    worst = max(errors, key=errors.__getitem__)
    figures = {"float64": f"{errors[worst]:.3g} ({worst})"}
    # One step: the weight moves by exactly the (float32) learning rate.
    learning_rate = 0.001
    exact = ONE_STEP_THETA - float(np.float32(learning_rate))
    for cautious in (False, True):
        theta_1, _ = lion_steps({"cautious": cautious}, np.array([ONE_STEP_THETA]),
                                [np.array([1.0])], fast=False, learning_rate=learning_rate)
        figures[f"one step, cautious={cautious}"] = f"{abs(theta_1[0] - exact):.3g}"
    return figures


def check_live_weight_decay() -> dict[str, str]:
    """Item 4."""
    import keras

    from keraslion import Lion

    class SetWeightDecay(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                self.model.optimizer.weight_decay = 0.5

    def fit(optimizer: Any) -> list[np.ndarray]:
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, 8)).astype(np.float32)
        y = (x @ rng.normal(size=(8, 1))).astype(np.float32)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=optimizer, loss="mse", run_eagerly=True)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                  callbacks=[SetWeightDecay()])
        return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]

    figures = {}
    for weight_decay in (None, 0.01):
        ours = fit(Lion(learning_rate=0.01, weight_decay=weight_decay))
        theirs = fit(keras.optimizers.Lion(learning_rate=0.01, weight_decay=weight_decay))
        figures[f"from {weight_decay}"] = (
            f"{max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs)):.3g}")
    return figures


def check_smaller_ones() -> dict[str, str]:
    """Item 6."""
    import keras

    from keraslion import Lion

    # +Inf in one element, -Inf in another, both in turn in a third (Inf - Inf).
    g = np.ones((4, 3), np.float32)
    first, second = g.copy(), -g
    first[0, 0] = first[2, 1] = np.inf
    second[1, 0] = second[2, 1] = -np.inf
    grads = [first, second, g, -g, g]
    theta = np.ones((4, 3), np.float32)
    momentums = [lion_steps({"weight_decay": 0.1}, theta, grads, fast, "float32")[1]
                 for fast in (True, False)]
    figures = {"inf": str(int(np.sum(np.isnan(momentums[0]) != np.isnan(momentums[1]))))}

    def outcome(run: Callable[[], object], passed: str, refused: str) -> str:
        try:
            run()
        except Exception as err:  # any error is the answer
            return f"{refused} ({type(err).__name__})"
        return passed

    def train_with_beta() -> None:
        variable = keras.Variable(np.ones(3, np.float32))
        Lion(beta_1=lambda: 5.0).apply([keras.ops.ones((3,))], [variable])

    figures["beta"] = outcome(train_with_beta, "trains", "raises")
    figures["pattern"] = outcome(lambda: Lion(exclude_from_weight_decay="[[:alpha:]]+"),
                                 "accepted", "rejected")
    return figures


CHECKS: dict[str, Callable[[], dict[str, str]]] = {
    "float64": check_float64,
    "live_weight_decay": check_live_weight_decay,
    "smaller_ones": check_smaller_ones,
}

#: The table's rows: (check, figure, label).
ROWS = [
    ("float64", "float64",
     "1 · float64: worst error of weights and momentum after 30 steps, 8 cases (case)"),
    ("float64", "one step, cautious=False", "1 · one plain step on [-2.718281828459045]: error"),
    ("float64", "one step, cautious=True", "1 · the same, cautious: error"),
    ("live_weight_decay", "from None",
     "4 · weight_decay → 0.5 at epoch 2, eager: largest difference from Keras Lion, from None"),
    ("live_weight_decay", "from 0.01", "4 · the same, from 0.01"),
    ("smaller_ones", "inf", "6 · Inf gradients: momentum elements NaN on one path only (of 12)"),
    ("smaller_ones", "beta", "6 · `beta_1 = lambda: 5.0`"),
    ("smaller_ones", "pattern", '6 · exclude_from_weight_decay = "[[:alpha:]]+"'),
]


def worker(check: str, tree: str) -> None:
    sys.path.insert(0, tree)
    try:
        import keraslion

        source = str(Path(keraslion.__file__).resolve().parent.parent)
        figures = {"_source": source, **CHECKS[check]()}
    except Exception as err:  # reported in the table, not raised
        traceback.print_exc()
        figures = {"_error": f"{type(err).__name__}: {err}".splitlines()[0][:120]}
    print(json.dumps(figures))


def measure(check: str, backend: str, tree: Path) -> dict[str, str]:
    """One check on one backend, in a fresh process."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax" and check == "float64":
        env["JAX_ENABLE_X64"] = "1"
    command = [sys.executable, __file__, "--worker", check, "--tree", str(tree)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"_error": f"timed out after {TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"_error": f"exit {done.returncode}: {last[:120]}"}
    return json.loads(lines[-1])


def table(results: dict[str, dict[str, dict[str, str]]], backends: list[str]) -> str:
    lines = ["| figure | " + " | ".join(backends) + " |",
             "|---|" + "---|" * len(backends)]
    for check, figure, label in ROWS:
        cells = []
        for backend in backends:
            found = results[backend][check]
            cells.append(found.get(figure) or f"error: {found.get('_error', 'n/a')}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=DEFAULT_TREE,
                        help="the inst/python folder of the keraslion to measure")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", choices=CHECKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tree = args.tree.resolve()
    if args.worker:
        worker(args.worker, str(tree))
        return
    if not (tree / "keraslion" / "__init__.py").is_file():
        parser.error(f"--tree: no keraslion package in {tree}")
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: unknown {unknown}; choose from {list(BACKENDS)}")
    results = {b: {check: measure(check, b, tree) for check in CHECKS} for b in backends}
    sources = {r["_source"] for by_check in results.values() for r in by_check.values()
               if "_source" in r}
    print(f"keraslion from {', '.join(sorted(sources)) or tree}\n")
    print(table(results, backends))


if __name__ == "__main__":
    main()
