"""Tree math shared by every transformation: moments, the infinity norm, debiasing, dtypes.

Each function maps over a pytree of arrays. ``None`` leaves are empty subtrees for ``jax.tree.map``,
so they pass through untouched. Arithmetic is done in at least float32 ("compute dtype"), so
float16/bfloat16 gradients do not underflow ``eps``; results are cast back to the storage dtype only
when a moment is written into the optimizer state.

Overflow. ``(1-b2)*g**2`` is formed as ``(sqrt(1-b2)*g)**2``, which stays finite whenever the
result is representable (a float32 gradient of 1e20 gives v = 1e37 where ``g*g`` would overflow).
Where even that overflows (|g| >= ~6e20 in float32 with b2 = 0.999), and where a moment is
written to a narrower storage dtype (float16 holds at most 65504), the moment *saturates* at the
dtype's largest finite value instead of becoming inf: an inf in v could never decay, and the
parameter would never move again. A saturated moment decays back by its beta each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType
from jax.typing import ArrayLike, DTypeLike

from adam_jax import _validate

PyTree = Any


def compute_dtype(*dtypes: DTypeLike) -> jnp.dtype:
    """The dtype arithmetic is done in: the promotion of ``dtypes`` and float32."""
    out = jnp.dtype(jnp.float32)
    for dtype in dtypes:
        out = jnp.promote_types(out, dtype)
    return out


def moment_dtype(param_dtype: DTypeLike, override: DTypeLike | None, *, real: bool) -> jnp.dtype:
    """Storage dtype of a moment for a parameter of ``param_dtype``.

    ``override`` (``mu_dtype``/``nu_dtype``) wins when given; otherwise the parameter's dtype
    promoted to at least float32. ``real=True`` is for second moments, which hold |g|^2 or |g| and
    so are real even for complex parameters.
    """
    dtype = jnp.dtype(override) if override is not None else compute_dtype(param_dtype)
    if real and jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.finfo(dtype).dtype
    return dtype


def zeros_like(tree: PyTree, dtype_of: Callable[[jnp.dtype], jnp.dtype]) -> PyTree:
    """Zeros shaped and sharded like each leaf of ``tree``, in ``dtype_of(leaf.dtype)``.

    This is where every moment buffer is created, so this is where optimizer state learns the
    model's sharding. A ``jax.Array`` leaf (a traced one under ``jit`` included) gets zeros computed
    *from its data*, ``where(isfinite(x), |x|*0, 0)``: the result depends on ``x`` elementwise, so
    the partitioner gives it ``x``'s sharding. Zeros built from the shape alone (``jnp.zeros_like``
    of a tracer) depend on nothing, and under ``jit`` on a mesh with ``AxisType.Auto`` XLA places
    them on one device. This needs only stable JAX (no ``jax.experimental.shard_alike``, which JAX
    0.11 removed) and costs one read of the parameters at ``init``. ``|x|*0`` is +0 also for
    negative ``x``; the ``where`` turns inf and NaN parameters into 0 as well.

    Python scalars and NumPy arrays (which carry no sharding) get plain ``jnp.zeros``.
    """

    def one(x: ArrayLike) -> jax.Array:
        dtype = dtype_of(jnp.result_type(x))
        if not isinstance(x, jax.Array):
            return jnp.zeros(jnp.shape(x), dtype)
        zeros = jnp.where(jnp.isfinite(x), jnp.abs(x) * 0, 0)  # real, tied to x's layout
        return zeros.astype(dtype)

    return jax.tree.map(one, tree)


def saturate(x: jax.Array, dtype: DTypeLike) -> jax.Array:
    """``x`` clipped to the finite range of the real floating ``dtype`` (NaN stays NaN).

    Only a narrower ``dtype`` clips: a finite value of ``x``'s own range converts without
    overflow, and an extra clip there would make XLA keep two versions of every moment.
    """
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.iscomplexobj(x):
        return x
    if float(jnp.finfo(dtype).max) >= float(jnp.finfo(x.dtype).max):
        return x
    largest = jnp.asarray(jnp.finfo(dtype).max, x.dtype)
    return jnp.clip(x, -largest, largest)


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """Cast each leaf of ``tree`` to the dtype of the matching leaf of ``like`` (state storage),
    saturating at the storage dtype's largest finite value (see the module docstring)."""
    return jax.tree.map(lambda x, ref: _astype(saturate(x, ref.dtype), ref.dtype), tree, like)


