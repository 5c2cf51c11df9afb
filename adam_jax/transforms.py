"""The paper's rescalers as Optax gradient transformations (no learning rate; see ``aliases``).

- :func:`scale_by_adam`: Algorithm 1, with the Section 2 efficient form (``eps_hat``), the
  Section 4 decaying first-moment rate (``b1_decay``), AMSGrad and Nesterov variants.
- :func:`scale_by_adamax`: Algorithm 2 (Section 7.1).
- :func:`bias_correction`: the Section 3 zero-bias correction as a standalone transformation.

Notation follows ``shared/PAPER.md``: ``g`` gradient, ``t`` step (1 at the first update),
``m``/``v`` first and second raw moments, ``u`` the exponentially weighted infinity norm.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _checks, _tree, _validate
from adam_jax._hyperparams import Hyperparams, record


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`."""

    count: jax.Array  # t, int32, saturating
    mu: optax.Updates  # m_t, first moment
    nu: optax.Updates  # v_t, second raw moment
    nu_max: optax.Updates  # running max of v_hat (or v_t with eps_hat); None unless amsgrad
    hyperparams: Hyperparams | None = None  # the values of the optimizer that ran, as leaves


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`."""

    count: jax.Array  # t, int32, saturating
    mu: optax.Updates  # m_t, first moment
    nu: optax.Updates  # u_t, exponentially weighted infinity norm
    hyperparams: Hyperparams | None = None  # the values of the optimizer that ran, as leaves


class BiasCorrectionState(NamedTuple):
    """State of :func:`bias_correction`."""

    count: jax.Array  # t, int32, saturating


def _validate_moments(b1: ArrayLike, b2: ArrayLike, b1_decay: ArrayLike) -> None:
    _validate.check_decay("b1", b1)
    _validate.check_decay("b2", b2)
    _validate.check_interval("b1_decay", b1_decay, 0.0, 1.0, low_open=True, high_open=False)


def _init_moments(params: optax.Params, mu_dtype, nu_dtype, where: str):
    """Zero moments m_0, v_0 (or u_0) and step count t = 0."""
    _checks.check_float_leaves(where, "parameter", params)
    mu = _tree.zeros_like(params, lambda d: _tree.moment_dtype(d, mu_dtype, real=False))
    nu = _tree.zeros_like(params, lambda d: _tree.moment_dtype(d, nu_dtype, real=True))
    return jnp.zeros([], jnp.int32), mu, nu


def scale_by_adam(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    *,
    eps_root: ArrayLike = 0.0,
    eps_hat: bool = False,
    bias_correction: bool = True,
    b1_decay: ArrayLike = 1.0,
    amsgrad: bool = False,
    raw_amsgrad_max: bool = False,
    nesterov: bool = False,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescale gradients by Adam, Algorithm 1 of Kingma & Ba (2015).

    With :math:`\beta_{1,t} = \beta_1 \lambda^{t-1}` (:math:`\lambda` = ``b1_decay``)::

        m_t = b1_t * m_{t-1} + (1 - b1_t) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * |g_t|^2
        m_hat = m_t / (1 - prod_{i<=t} b1_i)        # = 1 - b1^t when b1_decay = 1
        v_hat = v_t / (1 - b2^t)
        update = m_hat / (sqrt(v_hat + eps_root) + eps)

    Multiply by ``-learning_rate`` (see :func:`adam_jax.adam`) to get the parameter step.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second raw moment, in [0, 1).
      eps: added to :math:`\sqrt{\hat v_t}` as in Algorithm 1 (>= 0).
      eps_root: added to :math:`\hat v_t` inside the square root (>= 0); makes the update
        differentiable at v = 0 (meta-learning).
      eps_hat: use the efficient form of the end of Section 2,
        ``sqrt(1-b2^t)/(1-b1^t) * m_t / (sqrt(v_t) + eps)``: ``eps`` is then the paper's
        :math:`\hat\epsilon` (TensorFlow/Keras "epsilon"), equal to Algorithm 1 only for
        :math:`\hat\epsilon = \epsilon\sqrt{1-\beta_2^t}`.
      bias_correction: divide by ``1 - b^t``; ``False`` gives RMSProp with momentum (Section 6.4).
      b1_decay: :math:`\lambda` of Theorem 4.1, in (0, 1]: :math:`\beta_{1,t}=\beta_1\lambda^{t-1}`.
        The first moment is then debiased by the exact zero-bias factor
        :math:`1-\prod_{i\le t}\beta_{1,i} = 1-\beta_1^t\lambda^{t(t-1)/2}`, which reduces to
        :math:`1-\beta_1^t` for :math:`\lambda = 1`.
      amsgrad: divide by the running maximum of :math:`\hat v_t` (of :math:`v_t` with
        ``eps_hat``) instead of :math:`\hat v_t` itself (Reddi et al., 2018), as ``optax.amsgrad``.
      raw_amsgrad_max: with ``amsgrad``, keep the running maximum of the raw :math:`v_t` and
        debias it at the current step, ``max_{s<=t} v_s / (1 - b2^t)``, as ``torch.optim.Adam``
        does (the maximum of :math:`\hat v_s` is larger early on). No composition gives it: it
        equals the ``eps_hat`` form only with an ``eps`` that changes with t. With ``eps_hat``
        the maximum is of the raw :math:`v_t` anyway, so the switch changes nothing there.
      nesterov: Nesterov momentum (Dozat, 2016), as ``optax.adam(nesterov=True)``:
        ``m_hat = b1_{t+1} m_t / (1 - prod_{i<=t+1} b1_i) + (1 - b1_t) g_t / (1 - prod_{i<=t} b1_i)``.
      mu_dtype: storage dtype of :math:`m_t`; default: the parameter's dtype promoted to at least
        float32 (float16/bfloat16 parameters keep float32 moments).
      nu_dtype: storage dtype of :math:`v_t`, same default; always real (``|g|^2``) for complex
        parameters.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`ScaleByAdamState`; its
      ``hyperparams`` field records these arguments.
    """
    _validate_moments(b1, b2, b1_decay)
    _validate.check_nonnegative("eps", eps)
    _validate.check_nonnegative("eps_root", eps_root)
    _validate.check_dtype("mu_dtype", mu_dtype)
    _validate.check_dtype("nu_dtype", nu_dtype)
    for name, flag in [
        ("eps_hat", eps_hat),
        ("bias_correction", bias_correction),
        ("amsgrad", amsgrad),
        ("nesterov", nesterov),
        ("raw_amsgrad_max", raw_amsgrad_max),
    ]:
        _validate.check_flag(name, flag)
    # The record of these values (leaves; the moment dtypes show in the moments themselves).
    values = dict(
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        eps_hat=eps_hat,
        bias_correction=bias_correction,
        b1_decay=b1_decay,
        amsgrad=amsgrad,
        nesterov=nesterov,
    )

    def init_fn(params: optax.Params) -> ScaleByAdamState:
        count, mu, nu = _init_moments(params, mu_dtype, nu_dtype, "scale_by_adam")
        nu_max = jax.tree.map(jnp.copy, nu) if amsgrad else None
        return ScaleByAdamState(
            count=count, mu=mu, nu=nu, nu_max=nu_max, hyperparams=record(**values)
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamState]:
        _checks.check_state_type("scale_by_adam", state, ScaleByAdamState)
        _checks.check_update_args(
            "scale_by_adam", updates, params, {"mu": state.mu, "nu": state.nu}
        )
        g = updates
        t = _tree.increment(state.count)  # Alg. 1: t <- t + 1
        b1_t = _tree.decay_at(b1, b1_decay, t)  # Thm. 4.1: b1_t = b1 * lambda^(t-1)
        m = _tree.update_moment(g, state.mu, b1_t, 1)  # Alg. 1: m_t = b1_t m_{t-1} + (1-b1_t) g_t
        v = _tree.update_moment(g, state.nu, b2, 2)  # Alg. 1: v_t = b2 v_{t-1} + (1-b2) g_t^2
        c1 = _tree.debiasing(b1, t, b1_decay) if bias_correction else 1.0  # Sec. 3: 1 - prod b1_i
        c2 = _tree.debiasing(b2, t) if bias_correction else 1.0  # Sec. 3: 1 - b2^t
        if nesterov:  # Dozat (2016): m_hat looks one step ahead
            m_hat = _nesterov_m_hat(m, g, b1_t, c1, t, b1, b1_decay, bias_correction)
        else:
            m_hat = _tree.debias(m, c1)  # Alg. 1: m_hat = m_t / (1 - b1^t)
        if eps_hat:  # Sec. 2: the step size carries sqrt(1 - b2^t); eps_hat beside sqrt(v_t)
            scale = jnp.sqrt(c2)
            m_hat, v_den = jax.tree.map(lambda mh: scale * mh, m_hat), v
        else:
            v_den = _tree.debias(v, c2)  # Alg. 1: v_hat = v_t / (1 - b2^t)
        nu_max = None
        if amsgrad:  # Reddi et al. (2018): divide by the running maximum
            v_den, nu_max = _amsgrad_max(
                state.nu_max, v, v_den, c2, raw_amsgrad_max and not eps_hat
            )
        direction = jax.tree.map(  # Alg. 1: m_hat / (sqrt(v_hat) + eps)
            lambda mh, vd: mh / (_tree.sqrt_plus(vd, eps_root) + eps), m_hat, v_den
        )
        new_state = ScaleByAdamState(
            count=t,
            mu=_tree.cast_like(m, state.mu),
            nu=_tree.cast_like(v, state.nu),
            nu_max=_tree.cast_like(nu_max, state.nu_max) if amsgrad else None,
            hyperparams=_rewrite(state.hyperparams, values),
        )
        return _tree.cast_to_updates(direction, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _rewrite(found: Hyperparams | None, values: dict) -> Hyperparams | None:
    """The record with this transformation's own values written in (the names others added,
    such as the alias's ``learning_rate``, kept); a state without a record stays without."""
    return None if found is None else {**found, **record(**values)}


def _nesterov_m_hat(m, g, b1_t, c1, t, b1, b1_decay, bias_correction: bool):
    """Dozat's (2016) look-ahead first moment: b1_{t+1} m_t / c1_{t+1} + (1 - b1_t) g_t / c1_t,
    with c1 the Section 3 correction (1 when it is off)."""
    t_next = _tree.increment(t)
    b1_next = _tree.decay_at(b1, b1_decay, t_next)
    c1_next = _tree.debiasing(b1, t_next, b1_decay) if bias_correction else c1
    return jax.tree.map(
        lambda mt, gt: b1_next * mt / c1_next + (1 - b1_t) * gt.astype(mt.dtype) / c1, m, g
    )


def _amsgrad_max(nu_max, v, v_den, c2, raw_max: bool):
    """AMSGrad's denominator and the maximum to keep: ``max(nu_max, v_den)`` for both, where
    ``v_den`` is v_hat (or the raw v_t with ``eps_hat``); with ``raw_max`` (PyTorch) the maximum
    is of the raw v_t and is debiased at the current step."""
    if raw_max:
        nu_max = _tree.tree_maximum(nu_max, v)
        return _tree.debias(nu_max, c2), nu_max
    v_den = _tree.tree_maximum(nu_max, v_den)
    return v_den, v_den


def scale_by_adamax(
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 0.0,
    *,
    bias_correction: bool = True,
    b1_decay: ArrayLike = 1.0,
    eps_in_max: bool = False,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescale gradients by AdaMax, Algorithm 2 of Kingma & Ba (2015)::

        m_t = b1_t * m_{t-1} + (1 - b1_t) * g_t
        u_t = max(b2 * u_{t-1}, |g_t|)
        update = m_t / (1 - prod_{i<=t} b1_i) / (u_t + eps)

    ``u_t`` needs no bias correction. Where ``u_t + eps == 0`` every gradient so far was zero, so
    ``m_t = 0`` too and the update is 0 (never NaN). With ``eps = 0`` (the paper's, and the default)
    every step satisfies ``|update| <= 1``, so ``|Delta_t| <= alpha``.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the infinity norm, in [0, 1).
      eps: added to ``u_t`` (>= 0). PyTorch and optax put it inside the max, Keras adds it to
        ``u_t`` (see ``adam_jax.compat``).
      bias_correction: divide the first moment by ``1 - b1^t``.
      b1_decay: :math:`\lambda` of Theorem 4.1, as in :func:`scale_by_adam`.
      eps_in_max: put ``eps`` inside the max, ``u_t = max(b2 * u_{t-1}, |g_t| + eps)`` and
        ``update = m_hat / u_t`` (the PyTorch and optax convention). No composition gives it:
        ``eps`` would have to enter the max, which sees only the gradient.
      mu_dtype: storage dtype of ``m_t`` (default: parameter dtype, at least float32).
      nu_dtype: storage dtype of ``u_t`` (same default, real for complex parameters).

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`ScaleByAdamaxState`; its
      ``hyperparams`` field records these arguments.
    """
    _validate_moments(b1, b2, b1_decay)
    _validate.check_nonnegative("eps", eps)
    _validate.check_flag("bias_correction", bias_correction)
    _validate.check_dtype("mu_dtype", mu_dtype)
    _validate.check_dtype("nu_dtype", nu_dtype)
    _validate.check_flag("eps_in_max", eps_in_max)
    eps_max, eps_out = (eps, 0.0) if eps_in_max else (0.0, eps)
    values = dict(b1=b1, b2=b2, eps=eps, bias_correction=bias_correction, b1_decay=b1_decay)

    def init_fn(params: optax.Params) -> ScaleByAdamaxState:
        count, mu, nu = _init_moments(params, mu_dtype, nu_dtype, "scale_by_adamax")
        return ScaleByAdamaxState(count=count, mu=mu, nu=nu, hyperparams=record(**values))

    def update_fn(
        updates: optax.Updates, state: ScaleByAdamaxState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamaxState]:
        _checks.check_state_type("scale_by_adamax", state, ScaleByAdamaxState)
        _checks.check_update_args(
            "scale_by_adamax", updates, params, {"mu": state.mu, "nu": state.nu}
        )
        g = updates
        t = _tree.increment(state.count)  # Alg. 2: t <- t + 1
        b1_t = _tree.decay_at(b1, b1_decay, t)  # Thm. 4.1: b1_t = b1 * lambda^(t-1)
        m = _tree.update_moment(g, state.mu, b1_t, 1)  # Alg. 2: m_t = b1*m + (1-b1)*g
        u = _tree.update_infinity_norm(g, state.nu, b2, eps_max)  # Alg. 2: u_t = max(b2*u, |g|)
        m_hat = _tree.debias(m, _tree.debiasing(b1, t, b1_decay)) if bias_correction else m
        direction = jax.tree.map(  # Alg. 2: (alpha/(1-b1^t)) * m_t / u_t, and 0 where u_t = 0
            lambda mh, ut: _tree.safe_divide(mh, (ut + eps_out).astype(ut.dtype)), m_hat, u
        )
        new_state = ScaleByAdamaxState(
            count=t,
            mu=_tree.cast_like(m, state.mu),
            nu=_tree.cast_like(u, state.nu),
            hyperparams=_rewrite(state.hyperparams, values),
        )
        return _tree.cast_to_updates(direction, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def bias_correction(decay: ArrayLike) -> optax.GradientTransformation:
    r"""Divide incoming updates by the zero-bias factor ``1 - decay^t`` (Section 3).

    Keeps its own step count ``t`` (1 at the first update). Chained after an exponential moving
    average started at zero it removes the average's bias, e.g.
    ``optax.chain(optax.ema(d, debias=False), bias_correction(d))`` equals
    ``optax.ema(d, debias=True)``. :func:`scale_by_adam` and :func:`scale_by_adamax` use the same
    helper internally.

    Args:
      decay: the decay of the average being corrected, in [0, 1).
    """
    _validate.check_decay("decay", decay)

    def init_fn(params: optax.Params) -> BiasCorrectionState:
        del params
        return BiasCorrectionState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates, state: BiasCorrectionState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, BiasCorrectionState]:
        _checks.check_state_type("bias_correction", state, BiasCorrectionState)
        _checks.check_update_args("bias_correction", updates, params)
        t = _tree.increment(state.count)
        return _tree.debias(updates, _tree.debiasing(decay, t)), BiasCorrectionState(count=t)

    return optax.GradientTransformation(init_fn, update_fn)
