"""Step-size schedules used by the paper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from adam_jax import _validate


def inverse_sqrt_schedule(init_value: ArrayLike) -> optax.Schedule:
    r"""alpha_t = alpha / sqrt(t), with t = 1 at the first update (Sections 4 and 6.1).

    Optax calls a schedule with the number of updates already made (0 at the first update), so
    the schedule returns ``init_value / sqrt(count + 1)``. The ``+ 1`` is done in floating point,
    so the int32 step count saturated at its maximum still gives a finite, positive step.

    Args:
      init_value: alpha, a number >= 0.
    """
    _validate.check_interval("init_value", init_value, 0.0)

    def schedule(count: ArrayLike) -> jax.Array:
        t = jnp.asarray(count).astype(jnp.result_type(float)) + 1  # no int32 overflow
        return init_value / jnp.sqrt(t)

    return schedule
