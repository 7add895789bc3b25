"""How fast is the int8-momentum step fused by PyTorch's compiler?

Written in the backends' operations, keraslion's int8 step runs as several
loops over memory (XLA's CPU code does not fuse them; PyTorch's eager
operations make ~50 passes per piece); its C kernel (`_fastpaths/native.py`,
timed by `bench.py`) makes one. This times the same step written as plain
PyTorch operations and compiled by Inductor (PyTorch's compiler, which
writes vectorized C++ loops; it needs a C++ compiler at run time), next to
the float32 step compiled the same way: what a compiler gives without a
hand-written kernel.

The fused step is a timing model, not a path of the product: before it is
timed, it is checked to give bit for bit the weights, codes and scales of
keraslion's own `int8.decode`, `lion_update` and `int8.encode`.

    python bench/int8_fused.py [--rows 4096 --columns 4096] [--threads 1] [--cpu 1]

Prints ms per step (median of 10 after warm-up), also for the int8 step
rounded to nearest (no hash): the hash's share; with the default settings,
also writes them to bench/results/int8_fused.md. `TORCH_LOGS=output_code`
shows the C++ that Inductor writes: one function per step. float32's
makes one pass over the parameters (20 bytes each); int8's makes two: the
blocks' maxima of the new momentum (reading codes and gradients), then the
weights and the codes (computing the momentum again), and a short one over
the scales: about 19 bytes per parameter in all, as many as float32's, so
a ratio well below 1x is the cost of the arithmetic.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inst" / "python"))

import torch  # noqa: E402

from keraslion import int8  # noqa: E402
from keraslion.lion import StepInputs, lion_update  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LEARNING_RATE, BETA_1, BETA_2, WEIGHT_DECAY = 1e-4, 0.9, 0.99, 0.01


def sign(c: torch.Tensor) -> torch.Tensor:
    """keraslion's sign: NaN where `c` is NaN (torch.sign gives 0)."""
    return torch.where(c.isnan(), c, torch.sign(c))


