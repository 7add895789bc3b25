"""One backend's half of `make bench`: run by bench/bench.py in its own process.

    KERAS_BACKEND=jax python bench/worker.py [--quick] [--threads N] [--cpu K]

Prints one JSON record per line on stdout and its progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "inst" / "python"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ARGS = argparse.ArgumentParser()
ARGS.add_argument("--quick", action="store_true")
ARGS.add_argument("--threads", type=int, default=1)
ARGS.add_argument("--cpu", type=int, default=1)
ARGS.add_argument("--all-cases", action="store_true",
                  help="also time the compiled paths on the 2000-tensor case (long compiles)")
ARGS = ARGS.parse_args()
if ARGS.threads == 1:  # Pin before the frameworks start their thread pools.
    os.sched_setaffinity(0, {ARGS.cpu})

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tf_variables import transformer_shapes  # noqa: E402

from keraslion import Lion  # noqa: E402

BACKEND = keras.backend.backend()
LR, WD = 1e-4, 0.01
HZ = os.sysconf("SC_CLK_TCK")
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "int8": 1, "int32": 4,
         "int64": 8}


def log(*parts: object) -> None:
    print(f"[{BACKEND}]", *parts, file=sys.stderr, flush=True)


def emit(**record: object) -> None:
    print(json.dumps({"backend": BACKEND, "threads": ARGS.threads, **record}), flush=True)


# Cases -------------------------------------------------------------------------

CASES = {
    "1x16.7M": [(1 << 24,)],
    "200 mixed": transformer_shapes(),
    "2000x1k": [(1024,)] * 2000,
}
OPTIMIZERS = {
    "keraslion": lambda: Lion(learning_rate=LR, weight_decay=WD),
    "keraslion bf16": lambda: Lion(learning_rate=LR, weight_decay=WD, momentum_dtype="bfloat16"),
    "keraslion int8": lambda: Lion(learning_rate=LR, weight_decay=WD, momentum_dtype="int8"),
    "keraslion b1>b2": lambda: Lion(learning_rate=LR, weight_decay=WD, beta_1=0.99, beta_2=0.9),
    "keras Lion": lambda: keras.optimizers.Lion(learning_rate=LR, weight_decay=WD),
    "keras AdamW": lambda: keras.optimizers.AdamW(learning_rate=LR, weight_decay=WD),
}
PATHS = {
    "jax": ["jit"],
    "tensorflow": ["tf.function+XLA", "tf.function", "eager"],
    "torch": ["eager"],
}[BACKEND]


# Load accounting: CPU time that other processes took on our CPUs ------------------

def cpu_busy() -> float:
    """Seconds of non-idle time on the CPUs this process may use."""
    cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    busy = 0
    with open("/proc/stat") as stat:
        for line in stat:
            fields = line.split()
            if fields[0] in cpus:
                values = [int(v) for v in fields[1:9]]
                busy += sum(values) - values[3] - values[4]  # minus idle, iowait
    return busy / HZ


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(step: object, steps: int) -> tuple[list[float], float]:
    """Step times in seconds, and the other processes' load on our CPUs (cores)."""
    busy, own, start = cpu_busy(), own_cpu(), time.perf_counter()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    foreign = max(0.0, (cpu_busy() - busy) - (own_cpu() - own)) / wall
    return times, foreign


# Step functions ------------------------------------------------------------------

def make_step(path: str, optimizer: object, variables: list, grads: list) -> object:
    if BACKEND == "jax":
        import jax

        optimizer.build(variables)

        def apply(trainable: list, state: list, grads: list) -> tuple:
            return optimizer.stateless_apply(state, grads, trainable)

        # Donated in the order they come back, so each buffer is updated in place.
        compiled = jax.jit(apply, donate_argnums=(0, 1))
        held = [[v.value for v in variables], [v.value for v in optimizer.variables]]

        def step() -> None:
            held[0], held[1] = compiled(held[0], held[1], grads)
            jax.block_until_ready(held[0])

        return step
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def apply() -> None:
            optimizer.apply(grads, variables)

        if path != "eager":
            apply = tf.function(apply, jit_compile=path.endswith("XLA"), autograph=False)

        def step() -> None:
            apply()
            optimizer.iterations.numpy()

        return step
    return lambda: optimizer.apply(grads, variables)


