"""keraslion: the Lion optimizer (Chen et al., 2023) for Keras 3."""

from . import _loss_scale
from ._fastpaths.native import KernelWarning
from ._restore import StateWarning
from .hparams import lion_hparams_from_adamw
from .lion import Lion

_loss_scale.install()

__all__ = ["KernelWarning", "Lion", "StateWarning", "lion_hparams_from_adamw"]
__version__ = "0.3.0"
