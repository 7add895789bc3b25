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
resuming, and on every replica. The random bits are the same on every
backend too, so codes agree wherever the backends' float32 momenta do
(TensorFlow's fast path may round a momentum, and so a block's scale, an
ulp apart). Measured in `bench/int8_codes.py` (a NumPy model): with one
element in 64 given a 1000x (or 1e5x) larger gradient, no small element's
direction flips when its gradient is reversed after 300 steps, and the
median ratio of their momentum to float32's is 0.96 (single elements stray
by up to a few tens of percent, unbiased on average); absmax-linear int8
flips all of them. `tests/python/test_int8.py` checks the same in the
optimizer on every backend.

Variables whose last axis is shorter than `MIN_ROW`, or that have fewer than
`BLOCK` elements, gain little (a scale per short row) and keep a float32
momentum. Storage: one byte per element and four per block, 1.016 bytes
per parameter for rows of 256 or more.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

#: Elements per block (along the last axis), sharing one float32 scale.
BLOCK = 256
#: The shortest last axis that is stored in int8 (a scale per shorter row costs too much).
MIN_ROW = 32
#: The code of NaN (a NaN momentum stays NaN, for the loss and skip_nonfinite to show).
NAN_CODE = 127
#: The bits of the largest finite float32 (an infinite momentum saturates
#: there) and of infinity (larger bits are NaN).
FLOAT32_MAX_BITS = 0x7F7FFFFF
INFINITY_BITS = 0x7F800000
#: The bits of a quiet NaN, and the sign bit.
NAN_BITS = 0x7FC00000
SIGN_BIT = -(1 << 31)
#: r below this is a "subnormal" code: k * 2**-17, k < 8.
SMALLEST_NORMAL = 2.0**-14
#: A normal code k is float32 bits `(k + EXPONENT_OFFSET) << 20` (3 mantissa bits kept).
EXPONENT_OFFSET = 896
#: The bits of float32 2**23, whose last mantissa bit counts ones.
MAGIC_BITS = 0x4B000000
#: The code of r = 1 (a block's largest element).
ONE_CODE = 120
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