def lion_float32(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> None:
    c = BETA_1 * m + (1 - BETA_1) * g
    p.sub_(LEARNING_RATE * (sign(c) + WEIGHT_DECAY * p))
    m.mul_(BETA_2).add_((1 - BETA_2) * g)


def shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ shift_right(x, 16)
    x = x * int8.HASH_MULTIPLIERS[0]
    x = x ^ shift_right(x, 15)
    x = x * int8.HASH_MULTIPLIERS[1]
    return x ^ shift_right(x, 16)


def lion_int8(p: torch.Tensor, g: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
              key: torch.Tensor | None) -> None:
    """`int8.decode`, the step and `int8.encode` for rows of whole blocks,
    viewed as (blocks, BLOCK); `key`: `int8.noise_key` of the step, or None
    to round to nearest."""
    signed = codes.to(torch.int32)
    k = signed.abs()
    small = ((k + int8.MAGIC_BITS).view(torch.float32) - 2.0**23) * 2.0**-17
    bits = torch.where(k < 8, small.view(torch.int32), (k + int8.EXPONENT_OFFSET) << 20)
    bits = torch.where(k == int8.NAN_CODE, int8.NAN_BITS, bits) | (signed & int8.SIGN_BIT)
    m = bits.view(torch.float32) * scales[:, None]
    c = BETA_1 * m + (1 - BETA_1) * g
    p.sub_(LEARNING_RATE * (sign(c) + WEIGHT_DECAY * p))
    m = BETA_2 * m + (1 - BETA_2) * g

    m_bits = m.view(torch.int32)
    magnitude_bits = m_bits & 0x7FFFFFFF
    nan = magnitude_bits > int8.INFINITY_BITS
    magnitude_bits = magnitude_bits.clamp_max(int8.FLOAT32_MAX_BITS)
    largest = magnitude_bits.amax(-1)
    scale_bits = ((largest + int8.MANTISSA_BITS) & int8.INFINITY_BITS).clamp_max(
        int8.LARGEST_SCALE_BITS)
    inverse = (int8.RECIPROCAL_BITS - scale_bits).view(torch.float32)
    r = magnitude_bits.view(torch.float32) * inverse[:, None]
    if key is None:
        noise = 1 << (int8.NOISE_BITS - 1)
    else:
        index = torch.arange(m.numel(), dtype=torch.int32, device=m.device).view(m.shape)
        noise = shift_right(mix(index ^ key), 32 - int8.NOISE_BITS)
    normal = r.view(torch.int32) - (int8.EXPONENT_OFFSET << int8.NOISE_BITS)
    subnormal = (r + int8.SMALLEST_NORMAL).view(torch.int32) - int8.SMALLEST_NORMAL_BITS
    k = ((torch.maximum(normal, subnormal) + noise) >> int8.NOISE_BITS).clamp_max(int8.ONE_CODE)
    negative = m_bits >> 31
    k = torch.where(nan, int8.NAN_CODE, (k ^ negative) - negative)
    codes.copy_(k.to(torch.int8))
    scales.copy_(scale_bits.view(torch.float32))


def check_against_keraslion(fused: object, step: int = 7, variable_index: int = 0) -> None:
    """The fused step's weights, codes and scales equal keraslion's, bit for bit."""
    shape = (64, 4 * int8.BLOCK)
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(shape, generator=generator)
    g = torch.randn(shape, generator=generator)
    # A momentum spread over many binades, so that every kind of code occurs,
    # with a block of zeros, and NaN, infinities and float32's largest
    # (capped) in the momentum and the gradient.
    m = torch.randn(shape, generator=generator) * 2.0 ** torch.randint(
        -30, 3, shape, generator=generator)
    m[1, :int8.BLOCK] = 0.0
    special = torch.tensor([float("nan"), float("inf"), -float("inf"),
                            torch.finfo(torch.float32).max])
    m[2, :4] = g[3, 8:12] = special
    codes, scales = int8.encode.__wrapped__(m, int8.noise_bits(step - 1, variable_index, shape))
    coefficients = [torch.tensor(x, dtype=torch.float32) for x in
                    (LEARNING_RATE, BETA_1, 1 - BETA_1, BETA_2, 1 - BETA_2, WEIGHT_DECAY)]
    inputs = StepInputs(p, int8.decode.__wrapped__(codes, scales), g, *coefficients)
    theta, new_m = lion_update(inputs, cautious=False)
    expected_codes, expected_scales = int8.encode.__wrapped__(
        new_m, int8.noise_bits(step, variable_index, shape))

    blocks = (-1, int8.BLOCK)
    p_fused, codes_fused = p.clone().view(blocks), codes.clone().view(blocks)
    scales_fused = scales.clone().view(-1)
    fused(p_fused, g.view(blocks), codes_fused, scales_fused,
          int8.noise_key(torch.tensor(step), variable_index))
    for name, got, want in (("weights", p_fused.view(shape), theta),
                            ("codes", codes_fused.view(shape), expected_codes),
                            ("scales", scales_fused.view(scales.shape), expected_scales)):
        if not torch.equal(got.view(torch.uint8), want.view(torch.uint8)):
            sys.exit(f"The fused step's {name} differ from keraslion's: the timing model is wrong.")


def milliseconds(step: object, rounds: int = 10) -> float:
    """Median ms per step, after two (the first compiles)."""
    step()
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--columns", type=int, default=4096, help="a multiple of 256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to pin to with --threads 1")
    args = parser.parse_args()
    if args.columns % int8.BLOCK:
        parser.error(f"--columns must be a multiple of {int8.BLOCK}, not {args.columns}")
    if args.threads == 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(args.threads)

    fused_float32 = torch.compile(lion_float32, fullgraph=True, dynamic=False)
    fused_int8 = torch.compile(lion_int8, fullgraph=True, dynamic=False)
    try:
        check_against_keraslion(torch.compile(lion_int8, fullgraph=True, dynamic=False))
    except Exception as error:  # Inductor's errors have no common class
        sys.exit(f"PyTorch could not compile the fused step (on a CPU, Inductor needs a "
                 f"C++ compiler): {type(error).__name__}: {error}")

    blocks = (args.rows * args.columns // int8.BLOCK, int8.BLOCK)
    generator = torch.Generator().manual_seed(0)
    p, g = torch.randn(blocks, generator=generator), torch.randn(blocks, generator=generator)
    m = torch.zeros(blocks)
    codes, scales = torch.zeros(blocks, dtype=torch.int8), torch.ones(blocks[0])
    key = int8.noise_key(torch.tensor(1), 0)
    rows = [("float32", milliseconds(lambda: fused_float32(p, g, m))),
            ("int8", milliseconds(lambda: fused_int8(p, g, codes, scales, key))),
            ("int8 rounded to nearest (no hash)",
             milliseconds(lambda: fused_int8(p, g, codes, scales, None)))]

    text = "\n".join([
        "# `python bench/int8_fused.py` results", "",
        f"{args.rows}x{args.columns} parameters, {args.threads} thread(s), "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}", "",
        "| fused step | ms | float32's ms ÷ this |", "|---|---|---|",
        *(f"| {name} | {ms:.2f} | {rows[0][1] / ms:.2f}x |" for name, ms in rows), ""])
    print(text)
    if vars(args) == vars(parser.parse_args([])):  # the committed run's settings
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "int8_fused.md").write_text(text)


if __name__ == "__main__":
    main()