def cast_to_updates(tree: PyTree, updates: PyTree) -> PyTree:
    """Cast each leaf of ``tree`` to the dtype of the incoming gradient leaf (outgoing updates).

    A real gradient of a complex parameter gets a real update: its complex moments then have a
    zero imaginary part, and the real part is taken explicitly (not by a lossy cast).
    """

    def one(x: jax.Array, g: ArrayLike) -> jax.Array:
        dtype = jnp.result_type(g)
        if jnp.iscomplexobj(x) and not jnp.issubdtype(dtype, jnp.complexfloating):
            x = jnp.real(x)
        return _astype(x, dtype)

    return jax.tree.map(one, tree, updates)


def _abs_pow(g: jax.Array, order: int) -> jax.Array:
    """|g|^order, real-valued also for complex ``g`` (|g|^2 = Re(conj(g) g))."""
    if order == 2 and jnp.iscomplexobj(g):
        return (jnp.conj(g) * g).real
    if order == 2:
        return g * g
    return jnp.abs(g) ** order


def update_moment(updates: PyTree, moments: PyTree, decay: ArrayLike, order: int) -> PyTree:
    """m <- decay*m + (1-decay)*g (order 1) or v <- decay*v + (1-decay)*|g|^2 (order 2).

    For order 2 the new term is ``|sqrt(1-decay)*g|^2`` and the result saturates at the compute
    dtype's largest finite value (see the module docstring).
    """
    if order not in (1, 2):
        raise ValueError(f"update_moment: order must be 1 or 2, got {order}.")

    def one(g: ArrayLike, m: ArrayLike) -> jax.Array:
        g, m = jnp.asarray(g), jnp.asarray(m)
        dtype = compute_dtype(g.dtype, m.dtype)
        g = _astype(g, dtype)
        if order == 1:
            return _as_real(decay, dtype) * _astype(m, dtype) + _one_minus(decay, dtype) * g
        x = _abs_pow(_sqrt_one_minus(decay, dtype) * g, 2)  # (1-decay)|g|^2, overflow-safe
        v = _as_real(decay, x.dtype) * _astype(m, x.dtype) + x
        largest = jnp.finfo(x.dtype).max
        # Saturate instead of inf (NaN stays NaN). Written as a select: with jnp.minimum, XLA:CPU
        # re-computed v inside the parameter update and copied every donated v buffer (measured).
        return jnp.where(v > largest, largest, v)

    return jax.tree.map(one, updates, moments)


def update_infinity_norm(
    updates: PyTree, norms: PyTree, decay: ArrayLike, eps: ArrayLike = 0.0
) -> PyTree:
    """u <- max(decay*u, |g| + eps), the exponentially weighted infinity norm of AdaMax.

    ``eps = 0`` is Algorithm 2; a positive ``eps`` inside the max is the PyTorch/optax convention.
    """

    def one(g: ArrayLike, u: ArrayLike) -> jax.Array:
        g, u = jnp.asarray(g), jnp.asarray(u)
        dtype = compute_dtype(g.dtype, u.dtype)
        mag = jnp.abs(g.astype(dtype))
        if not (_validate.is_concrete_number(eps) and float(eps) == 0.0):
            mag = mag + _as_real(eps, mag.dtype)
        return jnp.maximum(_as_real(decay, mag.dtype) * u.astype(mag.dtype), mag)

    return jax.tree.map(one, updates, norms)


def tree_maximum(a: PyTree, b: PyTree) -> PyTree:
    """Elementwise running maximum (AMSGrad), in the dtype of ``b`` (the fresh value)."""
    return jax.tree.map(lambda x, y: jnp.maximum(x.astype(y.dtype), y), a, b)


def decay_at(decay: ArrayLike, decay_rate: ArrayLike, count: jax.Array) -> jax.Array:
    """The decay in force at step ``count`` (t >= 1): decay * decay_rate^(t-1) (Theorem 4.1)."""
    if _is_one(decay_rate):
        return decay
    t = count.astype(_float_for_count())
    return decay * jnp.exp((t - 1) * _log(decay_rate))


def decay_product(decay: ArrayLike, decay_rate: ArrayLike, count: jax.Array) -> jax.Array:
    """prod_{i<=t} decay*decay_rate^(i-1) = decay^t * decay_rate^(t(t-1)/2); decay^t when rate is 1."""
    if _is_one(decay_rate):
        return decay**count
    t = count.astype(_float_for_count())
    return decay**t * jnp.exp(t * (t - 1) / 2 * _log(decay_rate))


