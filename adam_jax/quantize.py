"""Block-wise 8-bit storage of Adam and AdaMax moments: about 2 bytes of state per parameter.

In the spirit of Dettmers et al. (2021), "8-bit optimizers via block-wise quantization". Each
moment is stored as one 8-bit code per parameter, *in the parameter's own shape* (so the codes are
sharded exactly like the parameter), plus one float32 scale per block. Blocks run along the last
axis of the parameter (the last axes merged when the last one is shorter than a block), so the
leading axes, and the last one when a shard holds whole blocks, keep the parameter's sharding.

A stored value is ``scale * f(code)``: ``scale`` bounds the magnitude of every value in its block,
and ``f`` reads the code as a small floating-point number in [0, 1] (in [-1, 1] for signed codes):
an exponent field of ``e`` bits and ``8 - e`` mantissa bits (``7 - e`` and a sign bit for ``int8``),
the largest exponent standing for 1.0, shifted down by the smallest such number so that code 0
is 0 and the spacing near 0 is that of subnormals (see :func:`code_values`). Floating-point codes
keep the same relative precision across the block's range: ``m`` and AdaMax's ``u`` (which scale
like ``|g|``) use 4 exponent bits, a range of 2^-17 of the block's largest value; ``v`` and
AMSGrad's maximum (which scale like ``g^2``) use 5, a range of 2^-33. Encoding and decoding are
then integer operations on the float32 bits (an add, a shift and a bit cast), with no roots or
powers. The price is precision: neighbouring values are 6-12.5% apart (3 mantissa bits).

**One pass per step.** The update (``quantized_moments``) decodes the stored moments, runs the
wrapped transformation on them, and encodes the new moments, all elementwise, so XLA fuses decode,
update and encode into the kernels that write the codes and the updates: no float32 copy of the
moments is written to memory (XLA:CPU gives each output its own kernel, which recomputes the
decode and the update). The Adam/AdaMax math is the wrapped transformation's own
(``transforms.py``, on ``_tree.py``), unchanged. What an 8-bit format needs on top is each block's
new scale: the largest ``|value|`` of the new moment in the block (over the value of the largest
code, so that this element keeps the largest code), one reduction per moment, which XLA fuses
with the update that produces the moment. Taken from the new moments themselves, the scales hold
whatever ``tx`` does to the gradient before its rescaler (a sign flip for ``maximize``, PyTorch's
L2 decay, clipping, ``optax.MultiSteps``, a user's transformation): an earlier version bounded
them by the moment update applied to the old scales and the raw gradient's ``max|g|``, which
those transformations broke. A state the step leaves alone (its count does not move) keeps its
codes, so an ``optax.MultiSteps`` window or a step skipped by ``optax.apply_if_finite`` adds no
rounding.

**NaN** has a code of its own (-128 for ``int8`` codes, 255 for ``uint8``) and is left out of
its block's scale, so one NaN gradient element makes its own moments NaN, as in float32 Adam,
and the block's other elements keep theirs. Infinities saturate (see **Scales** below).

**Rounding.** Codes are rounded stochastically, unbiased in the stored value (not the code): a
moving average with ``b2 = 0.999`` changes by 0.1% a step, far less than the code spacing, and
rounded to nearest it would never move (see
``test_stochastic_rounding_is_unbiased_and_lets_a_slow_average_move``). Between two neighbouring
codes the values are evenly spaced, so adding random bits below the kept mantissa bits, then
truncating, rounds up with probability equal to the distance travelled. The random bits come
from the step count, the element's position in its leaf and which moment it is (a Weyl
sequence over the positions, shifted by a hash of the step), so runs and resumes are
reproducible, a sharded run draws the same numbers as one device, and elements holding equal
values still round independently. Leaves of the same shape share the numbers, so that they
share compiled kernels (see ``_encoded`` in ``quantized_moments``). A positive second moment is
never rounded to 0, so ``m / (sqrt(v) + eps)`` cannot blow up because of the storage.

**CPU cost.** On CPU the work per element sets the time, so the format avoids square roots
(an earlier format, companded by powers of the code, needed one or two per element), the per-block
inverse scales are computed once per block, the positions for the rounding numbers come from
iotas along short inner axes, and the block maxima of all of a leaf's moments come from one
reduction of (max, min) pairs. That reduction decodes and updates the moments once more (on CPU
each kernel recomputes what it needs). The measured costs, with their dates and versions, are on
the documentation's performance page (``adam-jax bench --8bit`` measures them).

**Scales** saturate at 2^126: a gradient whose square overflows float32 leaves a finite state,
and the inverse of every scale is still a normal float32 (a subnormal one is flushed to 0 on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from adam_jax import _tree, state_nodes
from adam_jax.transforms import ScaleByAdamaxState, ScaleByAdamState

PyTree = Any

_F32_TINY = float(np.finfo(np.float32).tiny)  # below it a scale is treated as 0 (subnormal)
# Scales saturate at 2^126, whose inverse 2^-126 is still a normal float32: a larger scale would
# have a subnormal inverse, flushed to 0 on CPU, and its whole block would decode as 0.
_SCALE_MAX = 2.0**126


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "scales"],
    meta_fields=["dtype", "block_size", "exponent_bits"],
)
@dataclasses.dataclass(frozen=True, repr=False)
class QuantizedMoment(state_nodes.ParamNode):
    """One moment of one parameter, stored as ``scales * f(codes)`` block by block.

    A :class:`adam_jax.state_nodes.ParamNode`: the state tools place, split and read it through
    the methods below.

    Attributes:
      codes: ``int8`` (values of either sign) or ``uint8`` (non-negative values), in the
        parameter's shape: 8-bit floating-point numbers in [-1, 1] (see :func:`code_values`).
      scales: ``float32``, one per block: an upper bound of ``|value|`` over the block. Shape: the
        parameter's leading axes, then the number of blocks (see :func:`block_layout`).
      dtype: the dtype of the moment the codes stand for (what :func:`dequantize` returns).
      block_size: the most elements a block holds.
      exponent_bits: the exponent field's width (4: ``|g|``-like values, 5: ``g^2``-like
        values); the rest of the code's bits, after the sign, are the mantissa.
    """

    codes: Any
    scales: Any
    dtype: np.dtype
    block_size: int
    exponent_bits: int

    def __repr__(self) -> str:
        def show(x: Any) -> str:
            if hasattr(x, "shape") and hasattr(x, "dtype"):
                return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"
            return repr(x)

        return (
            f"QuantizedMoment(codes={show(self.codes)}, scales={show(self.scales)}, "
            f"dtype={jnp.dtype(self.dtype).name}, block_size={self.block_size}, "
            f"exponent_bits={self.exponent_bits})"
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def place(self, layout: Any, replicated: Any) -> QuantizedMoment:
        """Codes laid out as the parameter; the scales keep the parameter's leading axes'
        partition, and the block axis gets what :func:`block_axis_partition` allows."""
        if isinstance(layout, NamedSharding):
            blocks = _blocks_of(self.shape, self.block_size)
            spec = tuple(layout.spec) + (None,) * (len(self.shape) - len(tuple(layout.spec)))
            axis = blocks.axis_partition(spec, layout.mesh.shape)
            scales = NamedSharding(layout.mesh, PartitionSpec(*spec[: len(blocks.lead)], axis))
        else:
            scales = layout if layout.is_fully_replicated else replicated
        return dataclasses.replace(self, codes=layout, scales=scales)

    def splits_along(self, spec: tuple, mesh_shape: Any, dim: int) -> bool:
        """Along a leading axis the scales split with the codes; along the block axis only when
        every device holds whole blocks."""
        blocks = _blocks_of(self.shape, self.block_size)
        if dim < len(blocks.lead):
            return True
        return dim == len(blocks.lead) and blocks.axis_partition(spec, mesh_shape) is not None

    def value(self) -> jax.Array:
        return dequantize(self)


class _Blocks(NamedTuple):
    """How an array of ``shape`` is cut into blocks (see :func:`block_layout`), with the reshapes
    that every 8-bit step shares: computed once per shape and block size (:func:`_blocks_of`)."""

    shape: tuple[int, ...]
    k: int  # the merged last axes
    blocks: int
    block: int

    @property
    def lead(self) -> tuple[int, ...]:
        """The leading axes, kept: the scales have shape ``lead + (blocks,)``."""
        return self.shape[: len(self.shape) - self.k]

    @property
    def merged(self) -> int:
        """The number of elements along the merged last axes."""
        return math.prod(self.shape[len(self.shape) - self.k :])

    def axis_partition(self, spec: tuple, mesh_shape: Any) -> Any:
        """See :func:`block_axis_partition`."""
        merged = tuple(spec[len(self.shape) - self.k :])
        axis = merged[0] if merged else None
        if axis is None or any(m is not None for m in merged[1:]):
            return None
        names = axis if isinstance(axis, tuple) else (axis,)
        whole = self.blocks * self.block == self.merged
        return (
            axis if whole and self.blocks % math.prod(mesh_shape[n] for n in names) == 0 else None
        )

    def rows(self, x: jax.Array) -> jax.Array:
        """``x`` as ``lead + (blocks, block)``, the last block padded with zeros."""
        flat = x.reshape(*self.lead, self.merged)  # (not -1: size 0)
        if self.blocks * self.block > self.merged:
            pad = self.blocks * self.block - self.merged
            flat = jnp.pad(flat, [(0, 0)] * len(self.lead) + [(0, pad)])
        return flat.reshape(*self.lead, self.blocks, self.block)

    def spread(self, per_block: jax.Array) -> jax.Array:
        """One value per block spread over the block's elements, in ``shape``; fuses in XLA."""
        x = jnp.broadcast_to(per_block[..., None], (*self.lead, self.blocks, self.block))
        x = x.reshape(*self.lead, self.blocks * self.block)
        if self.blocks * self.block != self.merged:
            x = x[..., : self.merged]
        return x.reshape(self.shape)


