"""From AdamW's hyperparameters to Lion's."""

from __future__ import annotations

from . import _checks


def lion_hparams_from_adamw(
    learning_rate: float, weight_decay: float, factor: float = 3.0
) -> dict[str, float]:
    """Lion's learning rate and weight decay from AdamW settings.

    Lion moves every element by the full learning rate, so its update has a
    larger norm than AdamW's. The authors find a learning rate 3-10x smaller
    than AdamW's works, with a weight decay 3-10x larger so that the decay
    strength `learning_rate * weight_decay` stays the same. The default
    `factor = 3` is the low end of that range, which independent
    replications found the better start; move towards 10 if training is
    unstable. Keep AdamW's learning-rate schedule, warm-up and gradient
    clipping; for large models or unstable runs the authors suggest
    `beta_1 = 0.95, beta_2 = 0.98`. Lion's advantage grows with the batch
    size; at small batches AdamW is often as good.

    Args:
        learning_rate: AdamW's learning rate, a number > 0.
        weight_decay: AdamW's (decoupled) weight decay, a number >= 0.
        factor: A number >= 1: the learning rate is divided by it and the
            weight decay multiplied by it.

    Returns:
        A dict with `learning_rate` and `weight_decay`, ready for
        `Lion(**...)`.

    References:
        - [Chen et al., 2023](https://arxiv.org/abs/2302.06675), Section 5.
    """
    learning_rate = _checks.number_in("learning_rate", learning_rate, 0.0, low_closed=False)
    weight_decay = _checks.number_in("weight_decay", weight_decay, 0.0)
    factor = _checks.number_in("factor", factor, 1.0)
    lion = {"learning_rate": learning_rate / factor, "weight_decay": weight_decay * factor}
    for name, value in lion.items():
        # Values Lion takes: in float32, where Keras keeps them.
        try:
            _checks.number_in(name, value, 0.0, low_closed=name == "weight_decay", float32=True)
        except ValueError as error:
            raise ValueError(
                f"With factor={factor:g}, Lion's `{name}` would be {value:g}, which Lion "
                f"refuses: {error}") from None
    return lion
