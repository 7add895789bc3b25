"""PyTorch: an in-place Lion step, in C or in cache-sized blocks.

Float32 weights on the CPU with a float32 or bfloat16 momentum step in C
(`float_step.c`, see `native.py`): one pass over memory, the plain path's
weights and momenta bit for bit (a NaN as a NaN, of any sign and
payload; where `c` is -0, a zero weight may take the other sign of zero:
`torch.sign` gives +0, `sign_of` keeps -0), 3x faster than the blocks
below (about 0.6 ns per parameter on one thread, `bench/int8_kernel.py`;
the blocks make some ten passes over cache). The blocks step them while
`torch.compile` traces the step, and where the kernel cannot be built or
`KERASLION_NATIVE=0` (within a rounding: `_foreach_add_` with `alpha`
fuses a multiply-add).

Eager PyTorch makes one pass over memory per operation, and each full-size
temporary is a fresh allocation (page faults). Here the parameters are cut
into blocks of at most `BLOCK` elements (pieces of large tensors, runs of
small ones); each block is updated by a few `torch._foreach_*` calls while it
sits in cache, with views of one small scratch buffer for `c`, so that
memory is read and written about once per step and nothing full-size is
allocated. The maths is the paper's, in its order:

    c = beta_1 * m + (1 - beta_1) * g
    p = p - lr * (sign(c) + weight_decay * p)       (weight decay where not excluded)
    m = beta_2 * m + (1 - beta_2) * g

with `1 - beta` computed in float64 before it is rounded. (Dividing `c` by
beta_1 would save a pass, but `(1 - beta_1) / beta_1` overflows float32 for
beta_1 < 3e-39; `lerp` would save one for `m`, but turns an infinite
momentum into NaN.) The learning rate stays a tensor, so that
`torch.compile` does not break its graph to read it.

Variables with an int8 momentum take `torch_int8`'s step.

The scratch buffer has the weights' dtype, which must be the step's compute
dtype: float32 or float64 weights, with a momentum in that dtype, or a
narrower one (bfloat16, or float32 in float64 weights: widened once into a
second scratch buffer, updated there and rounded back once). Other
variables (a float64 momentum of float32 weights, a float16 momentum, which
saturates, weights or state whose data is not contiguous, or was swapped
for another dtype or shape: see `_route`) take the plain `update_step`,
each on its own; caution and `stateless_apply` take
the plain path for all. The cut into blocks is planned once per set of
variables, from what is fixed once the optimizer is built (shapes, dtypes,
exclusion from weight decay); the values of the hyperparameters are read
at every step.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, NamedTuple

import keras
import numpy as np
import torch
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope

from . import native, torch_int8

#: Elements per block: p, m, g and c of a block of 128k float32 elements
#: take 2 MiB, about the L2 cache of one core.
BLOCK = 1 << 17

_SCRATCH_DTYPES = (torch.float32, torch.float64)
#: Momentum dtypes of float32 weights that the C kernel steps.
_C_MOMENTUM_DTYPES = (torch.float32, torch.bfloat16)


class Block(NamedTuple):
    decayed: bool  # not excluded from weight decay
    params: list[Any]
    momentums: list[Any]
    scratch: list[Any]
    grads: list[tuple[int, slice | None]]  # which gradient, and which part of it if cut
    flat: Any = None  # the block's part of the scratch buffer (its views' storage), in one piece
    wide: Any = None  # for a narrower momentum: a second one, for the momentum widened
    wide_views: list[Any] | None = None  # its views, one per momentum


class Plan(NamedTuple):
    params: list[Any]  # kept so that their ids, the cache key, stay theirs
    blocks: list[Block]


def supports(optimizer: Any, variables: list[Any]) -> bool:
    """Caution (a sum over each variable) and `stateless_apply` (whose step
    must not write into the variables) take the plain path; otherwise each
    variable takes its own (`_route`)."""
    return not (optimizer.cautious or in_stateless_scope())


@torch.no_grad()
def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
    groups: dict[str, list[tuple[Any, Any]]] = {
        "int8": [], "int8 widened": [], "c": [], "blocked": [], "plain": []}
    routing = _routing(optimizer, variables)
    grads = unaliased(optimizer, grads, variables, routing)
    for gradient, variable, route in zip(grads, variables, routing.routes):
        groups[route].append((gradient, variable))
    # The C kernel's variables take the blocked step while `torch.compile`
    # traces it (a call through ctypes would break its graph), or without the kernel.
    if groups["c"] and (torch.compiler.is_compiling() or not native.enabled()
                        or native.float_library() is None):
        groups["blocked"] += groups.pop("c")
    if groups["int8"] or groups["int8 widened"]:
        torch_int8.update(optimizer, groups["int8"], groups["int8 widened"], learning_rate,
                          routing.int8_runs)
    if groups.get("c"):
        _update_in_c(optimizer, *map(list, zip(*groups["c"])), learning_rate, routing.c_runs)
    if groups["blocked"]:
        _update_float(optimizer, *map(list, zip(*groups["blocked"])), learning_rate)
    for gradient, variable in groups["plain"]:
        optimizer.update_step(gradient, variable, learning_rate)


class Routing(NamedTuple):
    params: list[Any]  # kept so that their ids, the cache key, stay theirs
    routes: list[str]  # each variable's (`_route`)
    c_runs: list[Any]  # the C kernel's `Runs` for the variables routed to it, once made
    int8_runs: list[Any]  # `torch_int8`'s, for its float32 variables, once made
    # The tensors of these variables' momentums (or int8 states: a Keras
    # variable's tensor is its own for good, its data may be swapped).
    state: list[Any]
    state_layout: tuple[list[Any], ...]  # theirs when the routes were made (`_layout`)
    memory: tuple[Any, Any] | None  # `_memory_ranges` of the weights and the state


_dtype = operator.attrgetter("dtype")
_shape = operator.attrgetter("shape")
_tensor = operator.attrgetter("_value")
_nbytes = operator.attrgetter("nbytes")
data_ptr = torch.Tensor.data_ptr


def _routing(optimizer: Any, variables: list[Any]) -> Routing:
    """Each variable's route, kept for the next steps on the same variables
    (for many small ones, finding them cost as much as their step), with
    the C kernels' plans for those they step (one cache lookup for all).
    Keyed by the weights; made anew where the optimizer's state has data of
    another dtype or shape than it had, or data that is not contiguous (its
    `.data` swapped): the C kernels would misread it, or write past its
    end. (The kernels' other plans hold no state: they are keyed by the
    variables each route gets.)"""
    def make() -> Routing:
        state = [optimizer._momentum(v)._value for v in variables]
        # (Addresses are not traceable: `unaliased`, run eagerly, routes
        # again where `torch.compile` traces.)
        memory = (None if torch.compiler.is_compiling()
                  else _memory_ranges([*map(_tensor, variables), *state]))
        return Routing([v._value for v in variables],
                       [_route(optimizer, variable) for variable in variables], [], [],
                       state, _layout(state), memory)

    if torch.compiler.is_compiling():
        return make()
    routing = cached_plan(optimizer, "_torch_routing", variables, make)
    if not _same_layout(routing.state, routing.state_layout):
        optimizer.__dict__.pop("_torch_routing")
        routing = cached_plan(optimizer, "_torch_routing", variables, make)
    return routing


def _layout(tensors: list[Any]) -> tuple[list[Any], ...]:
    """The tensors' dtypes, shapes and contiguity."""
    return (list(map(_dtype, tensors)), list(map(_shape, tensors)),
            list(map(torch.Tensor.is_contiguous, tensors)))


