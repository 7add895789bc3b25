"""PyTorch: multi-tensor (`torch._foreach_*`) in-place Lion step.

One call per operation for all variables instead of one per variable, and
one temporary (for `c`) instead of Keras's three. Weight decay is applied
as a multiplication by `1 - lr * weight_decay` before the signed step.
It covers float32 and float64 variables with momentum in their own dtype,
without caution.
"""

from __future__ import annotations

from typing import Any

import torch


def supports(optimizer: Any, variables: list[Any]) -> bool:
    return (
        not optimizer.cautious
        and optimizer.momentum_dtype is None
        and all(v.dtype in ("float32", "float64") for v in variables)
    )


@torch.no_grad()
def update(optimizer: Any, grads: list[Any], variables: list[Any], learning_rate: Any) -> None:
    steps = [optimizer.step_inputs(g, v, learning_rate) for g, v in zip(grads, variables)]
    params = [v.value for v in variables]
    momentums = [step.momentum.value for step in steps]
    grads = [step.g for step in steps]
    lr = float(learning_rate)
    beta_1, beta_2 = float(steps[0].beta_1), float(steps[0].beta_2)

    decayed = [p for p, step in zip(params, steps) if step.weight_decay]
    if decayed:
        torch._foreach_mul_(decayed, 1 - lr * optimizer.weight_decay)
    c = torch._foreach_lerp(momentums, grads, 1 - beta_1)
    torch._foreach_sign_(c)
    torch._foreach_add_(params, c, alpha=-lr)
    torch._foreach_lerp_(momentums, grads, 1 - beta_2)
