"""Constructor-time validation of hyperparameters.

Python and NumPy numbers are checked once, when a transformation is built: a value out of range
raises ``ValueError`` naming the argument, the value and the allowed range; a value of the wrong
kind (a string, a bool, a complex number, an array with more than one element) raises ``TypeError``.
Concrete JAX scalars (for example hyperparameters injected by ``optax.inject_hyperparams``, at an
eager ``init`` or ``update``) get the same range checks. Tracers (the same values inside ``jit``)
are checked for shape and dtype only, which is static, so changing their value never forces a
recompilation or a device-to-host transfer; an out-of-range traced value is not detected.

Every public constructor of the package calls these helpers, for example::

    check_learning_rate(learning_rate)      # a number >= 0, or a schedule
    check_decay("b1", b1)                   # 0 <= b1 < 1
    check_decay_pair("betas", betas)        # PyTorch's (beta1, beta2)
    check_nonnegative("eps", eps)           # eps >= 0, finite
    check_flag("amsgrad", amsgrad)          # a Python bool
    check_dtype("mu_dtype", mu_dtype)       # None or a floating/complex dtype
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete_number(value: Any) -> bool:
    """True for Python/NumPy real scalars (and 0-d NumPy arrays); False for JAX values."""
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return False
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"


def _is_concrete_jax_scalar(value: Any) -> bool:
    """A JAX scalar whose value is known now (not a tracer inside ``jit``/``grad``/``vmap``)."""
    return (
        isinstance(value, jax.Array)
        and not isinstance(value, jax.core.Tracer)
        and jnp.ndim(value) == 0
        and value.is_fully_addressable
    )


def check_real_scalar(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a real number: Python/NumPy, or a scalar JAX value.

    Booleans are rejected (``b1=True`` is a typo, not 1.0), as are strings, complex numbers and
    arrays with more than one element. For JAX values only the static shape and dtype are looked
    at, so tracers pass through without being made concrete.
    """
    if is_concrete_number(value):
        return
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        dtype = jnp.result_type(value)
        if jnp.ndim(value) == 0 and (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        ):
            return
        raise TypeError(
            f"{name} must be a real scalar; got a JAX array of shape {jnp.shape(value)} and "
            f"dtype {dtype}."
        )
    raise TypeError(f"{name}={value!r} must be a real number; got {type(value).__name__}.")


def check_interval(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``value`` lies in the interval, when it is a concrete number.

    The interval is ``[low, high)`` by default; ``low_open``/``high_open`` choose the brackets.
    NaN and infinity are always out of range. Values of the wrong kind raise ``TypeError``
    (:func:`check_real_scalar`).
    """
    check_real_scalar(name, value)
    if is_concrete_number(value):
        x, shown = float(value), repr(value)
    elif _is_concrete_jax_scalar(value):  # e.g. optax.inject_hyperparams outside jit
        x = float(value)
        shown = f"{x:.7g} (a JAX array)"
    else:  # traced: its value is not known until run time; nothing to check without a sync
        return
    below = x <= low if low_open else x < low
    above = x >= high if high_open else x > high
    if not math.isfinite(x) or below or above:
        left = "(" if low_open else "["
        right = ")" if high_open or math.isinf(high) else "]"
        upper = "inf" if math.isinf(high) else f"{high:g}"
        raise ValueError(
            f"{name}={shown} is out of range: {name} must lie in {left}{low:g}, {upper}{right}."
        )


def check_decay(name: str, value: Any) -> None:
    """An exponential decay rate: 0 <= value < 1 (the paper's requirement on beta1, beta2)."""
    check_interval(name, value, 0.0, 1.0)


def check_decay_pair(name: str, value: Any) -> None:
    """A pair of decay rates such as PyTorch's ``betas=(beta1, beta2)``, each in [0, 1)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name}={value!r} must be a pair (beta1, beta2) of numbers in [0, 1).")
    for i, item in enumerate(value):
        check_decay(f"{name}[{i}]", item)


def check_nonnegative(name: str, value: Any) -> None:
    """A finite value >= 0 (eps, eps_root, weight decay)."""
    check_interval(name, value, 0.0)


def check_positive_int(name: str, value: Any) -> None:
    """A Python/NumPy integer >= 1 (a number of steps, a period)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} must be an integer >= 1; got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name}={value!r} is out of range: {name} must be an integer >= 1.")


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """A learning rate is a finite number >= 0 or a schedule (a callable, not checked here)."""
    if callable(value):
        return
    check_interval(name, value, 0.0)


def check_flag(name: str, value: Any) -> None:
    """Structural switches must be Python booleans: they choose code paths at trace time."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} must be a Python bool (True or False).")


def check_dtype(name: str, value: Any) -> None:
    """``None`` (use the default) or a floating-point/complex dtype for optimizer state."""
    if value is None:
        return
    try:
        dtype = jnp.dtype(value)
    except TypeError as err:
        raise TypeError(f"{name}={value!r} is not a dtype.") from err
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{name}={dtype.name} must be a floating-point or complex dtype (e.g. jnp.float32, "
            "jnp.bfloat16); an integer or boolean moment would truncate every update."
        )


def check_transformation(name: str, value: Any) -> None:
    """An optax ``GradientTransformation`` (anything with callable ``init`` and ``update``)."""
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise TypeError(
            f"{name} must be an optax.GradientTransformation (e.g. adam_jax.adam(1e-3)); got "
            f"{value!r} of type {type(value).__name__}."
        )