def _same_layout(tensors: list[Any], layout: tuple[list[Any], ...]) -> bool:
    """Whether the tensors have this `_layout` (C-level maps: about 0.9 ms a
    step for the 4000 tensors of 2000 int8 momentums). Their shapes are
    compared one at a time: a list of thousands of new `torch.Size`s, each
    a tuple that Python's garbage collector tracks, set off its full
    collections (a quarter of a second each) three times as often."""
    dtypes, shapes, contiguous = layout
    return (list(map(_dtype, tensors)) == dtypes
            and list(map(torch.Tensor.is_contiguous, tensors)) == contiguous
            and all(map(operator.eq, map(_shape, tensors), shapes)))


def _route(optimizer: Any, variable: Any) -> str:
    """Which step a variable takes: `torch_int8`'s (an int8 momentum, whose
    step is computed in float32: "int8" for float32 weights, else "int8
    widened"), the C kernel's (float32 weights on the CPU
    with a float32 or bfloat16 momentum), the blocked one (the scratch
    buffer's dtype, see above), or the plain `update_step`. (What decides it
    is fixed once the optimizer is built, or the data of the weights or of
    the optimizer's state swapped.)
    Weights or optimizer state stored in another dtype or shape than their
    variable's, or not contiguous (`module.to(torch.float32)` on a bfloat16
    model, a momentum's data swapped) take the plain step, which computes
    in the variables' dtypes and rounds to them, as Keras's optimizers do;
    but for the narrower data of float32 weights (after
    `module.to(torch.bfloat16)`), which every path steps in float32 and
    rounds once, into that data."""
    index = optimizer._get_variable_index(variable)
    p, m = variable._value, optimizer._momentums[index]._value
    if _weights_stored_otherwise(variable) or _stored_otherwise(optimizer._momentums[index]):
        return "plain"
    if optimizer._int8_state(index) is not None:
        if p.dtype == torch.float64:
            return "plain"
        return "int8" if p.dtype == torch.float32 else "int8 widened"
    if p.dtype == torch.float32 and m.dtype in _C_MOMENTUM_DTYPES and p.device.type == "cpu":
        return "c"
    if (p.dtype in _SCRATCH_DTYPES and m.is_floating_point() and m.dtype != torch.float16
            and p.dtype.itemsize >= m.dtype.itemsize):
        return "blocked"
    return "plain"


