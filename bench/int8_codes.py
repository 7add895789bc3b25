"""Which 8-bit code keeps small momenta next to large ones? A NumPy study for
the one-byte momentum (issue 14), run with `python bench/int8_codes.py`.

Lion's step depends on sign(beta_1 * m + (1 - beta_1) * g), so a quantized
momentum must keep the sign and rough size of small elements that share a
block with large ones. The issue's test: one element in 64 gets a gradient
`ratio` times larger (random sign) than the rest (positive); after `steps`
steps the small elements' gradient is reversed, and their first reversed
step must not flip, as with a float32 momentum. Each code stores one byte
per element and one float32 absmax per block of 256 (1.016 bytes per
parameter), and rounds to nearest or stochastically (unbiased): with
NumPy's random numbers, or, for keraslion's code, also with keraslion's
own bits (`int8.noise_bits`: each element's flat index hashed with a
hash of the step), `--rounding keraslion`.

Codes, as values relative to the block's absmax:
- linear: int8 codes k / 127 (absmax-linear);
- sqrt: signed square root, then linear (llm-foundry's lion8b idea);
- dynamic: a tree-like map, the exponent in the run of leading zero bits
  and the remaining bits the mantissa (bitsandbytes' dynamic map idea);
- e4m3: the float8 E4M3 values scaled so that 448 is the absmax;
- e4m3 pow2 (keraslion's): E4M3 values up to 256, relative to a power-of-two
  scale, the smallest at or above the absmax (the OCP's MXFP8 layout), so
  that the largest element's r is in (0.5, 1]: a binade of range less than
  "e4m3", and r = m / scale exact: one product by a power of two, where
  "e4m3" takes a division per block and two products per element.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

BLOCK = 256


def dynamic_map() -> np.ndarray:
    values = [0.0]
    for zeros in range(7):  # decades 10^-(zeros+1) .. 10^-zeros
        bits = 6 - zeros
        low, high = 10.0 ** (-zeros - 1), 10.0**-zeros
        values += [low + (high - low) * (i + 0.5) / 2**bits for i in range(2**bits)]
    positive = np.array(sorted(set(values)))[-127:]
    positive /= positive.max()
    return np.concatenate([-positive[::-1], [0.0], positive])


def e4m3_map() -> np.ndarray:
    positive = [m / 8 * 2.0**-6 for m in range(8)]  # subnormals (and 0)
    positive += [(1 + m / 8) * 2.0 ** (e - 7) for e in range(1, 16) for m in range(8)]
    kept = np.array([v for v in positive if v <= 448.0]) / 448.0
    return np.unique(np.concatenate([-kept, kept]))


def e4m3_pow2_map() -> np.ndarray:
    k = np.arange(121)  # keraslion.int8's magnitude codes, 120 for r = 1
    positive = np.where(k < 8, k * 2.0**-17, (8 + k % 8) * 2.0 ** (k // 8 - 18))
    return np.unique(np.concatenate([-positive, positive]))


TABLES = {"dynamic": dynamic_map(), "e4m3": e4m3_map(), "e4m3 pow2": e4m3_pow2_map()}


class KeraslionNoise:
    """keraslion's random bits (`int8.noise_bits`, variable 0) as uniform
    numbers in [0, 1), one call per step (a stand-in for a Generator's `random`)."""

    def __init__(self) -> None:
        import keras

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inst" / "python"))
        from keraslion import int8

        self.bits, self.to_numpy, self.step = int8.noise_bits, keras.ops.convert_to_numpy, 0

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        self.step += 1
        return self.to_numpy(self.bits(self.step, 0, shape)) / 2.0**20


def rounded(y: np.ndarray, stochastic: bool, rng: np.random.Generator) -> np.ndarray:
    return np.floor(y + rng.random(y.shape)) if stochastic else np.round(y)


def quantized(m: np.ndarray, code: str, stochastic: bool,
              rng: np.random.Generator | KeraslionNoise) -> np.ndarray:
    """`m` encoded blockwise in `code` and decoded again."""
    blocks = m.reshape(-1, BLOCK)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    absmax = np.where(absmax == 0, 1.0, absmax)
    if code == "e4m3 pow2":
        absmax = 2.0 ** np.ceil(np.log2(absmax))
    x = blocks / absmax
    if code == "linear":
        decoded = rounded(x * 127, stochastic, rng) / 127
    elif code == "sqrt":
        r = rounded(np.sign(x) * np.sqrt(np.abs(x)) * 127, stochastic, rng) / 127
        decoded = np.sign(r) * r * r
    else:
        table = TABLES[code]
        index = np.clip(np.searchsorted(table, x), 1, len(table) - 1)
        low, high = table[index - 1], table[index]
        if stochastic:
            decoded = np.where(rng.random(x.shape) < (x - low) / (high - low), high, low)
        else:
            decoded = np.where(x - low < high - x, low, high)
    return (decoded * absmax).reshape(m.shape)


def study(code: str, rounding: str, ratio: float, steps: int,
          beta_1: float = 0.9, beta_2: float = 0.99, seed: int = 0) -> dict[str, float]:
    """`rounding`: "nearest", "stochastic" (NumPy's random numbers) or
    "keraslion" (its bits)."""
    rng = np.random.default_rng(seed)
    stochastic = rounding != "nearest"
    noise = KeraslionNoise() if rounding == "keraslion" else rng
    n = 64 * BLOCK
    large = np.arange(n) % 64 == 0
    exact, coded = np.zeros(n), np.zeros(n)
    for _ in range(steps):
        g = np.abs(1.0 + 0.5 * rng.standard_normal(n))
        g[large] = ratio * rng.choice([-1.0, 1.0], large.sum())
        exact = beta_2 * exact + (1 - beta_2) * g
        coded = quantized(beta_2 * coded + (1 - beta_2) * g, code, stochastic, noise)
    reversed_g = -np.ones(n)
    small = ~large
    flipped = (beta_1 * coded + (1 - beta_1) * reversed_g)[small] < 0
    float32_flipped = (beta_1 * exact + (1 - beta_1) * reversed_g)[small] < 0
    ratios = coded[small] / exact[small]
    return {"flipped": flipped.mean(), "float32_flipped": float32_flipped.mean(),
            "ratio": float(np.median(ratios)), "lowest": float(ratios.min()),
            "highest": float(ratios.max())}


TABLES_AND_OTHERS = ("linear", "sqrt", "dynamic", "e4m3", "e4m3 pow2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--beta-2", type=float, default=0.99)
    parser.add_argument("--codes", nargs="+", default=list(TABLES_AND_OTHERS))
    parser.add_argument("--rounding", nargs="+", default=["nearest", "stochastic"],
                        choices=["nearest", "stochastic", "keraslion"])
    args = parser.parse_args()
    print("| code | rounding | large/small | small flipped | float32 flipped | "
          "m / m_float32 of small: median (lowest-highest) |\n|---|---|---|---|---|---|")
    for ratio in (1e3, 1e4, 1e5):
        for code in args.codes:
            for rounding in args.rounding:
                if rounding == "keraslion" and code != "e4m3 pow2":
                    continue
                r = study(code, rounding, ratio, args.steps, beta_2=args.beta_2)
                print(f"| {code} | {rounding} | {ratio:.0e} | "
                      f"{r['flipped']:.1%} | {r['float32_flipped']:.1%} | {r['ratio']:.3f} "
                      f"({r['lowest']:.2f}-{r['highest']:.2f}) |")


if __name__ == "__main__":
    main()
