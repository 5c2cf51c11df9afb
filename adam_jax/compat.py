"""Presets that reproduce PyTorch's and Keras's Adam, AdamW and AdaMax step for step.

Each preset takes the framework's own argument names and defaults and is built by composing
:func:`adam_jax.scale_by_adam` / :func:`adam_jax.scale_by_adamax` with optax transformations. The
conventions they encode (every one checked against the installed sources)::

    convention                     PyTorch                               Keras
    eps placement (Adam)           m_hat/(sqrt(v_hat) + eps)             alpha_t m/(sqrt(v) + eps_hat)
    eps default                    1e-8                                  1e-7
    weight decay (Adam)            L2: g += wd*theta (before moments)    theta -= lr*wd*theta
    weight decay (AdamW)           theta -= lr*wd*theta                  theta -= lr*wd*theta
    AMSGrad maximum                max_s v_s, then / (1 - b2^t)          max_s v_s (eps_hat form)
    AdaMax eps                     u = max(b2 u, |g| + eps), m_hat/u     m_hat/(u + eps)
    AdaMax lr default              2e-3                                  1e-3

Two PyTorch conventions cannot be composed from the paper's rules (the AMSGrad maximum of the raw
``v_t``, AdaMax's eps inside the max); they are switches of the core transformations,
``scale_by_adam(raw_amsgrad_max=True)`` and ``scale_by_adamax(eps_in_max=True)``.
Each preset records its hyperparameters (under the paper's names: ``learning_rate``, ``b1``,
``b2``, ``eps``, plus its own switches) in the state, for :func:`adam_jax.monitor` and checkpoints.

``alpha_t = lr*sqrt(1-b2^t)/(1-b1^t)`` is the efficient form of the end of Section 2 (Keras calls
``eps_hat`` "epsilon"). Decoupled decay uses the parameters *before* the step, as both frameworks.
Every preset accepts an optax schedule for the learning rate; the step count starts at 0 on the
first update, as PyTorch's LR schedulers and Keras's ``iterations``.
"""

from __future__ import annotations

from typing import Any

import optax
from jax.typing import ArrayLike

from adam_jax import _validate, transforms
from adam_jax._hyperparams import annotate

__all__ = [
    "keras_adam",
    "keras_adamax",
    "keras_adamw",
    "torch_adam",
    "torch_adamax",
    "torch_adamw",
]


def _is_zero(value: Any) -> bool:
    return value is None or (_validate.is_concrete_number(value) and float(value) == 0.0)


def _decay(weight_decay: ArrayLike | None, mask: Any) -> list[optax.GradientTransformation]:
    """``[add_decayed_weights(weight_decay, mask)]``, or ``[]`` when there is no decay."""
    if _is_zero(weight_decay):
        return []
    return [optax.add_decayed_weights(weight_decay, mask)]


def _check_common(
    lr: optax.ScalarOrSchedule, b1: Any, b2: Any, eps: Any, wd: Any, names: tuple[str, ...]
) -> None:
    """Validate with the framework's argument names (``names``: lr, b1, b2, eps, weight_decay)."""
    if not callable(lr):
        _validate.check_interval(names[0], lr, 0.0)
    _validate.check_decay(names[1], b1)
    _validate.check_decay(names[2], b2)
    _validate.check_nonnegative(names[3], eps)
    if wd is not None:
        _validate.check_nonnegative(names[4], wd)


_TORCH_NAMES = ("lr", "betas[0]", "betas[1]", "eps", "weight_decay")
_KERAS_NAMES = ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay")


def _betas(betas: tuple[ArrayLike, ArrayLike]) -> tuple[ArrayLike, ArrayLike]:
    """PyTorch's ``betas``, checked as a pair of decay rates, unpacked."""
    _validate.check_decay_pair("betas", betas)
    return betas[0], betas[1]


