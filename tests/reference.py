"""Independent NumPy float64 reference of Algorithms 1 and 2, written from the paper.

Plain loops over steps with explicit state; no JAX, no code shared with the package. Each function
returns the sequence of *rescaled* updates (what ``scale_by_*`` outputs, before ``-learning_rate``).
The first-moment decay of Theorem 4.1 is tracked as a running product, not the closed form the
package uses, so the two are independent.
"""

from __future__ import annotations

import numpy as np


def adam(
    grads,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    *,
    eps_root=0.0,
    eps_hat=False,
    bias_correction=True,
    b1_decay=1.0,
    amsgrad=False,
    amsgrad_raw_max=False,
    nesterov=False,
):
    """Algorithm 1 (and its variants) on a list of same-shaped gradient arrays.

    ``amsgrad_raw_max``: the AMSGrad maximum is of the raw v_t, divided by 1-b2^t afterwards (PyTorch).
    """
    g0 = np.asarray(grads[0])
    m = np.zeros(g0.shape, np.complex128 if np.iscomplexobj(g0) else np.float64)
    v = np.zeros(g0.shape)
    v_max = np.zeros(g0.shape)
    v_raw_max = np.zeros(g0.shape)
    prod_b1 = 1.0  # prod_{i<=t} beta_{1,i}
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, m.dtype)
        b1_t = b1 * b1_decay ** (t - 1)
        prod_b1 *= b1_t
        m = b1_t * m + (1 - b1_t) * g
        v = b2 * v + (1 - b2) * np.abs(g) ** 2
        c1 = 1 - prod_b1 if bias_correction else 1.0
        c2 = 1 - b2**t if bias_correction else 1.0
        if nesterov:
            b1_next = b1 * b1_decay**t
            c1_next = 1 - prod_b1 * b1_next if bias_correction else 1.0
            m_hat = b1_next * m / c1_next + (1 - b1_t) * g / c1
        else:
            m_hat = m / c1
        if eps_hat:
            # Section 2: alpha_t = alpha*sqrt(1-b2^t)/(1-b1^t); eps_hat added to sqrt(v_t).
            v_max = np.maximum(v_max, v)
            den = v_max if amsgrad else v
            out.append(np.sqrt(c2) * m_hat / (np.sqrt(den + eps_root) + eps))
        else:
            v_hat = v / c2
            v_max = np.maximum(v_max, v_hat)
            v_raw_max = np.maximum(v_raw_max, v)
            den = (v_raw_max / c2 if amsgrad_raw_max else v_max) if amsgrad else v_hat
            out.append(m_hat / (np.sqrt(den + eps_root) + eps))
    return out


def adamax(
    grads, b1=0.9, b2=0.999, eps=0.0, *, bias_correction=True, b1_decay=1.0, eps_in_max=False
):
    """Algorithm 2: u_t = max(b2*u, |g|); update m_t/((1-b1^t)(u_t+eps)), 0 where u_t+eps = 0.

    ``eps_in_max``: u_t = max(b2*u, |g| + eps) and update m_t/((1-b1^t) u_t) (PyTorch, optax).
    """
    g0 = np.asarray(grads[0])
    m = np.zeros(g0.shape, np.complex128 if np.iscomplexobj(g0) else np.float64)
    u = np.zeros(g0.shape)
    prod_b1 = 1.0
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, m.dtype)
        b1_t = b1 * b1_decay ** (t - 1)
        prod_b1 *= b1_t
        m = b1_t * m + (1 - b1_t) * g
        u = np.maximum(b2 * u, np.abs(g) + (eps if eps_in_max else 0.0))
        c1 = 1 - prod_b1 if bias_correction else 1.0
        den = u if eps_in_max else u + eps
        safe = np.where(den == 0, 1.0, den)
        out.append(np.where(den == 0, 0.0, m / c1 / safe))
    return out


def step_bound(b1, b2):
    """The Section 2.1 bound on |Delta_t|/alpha (eps = 0), as the paper states it."""
    if (1 - b1) > np.sqrt(1 - b2):
        return (1 - b1) / np.sqrt(1 - b2)
    return 1.0


def strict_step_bound(b1, b2, t):
    """A bound on |m_hat/sqrt(v_hat)| that holds for every gradient sequence (Cauchy-Schwarz).

    m_t = (1-b1) sum_k b1^k g_{t-k}, v_t = (1-b2) sum_k b2^k g_{t-k}^2, so with gamma = b1^2/b2:
    |m_t|/sqrt(v_t) <= (1-b1)/sqrt(1-b2) * sqrt(sum_{k<t} gamma^k); then apply the debiasing.
    """
    gamma = b1**2 / b2
    geometric = t if gamma == 1 else (1 - gamma**t) / (1 - gamma)
    return (1 - b1) / np.sqrt(1 - b2) * np.sqrt(geometric) * np.sqrt(1 - b2**t) / (1 - b1**t)


def gradient_sequence(steps=220, seed=0, dtype=np.float64):
    """A fixed pytree-of-arrays gradient sequence with zero gradients in it.

    - ``dense`` (3, 4): Gaussian noise around a drifting mean with a varying scale; whole steps of
      exact zeros at t = 10, 50, 51, 120 and element [0, 0] zero whenever t % 7 == 0.
    - ``sparse`` (5,): non-zero only at t = 1 and every 25th step (the Section 2.1 sparse case).
    Every element is non-zero at t = 1, so eps = 0 is well defined.
    """
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(1, steps + 1):
        scale = 10.0 ** rng.uniform(-2, 1)
        dense = 0.3 * np.sin(t / 17.0) + scale * rng.normal(size=(3, 4))
        if t in (10, 50, 51, 120):
            dense = np.zeros((3, 4))
        if t % 7 == 0:
            dense[0, 0] = 0.0
        sparse = rng.normal(size=5) if t == 1 or t % 25 == 0 else np.zeros(5)
        seq.append({"dense": dense.astype(dtype), "sparse": sparse.astype(dtype)})
    return seq


def temporal_average(thetas, decay, debias=True):
    """Section 7.2: theta_bar_t = decay*theta_bar + (1-decay)*theta_t from 0, over /(1-decay^t)."""
    avg = np.zeros(np.shape(thetas[0]))
    out = []
    for t, theta in enumerate(thetas, start=1):
        avg = decay * avg + (1 - decay) * np.asarray(theta, np.float64)
        out.append(avg / (1 - decay**t) if debias else avg.copy())
    return out


def adamw_trajectory(theta0, grads, lr, weight_decay, **adam_kwargs):
    """Decoupled decay (Loshchilov & Hutter): theta -= lr*(adam_update + weight_decay*theta).

    The gradients are a fixed sequence (independent of theta); returns theta_1..theta_T.
    """
    theta = np.asarray(theta0, np.float64)
    out = []
    for direction in adam(grads, **adam_kwargs):
        theta = theta - lr * (direction + weight_decay * theta)
        out.append(theta)
    return out
