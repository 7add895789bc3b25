"""`make bench`: keraslion's Lion step beside Keras's Lion and AdamW on every backend.

    python bench/bench.py [--quick] [--threads 1|2] [--cpu K] [--backends jax,tensorflow,torch]

Each backend runs in its own process (bench/worker.py); the optimizers of one
path and case are timed in the same process, in alternating rounds. Writes
bench/results/results.md, results.jsonl and bench.png; then, with TensorFlow,
bench/tf_variables.py writes bench/results/tf_variables.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NOISY = 0.3  # cores of other processes' load on our CPU that make a round noisy
# The optimizers bench/worker.py times, in table order. "keraslion b1>b2" has
# beta_1 = 0.99 > beta_2 = 0.9 (the order of the betas must not cost speed).
NAMES = ["keraslion", "keraslion bf16", "keraslion int8", "keraslion b1>b2", "keras Lion",
         "keras AdamW"]
# Issue 14: lower-precision momentum never slower than this times float32's, per path.
PRECISION_FLOORS = {"keraslion bf16": 1.0, "keraslion int8": 0.9}


def bandwidth_probe(cpu: int | None, n: int = 1 << 25) -> dict[str, float]:
    """NumPy copy and triad on 128 MiB float32 arrays (single-threaded), GB/s."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    a, b, c = (np.full(n, 1.0, np.float32) for _ in range(3))
    best = {"copy": np.inf, "triad": np.inf}
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(a, b)
        best["copy"] = min(best["copy"], time.perf_counter() - t)
        t = time.perf_counter()
        np.multiply(c, 3.0, out=a)
        np.add(a, b, out=a)
        best["triad"] = min(best["triad"], time.perf_counter() - t)
    if cpu is not None:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    # Bytes moved per element: copy reads 4 and writes 4 (non-temporal stores);
    # the two-pass triad reads c, writes a, reads a and b, writes a: 20.
    return {"copy": 8 * n / best["copy"] / 1e9, "triad": 20 * n / best["triad"] / 1e9}


def run_worker(backend: str, args: argparse.Namespace) -> list[dict]:
    cmd = [sys.executable, str(HERE / "worker.py"), "--threads", str(args.threads),
           "--cpu", str(args.cpu)] + (["--quick"] if args.quick else [])
    env = {**os.environ, "KERAS_BACKEND": backend}
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def aggregate(records: list[dict]) -> dict[tuple, dict]:
    """Per (backend, path, case, optimizer): the median of the quiet rounds' medians."""
    cells: dict[tuple, dict] = {}
    for r in records:
        if r["kind"] == "build":
            cells.setdefault(key(r), {"rounds": []}).update(
                params=r["params"], state=r["state_bytes_per_param"])
        elif r["kind"] == "step":
            cells.setdefault(key(r), {"rounds": []})["rounds"].append(
                (statistics.median(r["times"]), r["foreign_cores"]))
    for cell in cells.values():
        quiet = [t for t, f in cell["rounds"] if f <= NOISY]
        cell["noisy"] = not quiet
        cell["s"] = statistics.median(quiet or [t for t, _ in cell["rounds"]])
        cell["foreign"] = statistics.median(f for _, f in cell["rounds"])
        cell["ns"] = cell["s"] / cell["params"] * 1e9
        cell["gbs"] = 20 * cell["params"] / cell["s"] / 1e9
    return cells


def key(r: dict) -> tuple:
    return (r["backend"], r["path"], r["case"], r["optimizer"])


def check(name: str, ok: bool, detail: str) -> str:
    status = "not run" if detail in ("", "not run") else "met" if ok else "**missed**"
    return f"| {name} | {status} | {detail} |"