def debiasing(decay: ArrayLike, count: jax.Array, decay_rate: ArrayLike = 1.0) -> jax.Array:
    """The zero-bias correction 1 - prod_{i<=t} beta_i (Section 3; 1 - beta^t for a constant beta).

    For Python numbers it is ``-expm1(t log beta + t(t-1)/2 log lambda)`` with the logarithms
    taken in float64: accurate to float32 rounding at every t, where ``1 - float32(beta)**t``
    loses about 1e-5 relative at t = 1 for beta = 0.999 (cancellation against 1).
    """
    if _validate.is_concrete_number(decay) and _validate.is_concrete_number(decay_rate):
        if float(decay) == 0.0:  # prod = 0 from the first step on
            return jnp.ones([], _float_for_count())
        t = count.astype(_float_for_count())
        log_prod = t * math.log(float(decay))
        if not _is_one(decay_rate):
            log_prod = log_prod + t * (t - 1) / 2 * math.log(float(decay_rate))
        return -jnp.expm1(log_prod)
    return 1 - decay_product(decay, decay_rate, count)


def debias(moments: PyTree, correction: ArrayLike) -> PyTree:
    """Divide each leaf by the bias correction (m_hat = m / (1 - beta^t))."""
    return jax.tree.map(
        lambda m: jnp.asarray(m) / _as_real(correction, jnp.result_type(m)), moments
    )


def sqrt_plus(v: jax.Array, eps_root: ArrayLike) -> jax.Array:
    """sqrt(v + eps_root); no addition is traced for the default eps_root = 0."""
    if _validate.is_concrete_number(eps_root) and float(eps_root) == 0.0:
        return jnp.sqrt(v)
    return jnp.sqrt(v + eps_root)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num/den where den != 0, else 0 (used where 0/0 means "no gradient yet", as in AdaMax)."""
    zero = den == 0
    return jnp.where(zero, jnp.zeros_like(num), num / jnp.where(zero, jnp.ones_like(den), den))


def _as_real(value: ArrayLike, dtype: DTypeLike) -> ArrayLike:
    """A hyperparameter as a scalar of the real dtype matching ``dtype``.

    A Python number becomes a NumPy scalar: a constant of the traced program that costs no JAX
    operation per leaf while tracing (a model of 1000 leaves traces every formula 1000 times).
    """
    real = jnp.finfo(dtype).dtype
    if _validate.is_concrete_number(value):
        return np.asarray(value, real)
    return _astype(jnp.asarray(value), real)


def _astype(x: jax.Array, dtype: DTypeLike) -> jax.Array:
    """``x`` in ``dtype``; ``x`` itself when it already is (no operation traced)."""
    return x if x.dtype == dtype else x.astype(dtype)


def _one_minus(value: ArrayLike, dtype: DTypeLike) -> jax.Array:
    """1 - value in the real dtype matching ``dtype``.

    For a Python number the subtraction is done in float64 before rounding, so 1 - 0.9999 is the
    float32 number nearest 1e-4; 1 - float32(0.9999) would be off by 1.7e-4 relative.
    """
    real = jnp.finfo(dtype).dtype
    if _validate.is_concrete_number(value):
        return np.asarray(1.0 - float(value), real)
    return 1 - jnp.asarray(value).astype(real)


def _sqrt_one_minus(value: ArrayLike, dtype: DTypeLike) -> jax.Array:
    """sqrt(1 - value) in the real dtype matching ``dtype`` (float64 arithmetic for numbers)."""
    real = jnp.finfo(dtype).dtype
    if _validate.is_concrete_number(value):
        return np.asarray(math.sqrt(1.0 - float(value)), real)
    return jnp.sqrt(1 - jnp.asarray(value).astype(real))


def _log(value: ArrayLike) -> ArrayLike:
    """log(value), taken in float64 for Python numbers: lambda^n = exp(n log lambda) then stays
    accurate in float32, where rounding lambda itself to float32 would compound over the steps."""
    return math.log(float(value)) if _validate.is_concrete_number(value) else jnp.log(value)


def _is_one(value: ArrayLike) -> bool:
    return _validate.is_concrete_number(value) and float(value) == 1.0


def _float_for_count() -> jnp.dtype:
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def increment(count: jax.Array) -> jax.Array:
    """t <- t + 1 for the int32 step count, saturating at the int32 maximum instead of wrapping."""
    return optax.safe_increment(count)


def explicit_spec(x: Any) -> tuple | None:
    """``x``'s partition spec, one entry per axis, when ``x`` (an array, a tracer or a
    ``jax.ShapeDtypeStruct``) lies on a mesh with ``Explicit`` axes; else ``None``."""
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding
    else:
        sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (len(x.shape) - len(spec))


def find_state(opt_state: optax.OptState, kind: type | tuple[type, ...], where: str):
    """The single sub-state of type ``kind`` inside ``opt_state`` (a chain's nested tuples)."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
        if isinstance(s, kind)
    ]
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    if len(found) != 1:
        raise ValueError(
            f"{where}: expected exactly one {names} in the optimizer state, found {len(found)}."
        )
    return found[0]
