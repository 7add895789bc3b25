"""One-byte momentum (`momentum_dtype="int8"`): int8 codes, one float32 scale per block.

Each row of a variable (its last axis) is cut into blocks of `BLOCK`
elements (a shorter row is one block); a block stores its largest |m| as a
float32 scale, and each element the code of `r = |m| / scale`, in [0, 1],
with its sign. The code is float8-like: 4 exponent and 3 mantissa bits,
values `k * 2**-17` for codes k < 8 and `(8 + k % 8) * 2**(k // 8 - 18)`
from 8 up to 120 (r = 1); 127 is NaN. Relative precision is the same over
15 binades, so an element 1e5 times smaller than its block's largest still
has a code (plain absmax-linear int8 rounds everything below 1/254 of the
largest to 0, which freezes small elements next to a large one).

The code is rounded stochastically, so that the momentum is unbiased: a
small momentum that decays by `beta_2 = 0.99` per step changes by far less
than a code's spacing, and nearest rounding would hold it still for good.
The random bits are a hash of the iteration count, the variable's index and
the element's index, so a step is deterministic: the same after saving and
resuming, on every replica, and on every backend. Measured in
`bench/int8_codes.py`: with one element in 64 given a 1000x (or 1e5x)
larger gradient, no small element's direction flips when its gradient is
reversed after 300 steps, and their momentum stays within 4% of float32's;
absmax-linear int8 flips all of them.

Variables whose last axis is shorter than `MIN_ROW`, or that have fewer than
`BLOCK` elements, gain little (a scale per short row) and keep a float32
momentum. Storage: one byte per element and four per block, 1.016 bytes
per parameter for rows of 256 or more.
"""

from __future__ import annotations

import math
from typing import Any

from keras import ops

#: Elements per block (along the last axis), sharing one float32 scale.
BLOCK = 256
#: The shortest last axis that is stored in int8 (a scale per shorter row costs too much).
MIN_ROW = 32
#: The code of NaN (a NaN momentum stays NaN, for the loss and skip_nonfinite to show).
NAN_CODE = 127
#: The largest finite float32: an infinite momentum saturates there.
FLOAT32_MAX = 3.4028234663852886e38
#: r below this is a "subnormal" code: k * 2**-17, k < 8.
SMALLEST_NORMAL = 2.0**-14
#: A normal code k is float32 bits `(k + EXPONENT_OFFSET) << 20` (3 mantissa bits kept).
EXPONENT_OFFSET = 896
#: Random bits added below the kept mantissa bits: stochastic rounding.
NOISE_BITS = 20


def is_quantized(shape: tuple[int, ...]) -> bool:
    """Whether a variable of this shape gets an int8 momentum (else float32)."""
    return len(shape) >= 1 and shape[-1] >= MIN_ROW and math.prod(shape) >= BLOCK


def block_size(shape: tuple[int, ...]) -> int:
    """Elements per block: `BLOCK`, or a whole shorter row."""
    return min(BLOCK, shape[-1])


def scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One scale per block: the variable's shape with its last axis counted in blocks."""
    return (*shape[:-1], -(-shape[-1] // block_size(shape)))


def _blocks(x: Any, shape: tuple[int, ...]) -> Any:
    """(..., L) as (..., blocks, block), the last block zero-padded."""
    size = block_size(shape)
    count = scale_shape(shape)[-1]
    if count * size != shape[-1]:
        x = ops.pad(x, [(0, 0)] * (len(shape) - 1) + [(0, count * size - shape[-1])])
    return ops.reshape(x, (*shape[:-1], count, size))


def _unblocks(x: Any, shape: tuple[int, ...]) -> Any:
    x = ops.reshape(x, (*shape[:-1], -1))
    return x if x.shape[-1] == shape[-1] else x[..., :shape[-1]]


def decode(codes: Any, scales: Any) -> Any:
    """The momentum that codes and scales hold, in float32 (exact but for one rounding)."""
    shape = tuple(codes.shape)
    signed = ops.cast(codes, "int32")
    k = ops.abs(signed)
    normal = ops.view(ops.left_shift(k + EXPONENT_OFFSET, 20), "float32")
    r = ops.where(k < 8, ops.cast(k, "float32") * 2.0**-17, normal)
    r = ops.where(k == NAN_CODE, float("nan"), r)
    r = ops.where(signed < 0, -r, r)
    return _unblocks(_blocks(r, shape) * ops.expand_dims(scales, -1), shape)


def encode(m: Any, noise: Any) -> tuple[Any, Any]:
    """Codes and scales of `m`, rounded up or down at random (`noise`: int32
    in [0, 2**20), from `noise_bits`), so that on average they hold `m`."""
    shape = tuple(m.shape)
    m = ops.cast(m, "float32")
    nan = ops.isnan(m)
    magnitude = ops.where(nan, 0.0, ops.minimum(ops.abs(m), FLOAT32_MAX))
    blocked = _blocks(magnitude, shape)
    scales = ops.max(blocked, axis=-1)
    r = _unblocks(blocked / ops.expand_dims(ops.where(scales > 0, scales, 1.0), -1), shape)
    # Normal codes: the noise added below the 3 kept mantissa bits carries
    # into them with the probability of the dropped fraction.
    normal = ops.right_shift(ops.view(r, "int32") + noise, NOISE_BITS) - EXPONENT_OFFSET
    # Below 2**-14, steps of 2**-17: r * 2**37 in units of 2**-20 of a step.
    fixed_point = ops.cast(r * 2.0**37, "int32")
    subnormal = ops.right_shift(fixed_point + noise, NOISE_BITS)
    k = ops.where(r >= SMALLEST_NORMAL, normal, subnormal)
    k = ops.where(nan, NAN_CODE, ops.where(m < 0, -k, k))
    return ops.cast(k, "int8"), scales


# Constants of the hash (Wellons' lowbias32), as wrapping int32 arithmetic.
_GOLDEN = -1640531527  # 0x9E3779B9
_MULTIPLIERS = (0x7FEB352D, -2073254261)  # 0x846CA68B


def _shift_right(x: Any, bits: int) -> Any:
    """Logical right shift of int32 (right_shift is arithmetic for signed ints)."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _mix(x: Any) -> Any:
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = x * _MULTIPLIERS[0]
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = x * _MULTIPLIERS[1]
    return ops.bitwise_xor(x, _shift_right(x, 16))


def noise_bits(step: Any, variable_index: int, shape: tuple[int, ...]) -> Any:
    """int32 noise in [0, 2**20) per element: a hash of (step, variable, element)."""
    key = _mix(ops.cast(step, "int32") * _GOLDEN + variable_index)
    index = ops.reshape(ops.arange(math.prod(shape), dtype="int32"), shape)
    return _shift_right(_mix(ops.bitwise_xor(index, key)), 32 - NOISE_BITS)
