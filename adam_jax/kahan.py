"""Compensated (Kahan) summation of updates into low-precision parameters."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from adam_jax import _checks, _tree


class KahanSummationState(NamedTuple):
    """State of :func:`kahan_summation`: the rounding error not yet applied, per parameter."""

    compensation: optax.Updates


def kahan_summation() -> optax.GradientTransformation:
    r"""Carry the rounding error of each applied update into the next step (place it last in a chain).

    In bfloat16 an Adam step of 1e-3 on a parameter near 1 is below half a unit in the last place
    (2^-8), so ``params + updates`` rounds back to ``params`` and training stalls. This
    transformation keeps what rounding dropped, in the parameter's own dtype, and adds it back::

        y        = updates + compensation          (in at least float32)
        new      = round_to_param_dtype(params + y)
        compensation = (params + y) - new          (stored in the parameter's dtype)
        updates  = new - params                    (exact, returned in at least float32)

    ``optax.apply_updates(params, updates)`` then lands exactly on ``new``. For float32/float64
    parameters it is harmless but pointless. Requires ``params`` in ``update``.
    """

    def init_fn(params: optax.Params) -> KahanSummationState:
        _checks.check_float_leaves("kahan_summation", "parameter", params)
        return KahanSummationState(compensation=_tree.zeros_like(params, lambda d: d))

    def update_fn(
        updates: optax.Updates, state: KahanSummationState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, KahanSummationState]:
        _checks.check_state_type("kahan_summation", state, KahanSummationState)
        if params is None:
            raise ValueError(
                "kahan_summation needs the parameters: call tx.update(updates, state, params)."
            )

        def one(u: ArrayLike, c: ArrayLike, p: ArrayLike) -> tuple[jax.Array, jax.Array]:
            u, c, p = jnp.asarray(u), jnp.asarray(c), jnp.asarray(p)
            wide = _tree.compute_dtype(jnp.result_type(u), p.dtype)
            p_wide = p.astype(wide)
            exact = p_wide + (u.astype(wide) + c.astype(wide))
            new = exact.astype(p.dtype)
            return (new.astype(wide) - p_wide), (exact - new.astype(wide)).astype(c.dtype)

        pairs = jax.tree.map(one, updates, state.compensation, params)
        is_pair = lambda x: isinstance(x, tuple)
        new_updates = jax.tree.map(lambda pr: pr[0], pairs, is_leaf=is_pair)
        compensation = jax.tree.map(lambda pr: pr[1], pairs, is_leaf=is_pair)
        return new_updates, KahanSummationState(compensation=compensation)

    return optax.GradientTransformation(init_fn, update_fn)
