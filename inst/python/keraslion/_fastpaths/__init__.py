"""Backend fast paths for the Lion step, each parity-tested against `Lion.update_step`.

A fast path is a module with `supports(optimizer, variables) -> bool` and
`update(optimizer, grads, variables, learning_rate) -> None`. Where it does not
support an optimizer's settings, the plain per-variable `update_step` runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

_MODULES = {"jax": "xla", "tensorflow": "tensorflow", "torch": "torch"}


def forget(optimizer: Any) -> None:
    """Drops the fast paths' caches, kept in the optimizer's `__dict__` under
    names that begin `_torch_` or `_tf_`: they hold its state's variables or
    tensors, which a new `build()` replaces."""
    for name in [name for name in vars(optimizer) if name.startswith(("_torch_", "_tf_"))]:
        del optimizer.__dict__[name]


def for_backend(backend: str) -> ModuleType | None:
    """The fast path module for a Keras backend, or None if it has none."""
    module = _MODULES.get(backend)
    return importlib.import_module(f".{module}", __name__) if module else None
