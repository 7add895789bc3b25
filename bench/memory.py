"""`make bench`, memory: optimizer state and peak RSS of a step on one 100M-parameter variable.

    python bench/memory.py [--backends jax,tensorflow,torch]

Each (backend, optimizer) runs in a fresh process (`KERAS_BACKEND=jax python
bench/memory.py --case "Lion int8"` runs one case and prints its record),
which makes a (10000, 10000) float32 weight and gradient, builds the
optimizer, and takes two steps on the path users take (JAX: a jitted
`stateless_apply` that donates the state, as `fit()` does; TensorFlow and
PyTorch: `optimizer.apply`, with keraslion's fast paths). It reports its
peak RSS (ru_maxrss), the bytes of optimizer state per parameter, and the
time of the second step. Writes bench/results/memory.md and memory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHAPE = (10_000, 10_000)
OPTIMIZERS = ["Lion float32", "Lion bfloat16", "Lion int8", "AdamW"]
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "int8": 1, "int32": 4,
         "int64": 8}


def make_optimizer(name: str) -> object:
    import keras

    from keraslion import Lion

    if name == "AdamW":
        return keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01)
    dtype = name.split()[1]
    return Lion(learning_rate=1e-4, weight_decay=0.01,
                momentum_dtype=None if dtype == "float32" else dtype)


def run_case(name: str) -> dict:
    sys.path.insert(0, str(HERE.parent / "inst" / "python"))
    import keras
    import numpy as np

    backend = keras.backend.backend()
    # Filled by the backend (not NumPy, not a random generator), so that no
    # temporary of making them adds to the peak.
    weight = keras.Variable(keras.ops.full(SHAPE, 0.02))
    gradient = keras.ops.full(SHAPE, 1e-3)
    keras.ops.convert_to_numpy(gradient[0, 0] + weight[0, 0])  # made, not only dispatched
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    optimizer = make_optimizer(name)
    optimizer.build([weight])
    state = [v for v in optimizer.variables if len(v.shape) > 0]
    state_bytes = sum(BYTES[str(v.dtype)] * int(np.prod(v.shape)) for v in state)
    if backend == "jax":
        import jax

        step = jax.jit(lambda t, s, g: optimizer.stateless_apply(s, [g], t),
                       donate_argnums=(0, 1))
        held = [[weight.value], [v.value for v in optimizer.variables]]
        for _ in range(2):
            start = time.perf_counter()
            held = list(step(held[0], held[1], gradient))
            jax.block_until_ready(held)
            seconds = time.perf_counter() - start
    else:
        for _ in range(2):
            start = time.perf_counter()
            optimizer.apply([gradient], [weight])
            float(keras.ops.convert_to_numpy(optimizer.iterations))
            seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"backend": backend, "optimizer": name, "params": int(np.prod(SHAPE)),
            "state_bytes_per_param": state_bytes / np.prod(SHAPE),
            "peak_rss_before_optimizer_mib": before, "peak_rss_mib": peak, "step_s": seconds}


def report(records: list[dict]) -> str:
    lines = [
        "# Memory: one step on a 100M-parameter variable",
        "",
        "A (10000, 10000) float32 weight and its gradient (763 MiB together), one "
        "process per row (`python bench/memory.py`). Peak RSS is the process's "
        "largest resident set (ru_maxrss), after two steps on the path users take "
        "(JAX: jitted, donated `stateless_apply`; TensorFlow, PyTorch: `apply`).",
        "",
        "| backend | optimizer | state B/param | peak RSS MiB before the optimizer | peak RSS "
        "MiB | vs Lion float32 MiB | second step s |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = {r["backend"]: r["peak_rss_mib"] for r in records
                 if r["optimizer"] == "Lion float32"}
    for r in records:
        diff = r["peak_rss_mib"] - reference.get(r["backend"], float("nan"))
        lines.append(f"| {r['backend']} | {r['optimizer']} | {r['state_bytes_per_param']:.3f} | "
                     f"{r['peak_rss_before_optimizer_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{diff:+.0f} | {r['step_s']:.3f} |")
    lines += ["", "| target | status | measured |", "|---|---|---|"]
    for backend in reference:
        int8 = next((r for r in records if r["backend"] == backend
                     and r["optimizer"] == "Lion int8"), None)
        if int8 is None:
            continue
        saved = reference[backend] - int8["peak_rss_mib"]
        status = "met" if saved >= 250 else "**missed**"
        lines.append(f"| {backend}: int8 peak RSS >= 250 MiB below float32 | {status} | "
                     f"{saved:.0f} MiB below |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--case", nargs=1, help="run one optimizer in this process (internal)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0])), flush=True)
        return
    records = []
    for backend in args.backends.split(","):
        for name in OPTIMIZERS:
            print(f"memory: {backend} {name} ...", file=sys.stderr, flush=True)
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            out = subprocess.run([sys.executable, __file__, "--case", name], env=env,
                                 stdout=subprocess.PIPE, text=True, check=True).stdout
            records.append(json.loads(out.strip().splitlines()[-1]))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "memory.jsonl", "w") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)
    text = report(records)
    (RESULTS / "memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