def _stored_otherwise(variable: Any, narrower_allowed: bool = False) -> bool:
    """Whether a Keras variable's tensor has another dtype or shape than the
    variable, or is not contiguous; `narrower_allowed`: but for narrower
    float data under a float32 variable."""
    tensor = variable._value
    if tuple(tensor.shape) != tuple(variable.shape) or not tensor.is_contiguous():
        return True
    standardize = keras.backend.standardize_dtype
    narrower = (narrower_allowed and standardize(variable.dtype) == "float32"
                and tensor.dtype.is_floating_point and tensor.dtype.itemsize < 4)
    return standardize(tensor.dtype) != standardize(variable.dtype) and not narrower


def _weights_stored_otherwise(variable: Any) -> bool:
    return _stored_otherwise(variable, narrower_allowed=True)


def dense(grads: list[Any]) -> list[Any]:
    """The gradients, a sparse one made dense: Lion's step is dense (every
    momentum decays), and PyTorch has no sparse kernels for the comparisons
    of caution, `skip_nonfinite` and Keras's gradient accumulation."""
    return [g.to_dense() if isinstance(g, torch.Tensor) and g.layout != torch.strided else g
            for g in grads]


@torch.compiler.disable
def all_finite(optimizer: Any, grads: list[Any], variables: list[Any] | None) -> bool:
    """`optimizer._all_finite`, run eagerly: `torch.compile` computes float16
    and bfloat16 in float32 without their roundings (a cast, a division by
    `loss_scale_factor`), and a value that overflows them is finite there."""
    return bool(optimizer._all_finite(grads, variables))