def torch_adam(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
    eps: ArrayLike = 1e-8,
    weight_decay: ArrayLike = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    mask: Any = None,
) -> optax.GradientTransformation:
    """``torch.optim.Adam`` (PyTorch 2.x), same arguments and defaults::

        g_t = -g_t if maximize;  g_t += weight_decay * theta_{t-1}   (L2, unless decoupled)
        m_t, v_t as Algorithm 1;  update = m_hat / (sqrt(v_hat) + eps)
        AMSGrad: v_hat replaced by max_{s<=t} v_s / (1 - b2^t)
        theta_t = theta_{t-1} - lr * (update + weight_decay * theta_{t-1} if decoupled)

    ``mask`` (not a PyTorch argument) selects the leaves that decay, like a parameter group with
    ``weight_decay=0`` for the others.
    """
    b1, b2 = _betas(betas)
    _check_common(lr, b1, b2, eps, weight_decay, _TORCH_NAMES)
    for name, flag in [
        ("amsgrad", amsgrad),
        ("maximize", maximize),
        ("decoupled_weight_decay", decoupled_weight_decay),
    ]:
        _validate.check_flag(name, flag)
    decay = _decay(weight_decay, mask)
    rescaler = transforms.scale_by_adam(
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=0.0,
        eps_hat=False,
        bias_correction=True,
        b1_decay=1.0,
        amsgrad=amsgrad,
        nesterov=False,
        mu_dtype=None,
        nu_dtype=None,
        raw_amsgrad_max=True,  # PyTorch: max_{s<=t} v_s / (1 - b2^t)
    )
    record = dict(
        learning_rate=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    return optax.chain(
        *([optax.scale(-1.0)] if maximize else []),
        *([] if decoupled_weight_decay else decay),
        annotate(rescaler, **record),
        *(decay if decoupled_weight_decay else []),
        optax.scale_by_learning_rate(lr),
    )


def torch_adamw(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
    eps: ArrayLike = 1e-8,
    weight_decay: ArrayLike = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    mask: Any = None,
) -> optax.GradientTransformation:
    """``torch.optim.AdamW``: :func:`torch_adam` with ``decoupled_weight_decay=True``.

    The update::

        theta_t = theta_{t-1} - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * theta_{t-1})
    """
    return torch_adam(
        lr,
        betas,
        eps,
        weight_decay,
        amsgrad,
        maximize=maximize,
        decoupled_weight_decay=True,
        mask=mask,
    )


def torch_adamax(
    lr: optax.ScalarOrSchedule = 2e-3,
    betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
    eps: ArrayLike = 1e-8,
    weight_decay: ArrayLike = 0.0,
    *,
    maximize: bool = False,
    mask: Any = None,
) -> optax.GradientTransformation:
    """``torch.optim.Adamax``.

    The update::

        g_t = -g_t if maximize;  g_t += weight_decay * theta_{t-1}   (L2)
        m_t = b1 m_{t-1} + (1 - b1) g_t;   u_t = max(b2 u_{t-1}, |g_t| + eps)
        theta_t = theta_{t-1} - lr / (1 - b1^t) * m_t / u_t
    """
    b1, b2 = _betas(betas)
    _check_common(lr, b1, b2, eps, weight_decay, _TORCH_NAMES)
    _validate.check_flag("maximize", maximize)
    rescaler = transforms.scale_by_adamax(
        b1=b1,
        b2=b2,
        eps=eps,
        bias_correction=True,
        b1_decay=1.0,
        mu_dtype=None,
        nu_dtype=None,
        eps_in_max=True,  # PyTorch: u_t = max(b2 u, |g| + eps), step m_hat / u_t
    )
    record = dict(learning_rate=lr, weight_decay=weight_decay, maximize=maximize)
    return optax.chain(
        *([optax.scale(-1.0)] if maximize else []),
        *_decay(weight_decay, mask),
        annotate(rescaler, **record),
        optax.scale_by_learning_rate(lr),
    )


def keras_adam(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    beta_1: ArrayLike = 0.9,
    beta_2: ArrayLike = 0.999,
    epsilon: ArrayLike = 1e-7,
    amsgrad: bool = False,
    weight_decay: ArrayLike | None = None,
    *,
    mask: Any = None,
) -> optax.GradientTransformation:
    """``keras.optimizers.Adam`` (Keras 3), the efficient form of Section 2::

        theta_{t-1} -= learning_rate * weight_decay * theta_{t-1}    (if weight_decay)
        alpha_t = learning_rate * sqrt(1 - b2^t) / (1 - b1^t)
        theta_t = theta_{t-1} - alpha_t * m_t / (sqrt(v_t) + epsilon)
        AMSGrad: v_t replaced by max_{s<=t} v_s

    ``mask`` plays the role of ``exclude_from_weight_decay`` (True: the leaf decays).
    """
    _check_common(learning_rate, beta_1, beta_2, epsilon, weight_decay, _KERAS_NAMES)
    _validate.check_flag("amsgrad", amsgrad)
    rescaler = transforms.scale_by_adam(beta_1, beta_2, epsilon, eps_hat=True, amsgrad=amsgrad)
    record = dict(learning_rate=learning_rate, weight_decay=weight_decay)
    return optax.chain(
        annotate(rescaler, **record),
        *_decay(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def keras_adamw(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    weight_decay: ArrayLike = 0.004,
    beta_1: ArrayLike = 0.9,
    beta_2: ArrayLike = 0.999,
    epsilon: ArrayLike = 1e-7,
    amsgrad: bool = False,
    *,
    mask: Any = None,
) -> optax.GradientTransformation:
    """``keras.optimizers.AdamW``: :func:`keras_adam` with a required ``weight_decay`` (0.004)."""
    if weight_decay is None:
        raise ValueError("weight_decay=None: keras_adamw needs a number (Keras default 0.004).")
    return keras_adam(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, mask=mask)


def keras_adamax(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    beta_1: ArrayLike = 0.9,
    beta_2: ArrayLike = 0.999,
    epsilon: ArrayLike = 1e-7,
    weight_decay: ArrayLike | None = None,
    *,
    mask: Any = None,
) -> optax.GradientTransformation:
    """``keras.optimizers.Adamax``.

    The update::

        theta_{t-1} -= learning_rate * weight_decay * theta_{t-1}    (if weight_decay)
        u_t = max(b2 u_{t-1}, |g_t|)
        theta_t = theta_{t-1} - learning_rate / (1 - b1^t) * m_t / (u_t + epsilon)
    """
    _check_common(learning_rate, beta_1, beta_2, epsilon, weight_decay, _KERAS_NAMES)
    rescaler = transforms.scale_by_adamax(beta_1, beta_2, epsilon)
    record = dict(learning_rate=learning_rate, weight_decay=weight_decay)
    return optax.chain(
        annotate(rescaler, **record),
        *_decay(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