def _block_max(x: Any, shape: tuple[int, ...]) -> Any:
    """Each block's largest element. In two stages where the block splits into
    8 runs of 32 (a maximum over the minor axis alone is 7x slower in XLA's
    CPU code than one across runs, which it vectorizes)."""
    blocks = _blocks(x, shape)
    size = block_size(shape)
    if size % 256:
        return ops.max(blocks, axis=-1)
    runs = ops.reshape(blocks, (*blocks.shape[:-1], 8, size // 8))
    return ops.max(ops.max(runs, axis=-2), axis=-1)


def _per_element(scales: Any, shape: tuple[int, ...]) -> Any:
    """Each block's scale repeated over its elements. (Broadcast over a
    (..., blocks, block) view instead, XLA's CPU code is 15x slower.)"""
    x = ops.repeat(scales, block_size(shape), axis=-1)
    return x if x.shape[-1] == shape[-1] else x[..., :shape[-1]]


def _eager_under_torch_compile(function: Any) -> Any:
    """`function`, run eagerly when `torch.compile` traces it: compiled by
    PyTorch 2.13's inductor, decoding rows that are not whole blocks gave
    wrong values (NaN weights in `fit(jit_compile=True)`)."""
    if keras.backend.backend() != "torch":
        return function
    import torch

    return torch.compiler.disable(function)


@_eager_under_torch_compile
def decode(codes: Any, scales: Any) -> Any:
    """The momentum that codes and scales hold, in float32 (exact but for one rounding)."""
    shape = tuple(codes.shape)
    signed = ops.cast(codes, "int32")
    k = ops.abs(signed)
    # Small codes k * 2**-17 from the bits of 2**23 + k (exact), others by
    # their bits; chosen, NaN set and the sign put on by integer arithmetic
    # (a select on full tensors is as slow as the rest together on PyTorch).
    small = (ops.view(k + MAGIC_BITS, "float32") - 2.0**23) * 2.0**-17
    bits = ops.left_shift(k + EXPONENT_OFFSET, 20)
    bits = _choose(ops.view(small, "int32"), bits, k < 8)
    bits = _choose(NAN_BITS, bits, k == NAN_CODE)
    bits = ops.bitwise_or(bits, ops.bitwise_and(signed, SIGN_BIT))
    return ops.view(bits, "float32") * _per_element(scales, shape)


def _choose(if_true: Any, if_false: Any, condition: Any) -> Any:
    """`where(condition, if_true, if_false)` for int32, as arithmetic."""
    return if_false + (if_true - if_false) * ops.cast(condition, "int32")


@_eager_under_torch_compile
def encode(m: Any, noise: Any) -> tuple[Any, Any]:
    """Codes and scales of `m`, rounded up or down at random (`noise`: int32
    in [0, 2**20), from `noise_bits`), so that on average they hold `m`.

    Infinities (and NaN, for the block's scale) count as the largest float32.
    Bit operations stand in for `abs`, `isnan` and float-to-int conversion,
    which XLA's CPU code runs several times slower in this fusion, and
    integer arithmetic for selects, which PyTorch runs slowly.
    """
    shape = tuple(m.shape)
    bits = ops.view(ops.cast(m, "float32"), "int32")
    magnitude_bits = ops.bitwise_and(bits, 0x7FFFFFFF)
    nan = magnitude_bits > INFINITY_BITS
    magnitude = ops.view(ops.minimum(magnitude_bits, FLOAT32_MAX_BITS), "float32")
    scales = _block_max(magnitude, shape)
    # Times the reciprocal, not divided: XLA fuses a product into the rest
    # of the encoding, where a quotient is kept in a full-size temporary.
    # (r may round up past 1 by an ulp: the code is capped at 1's.) Scales
    # beyond 2**126, or subnormal, are brought into range first, so that
    # the reciprocal is neither subnormal (flushed to 0 by XLA) nor infinite.
    # (In float32 whatever Keras's floatx: r's bits are read as int32.)
    prescale = ops.cast(ops.where(scales >= 2.0**126, 0.25,
                                  ops.where(scales < 2.0**-126, 2.0**24, 1.0)), "float32")
    scaled = scales * prescale
    inverse = ops.where(scaled > 0, 1.0 / ops.where(scaled > 0, scaled, 1.0), 0.0)
    r = (magnitude * _per_element(prescale, shape)) * _per_element(inverse, shape)
    # Normal codes: the noise added below the 3 kept mantissa bits carries
    # into them with the probability of the dropped fraction.
    normal = ops.right_shift(ops.view(r, "int32") + noise, NOISE_BITS) - EXPONENT_OFFSET
    # Below 2**-14, steps of 2**-17: r * 2**37 counts units of 2**-20 of a
    # step, read from the bits of r * 2**37 + 2**23 (rounded to the nearest unit).
    fixed_point = ops.view(r * 2.0**37 + 2.0**23, "int32") - MAGIC_BITS
    subnormal = ops.right_shift(fixed_point + noise, NOISE_BITS)
    k = _choose(ops.minimum(normal, ONE_CODE), subnormal, r >= SMALLEST_NORMAL)
    # Negated where m is negative: -1 there from an arithmetic shift of the sign.
    negative = ops.right_shift(bits, 31)
    k = _choose(NAN_CODE, ops.bitwise_xor(k, negative) - negative, nan)
    return ops.cast(k, "int8"), scales


# Constants of the hash (Wellons' lowbias32), as wrapping int32 arithmetic.
_GOLDEN = -1640531527  # 0x9E3779B9
HASH_MULTIPLIERS = (0x7FEB352D, -2073254261)  # 0x846CA68B


def _shift_right(x: Any, bits: int) -> Any:
    """Logical right shift of int32 (right_shift is arithmetic for signed ints)."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _mix(x: Any) -> Any:
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = x * HASH_MULTIPLIERS[0]
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = x * HASH_MULTIPLIERS[1]
    return ops.bitwise_xor(x, _shift_right(x, 16))


def noise_key(step: Any, variable_index: Any) -> Any:
    """The hash of (step, variable) that seeds a variable's noise; elementwise
    for a tensor of variable indices."""
    return _mix(ops.cast(step, "int32") * _GOLDEN + variable_index)


def noise_bits(step: Any, variable_index: Any, shape: tuple[int, ...], offset: int = 0) -> Any:
    """int32 noise in [0, 2**20) per element: a hash of (step, variable, element).

    `variable_index`: an int, or an int32 scalar tensor. `offset`: the flat
    index of the first element, for a part of a variable.
    """
    key = noise_key(step, variable_index)
    size = math.prod(shape)
    index = ops.reshape(ops.arange(offset, offset + size, dtype="int32"), shape)
    return _shift_right(_mix(ops.bitwise_xor(index, key)), 32 - NOISE_BITS)
