"""PyTorch: the step of variables with an int8 momentum, in place, piece by piece.

On the CPU, where it builds, the C kernel of `native.py` steps in one
pass, on PyTorch's threads: float32 variables whole, in runs of their
blocks (`_whole_variables`), and the others by the pieces below, which
widen them into float32. Otherwise (no C
compiler, `KERASLION_NATIVE=0`, another device) PyTorch's operations run
the same arithmetic: bit for bit the kernel's, more slowly.

The plain path decodes, steps and encodes with about 80 Keras operations,
each paying Keras's dispatch and allocating a temporary (page faults, for
large ones): 25-150x float32's step. Here the same arithmetic, in the same
order, runs in place on scratch buffers of at most `PIECE` elements that
stay in cache, so that weights and int8 state are the plain path's bit
for bit. A piece is a run of whole rows of one variable, a part of a longer
row (cut at whole int8 blocks), or small variables with rows of one length,
gathered into the scratch buffers so that a model of many small variables
does not pay for each one. (One difference: where `c` is -0, `sign_` keeps
-0 where `torch.sign` gives +0, so that a zero weight may keep the other
sign of zero, an equal value.)

Selects and comparisons are integer masks, `(a - b) >> 31` (-1 where
a < b): PyTorch's CPU `where` and comparisons each cost about six integer
operations. The code values are read from a table of all 256 codes that
`int8.decode` itself builds.

The step is computed in float32: weights in float32 are updated where they
lie, narrower ones are widened into a scratch buffer and rounded back once.
Float64 weights (a float64 step) take the plain path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from keras import ops

from .. import int8
from . import native
from . import torch as blocked

#: Elements per piece: with its weights, gradient and codes, its scratch
#: buffers (about 40 bytes per element in all, 5 MiB) stay in cache (L3).
#: Half as large, a piece fits a 1 MiB L2 too, but each of a piece's 50
#: operations costs its dispatch on fewer elements: the step took 20% longer.
PIECE = 1 << 17
#: A variable with at most this many elements is gathered with others.
GATHERED = PIECE // 2


class Piece(NamedTuple):
    members: list[tuple[int, slice, slice]]  # (variable's position, rows, columns)
    rows: list[int]  # of each member
    width: int  # elements per row
    block: int  # elements per int8 block
    first: int  # a lone member's flat index of its first element (seeds its noise)
    decayed: bool  # not excluded from weight decay
    first_of_rows: Any  # each row's flat index of its first element in its variable (int32)
    slots: Any = None  # gathered members' positions (int64), to pick their noise keys
    counts: Any = None  # gathered members' rows (int64)


class Plan(NamedTuple):
    params: list[Any]  # kept so that their ids, the cache key, stay theirs
    indices: Any  # each variable's index in the optimizer (seeds its noise), int32
    pieces: list[Piece]


@torch.compiler.disable  # Eager under torch.compile: in-place work on cached buffers.
@torch.no_grad()
def update(optimizer: Any, whole: list[tuple[Any, Any]], widened: list[tuple[Any, Any]],
           learning_rate: Any, kept: list[Any]) -> None:
    """The step of (gradient, variable) pairs: `whole`, of float32 weights
    (the kernel steps each whole), and `widened`, of narrower ones (stepped
    by pieces). `kept`: where the kernel's `Runs` for the `whole` ones are
    kept, once made (the routing's, cached for the same variables)."""
    device = (whole or widened)[0][1]._value.device
    kernel = native.int8_library() if native.enabled() and device.type == "cpu" else None
    *factors, weight_decay = optimizer._coefficients("float32", learning_rate)
    pieces = widened
    if kernel is None:
        pieces = whole + widened
    else:
        factors = [float(x) for x in factors]
        weight_decay = None if weight_decay is None else float(weight_decay)
        if whole:
            _whole_variables(optimizer, kernel, *map(list, zip(*whole)), factors, weight_decay,
                             kept)
    if not pieces:
        return
    grads, variables = map(list, zip(*pieces))
    plan = _plan(optimizer, variables)
    keys = int8.noise_key(optimizer.iterations, plan.indices)
    scratch, table, arange = _scratch(optimizer, device)
    tensors = [_as_rows(optimizer, v, g) for v, g in zip(variables, grads)]
    for piece in plan.pieces:
        _step(piece, tensors, scratch, table, arange, keys,
              (*factors, weight_decay if piece.decayed else None), kernel)


def _as_rows(optimizer: Any, variable: Any, gradient: Any) -> tuple[Any, Any, Any]:
    """A variable's weights, gradient and int8 state, as (rows, last axis)."""
    state = optimizer._momentums[optimizer._get_variable_index(variable)]._value
    length = variable._value.shape[-1]
    return (variable._value.view(-1, length), gradient.reshape(-1, length),
            state.view(-1, state.shape[-1]))


def _packed_columns(columns: slice, block: int) -> slice:
    """The int8 state's columns of a row's elements `columns` (from a whole
    block on): theirs, and each block's exponent byte."""
    return slice(columns.start + columns.start // block, columns.stop + -(-columns.stop // block))


def _step(piece: Piece, tensors: list[Any], scratch: dict[str, Any], table: Any, arange: Any,
          keys: Any, coefficients: tuple[Any, ...], kernel: Any) -> None:
    rows, width = sum(piece.rows), piece.width
    buffer = {name: x[:rows * width].view(rows, width) for name, x in scratch.items()}
    parts = [[tensors[j][0][r, c], tensors[j][1][r, c],
              tensors[j][2][r, _packed_columns(c, piece.block)]] for j, r, c in piece.members]
    p, g, packed = ([part[n] for part in parts] for n in range(3))
    theta, gradient = (_float32(x, buffer, name, piece) for x, name in ((p, "p"), (g, "g")))
    state = packed[0] if len(parts) == 1 and packed[0].is_contiguous() else torch.cat(packed)
    if kernel is None:
        m = _decode(state, buffer, table, piece.block)
        _lion(theta, m, gradient, buffer, *coefficients)
        noise = _noise(piece, keys, arange, buffer)
        _encode(m, noise, buffer, piece.block, state)
    else:
        _kernel_step(kernel, piece, theta, gradient, state, keys, coefficients)
    for new, old in ((theta, p), (state, packed)):
        if new is not old[0]:
            _scatter(new, old, piece)


def _float32(parts: list[Any], buffer: dict[str, Any], name: str, piece: Piece) -> Any:
    """The parts as one contiguous float32 tensor: a lone part itself if it
    is one, else gathered into the scratch buffer `name`."""
    if len(parts) == 1 and parts[0].dtype == torch.float32 and parts[0].is_contiguous():
        return parts[0]
    return _gather(parts, buffer[name], piece)


def _kernel_step(kernel: Any, piece: Piece, theta: Any, gradient: Any, state: Any, keys: Any,
                 coefficients: tuple[Any, ...]) -> None:
    """The piece's step in C (`native.py`), in place on contiguous weights
    and int8 state, its blocks shared among PyTorch's threads."""
    if piece.slots is None:  # One variable: its key for every row.
        key, key_stride = keys[piece.members[0][0]], 0
    else:
        key, key_stride = keys[piece.slots].repeat_interleave(piece.counts), 1
    *factors, weight_decay = coefficients

    def run(begin: int, end: int) -> None:
        kernel.keraslion_int8_step(
            theta.data_ptr(), gradient.data_ptr(), state.data_ptr(), piece.width, piece.block,
            key.data_ptr(), key_stride, piece.first_of_rows.data_ptr(), begin, end, *factors,
            weight_decay is not None, weight_decay or 0.0)

    # One exponent byte per block: the bytes past the codes count the blocks.
    native.in_parallel(run, state.numel() - theta.numel(), theta.numel(), kernel)


class Runs(NamedTuple):
    params: list[Any]  # kept so that their ids, the cache key, stay theirs
    indices: Any  # each variable's index in the optimizer (seeds its noise), int32
    states: list[Any]  # the tensors of their int8 state (whose data may be swapped)
    widths: Any  # row length (int64), block and decay (int32) of each variable
    blocks: Any
    decayed: Any
    elements: int  # of all the variables
    # By thread count: each thread's run, as (variables, first blocks, ends).
    runs: dict[int, list[tuple[Any, Any, Any]]]


def _whole_variables(optimizer: Any, kernel: Any, grads: list[Any], variables: list[Any],
                     factors: list[float], weight_decay: float | None, kept: list[Any]) -> None:
    """The step of float32 variables in C, in place, each whole, a thread
    stepping runs of their blocks (one call for many small variables); their
    `Runs` are kept in `kept`."""
    if not kept:  # (Under `torch.compile`, the routing is not kept: the cache serves.)
        kept.append(_runs(optimizer, variables))
    plan = kept[0]
    # `int8.noise_key`'s step (its int32 bits), hashed with each index in C.
    step = int(ops.convert_to_tensor(optimizer.iterations)) % 2**32
    grads = blocked.contiguous_float32(grads)
    # Addresses read at every step, as `blocked._update_in_c` reads them.
    pointers = np.array([list(map(blocked.data_ptr, tensors))
                         for tensors in (plan.params, grads, plan.states)], np.int64)
    decayed = plan.decayed if weight_decay is not None else torch.zeros_like(plan.decayed)

    def call(owners: Any, begins: Any, ends: Any) -> Callable[[], None]:
        return lambda: kernel.keraslion_int8_steps(
            owners.numel(), owners.data_ptr(), begins.data_ptr(), ends.data_ptr(),
            *(row.ctypes.data for row in pointers), plan.widths.data_ptr(), plan.blocks.data_ptr(),
            step, plan.indices.data_ptr(), decayed.data_ptr(), *factors, weight_decay or 0.0)

    blocked.in_threads(kernel, call, plan.runs, plan.elements,
                       lambda: [(v._value.numel(), math.prod(int8.scale_shape(tuple(v.shape))))
                                for v in variables])


def _runs(optimizer: Any, variables: list[Any]) -> Runs:
    def make() -> Runs:
        shapes = [tuple(v.shape) for v in variables]
        positions = [optimizer._get_variable_index(v) for v in variables]
        return Runs([v._value for v in variables], torch.tensor(positions, dtype=torch.int32),
                    [optimizer._momentums[i]._value for i in positions],
                    torch.tensor([shape[-1] for shape in shapes], dtype=torch.int64),
                    torch.tensor([int8.block_size(shape) for shape in shapes], dtype=torch.int64),
                    torch.tensor([optimizer._use_weight_decay(v) for v in variables],
                                 dtype=torch.int32), sum(v._value.numel() for v in variables), {})

    return blocked.cached_plan(optimizer, "_torch_int8_runs", variables, make)


def _gather(parts: list[Any], into: Any, piece: Piece) -> Any:
    torch._foreach_copy_(list(into.split(piece.rows)), parts)
    return into


def _scatter(source: Any, parts: list[Any], piece: Piece) -> None:
    torch._foreach_copy_(parts, list(source.split(piece.rows)))


def _by_block(x: Any, block: int) -> list[tuple[Any, slice]]:
    """(rows, width) as (rows, blocks, block) views, and which blocks: the
    whole blocks, and a shorter last one."""
    width = x.shape[1]
    whole = width // block
    views = [(x[:, :whole * block].unflatten(1, (whole, block)), slice(0, whole))] if whole else []
    if whole * block < width:
        views.append((x[:, whole * block:].unsqueeze(1), slice(whole, whole + 1)))
    return views


def _packed_blocks(state: Any, block: int) -> list[tuple[Any, Any]]:
    """Int8 state of (rows, packed row) as (codes, exponent bytes) views of
    `_by_block`'s: (rows, blocks, block) and (rows, blocks, 1), for the whole
    blocks and a shorter last one."""
    whole = state.shape[1] // (block + 1)
    views = [state[:, :whole * (block + 1)].unflatten(1, (whole, block + 1))] if whole else []
    if whole * (block + 1) < state.shape[1]:
        views.append(state[:, whole * (block + 1):].unsqueeze(1))
    return [(view[..., :-1], view[..., -1:]) for view in views]


def _decode(state: Any, buffer: dict[str, Any], table: Any, block: int) -> Any:
    """`int8.decode(*int8.unpack(state))`: each code's value from the table
    (indexed by the code's byte), times its block's scale (from its exponent byte)."""
    index, m = buffer["k"], buffer["m"]
    packed = _packed_blocks(state, block)
    for (codes, _), (into, _) in zip(packed, _by_block(index, block)):
        into.copy_(codes.view(torch.uint8))
    torch.index_select(table, 0, index.view(-1), out=m.view(-1))
    for (_, exponents), (values, _) in zip(packed, _by_block(m, block)):
        scales = exponents.view(torch.uint8).to(torch.int32).bitwise_left_shift_(23)
        values.mul_(scales.view(torch.float32))
    return m


def _lion(theta: Any, m: Any, g: Any, buffer: dict[str, Any], learning_rate: Any, beta_1: Any,
          one_minus_beta_1: Any, beta_2: Any, one_minus_beta_2: Any, weight_decay: Any) -> None:
    """`lion_update`, in place: theta and m become the step's new weights and momentum."""
    c, t = buffer["c"], buffer["t"]
    torch.mul(m, beta_1, out=c)
    c.add_(torch.mul(g, one_minus_beta_1, out=t))
    blocked.sign_(c)
    if weight_decay is not None:
        c.add_(torch.mul(theta, weight_decay, out=t))
    theta.sub_(c.mul_(learning_rate))
    m.mul_(beta_2).add_(torch.mul(g, one_minus_beta_2, out=t))


def _noise(piece: Piece, keys: Any, arange: Any, buffer: dict[str, Any]) -> Any:
    """`int8.noise_bits` of the piece's elements: each one's flat index in its
    variable, hashed with its variable's key."""
    noise, spare = buffer["noise"], buffer["t"].view(torch.int32)
    if piece.slots is None:
        torch.add(arange[:noise.numel()], piece.first, out=noise.view(-1))
        noise.bitwise_xor_(keys[piece.members[0][0]])
    else:
        torch.cat([arange[:rows * piece.width] for rows in piece.rows], out=noise.view(-1))
        noise.bitwise_xor_(keys[piece.slots].repeat_interleave(piece.counts)[:, None])
    for multiplier, bits in zip((*int8.HASH_MULTIPLIERS, None), (16, 15, 16)):
        noise.bitwise_xor_(_shift_right(noise, bits, out=spare))
        if multiplier is not None:
            noise.mul_(_scalar(noise, multiplier))
    return _shift_right(noise, 32 - int8.NOISE_BITS, out=noise)


def _shift_right(x: Any, bits: int, out: Any) -> Any:
    """Logical right shift of int32 (`>>` is arithmetic), into `out`."""
    torch.bitwise_right_shift(x, _scalar(x, bits), out=out)
    return out.bitwise_and_(_scalar(x, (1 << (32 - bits)) - 1))


def _encode(m: Any, noise: Any, buffer: dict[str, Any], block: int, state: Any) -> None:
    """`int8.pack(*int8.encode(m, noise))`, into the int8 state `state`."""
    bits = m.view(torch.int32)
    magnitude = buffer["c"]
    magnitude_bits = magnitude.view(torch.int32)
    torch.bitwise_and(bits, _scalar(bits, 0x7FFFFFFF), out=magnitude_bits)
    nan = torch.sub(_scalar(bits, int8.INFINITY_BITS), magnitude_bits,
                    out=buffer["g"].view(torch.int32)).bitwise_right_shift_(_scalar(bits, 31))
    magnitude_bits.clamp_max_(_scalar(bits, int8.FLOAT32_MAX_BITS))
    largest = torch.cat([view.amax(-1) for view, _ in _by_block(magnitude_bits, block)], dim=1)
    # `int8.power_of_two_scales`, in place on the blocks' largest bits.
    # (Its Keras operations, on each piece's few scales, made the step 25% slower.)
    scale_bits = largest.add_(_scalar(largest, int8.MANTISSA_BITS)).bitwise_and_(
        _scalar(largest, int8.INFINITY_BITS)).clamp_max_(_scalar(largest, int8.LARGEST_SCALE_BITS))
    inverse = torch.sub(_scalar(largest, int8.RECIPROCAL_BITS), scale_bits).view(torch.float32)
    exponents = torch.bitwise_right_shift(scale_bits, _scalar(scale_bits, 23))
    for view, blocks in _by_block(magnitude, block):
        view.mul_(inverse[:, blocks, None])
    r, r_bits = magnitude, magnitude_bits
    # The larger of a normal and a subnormal code, times 2**20, rounded
    # with the noise and capped at r = 1's code.
    k = torch.sub(r_bits, _scalar(bits, int8.EXPONENT_OFFSET << int8.NOISE_BITS),
                  out=buffer["k"])
    subnormal = torch.add(r, _scalar(r, int8.SMALLEST_NORMAL), out=buffer["t"]).view(torch.int32)
    subnormal.sub_(_scalar(bits, int8.SMALLEST_NORMAL_BITS))
    k = torch.maximum(k, subnormal, out=k).add_(noise)
    k.bitwise_right_shift_(_scalar(k, int8.NOISE_BITS)).clamp_max_(_scalar(k, int8.ONE_CODE))
    negative = torch.bitwise_right_shift(bits, _scalar(k, 31), out=noise)
    k.bitwise_xor_(negative).sub_(negative)
    # NaN (magnitude bits above infinity's) as NAN_CODE.
    nan_code = torch.bitwise_xor(k, _scalar(k, int8.NAN_CODE), out=subnormal)
    k.bitwise_xor_(nan_code.bitwise_and_(nan))
    for (codes, exponent_bytes), (view, blocks) in zip(_packed_blocks(state, block),
                                                      _by_block(k, block)):
        codes.copy_(view)
        exponent_bytes.view(torch.uint8).copy_(exponents[:, blocks, None])


#: The constants above as 0-d tensors, made once: PyTorch wraps a number
#: anew in every operation, which costs as much as a pass over a piece.
_SCALARS: dict[tuple[Any, ...], Any] = {}


def _scalar(like: Any, value: float) -> Any:
    """`value` as a 0-d tensor of `like`'s dtype and device."""
    key = (value, like.dtype, like.device)
    if key not in _SCALARS:
        _SCALARS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return _SCALARS[key]


def _plan(optimizer: Any, variables: list[Any]) -> Plan:
    """The pieces for a set of variables, made once and cached."""

    def make() -> Plan:
        params = [v._value for v in variables]
        indices = torch.tensor([optimizer._get_variable_index(v) for v in variables],
                               dtype=torch.int32, device=params[0].device)
        return Plan(params, indices, _pieces(optimizer, variables))

    return blocked.cached_plan(optimizer, "_torch_int8_plans", variables, make)


def _pieces(optimizer: Any, variables: list[Any]) -> list[Piece]:
    pieces, groups = [], {}
    for j, variable in enumerate(variables):
        shape = tuple(variable.shape)
        decayed = optimizer._use_weight_decay(variable)
        length = shape[-1]
        count = variable._value.numel()
        if count <= GATHERED:
            groups.setdefault((length, decayed), []).append((j, count // length))
            continue
        block = int8.block_size(shape)
        for rows, columns, first in _cuts(count // length, length):
            height = rows.stop - rows.start
            pieces.append(Piece([(j, rows, columns)], [height], columns.stop - columns.start,
                                block, first, decayed,
                                _first_of_rows([height], length, first, variable)))
    for (length, decayed), members in groups.items():
        run: list[tuple[int, int]] = []
        for j, rows in [*members, (None, None)]:
            if run and (j is None or (sum(r for _, r in run) + rows) * length > PIECE):
                pieces.append(_gathered(run, length, decayed, variables))
                run = []
            if j is not None:
                run.append((j, rows))
    return pieces


def _gathered(run: list[tuple[int, int]], length: int, decayed: bool,
              variables: list[Any]) -> Piece:
    device = variables[run[0][0]]._value.device
    heights = [rows for _, rows in run]
    return Piece([(j, slice(0, rows), slice(0, length)) for j, rows in run], heights, length,
                 int8.block_size((length,)), 0, decayed,
                 _first_of_rows(heights, length, 0, variables[run[0][0]]),
                 slots=torch.tensor([j for j, _ in run], device=device),
                 counts=torch.tensor(heights, device=device))


def _first_of_rows(heights: list[int], length: int, first: int, variable: Any) -> Any:
    """Each row's flat index of its first element, for members of these
    heights (each counted from its own first row) whose first row starts at `first`."""
    return torch.cat([torch.arange(height, dtype=torch.int32) * length + first
                      for height in heights]).to(variable._value.device)


def _cuts(rows: int, length: int) -> list[tuple[slice, slice, int]]:
    """(rows, columns, flat index of the first element) of each piece of a
    (rows, length) variable: runs of whole rows of at most PIECE elements, or
    a longer row cut at multiples of PIECE (whole int8 blocks)."""
    if length <= PIECE:
        run = PIECE // length
        return [(slice(start, min(start + run, rows)), slice(0, length), start * length)
                for start in range(0, rows, run)]
    return [(slice(row, row + 1), slice(start, min(start + PIECE, length)), row * length + start)
            for row in range(rows) for start in range(0, length, PIECE)]


def _scratch(optimizer: Any, device: Any) -> tuple[dict[str, Any], Any, Any]:
    """Scratch buffers of PIECE elements, the table of code values, and
    0..PIECE-1, made once per device."""
    cache = optimizer.__dict__.setdefault("_torch_int8_scratch", {})
    if device not in cache:
        buffers = {name: torch.empty(PIECE, dtype=dtype, device=device)
                   for name, dtype in (("m", torch.float32), ("c", torch.float32),
                                       ("t", torch.float32), ("p", torch.float32),
                                       ("g", torch.float32), ("k", torch.int32),
                                       ("noise", torch.int32))}
        codes = torch.arange(256, device=device).to(torch.uint8).view(torch.int8).view(1, 256)
        table = int8.decode(codes, torch.ones(1, 1, dtype=torch.float32, device=device))
        cache[device] = (buffers, table.view(-1),
                         torch.arange(PIECE, dtype=torch.int32, device=device))
    return cache[device]
