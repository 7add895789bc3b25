"""One-byte momentum (`momentum_dtype="int8"`): int8 codes, one power-of-two scale per block.

Each row of a variable (its last axis) is cut into blocks of `BLOCK`
elements (a shorter row is one block); a block stores as its scale the
smallest power of two at or above its largest |m| (at most 2**126), and
each element the code of `r = |m| / scale`, in [0, 1], with its sign. The
code is float8-like: 4 exponent and 3 mantissa bits, values `k * 2**-17`
for codes k < 8 and `(8 + k % 8) * 2**(k // 8 - 18)` from 8 up to 120
(r = 1); 127 is NaN. Relative precision is the same over 14 binades, down
to r = 2**-14, and linear steps of 2**-17 go below, so an element 1e4 times
smaller than its block's largest still has a code, if a coarse one (plain
absmax-linear int8 rounds everything below 1/254 of the largest to 0, which
freezes small elements next to a large one). This is the layout of the
OCP's microscaling formats (MXFP8: E4M3 elements sharing a power-of-two
scale): a power-of-two scale makes `r` exact, one product by `2**-e`
whose factor is built from the scale's bits, where a scale equal to the
largest |m| took a division per block and two products per element, and
made the step slower on XLA.

The code is rounded stochastically, so that the momentum is unbiased: a
small momentum that decays by `beta_2 = 0.99` per step changes by far less
than a code's spacing, and nearest rounding would hold it still for good.
The random bits are a hash of the iteration count, the variable's index and
the element's index, so a step is deterministic: the same after saving and
resuming, and on every replica. Each element's index is hashed in full
(two 32-bit multiplies, about a fifth of the C kernel's step on data in
cache), as cheaper bits correlate elements: a Weyl sequence (the index
times the golden ratio plus a key per step, one addition) gives elements
233 apart, or down a column of rows 233 wide, nearly the same bits at
every step (correlation 0.99), and one xorshift-multiply round after it
still 0.19 at some distances (`tests/python/test_int8.py` allows 0.05).
The random bits are the same on every
backend too, so codes agree wherever the backends' float32 momenta do
(TensorFlow's fast path may round a momentum an ulp apart, and so, where a
block's largest |m| is a power of two, its scale by a factor of two).
Measured in `bench/int8_codes.py` (a NumPy model, with NumPy's random
numbers or, `--rounding keraslion`, these bits: the same): with one
element in 64 given a 1000x, 1e4x or 1e5x larger gradient of random sign,
no small element's direction flips when its gradient is reversed after
300 steps, and the median ratio of their momentum to float32's is 0.99-1.0;
absmax-linear int8 flips all of them (53-99% if rounded at random).
Single elements stray, as a random walk of the rounding, unbiased on
average: at 1000x and 1e4x, 0.6-1.6 times float32's momentum with
`beta_2 = 0.99`, and 0.5-2.1 times with `beta_2 = 0.999`, whose steps
change a momentum by less still against a code's spacing (`python
bench/int8_codes.py --beta-2 0.999`); at 1e5x, where the small momenta lie
among the lowest codes, 0.3-1.7 and 0.1-2.2 times. `tests/python/test_int8.py`
checks the same in the optimizer on every backend, with a steady large
gradient: at 1000x and 1e4x, and at 1000x with `beta_2 = 0.999`. The price
of a power-of-two scale is up to one binade at the bottom (the scale may be
up to twice the largest |m|): with a steady gradient, at 1e4x and
`beta_2 = 0.999`, the largest just above a power of two, 0.2% of the small
elements flip (their momentum a few units of 2**-17 of the scale, where
rounding at random strays most), and at 1e5x some flip at any beta (the
small momenta are below the smallest code); with the largest |m| as the
scale, none did in either case. At 3000x with `beta_2 = 0.999`, none flip.

Variables whose last axis is shorter than `MIN_ROW`, or that have fewer than
`BLOCK` elements, gain little (a scale per short row) and keep a float32
momentum. Storage (`pack`): one array per variable, each block's codes
followed by its scale's exponent byte: 1.004 bytes per parameter for rows
that are multiples of 256, 1.016 for rows of 64, 1.031 for rows of 32.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

#: Elements per block (along the last axis), sharing one scale.
BLOCK = 256
#: The shortest last axis that is stored in int8 (a scale per shorter row costs too much).
MIN_ROW = 32
#: The code of NaN (a NaN momentum stays NaN, for the loss and skip_nonfinite to show).
NAN_CODE = 127
#: The bits of the largest finite float32 (an infinite momentum saturates
#: there) and of infinity (larger bits are NaN).
FLOAT32_MAX_BITS = 0x7F7FFFFF
INFINITY_BITS = 0x7F800000
#: The bits of the largest scale, 2**126: its reciprocal is still a normal
#: float32 (XLA flushes subnormals to 0).
LARGEST_SCALE_BITS = 253 << 23
#: A float32's mantissa bits (added to round a scale up to a power of two).
MANTISSA_BITS = 0x7FFFFF
#: The bits of 2**-e are these minus those of 2**e (exponent fields 127 - e
#: and 127 + e); for a zero scale, 2**127, which multiplies r's 0.
RECIPROCAL_BITS = 254 << 23
#: The bits of a quiet NaN, and the sign bit.
NAN_BITS = 0x7FC00000
SIGN_BIT = -(1 << 31)
#: r below this is a "subnormal" code: k * 2**-17, k < 8; and its float32 bits.
SMALLEST_NORMAL = 2.0**-14
SMALLEST_NORMAL_BITS = 0x38800000
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


def packed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a variable's int8 state (`pack`): each row's codes and
    one exponent byte per block."""
    return (*shape[:-1], shape[-1] + scale_shape(shape)[-1])