def bench_cell(path: str, case: str, rounds: int, seconds: float) -> None:
    shapes = CASES[case]
    params = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(0)
    grads = [keras.ops.convert_to_tensor(rng.standard_normal(s, np.float32)) for s in shapes]
    init = [rng.standard_normal(s, np.float32) * 0.02 for s in shapes]
    steps, per_step, started = {}, {}, time.perf_counter()
    for name, make in OPTIMIZERS.items():
        optimizer = make()
        variables = [keras.Variable(v) for v in init]
        if BACKEND != "jax":
            optimizer.build(variables)
        t = time.perf_counter()
        steps[name] = make_step(path, optimizer, variables, grads)
        steps[name]()  # compile / trace
        first = time.perf_counter() - t
        steps[name]()
        t = time.perf_counter()
        steps[name]()
        per_step[name] = time.perf_counter() - t
        emit(kind="build", path=path, case=case, optimizer=name, params=params,
             first_step_s=first, state_bytes_per_param=state_bytes(optimizer.variables, params))
        log(f"{path:16s} {case:10s} {name:15s} first step {first:6.1f} s, "
            f"then {per_step[name] * 1e3:8.1f} ms")
    names = list(OPTIMIZERS)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # alternate who goes first
        for name in order:
            n = int(min(15, max(2, seconds / max(per_step[name], 1e-4))))
            times, foreign = timed(steps[name], n)
            emit(kind="step", path=path, case=case, optimizer=name, params=params,
                 round=r, times=times, foreign_cores=foreign)
        log(f"{path:16s} {case:10s} round {r + 1}/{rounds} done "
            f"({time.perf_counter() - started:.0f} s)")


def state_bytes(variables: list, params: int) -> float:
    return sum(BYTES[str(v.dtype)] * int(np.prod(v.shape)) for v in variables) / params


# fit() ---------------------------------------------------------------------------

class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.times = [*getattr(self, "times", []), time.perf_counter() - self.start]


def bench_fit(epochs: int, samples: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 784), np.float32)
    y = rng.integers(0, 10, samples)
    batch = 128
    for name, make in [("keraslion", lambda: Lion(learning_rate=3e-4, weight_decay=0.1)),
                       ("keras AdamW", lambda: keras.optimizers.AdamW(learning_rate=1e-3))]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                                  keras.layers.Dense(512, activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile(optimizer=make(), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        timer = EpochTimer()
        busy, own, start = cpu_busy(), own_cpu(), time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer])
        wall = time.perf_counter() - start
        foreign = max(0.0, (cpu_busy() - busy) - (own_cpu() - own)) / wall
        steps = -(-samples // batch)
        best = min(timer.times[1:]) / steps
        emit(kind="fit", optimizer=name, ms_per_step=best * 1e3,
             epoch_s=timer.times, jit_compile=str(model.jit_compile), foreign_cores=foreign)
        log(f"fit MLP {name:12s} {best * 1e3:6.2f} ms/step (best of epochs 2-{epochs}), "
            f"jit_compile={model.jit_compile}")


def main() -> None:
    if BACKEND == "torch":
        import torch

        torch.set_num_threads(ARGS.threads)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(ARGS.threads)
    rounds, seconds = (2, 0.3) if ARGS.quick else (3, 0.8)
    for path in PATHS:
        for case in CASES:
            compiled = path != "eager"
            if case == "2000x1k" and compiled and not ARGS.all_cases:
                continue  # 1-3 minutes of tracing and XLA compiling per optimizer.
            bench_cell(path, case, rounds, seconds)
    bench_fit(epochs=2 if ARGS.quick else 3, samples=5120 if ARGS.quick else 10240)


if __name__ == "__main__":
    main()