@functools.lru_cache(maxsize=4096)
def _blocks_of(shape: tuple[int, ...], block_size: int) -> _Blocks:
    k = 1 if shape else 0
    while k < len(shape) and math.prod(shape[-k:]) < block_size:
        k += 1
    n = math.prod(shape[len(shape) - k :])
    if n <= block_size:
        return _Blocks(shape, k, 1, max(1, n))
    divisor = next(b for b in range(block_size, 0, -1) if n % b == 0)
    if 2 * divisor >= block_size:
        return _Blocks(shape, k, n // divisor, divisor)
    blocks = -(-n // block_size)
    return _Blocks(shape, k, blocks, -(-n // blocks))


def block_layout(shape: tuple[int, ...], block_size: int) -> tuple[int, int, int]:
    """``(k, blocks, block)``: how an array of ``shape`` is cut into blocks.

    The last ``k`` axes (the fewest whose product reaches ``block_size``; usually ``k = 1``) are
    read in row-major order and cut into ``blocks`` runs of ``block`` elements: the largest
    divisor of their size up to ``block_size`` when it is at least half of it, else equal runs
    with a shorter last one. The leading axes ``shape[:-k]`` are kept, so the scales have shape
    ``shape[:-k] + (blocks,)``.
    """
    _, k, blocks, block = _blocks_of(tuple(shape), block_size)
    return k, blocks, block


def block_axis_partition(spec: tuple, mesh_shape: Any, shape: tuple, block_size: int) -> Any:
    """The mesh axes the block axis of the scales is partitioned over, or ``None``.

    ``spec`` is the parameter's partition spec, one entry per axis. The block axis runs along the
    merged last axes; it keeps the partition of the first of them when the others are not
    partitioned and every shard holds whole blocks (as for a last axis of 1024 in blocks of 256
    over 2 devices), else the blocks are not partitioned.
    """
    return _blocks_of(tuple(shape), block_size).axis_partition(spec, mesh_shape)


def _blockable(x: jax.Array, blocks: _Blocks) -> jax.Array:
    """``x``, with the merged last axes unpartitioned on an Explicit mesh where the block axis
    cannot carry their partition (so that the reshapes into blocks are defined)."""
    spec = _tree.explicit_spec(x)
    if spec is None or blocks.axis_partition(spec, jax.typeof(x).sharding.mesh.shape):
        return x
    if all(s is None for s in spec[len(blocks.lead) :]):
        return x
    return jax.sharding.reshard(x, PartitionSpec(*spec[: len(blocks.lead)]))


def _block_max(x: jax.Array, block_size: int) -> jax.Array:
    """max |x| over each block, shape ``x.shape[:-k] + (blocks,)`` (see :func:`block_layout`), in
    float32. NaN elements are left out (they have a code of their own), so that one NaN does not
    spoil its block."""
    return _block_maxes((x,), block_size)[0]


def _block_maxes(xs: tuple[jax.Array, ...], block_size: int) -> tuple[jax.Array, ...]:
    """:func:`_block_max` of each of the arrays ``xs`` (of one shape), from one reduction: the
    moments of a leaf are computed from the same gradient, which is then read once.

    Each is taken as ``max(max x, -min x)``, a two-output reduction, which XLA:CPU runs faster
    than a reduction of ``|x|``."""
    blocks = _blocks_of(tuple(xs[0].shape), block_size)

    def rows(x: jax.Array) -> jax.Array:
        x = _blockable(x, blocks).astype(jnp.float32)
        return blocks.rows(jnp.where(jnp.isnan(x), np.float32(0), x))

    operands = [r for x in xs for r in (rows(x), rows(x))]
    inits = [np.float32(v) for _ in xs for v in (-np.inf, np.inf)]

    def combine(a: tuple, b: tuple) -> tuple:
        return tuple(
            (jnp.maximum if i % 2 == 0 else jnp.minimum)(u, w)
            for i, (u, w) in enumerate(zip(a, b, strict=True))
        )

    ext = jax.lax.reduce(tuple(operands), tuple(inits), combine, (len(blocks.lead) + 1,))
    return tuple(jnp.maximum(ext[2 * i], -ext[2 * i + 1]) for i in range(len(xs)))


def _per_element(per_block: jax.Array, like: jax.Array, block_size: int) -> jax.Array:
    """Spread one value per block over the block's elements, shaped (and on an Explicit mesh
    sharded) like ``like``; fuses in XLA."""
    x = _blocks_of(tuple(like.shape), block_size).spread(per_block)
    spec = _tree.explicit_spec(like)
    if spec is not None and _tree.explicit_spec(x) != spec:
        x = jax.sharding.reshard(x, PartitionSpec(*spec))
    return x


def _layout(signed: bool, exponent_bits: int) -> tuple[int, int, int]:
    """(mantissa bits, the exponent ``E`` of 1.0, the largest code) of a code format."""
    mantissa = 8 - exponent_bits - int(signed)
    top = (1 << exponent_bits) - 1
    return mantissa, top, (top - 1) << mantissa


def _nan_code(signed: bool) -> int:
    """The code of NaN, outside the values' codes (at most 120 in magnitude for the formats used):
    -128 for ``int8`` codes, 255 for ``uint8``."""
    return -128 if signed else 255


def _top_value(exponent_bits: int) -> np.float32:
    """The value of the largest code, ``1 - 2^(1 - E)`` (see :func:`code_values`), in float32."""
    return np.float32(1 - 2.0 ** (2 - (1 << exponent_bits)))


def code_values(signed: bool, exponent_bits: int) -> np.ndarray:
    """The value of every code from 0 up to the largest, in float64, from the format's
    definition. Code ``k``, with exponent field ``e = k >> mb`` and mantissa ``f`` (its low ``mb``
    bits), stands for ``w - 2^(1 - E)``, where ``w = 2^(e + 1 - E) (1 + f / 2^mb)`` is an
    ordinary floating-point number and ``E = 2^bits - 1``: code 0 is 0, the largest code
    ``(E - 1) 2^mb`` is ``1 - 2^(1 - E)``, and the spacing near 0 is ``2^(1 - E - mb)``, as
    with subnormals. A signed code ``-k`` stands for minus the value of ``k``."""
    mb, top, largest = _layout(signed, exponent_bits)
    k = np.arange(largest + 1)
    e, f = k >> mb, (k & ((1 << mb) - 1)).astype(np.float64)
    return 2.0 ** (e + 1 - top) * (1 + f / 2**mb) - 2.0 ** (1 - top)


def _wrap_int32(value: int) -> np.int32:
    """``value`` modulo 2^32 as a (two's complement) int32: integer arithmetic that wraps."""
    value %= 1 << 32
    return np.int32(value - (1 << 32) if value >= 1 << 31 else value)


def _hash(salt: jax.Array) -> jax.Array:
    """The MurmurHash3 finaliser of an integer scalar, as an int32 (integer arithmetic wraps)."""
    h = salt.astype(jnp.int32)
    for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        h = h ^ jax.lax.shift_right_logical(h, jnp.int32(shift))
        if factor is not None:
            h = h * _wrap_int32(factor)
    return h


def _random_bits(positions: jax.Array, hashed: jax.Array, bits: int) -> jax.Array:
    """``bits`` random bits (an int32 in [0, 2^bits)) per element of the int32 array
    ``positions``: the top bits of ``positions * phi + hashed`` in 32-bit fixed point, where phi
    is the golden ratio's fraction (a Weyl sequence: at one step, the elements' numbers are
    evenly spread over [0, 1)). ``hashed`` is :func:`_hash` of the salt (step + a constant), so
    that one element's numbers are unrelated from step to step: with an evenly stepping salt they
    would be, and a value that decays slowly over a coarse grid drifted by 3% in 200 steps
    (``test_stochastic_rounding_is_unbiased_and_lets_a_slow_average_move``). Per element this is
    three integer operations, and no PRNG key is kept in the state, so resumes are bit-identical."""
    x = positions * _wrap_int32(0x9E3779B9) + hashed
    return jax.lax.shift_right_logical(x, jnp.int32(32 - bits))


def _positions(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major index (int32, wrapping), built from one iota per axis. A long
    single axis is viewed as rows of 128 first: XLA:CPU vectorizes an iota along a short inner
    axis well and a long one poorly."""
    if len(shape) == 1 and shape[0] > 128 and shape[0] % 128 == 0:
        return _positions((shape[0] // 128, 128)).reshape(shape)
    index, stride = jnp.zeros(shape, jnp.int32), 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.int32, shape, axis) * _wrap_int32(stride)
        stride *= shape[axis]
    return index


def _encode(
    x: jax.Array,
    scales: jax.Array,
    *,
    signed: bool,
    exponent_bits: int,
    block_size: int,
    hashed: jax.Array | None = None,
) -> jax.Array:
    """Codes of ``x`` against per-block ``scales`` (bounds of |x|).

    ``w = |x| / scale + 2^(1 - E)`` (see :func:`code_values`) is rounded in its float32 bits: the
    mantissa bits the format drops are replaced by random bits drawn from ``hashed`` (see
    :func:`_random_bits`), added before truncating, which rounds up with probability equal to the
    dropped fraction (unbiased in the stored value); without it, by half their range (to
    nearest). Values beyond the scale (there are none when the scale is a bound) saturate at the
    largest code; NaN gets its own code (:func:`_nan_code`).
    """
    mb, top, largest = _layout(signed, exponent_bits)
    drop = 23 - mb  # the float32 mantissa bits the code drops
    # A scale below the smallest normal float32 counts as 0 (its block decodes as 0). The inverse
    # is taken per block, once, before it is spread over the block's elements.
    inv = 1.0 / jnp.where(scales >= _F32_TINY, scales, jnp.inf)
    u = jnp.abs(x.astype(jnp.float32)) * _per_element(inv, x, block_size)
    if hashed is None:
        r = jnp.int32(1 << (drop - 1))
    else:
        r = _random_bits(_positions(tuple(x.shape)), hashed, drop)
    w = jax.lax.bitcast_convert_type(u + np.float32(2.0 ** (1 - top)), jnp.int32)
    # w >= 2^(1 - E), whose bits are (128 - E) << 23: the difference is non-negative (or, for NaN,
    # beyond the largest code), so an arithmetic shift is exact.
    k = jnp.minimum((w - ((128 - top) << 23) + r) >> drop, largest)
    if signed:
        k = jnp.where(x < 0, -k, k)
    else:  # A positive second moment never becomes 0: the smallest code at least.
        k = jnp.maximum(k, (u > 0).astype(jnp.int32))
    k = jnp.where(jnp.isnan(x), _nan_code(signed), k)
    return k.astype(jnp.int8 if signed else jnp.uint8)


def _decode(codes: jax.Array, scales: jax.Array, exponent_bits: int, block_size: int) -> jax.Array:
    signed = codes.dtype == jnp.int8
    mb, top, _ = _layout(signed, exponent_bits)
    c = codes.astype(jnp.int32)
    w = ((jnp.abs(c) if signed else c) + ((128 - top) << mb)) << (23 - mb)
    unit = jax.lax.bitcast_convert_type(w, jnp.float32) - np.float32(2.0 ** (1 - top))
    if signed:
        unit = jnp.where(c < 0, -unit, unit)
    unit = jnp.where(c == _nan_code(signed), np.float32(np.nan), unit)
    return unit * _per_element(scales, codes, block_size)


# The per-leaf steps of an update are jitted functions of the leaf, so that a model with many
# leaves of a few shapes traces and lowers each step once per shape (inside the caller's jit they
# are inlined again, and XLA fuses them as before): a many-leaf model's tracing and lowering take
# about half as long.
_decoded = jax.jit(_decode, static_argnums=(2, 3))


_block_maxes_of = jax.jit(_block_maxes, static_argnums=1)


@functools.partial(jax.jit, static_argnames=("signed", "exponent_bits", "block_size"))
def _requantize(
    new: jax.Array,
    stored: QuantizedMoment,
    block_max: jax.Array,
    changed: jax.Array,
    hashed: jax.Array,
    *,
    signed: bool,
    exponent_bits: int,
    block_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Codes and scales of a new moment ``new`` whose blocks' largest ``|new|`` are ``block_max``,
    rounded stochastically with the numbers of ``hashed`` (see :func:`_random_bits`);
    ``stored``'s own where ``changed`` is false.

    Each block's scale is its largest ``|new|`` over the value of the largest code, so that this
    element gets the largest code exactly and a moment that is decoded and encoded again keeps its
    codes."""
    top = _top_value(exponent_bits)
    scales = jnp.minimum(block_max / top, _SCALE_MAX)
    codes = _encode(
        new,
        scales,
        signed=signed,
        exponent_bits=exponent_bits,
        block_size=block_size,
        hashed=hashed,
    )
    return jnp.where(changed, codes, stored.codes), jnp.where(changed, scales, stored.scales)


def quantize(
    x: jax.Array,
    block_size: int,
    *,
    signed: bool = True,
    exponent_bits: int = 4,
    salt: jax.Array | None = None,
) -> QuantizedMoment:
    """Store ``x`` as 8-bit codes with one float32 scale (the block's max |x|) per block.

    Args:
      x: a real floating-point array (non-negative when ``signed=False``).
      block_size: the most elements per block (>= 1).
      signed: ``int8`` codes for values of either sign; ``uint8`` for non-negative values.
      exponent_bits: the codes' exponent field (see the module docstring): 4 or 5.
      salt: an integer scalar: round stochastically (unbiased), with numbers drawn from it; without
        it round to the nearest stored value.
    """
    scales = jnp.minimum(_block_max(x, block_size), _SCALE_MAX)
    hashed = None if salt is None else _hash(jnp.asarray(salt))
    codes = _encode(
        x, scales, signed=signed, exponent_bits=exponent_bits, block_size=block_size, hashed=hashed
    )
    return QuantizedMoment(codes, scales, jnp.dtype(x.dtype), block_size, exponent_bits)


def dequantize(q: QuantizedMoment) -> jax.Array:
    """The array ``q`` stands for, in its shape and dtype."""
    return _decoded(q.codes, q.scales, q.exponent_bits, q.block_size).astype(q.dtype)


class QuantizedMomentsState(NamedTuple):
    """State of :func:`quantized_moments`: the inner state, its moments as QuantizedMoment."""

    inner_state: Any


# Which fields of which states are moments, and how each is stored: (field, signed, exponent
# bits). The infinity norm u scales like |g| and is non-negative: 4 exponent, 4 mantissa bits.
_FIELDS = {
    ScaleByAdamState: (("mu", True, 4), ("nu", False, 5), ("nu_max", False, 5)),
    ScaleByAdamaxState: (("mu", True, 4), ("nu", False, 4)),
}


def _is_moment_state(x: Any) -> bool:
    return isinstance(x, tuple(_FIELDS))


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedMoment)


def _check_params(params: PyTree) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
            raise TypeError(
                f"quantized_moments: parameter leaf {jax.tree_util.keystr(path)} is complex "
                f"({jnp.result_type(leaf)}); 8-bit moments are for real parameters. Keep that "
                "leaf's moments in full precision, e.g. optax.partition the complex leaves to "
                "the plain optimizer."
            )


def _count(value: Any, name: str, least: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` unless it is an integer >= ``least``."""
    try:
        size = operator.index(value)
    except TypeError:
        size = None
    if size is None or isinstance(value, (bool, np.bool_)) or size < least:
        raise ValueError(f"{name}={value!r} is out of range: it must be an integer >= {least}.")
    return int(size)


def quantized_moments(
    tx: optax.GradientTransformation, *, block_size: int = 256, min_size: int = 4096
) -> optax.GradientTransformation:
    """Keep the moments of every Adam/AdaMax state inside ``tx`` in block-wise 8-bit storage.

    ``quantized_moments(adam_jax.adam(1e-3))`` stores ``m`` and ``v`` as one byte each per
    parameter plus one float32 scale per block: about ``2 + 8/block_size`` bytes per parameter
    (2.03 at the default 256), against 8 for float32 moments. The codes have the parameter's shape
    and sharding; blocks run along the last axis. Other state (step counts, schedules) is kept as
    it is. Every ``scale_by_adam`` option (AMSGrad, Nesterov, ``eps_hat``, ``b1_decay``) and
    ``scale_by_adamax`` work unchanged: their math runs on the decoded moments. Whatever ``tx``
    does before its rescaler (the ``compat`` presets' ``maximize`` and L2 ``weight_decay``,
    ``optax.clip_by_global_norm``, ``optax.MultiSteps``, a transformation of your own) is fine:
    each block's scale is taken from the new moments themselves. Complex parameters are refused
    at ``init``.

    A NaN gradient element makes its own moments (and so its parameter) NaN, as in float32 Adam;
    the other elements of its block are kept (NaN has a code of its own). To skip such steps
    instead, wrap the optimizer in ``optax.apply_if_finite``, inside or outside.

    Leaves with fewer than ``min_size`` elements (biases, norms) keep float32 moments, exactly
    those of ``tx``, as bitsandbytes does with its ``min_8bit_size`` of the same default: they
    hold a small share of a model's parameters but many of its leaves, and every 8-bit leaf adds
    its own kernels to compile: in a transformer, most leaves are small, and keeping them in
    float32 costs a small fraction of a byte per parameter while roughly halving the compile
    time of a jitted step (measured by ``adam-jax bench --8bit``; see the performance page).

    Args:
      tx: a transformation containing ``scale_by_adam``/``scale_by_adamax`` state, e.g.
        ``adam_jax.adam(...)``.
      block_size: the most elements per block (an integer >= 1); smaller blocks track local
        magnitudes more closely at 4/block_size bytes per element per moment.
      min_size: leaves with fewer elements keep float32 moments (an integer >= 0; 0 stores every
        leaf in 8 bits).
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"quantized_moments: tx must be an optax.GradientTransformation, e.g. "
            f"adam_jax.adam(1e-3); got {type(tx).__name__} {tx!r:.60}."
        )
    block_size = _count(block_size, "block_size", 1)
    min_size = _count(min_size, "min_size", 0)

    def _stored(x: jax.Array) -> bool:
        """Whether a leaf of this shape gets 8-bit moments."""
        return math.prod(x.shape) >= min_size

    def init_fn(params: optax.Params) -> QuantizedMomentsState:
        _check_params(params)
        inner = tx.init(params)
        is_flat = state_nodes.is_regrouped
        if any(is_flat(n) for n in jax.tree.leaves(inner, is_leaf=is_flat)):
            raise ValueError(
                "quantized_moments: tx contains flat_moments; put flat_moments outside, as "
                "flat_moments(quantized_moments(tx)), so that the 8-bit blocks are cut from the "
                "flat buffers."
            )
        if not any(_is_moment_state(n) for n in jax.tree.leaves(inner, is_leaf=_is_moment_state)):
            raise ValueError(
                "quantized_moments: tx has no scale_by_adam/scale_by_adamax state to store in "
                "8 bits; wrap adam_jax.adam/adamax (or a chain containing their rescalers)."
            )

        def empty(x: jax.Array, signed: bool, bits: int) -> jax.Array | QuantizedMoment:
            if not _stored(x):
                return x
            codes = _tree.zeros_like(x, lambda _: jnp.dtype(jnp.int8 if signed else jnp.uint8))
            scales = _block_max(x, block_size)  # (0 for tx's zero moments) placed like x's
            return QuantizedMoment(codes, scales, jnp.dtype(x.dtype), block_size, bits)

        return QuantizedMomentsState(_map_moments(lambda node: _moment_fields(node, empty), inner))

    def _encoded(new: Any, old: Any) -> Any:
        """The Adam/AdaMax state ``new`` with its moments encoded where ``old``, the stored state
        at the same place, holds them in 8 bits. A state the step left alone (its count did not
        move: inside an ``optax.MultiSteps`` window, or a step ``optax.apply_if_finite`` skipped)
        keeps its codes; the count stops moving only at the int32 maximum, which counts as moved.

        The random numbers of a moment (see :func:`_random_bits`) are the same for every leaf: a
        per-leaf number would be a different constant in every leaf's kernels, and XLA could no
        longer compile one kernel for all leaves of a shape, and a many-leaf model would compile
        about twice as long. Leaves of the same shape then round with the same
        numbers at a step, which keeps each element's rounding unbiased: the numbers never
        depend on the values they round."""
        changed = (new.count != old.count) | (new.count == np.iinfo(np.int32).max)
        # (field, signed, exponent bits, hash): one hash per moment and step, salted by the moment.
        fields = [
            (field, signed, bits, _hash(new.count + jnp.int32(salt * 0x01000193 % (1 << 31))))
            for salt, (field, signed, bits) in enumerate(_FIELDS[type(new)])
            if getattr(new, field) is not None
        ]

        def encode(x: jax.Array, q: QuantizedMoment, block_max: jax.Array, field: tuple):
            _, signed, bits, hashed = field
            codes, scales = _requantize(
                x,
                q,
                block_max,
                changed,
                hashed,
                signed=signed,
                exponent_bits=bits,
                block_size=block_size,
            )
            return QuantizedMoment(codes, scales, jnp.dtype(x.dtype), block_size, bits)

        def leaf(*new_then_stored: Any) -> _Moments:
            """One parameter's new moments, then their stored forms -> what is stored now."""
            xs, qs = new_then_stored[: len(fields)], new_then_stored[len(fields) :]
            if not _is_quantized(qs[0]):
                return _Moments(xs)  # a leaf under min_size: tx's own moments
            block_maxes = _block_maxes_of(xs, block_size)  # one pass over all of them
            return _Moments(tuple(map(encode, xs, qs, block_maxes, fields)))

        names = [field for field, *_ in fields]
        done = jax.tree.map(
            leaf, *(getattr(new, f) for f in names), *(getattr(old, f) for f in names)
        )
        return new._replace(
            **{f: jax.tree.map(lambda d, i=i: d.moments[i], done) for i, f in enumerate(names)}
        )

    def update_fn(
        updates: optax.Updates, state: QuantizedMomentsState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, QuantizedMomentsState]:
        stored = state.inner_state
        decoded = state_nodes.values(stored)  # 1. decode the 8-bit moments
        updates, new_inner = tx.update(updates, decoded, params)  # 2. the unchanged math
        encoded = _map_moments(_encoded, new_inner, stored)  # 3. encode, paired by structure
        return updates, QuantizedMomentsState(encoded)

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class _Moments:
    """The stored moments of one parameter (one per field), together: not a pytree, so a leaf."""

    moments: tuple


def _map_moments(fn, state: PyTree, *others: PyTree) -> PyTree:
    """``state`` with every Adam/AdaMax state node ``n`` replaced by ``fn(n, *at_n)``, where
    ``at_n`` are the nodes at the same place in ``others`` (trees of ``state``'s structure down
    to those nodes): states are paired by structure."""

    def one(node: Any, *at_node: Any) -> Any:
        return fn(node, *at_node) if _is_moment_state(node) else node

    return jax.tree.map(one, state, *others, is_leaf=_is_moment_state)


def _moment_fields(node: Any, fn) -> Any:
    """The Adam/AdaMax state ``node`` with every moment leaf ``x`` replaced by
    ``fn(x, signed, exponent_bits)``. Every other field (the count, the ``hyperparams`` record,
    whatever a state holds) is passed through."""
    changes = {}
    for field, signed, bits in _FIELDS[type(node)]:
        tree = getattr(node, field)
        if tree is not None:  # (nu_max is None without AMSGrad)
            changes[field] = jax.tree.map(lambda x, s=signed, b=bits: fn(x, s, b), tree)
    return node._replace(**changes)


def state_bytes(state: Any) -> int:
    """Bytes held by the arrays of an optimizer state (8-bit codes and scales included)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))