def unpacked_shape(packed: tuple[int, ...]) -> tuple[int, ...]:
    """The variable's shape whose int8 state has this shape (`packed_shape`'s
    inverse: a block of `BLOCK` elements, or a row's last one, takes one byte more)."""
    length = packed[-1]
    return (*packed[:-1], length - -(-length // (BLOCK + 1)))


def pack(codes: Any, scales: Any) -> Any:
    """The int8 state that stores codes and scales: along each row, every
    block's codes followed by its scale's exponent byte (the scale's float32
    bits shifted right by 23: a power of two, or 0, at most 2**126, is exact
    in it). One array per variable: a compiled step pays for each array it
    passes in and out, and the block's byte follows its codes however the
    rows are sharded into whole blocks."""
    shape = tuple(codes.shape)
    size = block_size(shape)
    whole = shape[-1] // size
    exponents = ops.right_shift(ops.view(scales, "int32"), 23)
    # Bytes 128-253 as the int8 of the same bits (a cast out of range is not portable).
    exponents = ops.cast(ops.bitwise_xor(exponents, _int32(128)) - 128, "int8")
    parts = []
    if whole:
        blocks = ops.reshape(codes[..., :whole * size], (*shape[:-1], whole, size))
        parts.append(ops.reshape(
            ops.concatenate([blocks, ops.expand_dims(exponents[..., :whole], -1)], axis=-1),
            (*shape[:-1], whole * (size + 1))))
    if whole * size < shape[-1]:
        parts += [codes[..., whole * size:], exponents[..., whole:]]
    return _concatenated(parts)


def unpack(state: Any) -> tuple[Any, Any]:
    """The codes and float32 scales that an int8 state (`pack`) stores."""
    shape = unpacked_shape(tuple(state.shape))
    size = block_size(shape)
    whole = shape[-1] // size
    split = whole * (size + 1)
    codes, exponents = [], []
    if whole:
        blocks = ops.reshape(state[..., :split], (*shape[:-1], whole, size + 1))
        codes.append(ops.reshape(blocks[..., :size], (*shape[:-1], whole * size)))
        exponents.append(blocks[..., size])
    if split < state.shape[-1]:
        codes.append(state[..., split:-1])
        exponents.append(state[..., -1:])
    exponent_bytes = ops.bitwise_and(ops.cast(_concatenated(exponents), "int32"), _int32(255))
    return _concatenated(codes), ops.view(ops.left_shift(exponent_bytes, 23), "float32")


def _concatenated(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)


def _block_max(x: Any, shape: tuple[int, ...]) -> Any:
    """Each block's largest element (x: non-negative). Whole blocks in two
    stages where a block splits into 8 runs of 32 (a maximum over the minor
    axis alone is 7x slower in XLA's CPU code than one across runs, which it
    vectorizes); a shorter last block of a row on its own (padded to a whole
    block instead, the row is copied: the step took 2.4x as long in XLA)."""
    size = block_size(shape)
    whole = shape[-1] // size * size
    maxima = []
    if whole:
        blocks = ops.reshape(x[..., :whole], (*shape[:-1], whole // size, size))
        if size % 256 == 0:
            runs = ops.reshape(blocks, (*blocks.shape[:-1], 8, size // 8))
            maxima.append(ops.max(ops.max(runs, axis=-2), axis=-1))
        else:
            maxima.append(ops.max(blocks, axis=-1))
    if whole < shape[-1]:
        maxima.append(ops.max(x[..., whole:], axis=-1, keepdims=True))
    return maxima[0] if len(maxima) == 1 else ops.concatenate(maxima, axis=-1)


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
    bits = ops.bitwise_or(bits, ops.bitwise_and(signed, _int32(SIGN_BIT)))
    return ops.view(bits, "float32") * _per_element(scales, shape)


def _int32(value: int) -> Any:
    """An int32 constant for `keras.ops`, which on JAX converts a Python int
    to float32 where floatx is bfloat16 (bitwise operations then refuse it,
    and `minimum` returns float32)."""
    return ops.convert_to_tensor(value, "int32")


def _choose(if_true: Any, if_false: Any, condition: Any) -> Any:
    """`where(condition, if_true, if_false)` for int32, as arithmetic."""
    return if_false + (if_true - if_false) * ops.cast(condition, "int32")


@_eager_under_torch_compile
def encode(m: Any, noise: Any) -> tuple[Any, Any]:
    """Codes and scales of `m`, rounded up or down at random (`noise`: int32
    in [0, 2**20), from `noise_bits`), so that on average they hold `m`.

    Infinities (and NaN, for the block's scale) count as the largest float32:
    their block's scale is the largest, 2**126, and their code r = 1's.
    Bit operations stand in for `abs`, `isnan` and float-to-int conversion,
    which XLA's CPU code runs several times slower in this fusion, and
    integer arithmetic for selects, which PyTorch runs slowly.
    """
    shape = tuple(m.shape)
    bits = ops.view(ops.cast(m, "float32"), "int32")
    magnitude_bits = ops.bitwise_and(bits, _int32(0x7FFFFFFF))
    nan = magnitude_bits > INFINITY_BITS
    magnitude_bits = ops.minimum(magnitude_bits, _int32(FLOAT32_MAX_BITS))
    magnitude = ops.view(magnitude_bits, "float32")
    scales, inverse = power_of_two_scales(_block_max(magnitude_bits, shape))
    # Exact, a product by a power of two (unless r is subnormal: its code is 0 either way).
    r = magnitude * _per_element(inverse, shape)
    # The code times 2**20 before rounding: from 2**-14 up, the bits of r past
    # those of 2**-15 (a normal code k has bits (k + EXPONENT_OFFSET) << 20);
    # below, in steps of 2**-17, the bits of r + 2**-14 past those of 2**-14
    # (the sum holds r in units of 2**-37, 2**-20 of a step). The two agree
    # at 2**-14 (8 << 20), the second is larger below it and the first above,
    # so their maximum serves every r (one select fewer: the step is faster).
    normal = ops.view(r, "int32") - (EXPONENT_OFFSET << NOISE_BITS)
    subnormal = ops.view(r + SMALLEST_NORMAL, "int32") - SMALLEST_NORMAL_BITS
    # The noise added below the kept bits carries into them with the
    # probability of the dropped fraction.
    unrounded = ops.maximum(normal, subnormal) + noise
    k = ops.minimum(ops.right_shift(unrounded, NOISE_BITS), _int32(ONE_CODE))
    # Negated where m is negative: -1 there from an arithmetic shift of the sign.
    negative = ops.right_shift(bits, 31)
    k = _choose(NAN_CODE, ops.bitwise_xor(k, negative) - negative, nan)
    return ops.cast(k, "int8"), scales


def power_of_two_scales(largest_bits: Any) -> tuple[Any, Any]:
    """The scales of blocks whose largest |m| has these float32 bits (the
    largest bits of the block: the bits of non-negative floats order as
    their values), and their reciprocals, both from the bits: a mantissa
    that is not zero carries into the exponent, and is then cleared."""
    rounded_up = ops.bitwise_and(largest_bits + MANTISSA_BITS, _int32(INFINITY_BITS))
    scale_bits = ops.minimum(rounded_up, _int32(LARGEST_SCALE_BITS))
    inverse_bits = RECIPROCAL_BITS - scale_bits
    return ops.view(scale_bits, "float32"), ops.view(inverse_bits, "float32")


# Constants of the hash (Wellons' lowbias32), as wrapping int32 arithmetic.
_GOLDEN = -1640531527  # 0x9E3779B9
HASH_MULTIPLIERS = (0x7FEB352D, -2073254261)  # 0x846CA68B


def _shift_right(x: Any, bits: int) -> Any:
    """Logical right shift of int32 (right_shift is arithmetic for signed ints)."""
    return ops.bitwise_and(ops.right_shift(x, bits), _int32((1 << (32 - bits)) - 1))


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
    return noise_from_key(noise_key(step, variable_index), shape, offset)


def noise_from_key(key: Any, shape: tuple[int, ...], offset: int = 0) -> Any:
    """`noise_bits` of a variable whose `noise_key` is `key`."""
    size = math.prod(shape)
    index = ops.reshape(ops.arange(offset, offset + size, dtype="int32"), shape)
    return _shift_right(_mix(ops.bitwise_xor(index, key)), 32 - NOISE_BITS)