@torch.compiler.disable
def unaliased(optimizer: Any, grads: list[Any], variables: list[Any],
              routing: Routing | None = None) -> list[Any]:
    """The (dense) gradients as tensors, converted before any weights change
    (Keras's plain path converts each in its variable's turn, and a NumPy
    array, `memoryview` or list of rows may read the weights), and copied
    where one shares memory with the weights or the optimizer state of a
    variable of the step (the variable itself, `v.value`, a view or
    `detach()` of it, the tensor the variable was made from, a momentum):
    every path steps them in place, and reads a gradient again after some
    of them changed (the momentum's update, another variable's step). Run
    eagerly under `torch.compile`: addresses are not traceable. `routing`:
    the variables' (`update` has it)."""
    if routing is None or routing.memory is None:
        routing = _routing(optimizer, variables)
    starts, furthest = routing.memory
    tensors = (grads if all(map(isinstance, grads, itertools.repeat(torch.Tensor)))
               else [_as_tensor(g) for g in grads])
    first, end = _read_memory(tensors)
    # Compared by address, not storage: `torch.from_numpy()` of a slice of
    # the weights' array makes a new storage in the middle of theirs. Shared
    # where a tensor that starts before the gradient's memory ends reaches
    # past its start (for 2000 gradients, NumPy takes a fifth of the time of
    # a bisection each).
    before_end = np.searchsorted(starts, end)
    shared = (first < end) & (before_end > 0) & (furthest[before_end - 1] > first)
    if shared.any():
        tensors = [g.clone() if copy else g for g, copy in zip(tensors, shared)]
    return tensors


def _memory_ranges(tensors: list[Any]) -> tuple[Any, Any]:
    """The start of each tensor's storage, in order, and the furthest end
    among the storages starting at or before each (variables made from views
    of one tensor overlap each other), as int64 arrays. Kept with the
    routing: a variable's memory stays its own (Keras assigns into it), but
    for its data swapped, which the routing's key sees for the weights, and
    its layout check for the state only where the layout changed (state
    swapped for data of its layout elsewhere keeps its old range here)."""
    ranges = sorted(map(_memory, tensors))
    return (np.array([start for start, _ in ranges], np.int64),
            np.array(list(itertools.accumulate((end for _, end in ranges), max)), np.int64))


def _as_tensor(gradient: Any) -> Any:
    if isinstance(gradient, keras.Variable):
        return gradient.value
    # Keras's conversion (a copy, on Keras's device) also reads NumPy
    # bfloat16 (ml_dtypes), which torch.as_tensor refuses.
    return gradient if isinstance(gradient, torch.Tensor) else ops.convert_to_tensor(gradient)


def _memory(tensor: Any) -> tuple[int, int]:
    """The addresses [start, end) of the memory that holds `tensor`'s storage."""
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _read_memory(tensors: list[Any]) -> tuple[Any, Any]:
    """The addresses [first, end) of the memory each tensor reads, as int64
    arrays: its elements' for a contiguous one, else its storage's."""
    count = len(tensors)
    first = np.fromiter(map(data_ptr, tensors), np.int64, count)
    end = first + np.fromiter(map(_nbytes, tensors), np.int64, count)
    if not all(map(torch.Tensor.is_contiguous, tensors)):
        for i, tensor in enumerate(tensors):
            if not tensor.is_contiguous():
                first[i], end[i] = _memory(tensor)
    return first, end


class Runs(NamedTuple):
    """The kernel's work on a set of variables, by thread count."""

    params: list[Any]  # their weights
    momentums: list[Any]  # their momentums' tensors (whose data may be swapped)
    narrow: Any  # whether each momentum is bfloat16 (int32)
    decayed: Any  # whether each variable is not excluded from weight decay (int32)
    elements: int  # in all
    # By thread count: each thread's run, as (variables, first elements, ends).
    runs: dict[int, list[tuple[Any, Any, Any]]]


