"""The optimizers Section 6 compares Adam with, each as its own source writes it.

Adam and AdaMax are ``adam_jax.adam`` and ``adam_jax.adamax``. The baselines are optax pieces
where optax has the rule, and a transformation of this module where it has not:

- **AdaGrad** (Duchi, Hazan & Singer 2011, diagonal form, their δ outside the root):
  ``G_t = G_{t-1} + g_t²`` from ``G_0 = 0``, ``θ_t = θ_{t-1} - α·g_t / (δ + √G_t)``.
  ``optax.adagrad`` starts ``G_0`` at 0.1 and puts its ε inside the root; an accumulator of 0.1
  is far above what a network's squared gradients sum to in the paper's runs (about 6e-6 per
  parameter after an epoch of the CNN), so it would make "AdaGrad" plain SGD at about 3α.
  :func:`scale_by_adagrad` is Duchi's rule; δ = 1e-10 is PyTorch's default
  (``torch.optim.Adagrad``, which writes the same rule with ``initial_accumulator_value=0``).
- **RMSProp** (Tieleman & Hinton 2012, lecture 6e, which gives no ε): ``v_t = ρ·v_{t-1} +
  (1-ρ)·g_t²`` from ``v_0 = 0``, ``θ_t = θ_{t-1} - α·g_t / (√v_t + ε)``, ρ = 0.9 (the lecture's),
  ε = 1e-8 outside the root as PyTorch (``torch.optim.RMSprop``) and Keras write it:
  ``optax.rmsprop(α, decay=0.9, eps=1e-8, eps_in_sqrt=False)``. optax's default puts ε inside,
  ``g / √(v + ε)``: kept as a second reading, ``rmsprop_eps_in_sqrt``, never the one a verdict uses.
- **SGD with Nesterov momentum** (Sutskever et al. 2013, in the form PyTorch and optax use):
  ``b_t = μ·b_{t-1} + g_t``, ``θ_t = θ_{t-1} - α·(g_t + μ·b_t)``, μ = 0.9:
  ``optax.sgd(α, momentum=0.9, nesterov=True)``.
- **AdaDelta** (Zeiler 2012, Algorithm 1, with his MNIST settings ρ = 0.95, ε = 1e-6):
  ``E[g²]_t = ρ·E[g²]_{t-1} + (1-ρ)·g_t²``, ``Δ_t = -√(E[Δ²]_{t-1} + ε) / √(E[g²]_t + ε) · g_t``,
  ``E[Δ²]_t = ρ·E[Δ²]_{t-1} + (1-ρ)·Δ_t²``, ``θ_t = θ_{t-1} + α·Δ_t`` (Zeiler has α = 1; the grid
  searches it as for the others): ``optax.adadelta(α, rho=0.95, eps=1e-6)``.

Learning rates may be optax schedules (α/√t in Section 6.1). ``results/RULES.md`` repeats these
rules with the rest of the experiment's rules.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ADAGRAD_DELTA = 1e-10  # Duchi et al.'s δ, PyTorch's default eps
RMSPROP_DECAY = 0.9  # Tieleman & Hinton's ρ
RMSPROP_EPS = 1e-8  # PyTorch's eps, outside the root
NESTEROV_MOMENTUM = 0.9
ADADELTA_RHO, ADADELTA_EPS = 0.95, 1e-6  # Zeiler's MNIST settings


class ScaleByAdagradState(NamedTuple):
    """``sum_of_squares``: G_t, the sum of every squared gradient so far."""

    sum_of_squares: optax.Updates


def scale_by_adagrad(delta: float = ADAGRAD_DELTA) -> optax.GradientTransformation:
    """Duchi et al.'s diagonal AdaGrad rescaling, ``g_t / (δ + √G_t)`` with ``G_0 = 0``."""
    if not delta >= 0.0:
        raise ValueError(f"delta must be >= 0, got {delta!r}")

    def init_fn(params):
        return ScaleByAdagradState(optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        # Duchi et al.: G_t = G_{t-1} + g_t * g_t (the diagonal of the outer products' sum)
        g2 = jax.tree.map(lambda g, s: s + jnp.square(g), updates, state.sum_of_squares)
        # Duchi et al.: step direction g_t / (delta + sqrt(G_t)), delta outside the root
        updates = jax.tree.map(lambda g, s: g / (delta + jnp.sqrt(s)), updates, g2)
        return updates, ScaleByAdagradState(g2)

    return optax.GradientTransformation(init_fn, update_fn)


def adagrad(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """AdaGrad as Duchi et al. write it (see :func:`scale_by_adagrad`)."""
    return optax.chain(scale_by_adagrad(), optax.scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """RMSProp with ε outside the root, as PyTorch and Keras write it."""
    return optax.rmsprop(learning_rate, decay=RMSPROP_DECAY, eps=RMSPROP_EPS, eps_in_sqrt=False)


def rmsprop_eps_in_sqrt(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """optax's default RMSProp, ``g / √(v + ε)``: the second reading, shown beside the first."""
    return optax.rmsprop(learning_rate, decay=RMSPROP_DECAY, eps=RMSPROP_EPS, eps_in_sqrt=True)


def sgd_nesterov(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """SGD with Nesterov momentum 0.9 (Sutskever et al. 2013, PyTorch's and optax's form)."""
    return optax.sgd(learning_rate, momentum=NESTEROV_MOMENTUM, nesterov=True)


def adadelta(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """AdaDelta with Zeiler's ρ = 0.95 and ε = 1e-6, scaled by the searched α."""
    return optax.adadelta(learning_rate, rho=ADADELTA_RHO, eps=ADADELTA_EPS)