def report(cells: dict, fits: list[dict], bw: dict, meta: dict) -> str:
    floor_gbs = max(bw.values())
    floor = 20 / floor_gbs
    lines = [
        "# `make bench` results",
        "",
        f"Run {meta['date']} on {meta['machine']}; {meta['threads']} thread(s)"
        + (f", pinned to CPU {meta['cpu']}" if meta["threads"] == 1 else "")
        + (", TensorFlow and JAX/torch workers on separate CPUs at the same time (sharing "
           "memory bandwidth)" if meta["parallel"] else "")
        + f"; {'quick' if meta['quick'] else 'full'} run, {meta['minutes']:.1f} min. "
        f"Load average before/after: {meta['load_before']} / {meta['load_after']}.",
        "",
        "ms/step is the median over rounds of each round's median step; ns/param = ms/step "
        "÷ parameters; GB/s counts the 20 bytes per parameter a Lion step must move (read "
        "p, m, g; write p, m) for every row, AdamW included (it must move 28). "
        "'vs Keras Lion' is Keras's Lion step time ÷ this one; 'vs AdamW' is this step ÷ "
        "Keras's AdamW step in the same path. 'keraslion b1>b2' has beta_1 0.99 > beta_2 "
        "0.9 (the same step, other values). 'load' is the CPU time other processes took "
        f"on our CPU during the timed steps (cores); a cell whose every round had more than "
        f"{NOISY} is marked †: its time may be inflated by the shared machine.",
        "",
        f"**Memory-bandwidth floor** (NumPy, one thread, 128 MiB arrays): copy "
        f"{bw['copy']:.1f} GB/s, triad {bw['triad']:.1f} GB/s; floor = 20 B ÷ "
        f"{floor_gbs:.1f} GB/s = **{floor:.2f} ns/param** "
        f"({floor * (1 << 24) / 1e6:.1f} ms per 16.7M-parameter step).",
        "",
        "| backend | path | case | optimizer | ms/step | ns/param | GB/s | vs Keras Lion "
        "| vs AdamW | state B/param | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = sorted({k[:3] for k in cells}, key=lambda k: list(cells).index(k + ("keraslion",)))
    for group in groups:
        lion, adamw = cells.get(group + ("keras Lion",)), cells.get(group + ("keras AdamW",))
        for name in NAMES:
            c = cells.get(group + (name,))
            if c is None:
                continue
            vs_lion = f"{lion['s'] / c['s']:.2f}x" if lion else ""
            vs_adamw = f"{c['s'] / adamw['s']:.2f}" if adamw else ""
            bold = "**" if name == "keraslion" else ""
            lines.append(
                f"| {group[0]} | {group[1]} | {group[2]} | {bold}{name}{bold} | "
                f"{c['s'] * 1e3:.1f}{'†' if c['noisy'] else ''} | {c['ns']:.2f} | "
                f"{c['gbs']:.1f} | {vs_lion} | {vs_adamw} | {c['state']:.2f} | "
                f"{c['foreign']:.2f} |")
    lines += ["", "## Targets (issue 4)", "", "| target | status | measured |", "|---|---|---|"]

    def ours(group: tuple) -> dict | None:
        return cells.get(group + ("keraslion",))

    def speedups(groups_: list[tuple]) -> list[tuple[tuple, float]]:
        return [(g, cells[g + ("keras Lion",)]["s"] / ours(g)["s"]) for g in groups_
                if ours(g) and g + ("keras Lion",) in cells]

    def fmt(pairs: list[tuple[tuple, float]]) -> str:
        return ", ".join(f"{g[0]} {g[1]} {g[2]}: {v:.2f}x" for g, v in pairs) or "not run"

    big = ("1x16.7M", "200 mixed")
    for name, sel, need in [
        (">= 2x Keras Lion, JAX jit, 16.7M cases",
         [g for g in groups if g[:2] == ("jax", "jit") and g[2] in big], 2.0),
        (">= 2x Keras Lion, TF + XLA, 16.7M cases",
         [g for g in groups if g[:2] == ("tensorflow", "tf.function+XLA") and g[2] in big], 2.0),
        (">= 5x Keras Lion, TF eager, 200 and 2000 tensors",
         [g for g in groups if g[:2] == ("tensorflow", "eager") and g[2] != "1x16.7M"], 5.0),
        (">= 1.5x Keras Lion, torch, every case", [g for g in groups if g[0] == "torch"], 1.5),
        ("never slower than Keras Lion", groups, 1.0),
    ]:
        pairs = speedups(sel)
        lines.append(check(name, bool(pairs) and all(v >= need for _, v in pairs), fmt(pairs)))
    jax_big = [g for g in groups if g[:2] == ("jax", "jit") and g[2] in big and ours(g)]
    ratios = [(g, ours(g)["ns"] / floor) for g in jax_big]
    lines.append(check(
        "JAX jit within 1.3x of the floor (16.7M cases)",
        bool(ratios) and all(v <= 1.3 for _, v in ratios),
        ", ".join(f"{g[2]}: {ours(g)['ns']:.2f} ns/param = {v:.2f}x floor" for g, v in ratios)))
    adamw = [(g, ours(g)["s"] / cells[g + ("keras AdamW",)]["s"]) for g in groups
             if ours(g) and g + ("keras AdamW",) in cells]
    worst = max(adamw, key=lambda p: p[1]) if adamw else None
    lines.append(check(
        "Lion step <= 0.75x Keras AdamW step, same path", all(v <= 0.75 for _, v in adamw),
        f"worst {worst[1]:.2f} ({' '.join(worst[0])}); "
        + ", ".join(f"{' '.join(g)}: {v:.2f}" for g, v in adamw if v > 0.75)
        if worst else "not run"))
    lines += ["", "## Lower-precision momentum vs float32 momentum (issue 14)", "",
              "Step time of keraslion with float32 momentum ÷ with bfloat16 or int8 momentum, "
              "same path and case (above 1: faster than float32). Plot: precision.png.", "",
              "| backend | path | case | float32 ms | bfloat16 | int8 |",
              "|---|---|---|---|---|---|"]
    ratios = precision_ratios(cells)
    for group, by_name in ratios.items():
        lines.append(f"| {' | '.join(group)} | {cells[group + ('keraslion',)]['s'] * 1e3:.1f} | "
                     + " | ".join(f"{by_name[n]:.2f}x" if n in by_name else "" for n in
                                  PRECISION_FLOORS) + " |")
    lines += ["", "| target | status | measured |", "|---|---|---|"]
    for name, floor_ in PRECISION_FLOORS.items():
        measured = [(g, r[name]) for g, r in ratios.items() if name in r]
        lines.append(check(
            f"{name.split()[1]} momentum >= {floor_}x float32's step, every path",
            bool(measured) and all(v >= floor_ for _, v in measured),
            ", ".join(f"{' '.join(g)}: {v:.2f}x" for g, v in measured)))
    lines += ["", "## Optimizer state per parameter", "",
              "| optimizer | bytes/param |", "|---|---|"]
    for name in NAMES:
        states = {round(c["state"], 2) for k, c in cells.items() if k[3] == name and
                  k[2] == "1x16.7M"}
        lines.append(f"| {name} | {', '.join(str(s) for s in sorted(states))} |")
    lines += ["", "## End-to-end `fit()`: MLP 784-512-512-10, batch 128",
              "", "Best epoch after the first (compilation), ms per step.", "",
              "| backend | jit_compile | optimizer | ms/step | load |", "|---|---|---|---|---|"]
    for f in fits:
        lines.append(f"| {f['backend']} | {f['jit_compile']} | {f['optimizer']} | "
                     f"{f['ms_per_step']:.2f} | {f['foreign_cores']:.2f} |")
    return "\n".join(lines) + "\n"


def precision_ratios(cells: dict) -> dict[tuple, dict[str, float]]:
    """Per (backend, path, case): float32-momentum step time ÷ each lower precision's."""
    ratios: dict[tuple, dict[str, float]] = {}
    for (backend, path, case, name), cell in cells.items():
        reference = cells.get((backend, path, case, "keraslion"))
        if name in PRECISION_FLOORS and reference:
            ratios.setdefault((backend, path, case), {})[name] = reference["s"] / cell["s"]
    return ratios


def plot_precision(cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = precision_ratios(cells)
    groups = list(ratios)
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 0.9), 4.5))
    width = 0.8 / len(PRECISION_FLOORS)
    for i, (name, floor_) in enumerate(PRECISION_FLOORS.items()):
        offset = (i - (len(PRECISION_FLOORS) - 1) / 2) * width
        ax.bar(np.arange(len(groups)) + offset, [ratios[g].get(name, np.nan) for g in groups],
               width, label=f"{name.split()[1]} momentum (target >= {floor_}x)")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.axhline(0.9, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("float32-momentum step time ÷ this step's")
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{g[0]}\n{g[1]}\n{g[2]}" for g in groups], fontsize=7)
    ax.set_title("keraslion step with lower-precision momentum, relative to float32 (higher is "
                 "faster)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(cells: dict, floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({k[:3] for k in cells}, key=lambda k: list(cells).index(k + ("keraslion",)))
    names = NAMES
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 0.9), 5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [cells.get(g + (name,), {}).get("ns", np.nan) for g in groups]
        offset = (i - (len(names) - 1) / 2) * width
        ax.bar(np.arange(len(groups)) + offset, values, width, label=name)
    ax.axhline(floor, color="black", linestyle="--", linewidth=1,
               label=f"memory-bandwidth floor {floor:.2f}")
    ax.set_yscale("log")
    ax.set_ylabel("ns per parameter per step (log)")
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{g[0]}\n{g[1]}\n{g[2]}" for g in groups], fontsize=7)
    ax.set_title("One optimizer step, fp32 parameters (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--threads", type=int, default=1, choices=[1, 2])
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to pin to with --threads 1")
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--parallel", action="store_true",
                        help="with --threads 1: TensorFlow on --cpu and the rest on the other "
                             "CPU at the same time (shorter, but they share memory bandwidth)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    start = time.time()
    load_before = open("/proc/loadavg").read().split()[:3]
    print("bandwidth probe ...", file=sys.stderr, flush=True)
    bw = bandwidth_probe(args.cpu if args.threads == 1 else None)
    print(f"  copy {bw['copy']:.1f} GB/s, triad {bw['triad']:.1f} GB/s", file=sys.stderr)
    backends = args.backends.split(",")
    if args.parallel and args.threads == 1:
        # TensorFlow alone on --cpu, the others one after another on the other CPU.
        from concurrent.futures import ThreadPoolExecutor

        other = argparse.Namespace(**{**vars(args), "cpu": 1 - args.cpu})
        lanes = [([b for b in backends if b == "tensorflow"], args),
                 ([b for b in backends if b != "tensorflow"], other)]

        def lane(job: tuple[list[str], argparse.Namespace]) -> list[dict]:
            return [r for backend in job[0] for r in run_worker(backend, job[1])]

        with ThreadPoolExecutor(2) as pool:
            records = [r for done in pool.map(lane, lanes) for r in done]
    else:
        records = []
        for backend in backends:
            print(f"{backend} ...", file=sys.stderr, flush=True)
            records += run_worker(backend, args)
    with open(RESULTS / "results.jsonl", "w") as out:
        for r in records:
            out.write(json.dumps(r) + "\n")
    cells = aggregate(records)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "cpu": args.cpu,
            "quick": args.quick, "minutes": (time.time() - start) / 60,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "load_before": " ".join(load_before), "parallel": args.parallel,
            "load_after": " ".join(open("/proc/loadavg").read().split()[:3])}
    text = report(cells, [r for r in records if r["kind"] == "fit"], bw, meta)
    (RESULTS / "results.md").write_text(text)
    plot(cells, 20 / max(bw.values()), RESULTS / "bench.png")
    plot_precision(cells, RESULTS / "precision.png")
    print(text)
    if "tensorflow" in backends:
        # First step and compile cache with many variables (TensorFlow eager).
        subprocess.run([sys.executable, str(HERE / "tf_variables.py"),
                        *(["--quick"] if args.quick else [])], check=True)


if __name__ == "__main__":
    main()
