"""PyTorch: an in-place Lion step in cache-sized blocks.

Eager PyTorch makes one pass over memory per operation, and each full-size
temporary is a fresh allocation (page faults). Here the parameters are cut
into blocks of at most `BLOCK` elements (pieces of large tensors, runs of
small ones); each block is updated by a few `torch._foreach_*` calls while it
sits in cache, with views of one small scratch buffer for `c`, so that
memory is read and written about once per step and nothing full-size is
allocated:

    p = p * (1 - lr * weight_decay)           (where decayed)
    c = lerp(m, g, 1 - beta_1)                (= beta_1 * m + (1 - beta_1) * g)
    p = p - lr * sign(c)
    m = lerp(m, g, 1 - beta_2)

A momentum in a narrower dtype (bfloat16) is widened into the scratch buffer
and rounded back once. The cut into blocks is planned once per set of
variables. It covers contiguous float32 and float64 variables, without caution.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._checks import resolve

#: Elements per block: p, m, g and c of a block of 128k float32 elements
#: take 2 MiB, about the L2 cache of one core.
BLOCK = 1 << 17


class Block(NamedTuple):
    decayed: bool
    params: list[Any]
    momentums: list[Any]
    scratch: list[Any]
    grads: list[tuple[int, slice | None]]  # which gradient, and which part of it if cut


class Plan(NamedTuple):
    params: list[Any]  # kept so that their ids, the cache key, stay theirs
    blocks: list[Block]


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return not optimizer.cautious and all(
        v._value.dtype in (torch.float32, torch.float64) and v._value.is_contiguous()
        for v in variables)


@torch.no_grad()
def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
    lr = float(learning_rate)
    beta_1, beta_2 = float(resolve(optimizer.beta_1)), float(resolve(optimizer.beta_2))
    weight_decay = float(optimizer.weight_decay or 0.0)
    plan = _plan(optimizer, variables)
    grads = [g if isinstance(g, torch.Tensor) and g.dtype == p.dtype
             else torch.as_tensor(g).to(p.dtype) for g, p in zip(grads, plan.params)]
    # 1 - beta in the variables' dtype, as the plain path computes it.
    weights = {dtype: [float(1 - torch.tensor(b, dtype=dtype)) for b in (beta_1, beta_2)]
               for dtype in {block.scratch[0].dtype for block in plan.blocks}}
    for block in plan.blocks:
        gs = [grads[i] if part is None else grads[i].reshape(-1)[part]
              for i, part in block.grads]
        _lion(block.params, block.momentums, gs, block.scratch, lr,
              *weights[block.scratch[0].dtype], weight_decay if block.decayed else 0.0)


def _lion(ps: list[Any], ms: list[Any], gs: list[Any], cs: list[Any], lr: float,
          one_minus_beta_1: float, one_minus_beta_2: float, weight_decay: float) -> None:
    torch._foreach_copy_(cs, ms)
    torch._foreach_lerp_(cs, gs, one_minus_beta_1)
    torch._foreach_sign_(cs)
    if weight_decay:
        torch._foreach_add_(cs, ps, alpha=weight_decay)
    torch._foreach_add_(ps, cs, alpha=-lr)
    if ms[0].dtype == cs[0].dtype:
        torch._foreach_lerp_(ms, gs, one_minus_beta_2)
    else:  # Widen, update in the variable's dtype, round back once.
        torch._foreach_copy_(cs, ms)
        torch._foreach_lerp_(cs, gs, one_minus_beta_2)
        torch._foreach_copy_(ms, cs)


def _plan(optimizer: Any, variables: list[Any]) -> Plan:
    """The blocks for a set of variables, made once and cached."""
    key = tuple(id(v._value) for v in variables)
    # Kept outside Keras's attribute tracking: a cache, not optimizer state.
    cache = optimizer.__dict__.setdefault("_torch_plans", {})
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()
        cache[key] = Plan([v._value for v in variables], _blocks(optimizer, variables))
    return cache[key]


def _blocks(optimizer: Any, variables: list[Any]) -> list[Block]:
    """Whole small tensors and BLOCK-sized parts of large ones, in blocks of at
    most BLOCK elements, by dtype, device and weight decay."""
    groups: dict[tuple[Any, ...], list[tuple[int, Any, Any]]] = {}
    for i, v in enumerate(variables):
        p = v._value
        m = optimizer._momentums[optimizer._get_variable_index(v)]._value
        decayed = bool(optimizer._weight_decay_for(v))
        groups.setdefault((p.dtype, m.dtype, p.device, decayed), []).append((i, p, m))
    blocks = []
    for (dtype, _, device, decayed), members in groups.items():
        scratch = torch.empty(min(BLOCK, sum(p.numel() for _, p, _ in members)),
                              dtype=dtype, device=device)
        block, used = Block(decayed, [], [], [], []), 0
        for i, p, m in members:
            parts = [None] if p.numel() <= BLOCK else [
                slice(start, min(start + BLOCK, p.numel())) for start in range(0, p.numel(), BLOCK)]
            for part in parts:
                n = p.numel() if part is None else part.stop - part.start
                if used + n > BLOCK:
                    blocks.append(block)
                    block, used = Block(decayed, [], [], [], []), 0
                block.params.append(p if part is None else p.view(-1)[part])
                block.momentums.append(m if part is None else m.view(-1)[part])
                block.scratch.append(scratch[used:used + n].view(p.shape if part is None else -1))
                block.grads.append((i, part))
                used += n
        if used:
            blocks.append(block)
    return blocks
