"""TensorFlow eager: keraslion's compiled update vs Keras's Lion as the variables grow.

    python bench/tf_variables.py [--quick]            # every case, each in a fresh process
    python bench/tf_variables.py --run CASE OPTIMIZER  # one measurement, one JSON line

Cases: `N variables` (200, 2000, 5000 small tensors of 8 shapes) and `200
mixed` (bench/worker.py's transformer: 200 tensors, small and large, 16.8M
parameters): the first step (which builds the optimizer and compiles
keraslion's update), its peak RSS, and the median later step; `80 subsets`:
80 steps, each with gradients for a different subset of 30 variables (the
others None), as eager loops whose `None` gradients change give: the total
time and the RSS it added.
Wall times on a shared machine are noisy; CPU times (all threads) are shown
beside them, and `taskset -c 1 python bench/tf_variables.py` pins every case
to one CPU. Called by bench/bench.py (`make bench`); writes
bench/results/tf_variables.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = [(32, 32), (32,), (32, 64), (64,), (64, 16), (16,), (128,), (8, 4, 4, 2)]
CASES = ("200 variables", "2000 variables", "5000 variables", "200 mixed")
OPTIMIZERS = ("keraslion", "keras Lion")


def transformer_shapes() -> list[tuple[int, ...]]:
    """200 ViT/GPT-like tensors (d=256, 16 blocks), 16,777,192 parameters."""
    d, blocks = 256, 16
    block = [(d, 3 * d), (3 * d,), (d, d), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,),
             (d,), (d,), (d,), (d,)]
    return [*block * blocks, (14204, d), (197, d), (d, 1000), (1000,), (768, d), (d,),
            (d,), (d,)]


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(case: str, optimizer_name: str, later_steps: int) -> dict:
    sys.path.insert(0, str(HERE.parent / "inst" / "python"))
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from keraslion import Lion

    def optimizer() -> keras.optimizers.Optimizer:
        if optimizer_name == "keraslion":
            return Lion(learning_rate=1e-4, weight_decay=0.01)
        return keras.optimizers.Lion(learning_rate=1e-4, weight_decay=0.01)

    rng = np.random.default_rng(0)
    if case == "200 mixed":
        shapes = transformer_shapes()
    else:
        count = 30 if case == "80 subsets" else int(case.split()[0])
        shapes = [SHAPES[i % len(SHAPES)] for i in range(count)]
    variables = [keras.Variable(rng.normal(size=s).astype(np.float32), name=f"v{i}")
                 for i, s in enumerate(shapes)]
    grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
    lion = optimizer()
    record = {"case": case, "optimizer": optimizer_name}
    if case == "80 subsets":
        warnings.filterwarnings("ignore", "Gradients do not exist")
        lion.build(variables)
        # 80 distinct subsets of 10 to 29 variables.
        subsets = []
        while len(subsets) < 80:
            subset = tuple(sorted(rng.choice(30, size=rng.integers(10, 30), replace=False)))
            if subset not in subsets:
                subsets.append(subset)
        rss, wall, cpu = rss_mib(), time.perf_counter(), time.process_time()
        for subset in subsets:
            keep = set(subset)
            lion.apply([g if i in keep else None for i, g in enumerate(grads)], variables)
        record.update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu,
                      rss_added_mib=rss_mib() - rss)
        return record
    wall, cpu = time.perf_counter(), time.process_time()
    lion.apply(grads, variables)
    float(variables[-1].numpy().ravel()[0])  # wait for the step to finish
    record.update(first_seconds=time.perf_counter() - wall,
                  first_cpu_seconds=time.process_time() - cpu, peak_rss_mib=peak_rss_mib())
    times = []
    for _ in range(later_steps):
        start = time.perf_counter()
        lion.apply(grads, variables)
        float(variables[-1].numpy().ravel()[0])
        times.append(time.perf_counter() - start)
    record["later_ms"] = 1000 * sorted(times)[len(times) // 2]
    return record


def run_all(quick: bool) -> str:
    records = []
    for case in (*CASES, "80 subsets"):
        for name in OPTIMIZERS:
            print(f"[tf_variables] {case}, {name} ...", file=sys.stderr, flush=True)
            command = [sys.executable, __file__, "--run", case, name]
            if quick:
                command.append("--quick")
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            records.append(json.loads(done.stdout.splitlines()[-1]))
    return report(records)


def report(records: list[dict]) -> str:
    def cell(case: str, name: str) -> dict:
        return next(r for r in records if r["case"] == case and r["optimizer"] == name)

    lines = ["## TensorFlow eager: many variables (bench/tf_variables.py)", "",
             "| case | optimizer | first step s (CPU s) | peak RSS MiB | later step ms "
             "| first step vs Keras | peak RSS vs Keras |",
             "|---|---|---|---|---|---|---|"]
    for case in CASES:
        keras_lion = cell(case, "keras Lion")
        for name in OPTIMIZERS:
            r = cell(case, name)
            lines.append(
                f"| {case} | {name} | {r['first_seconds']:.2f} ({r['first_cpu_seconds']:.2f}) "
                f"| {r['peak_rss_mib']:.0f} | {r['later_ms']:.1f} "
                f"| {r['first_seconds'] / keras_lion['first_seconds']:.2f}x "
                f"| {r['peak_rss_mib'] / keras_lion['peak_rss_mib']:.2f}x |")
    lines += ["", "| case | optimizer | total s (CPU s) | RSS added MiB |", "|---|---|---|---|"]
    for name in OPTIMIZERS:
        r = cell("80 subsets", name)
        lines.append(f"| 80 subsets of 30 variables | {name} | {r['seconds']:.2f} "
                     f"({r['cpu_seconds']:.2f}) | {r['rss_added_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=2, metavar=("CASE", "OPTIMIZER"))
    parser.add_argument("--quick", action="store_true", help="fewer later steps")
    args = parser.parse_args()
    if args.run:
        print(json.dumps(measure(*args.run, later_steps=5 if args.quick else 20)))
        return
    text = run_all(args.quick)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tf_variables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
