"""A NumPy model of keraslion's int8 momentum (keraslion/int8.py), for the tests.

Not a test file. Written from the format's definition, not from the
backend code: a block of `BLOCK` elements along the last axis (or a whole
shorter row) keeps as its scale the smallest power of two at or above its
largest |m| (at least 2**-126, at most 2**126); an element keeps
`r = |m| / scale` as a code k with value `k * 2**-17` for k < 8 and
`(8 + k % 8) * 2**(k // 8 - 18)` up to 120 (r = 1), its sign, and NaN as
127; r is rounded down or up at random, up with the probability of its
fraction of the step between the two codes (in units of 2**-20 of it),
the random bits being Wellons' lowbias32 hash of (step, variable, element).
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 256
MIN_ROW = 32
NAN_CODE = 127
ONE_CODE = 120


def is_quantized(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 1 and shape[-1] >= MIN_ROW and math.prod(shape) >= BLOCK


def block_size(shape: tuple[int, ...]) -> int:
    return min(BLOCK, shape[-1])


def _mix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))


def noise(step: int, variable_index: int, shape: tuple[int, ...]) -> np.ndarray:
    """The random 20 bits of each element, as int64 in [0, 2**20)."""
    key = _mix(np.uint32((step * 0x9E3779B9 + variable_index) % 2**32))
    index = np.arange(math.prod(shape), dtype=np.uint32)
    return (_mix(index ^ key) >> np.uint32(12)).astype(np.int64).reshape(shape)


def code_values() -> np.ndarray:
    """The value r of each magnitude code 0..120, exactly (float64)."""
    k = np.arange(ONE_CODE + 1)
    return np.where(k < 8, k * 2.0**-17, (8 + k % 8) * 2.0 ** (k // 8 - 18))


def blocks(x: np.ndarray) -> np.ndarray:
    """(..., L) as (..., blocks, block), zero-padded."""
    size = block_size(x.shape)
    count = -(-x.shape[-1] // size)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, count * size - x.shape[-1])]
    return np.pad(x, pad).reshape(*x.shape[:-1], count, size)


def per_element(scales: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.repeat(scales, block_size(shape), axis=-1)[..., :shape[-1]]


def decode(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The momentum held, in float64 (before its one rounding to float32)."""
    k = np.abs(codes.astype(np.int64))
    r = np.where(k == NAN_CODE, np.nan, code_values()[np.minimum(k, ONE_CODE)])
    return np.sign(codes) * r * per_element(scales.astype(np.float64), codes.shape)


def scales_of(m: np.ndarray) -> np.ndarray:
    """Each block's scale: the smallest power of two at or above its largest
    |m| (infinities and NaN counting as float32's largest), 0 for a block of
    zeros, within [2**-126, 2**126] otherwise."""
    magnitude = np.where(np.isnan(m) | np.isinf(m), np.finfo(np.float32).max, np.abs(m))
    largest = blocks(magnitude.astype(np.float64)).max(axis=-1)
    fraction, exponent = np.frexp(largest)  # largest = fraction * 2**exponent, fraction in [0.5, 1)
    power = np.ldexp(1.0, np.where(fraction == 0.5, exponent - 1, exponent))
    return np.where(largest > 0, np.clip(power, 2.0**-126, 2.0**126), 0.0).astype(np.float32)


def encode(m: np.ndarray, bits: np.ndarray,
           scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes and scales of a float32 `m` with the random `bits` of `noise`,
    and where the code may be either neighbour; `scales`: the blocks' scales
    to code against instead of m's own (r beyond 1 takes r = 1's code).

    A code rounds up where the bits plus the fraction of r between its two
    codes (in units of 2**-20 of the step) reach 2**20. r is taken exactly
    (float64); the backends compute it in float32, a rounding or two away,
    so where that sum is within a few units of 2**20 either code is right.
    """
    m = np.asarray(m, np.float32)
    scales = scales_of(m) if scales is None else scales
    scale = per_element(scales.astype(np.float64), m.shape)
    magnitude = np.minimum(np.abs(m.astype(np.float64)), np.finfo(np.float32).max)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(scale > 0, magnitude / scale, 0.0)
    values = code_values()
    below = np.clip(np.searchsorted(values, r, side="right") - 1, 0, ONE_CODE)
    above = np.minimum(below + 1, ONE_CODE)
    step = values[above] - values[below]
    with np.errstate(invalid="ignore", divide="ignore"):
        units = np.where(step > 0, (r - values[below]) / step * 2**20, 0.0)
    total = bits + units
    k = np.where(total >= 2**20, above, below)
    ambiguous = (np.abs(total - 2**20) <= 8) & (above != below)
    k = np.where(np.isnan(m), NAN_CODE, np.where(np.signbit(m), -k, k))
    return k.astype(np.int8), scales, ambiguous & ~np.isnan(m)


def spacing(m: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The distance between the two codes around |m| in its block (float64)."""
    scale = per_element(scales.astype(np.float64), m.shape)
    values = code_values()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(scale > 0, np.abs(m) / scale, 0.0)
    below = np.clip(np.searchsorted(values, r, side="right") - 1, 0, ONE_CODE - 1)
    return (values[below + 1] - values[below]) * scale
