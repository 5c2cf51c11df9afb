"""Constructor-time validation of hyperparameters.

Python and NumPy numbers are checked once, when a transformation is built. JAX arrays and tracers
(for example hyperparameters injected by ``optax.inject_hyperparams``) are accepted unchecked, so
that changing them never forces a recompilation.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def is_concrete_number(value: Any) -> bool:
    """True for Python/NumPy real scalars (and 0-d NumPy arrays); False for JAX values."""
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return False
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"


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
    """
    if not is_concrete_number(value):
        return
    x = float(value)
    below = x <= low if low_open else x < low
    above = x >= high if high_open else x > high
    if math.isnan(x) or below or above:
        left = "(" if low_open else "["
        right = ")" if high_open or math.isinf(high) else "]"
        upper = "inf" if math.isinf(high) else f"{high:g}"
        raise ValueError(
            f"{name}={value!r} is out of range: {name} must lie in {left}{low:g}, {upper}{right}."
        )


def check_decay(name: str, value: Any) -> None:
    """An exponential decay rate: 0 <= value < 1 (the paper's requirement on beta1, beta2)."""
    check_interval(name, value, 0.0, 1.0)


def check_nonnegative(name: str, value: Any) -> None:
    """A finite value >= 0 (eps, eps_root, weight decay)."""
    check_interval(name, value, 0.0)


def check_learning_rate(value: Any) -> None:
    """A learning rate is a finite number >= 0 or a schedule (a callable, not checked here)."""
    if callable(value):
        return
    check_interval("learning_rate", value, 0.0)


def check_flag(name: str, value: Any) -> None:
    """Structural switches must be Python booleans: they choose code paths at trace time."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} must be a Python bool (True or False).")
