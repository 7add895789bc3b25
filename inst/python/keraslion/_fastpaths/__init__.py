"""Backend fast paths for the Lion step, each parity-tested against `Lion.update_step`.

A fast path is a module with `supports(optimizer, variables) -> bool` and
`update(optimizer, grads, variables, learning_rate) -> None`. Where it does not
support an optimizer's settings, the plain per-variable `update_step` runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {"jax": "xla", "tensorflow": "tensorflow", "torch": "torch"}


def for_backend(backend: str) -> ModuleType | None:
    """The fast path module for a Keras backend, or None if it has none."""
    module = _MODULES.get(backend)
    return importlib.import_module(f".{module}", __name__) if module else None