@torch.compiler.disable  # (Not reached while compiling: see `update`.)
def _update_in_c(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any,
                 kept: list[Any]) -> None:
    """The step of float32 variables in C (`float_step.c`), in place, a
    thread stepping runs of their elements (one call for many small
    variables); their `Runs`, made once, are kept in `kept`."""
    *factors, weight_decay = (None if x is None else float(x)
                              for x in optimizer._coefficients("float32", learning_rate))
    if not kept:
        indices = [optimizer._get_variable_index(v) for v in variables]
        flags = [[optimizer._momentums[i].dtype == "bfloat16" for i in indices],
                 [optimizer._use_weight_decay(v) for v in variables]]
        kept.append(Runs([v._value for v in variables],
                         [optimizer._momentums[i]._value for i in indices],
                         *(torch.tensor(x, dtype=torch.int32) for x in flags),
                         sum(v._value.numel() for v in variables), {}))
    plan = kept[0]
    grads = contiguous_float32(grads)
    # Addresses read at every step: a tensor's data may be swapped (its
    # dtype then routes it anew). NumPy makes the array in a third of
    # `torch.tensor`'s time (0.3 ms a step for 2000 variables).
    pointers = np.array([list(map(data_ptr, tensors))
                         for tensors in (plan.params, grads, plan.momentums)], np.int64)
    decayed = plan.decayed if weight_decay is not None else torch.zeros_like(plan.decayed)
    kernel = native.float_library()

    def call(owners: Any, begins: Any, ends: Any) -> Any:
        return lambda: kernel.keraslion_float_steps(
            owners.numel(), owners.data_ptr(), begins.data_ptr(), ends.data_ptr(),
            *(row.ctypes.data for row in pointers), plan.narrow.data_ptr(), decayed.data_ptr(),
            *factors, weight_decay or 0.0)

    in_threads(kernel, call, plan.runs, plan.elements,
               lambda: [(p.numel(),) * 2 for p in plan.params])


def contiguous_float32(grads: list[Any]) -> list[Any]:
    """The gradients as a C kernel reads them: contiguous float32 tensors."""
    return [g if g.dtype == torch.float32 and g.is_contiguous()
            else g.to(torch.float32).contiguous() for g in grads]


def in_threads(kernel: Any, call: Any, runs: dict[int, Any], elements: int, sizes: Any) -> None:
    """`call(variables, first units, ends)()` for each thread's run of
    variables of `sizes()` (`split`, kept in `runs` by thread count), all of
    them into `kernel` (`native.all_of`)."""
    threads = native.threads_for(elements)
    if threads not in runs:
        runs[threads] = split(sizes(), threads)
    native.all_of([call(*run) for run in runs[threads]], kernel)


