"""Optimizers users call: a rescaler from ``transforms`` chained with the learning rate."""

from __future__ import annotations

from typing import Any

import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _validate, transforms
from adam_jax._hyperparams import annotate


def _with_learning_rate(
    rescaler: optax.GradientTransformation, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
    """theta_t = theta_{t-1} - alpha_t * rescaled gradient (``learning_rate`` may be a schedule).

    ``learning_rate`` is added to the rescaler's hyperparameter record."""
    _validate.check_learning_rate(learning_rate)
    return optax.chain(
        annotate(rescaler, learning_rate=learning_rate),
        optax.scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    eps_root: ArrayLike = 0.0,
    eps_hat: bool = False,
    bias_correction: bool = True,
    b1_decay: ArrayLike = 1.0,
    amsgrad: bool = False,
    nesterov: bool = False,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    """Adam (Algorithm 1): :func:`adam_jax.scale_by_adam` followed by ``-learning_rate``.

    The keyword options are those of :func:`adam_jax.scale_by_adam`. ``learning_rate`` is a number
    >= 0 or an optax schedule, e.g. :func:`adam_jax.inverse_sqrt_schedule` for the alpha/sqrt(t)
    of Section 4. Explicit keywords (rather than ``**kwargs``) let ``optax.inject_hyperparams``
    see every hyperparameter.
    """
    rescaler = transforms.scale_by_adam(
        b1,
        b2,
        eps,
        eps_root=eps_root,
        eps_hat=eps_hat,
        bias_correction=bias_correction,
        b1_decay=b1_decay,
        amsgrad=amsgrad,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    return _with_learning_rate(rescaler, learning_rate)


def adamax(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 0.0,
    *,
    bias_correction: bool = True,
    b1_decay: ArrayLike = 1.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    """AdaMax (Algorithm 2): :func:`adam_jax.scale_by_adamax` followed by ``-learning_rate``.

    The keyword options are those of :func:`adam_jax.scale_by_adamax`.
    """
    rescaler = transforms.scale_by_adamax(
        b1,
        b2,
        eps,
        bias_correction=bias_correction,
        b1_decay=b1_decay,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    return _with_learning_rate(rescaler, learning_rate)


def adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    weight_decay: ArrayLike = 1e-4,
    *,
    mask: Any = None,
    eps_root: ArrayLike = 0.0,
    eps_hat: bool = False,
    bias_correction: bool = True,
    b1_decay: ArrayLike = 1.0,
    amsgrad: bool = False,
    nesterov: bool = False,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``optax.adamw``::

        theta_t = theta_{t-1} - learning_rate * (m_hat/(sqrt(v_hat) + eps) + weight_decay * theta_{t-1})

    The decay is multiplied by the learning rate (as optax and ``torch.optim.AdamW``) and never
    enters the moments. Built as ``chain(scale_by_adam(...), optax.add_decayed_weights(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``; ``update`` therefore needs ``params``.

    Args:
      weight_decay: the decoupled decay rate (>= 0).
      mask: a pytree of booleans (or a callable returning one) choosing the leaves that decay,
        as in ``optax.add_decayed_weights``; ``None`` decays every leaf.

    The other keyword options are those of :func:`adam_jax.scale_by_adam`.
    """
    _validate.check_nonnegative("weight_decay", weight_decay)
    _validate.check_learning_rate(learning_rate)
    rescaler = transforms.scale_by_adam(
        b1,
        b2,
        eps,
        eps_root=eps_root,
        eps_hat=eps_hat,
        bias_correction=bias_correction,
        b1_decay=b1_decay,
        amsgrad=amsgrad,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    return optax.chain(
        annotate(rescaler, learning_rate=learning_rate, weight_decay=weight_decay),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
