"""Block-wise 8-bit storage of Adam and AdaMax moments (state of about 2 bytes per parameter).

In the spirit of Dettmers et al. (2021), "8-bit optimizers via block-wise quantization": each
moment is cut into blocks of ``block_size`` elements; a block is stored as float8 values and one
float32 scale (the block's largest magnitude). The update itself is unchanged: the wrapped
transformation sees float32 moments, dequantized on entry and quantized again on exit, inside the
same compiled step, so the Adam math stays in one place (``transforms.py``).

First moments (and AdaMax's ``u_t``) scale like ``|g|`` and are stored linearly. Adam's second
moments scale like ``g^2``, twice the dynamic range in log terms, so they are stored as
``sqrt(v)`` (companded): then a second moment underflows to 0 only where the first moment does
too, and ``m/(sqrt(v) + eps)`` cannot blow up because of the storage.

Values are rounded stochastically (unbiased), with random bits hashed from the step count and the
element's position: a moving average with decay 0.999 changes by 0.1% a step, far less than the
float8 spacing, so rounded to nearest it would never move.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from adam_jax.transforms import ScaleByAdamaxState, ScaleByAdamState


@jax.tree_util.register_pytree_node_class
class BlockQuantized:
    """An array stored as ``values`` (float8, shape (blocks, block)) times per-block ``scales``."""

    def __init__(self, values: jax.Array, scales: jax.Array, shape, dtype, companded: bool):
        self.values = values
        self.scales = scales
        self.shape = tuple(shape)
        self.dtype = jnp.dtype(dtype)
        self.companded = companded

    def tree_flatten(self):
        return (self.values, self.scales), (self.shape, self.dtype, self.companded)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def nbytes(self) -> int:
        return self.values.size * self.values.dtype.itemsize + self.scales.size * 4


def _hash_bits(n: int, seed: jax.Array) -> jax.Array:
    """n pseudo-random uint32 words from (element index, seed): a cheap integer hash, so the
    rounding is reproducible (bit-identical resume) and needs no PRNG key in the state."""
    x = jax.lax.iota(jnp.uint32, n) * jnp.uint32(0x9E3779B9) + seed.astype(jnp.uint32)
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = (x ^ (x >> shift)) * jnp.uint32(mult)
    return x ^ (x >> 16)


def _round_stochastically(y: jax.Array, dtype: jnp.dtype, seed: jax.Array) -> jax.Array:
    """Round float32 ``y`` to the mantissa width of ``dtype`` up or down at random, with the
    probability that makes the result unbiased (E[round(y)] = y). An exponential moving average
    with decay 0.999 changes by 0.1% a step, far below float8's 6-12% spacing: rounded to nearest
    it would never move; rounded stochastically it moves by the right amount on average."""
    drop = 23 - jnp.finfo(dtype).nmant  # float32 mantissa bits float8 cannot keep
    mask = jnp.uint32((1 << drop) - 1)
    bits = jax.lax.bitcast_convert_type(y, jnp.uint32)
    noise = _hash_bits(y.size, seed).reshape(y.shape) & mask
    bits = (bits + noise) & ~mask  # add below the kept bits, then truncate the magnitude
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def quantize(
    x: jax.Array,
    block_size: int,
    dtype: DTypeLike,
    *,
    companded: bool = False,
    seed: jax.Array | None = None,
) -> BlockQuantized:
    """Store ``x`` in blocks of ``block_size`` float8 values with a float32 scale per block.

    With ``seed`` (an integer scalar) the values are rounded stochastically (unbiased), else to
    nearest.
    """
    dtype = jnp.dtype(dtype)
    n = x.size
    block = max(1, min(block_size, n))
    blocks = -(-n // block)
    flat = jnp.pad(x.reshape(-1).astype(jnp.float32), (0, blocks * block - n))
    y = flat.reshape(blocks, block)
    if companded:  # sqrt companding: the stored dynamic range covers g^2's
        y = jnp.sign(y) * jnp.sqrt(jnp.abs(y))
    absmax = jnp.max(jnp.abs(y), axis=1)
    top = float(jnp.finfo(dtype).max)
    scales = jnp.where(absmax > 0, absmax / top, 1.0)
    y = y / scales[:, None]
    if seed is not None:
        y = jnp.clip(_round_stochastically(y, dtype, seed), -top, top)
    return BlockQuantized(y.astype(dtype), scales, x.shape, x.dtype, companded)


def dequantize(q: BlockQuantized) -> jax.Array:
    """The float array ``q`` stands for, in its original shape and dtype."""
    y = q.values.astype(jnp.float32) * q.scales[:, None]
    if q.companded:
        y = y * jnp.abs(y)
    n = math.prod(q.shape)
    return y.reshape(-1)[:n].reshape(q.shape).astype(q.dtype)


class QuantizedMomentsState(NamedTuple):
    """State of :func:`quantized_moments`: the inner state with its moments block-quantized."""

    inner_state: Any


def _is_moment_state(x: Any) -> bool:
    return isinstance(x, (ScaleByAdamState, ScaleByAdamaxState))


def _map_moments(state: Any, on_mu, on_nu) -> Any:
    """Apply ``on_mu(x, salt)``/``on_nu(x, salt)`` to every first/second-moment leaf of every
    Adam/AdaMax state; ``salt`` combines the state's step count with the leaf's position."""
    counter = iter(range(1 << 30))

    def moments(tree: Any, fn, count: jax.Array) -> Any:
        def one(x: jax.Array) -> Any:
            return fn(x, count.astype(jnp.uint32) * jnp.uint32(0x27D4EB2F) + next(counter))

        return jax.tree.map(one, tree)

    def one(node: Any) -> Any:
        if isinstance(node, ScaleByAdamState):
            c = node.count
            return node._replace(
                mu=moments(node.mu, on_mu, c),
                nu=moments(node.nu, on_nu, c),
                nu_max=moments(node.nu_max, on_nu, c),
            )
        if isinstance(node, ScaleByAdamaxState):  # u_t scales like |g|: linear, as mu
            c = node.count
            return node._replace(mu=moments(node.mu, on_mu, c), nu=moments(node.nu, on_mu, c))
        return node

    return jax.tree.map(one, state, is_leaf=_is_moment_state)


def quantized_moments(
    tx: optax.GradientTransformation,
    *,
    block_size: int = 256,
    dtype: DTypeLike = jnp.float8_e4m3fn,
) -> optax.GradientTransformation:
    """Keep the moments of every Adam/AdaMax state inside ``tx`` in block-wise 8-bit storage.

    ``quantized_moments(adam_jax.adam(1e-3))`` stores m and v in float8 (1 byte each) plus one
    float32 scale per block: 2 + 8/block_size bytes per parameter (2.03 at the default 256),
    against 8 for float32 moments. Leaves smaller than a block get a single scale. Other state
    (step counts, schedules, averages) is kept as it is. The quantized blocks are flat, so they do
    not follow the parameters' sharding (see :func:`adam_jax.state_sharding`).

    Args:
      tx: a transformation containing ``scale_by_adam``/``scale_by_adamax`` state, e.g.
        ``adam_jax.adam(...)``.
      block_size: elements per block (>= 1); smaller blocks track local magnitudes more closely
        at 4/block_size bytes per element per moment.
      dtype: the 8-bit float type: ``float8_e4m3fn`` (3 mantissa bits, the default) or
        ``float8_e5m2`` (wider range, 2 mantissa bits).
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} is out of range: it must be an int >= 1.")
    dtype = jnp.dtype(dtype)
    if dtype.itemsize != 1 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"dtype={dtype} is not allowed: use an 8-bit float type such as "
            "jnp.float8_e4m3fn or jnp.float8_e5m2."
        )

    def pack(state: Any) -> Any:
        return _map_moments(
            state,
            lambda m, salt: quantize(m, block_size, dtype, seed=salt),
            lambda v, salt: quantize(v, block_size, dtype, companded=True, seed=salt),
        )

    def unpack(state: Any) -> Any:
        is_q = lambda x: isinstance(x, BlockQuantized)
        return jax.tree.map(lambda x: dequantize(x) if is_q(x) else x, state, is_leaf=is_q)

    def init_fn(params: optax.Params) -> QuantizedMomentsState:
        return QuantizedMomentsState(inner_state=pack(tx.init(params)))

    def update_fn(
        updates: optax.Updates, state: QuantizedMomentsState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, QuantizedMomentsState]:
        updates, inner = tx.update(updates, unpack(state.inner_state), params)
        return updates, QuantizedMomentsState(inner_state=pack(inner))

    return optax.GradientTransformation(init_fn, update_fn)


def state_bytes(state: Any) -> int:
    """Bytes held by the arrays of an optimizer state (quantized blocks and scales included)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))