def split(sizes: list[tuple[int, int]], threads: int) -> list[tuple[Any, Any, Any]]:
    """Variables of (elements, units) in `threads` runs of about as many
    elements, a variable cut between two runs at a unit (a C kernel's
    element, or int8 block), as (variables, first units, ends)."""
    share = -(-sum(elements for elements, _ in sizes) // threads)
    runs: list[list[tuple[int, int, int]]] = [[]]
    room = share
    for j, (elements, units) in enumerate(sizes):
        begin = 0
        while begin < units:
            if room <= 0 and len(runs) < threads:
                runs.append([])
                room = share
            # The units that fill the run (at least one); the last run takes the rest.
            fill = -(-room * units // elements)
            end = units if len(runs) == threads else min(units, begin + max(1, fill))
            runs[-1].append((j, begin, end))
            room -= (end - begin) * elements // units
            begin = end
    return [tuple(torch.tensor(column, dtype=torch.int64) for column in zip(*run))
            for run in runs if run]


def _update_float(optimizer: Any, grads: list[Any], variables: list[Any],
                  learning_rate: Any) -> None:
    live = optimizer._hyperparameters()
    beta_1, beta_2 = float(live.beta_1), float(live.beta_2)
    one_minus_beta_1 = 1 - beta_1
    decay = None if live.weight_decay is None else float(live.weight_decay)
    plan = _plan(optimizer, variables)
    grads = [g if g.dtype == p.dtype else g.to(p.dtype) for g, p in zip(grads, plan.params)]
    # Per dtype, as the plain path computes them: the learning rate cast (a
    # tensor, not read into Python), beta_1 and beta_2. (A tensor factor
    # makes `_foreach_mul_` about 3x faster per tensor on CPU than a float.)
    scalars: dict[Any, tuple[Any, Any, Any]] = {}
    for block in plan.blocks:
        dtype = block.scratch[0].dtype
        if dtype not in scalars:
            device = block.scratch[0].device
            scalars[dtype] = (ops.cast(learning_rate, keras.backend.standardize_dtype(dtype)),
                              torch.tensor(beta_1, dtype=dtype, device=device),
                              torch.tensor(beta_2, dtype=dtype, device=device))
        gs = [grads[i] if part is None else grads[i].reshape(-1)[part]
              for i, part in block.grads]
        weight_decay = decay if block.decayed else None
        lr, beta_1_tensor, beta_2_tensor = scalars[dtype]
        step = _lion if block.wide is None else _lion_eagerly
        step(block, gs, lr, beta_1_tensor, one_minus_beta_1, beta_2_tensor, 1 - beta_2,
              weight_decay)


def _lion(block: Block, gs: list[Any], lr: Any, beta_1: Any, one_minus_beta_1: float,
          beta_2: Any, one_minus_beta_2: float, weight_decay: float | None) -> None:
    ps, ms, cs, c = block.params, block.momentums, block.scratch, block.flat
    if block.wide is None:
        torch._foreach_copy_(cs, ms)
        c.mul_(beta_1)
    else:  # A narrower momentum, widened once for c and for its own update.
        torch._foreach_copy_(block.wide_views, ms)
        torch.mul(block.wide, beta_1, out=c)
    torch._foreach_add_(cs, gs, alpha=one_minus_beta_1)
    sign_(c)
    if weight_decay is not None:
        torch._foreach_add_(cs, ps, alpha=weight_decay)
    torch._foreach_addcmul_(ps, cs, [lr] * len(ps), value=-1)
    if block.wide is None:
        torch._foreach_mul_(ms, beta_2)
        torch._foreach_add_(ms, gs, alpha=one_minus_beta_2)
    else:  # Updated in the weights' dtype, rounded back once.
        block.wide.mul_(beta_2)
        torch._foreach_add_(block.wide_views, gs, alpha=one_minus_beta_2)
        torch._foreach_copy_(ms, block.wide_views)


# A block with a widened momentum runs eagerly under torch.compile: compiled
# again for another set of variables (a layer frozen in `fit(jit_compile=True)`),
# the aliased views of its two scratch buffers broke Inductor's code
# (PyTorch 2.13: "name 's73' is not defined").
_lion_eagerly = torch.compiler.disable(_lion)


#: Powers of two whose product scales the smallest subnormal of a dtype to 1.
_TO_ONE = {torch.float32: (2.0**127, 2.0**22), torch.float64: (2.0**1023, 2.0**51)}


def sign_(c: Any) -> None:
    """sign(c), in place, as clamp(c * 2**149, -1, 1) (float64: 2**1074).

    Exact for every value (the smallest subnormal scales to 1, larger values
    beyond; infinities stay infinite), NaN where c is NaN (torch.sign gives 0
    there, unlike NumPy, JAX and TensorFlow), and one pass over the block's
    contiguous scratch instead of a kernel per tensor.
    """
    first, second = _TO_ONE[c.dtype]
    c.mul_(first).mul_(second).clamp_(-1.0, 1.0)


@torch.compiler.disable
def _plan(optimizer: Any, variables: list[Any]) -> Plan:
    """The blocks for a set of variables, made once and cached. Made eagerly
    under `torch.compile`: traced, the views of the scratch buffers took
    symbolic sizes that a recompilation (another set of variables) could
    no longer resolve."""
    # Its blocks hold views of the momentums too: a momentum's data swapped
    # makes another plan.
    momentums = [optimizer._momentum(v)._value for v in variables]
    return cached_plan(optimizer, "_torch_plans", variables,
                       lambda: Plan([v._value for v in variables], _blocks(optimizer, variables)),
                       also=momentums)


def cached_plan(optimizer: Any, name: str, variables: list[Any], make: Any,
                also: list[Any] = ()) -> Any:
    """`make()` for a set of variables, kept in the optimizer's cache `name`
    (at most 4 sets; the plan holds the variables, so that their ids stay
    theirs). Keyed by each one's weights (and the tensors `also`): the
    tensor, and its memory, dtype and layout, which PyTorch changes in place
    when it swaps a parameter's data (`module.to(torch.bfloat16)`,
    `module.to(memory_format=...)`): a plan, and the pointers a C kernel
    writes through, never outlive them."""
    # (Keras variables made from one `torch.nn.Parameter` share a tensor.)
    tensors = [*map(_tensor, variables), *also]
    # (Shapes by their hashes: a key of `torch.Size`s, tuples that the
    # garbage collector tracks, set off its full collections more often.)
    key = (*map(id, variables), *map(id, tensors), *map(data_ptr, tensors),
           *map(_dtype, tensors), *map(hash, map(_shape, tensors)),
           *map(torch.Tensor.is_contiguous, tensors))
    # Kept outside Keras's attribute tracking: a cache, not optimizer state.
    cache = optimizer.__dict__.setdefault(name, {})
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()
        cache[key] = make()
    return cache[key]


def _blocks(optimizer: Any, variables: list[Any]) -> list[Block]:
    """Whole small tensors and BLOCK-sized parts of large ones, in blocks of at
    most BLOCK elements, by dtype, device and exclusion from weight decay."""
    groups: dict[tuple[Any, ...], list[tuple[int, Any, Any]]] = {}
    for i, v in enumerate(variables):
        p = v._value
        m = optimizer._momentums[optimizer._get_variable_index(v)]._value
        decayed = optimizer._use_weight_decay(v)
        groups.setdefault((p.dtype, m.dtype, p.device, decayed), []).append((i, p, m))
    blocks = []
    for (dtype, momentum_dtype, device, decayed), members in groups.items():
        scratch = torch.empty(min(BLOCK, sum(p.numel() for _, p, _ in members)),
                              dtype=dtype, device=device)
        wide = None if momentum_dtype == dtype else torch.empty_like(scratch)

        block, used = Block(decayed, [], [], [], []), 0
        for i, p, m in members:
            parts = [None] if p.numel() <= BLOCK else [
                slice(start, min(start + BLOCK, p.numel())) for start in range(0, p.numel(), BLOCK)]
            for part in parts:
                n = p.numel() if part is None else part.stop - part.start
                if used + n > BLOCK:
                    blocks.append(_closed(block, used, scratch, wide))
                    block, used = Block(decayed, [], [], [], []), 0
                block.params.append(p if part is None else p.view(-1)[part])
                block.momentums.append(m if part is None else m.view(-1)[part])
                block.scratch.append(scratch[used:used + n].view(p.shape if part is None else -1))
                block.grads.append((i, part))
                used += n
        if used:
            blocks.append(_closed(block, used, scratch, wide))
    return blocks


def _closed(block: Block, used: int, scratch: Any, wide: Any) -> Block:
    """A full block, with its parts of the scratch buffers."""
    if wide is None:
        return block._replace(flat=scratch[:used])
    return block._replace(flat=scratch[:used], wide=wide[:used], wide_views=[
        wide.as_strided(c.shape, c.stride(), c.storage_offset()) for c in block.scratch])
