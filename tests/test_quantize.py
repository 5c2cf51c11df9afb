"""Block-wise 8-bit moments: storage error bounds, bytes per parameter, edge cases, training loss.

References: the storage grid written out in NumPy from the format's definition, the NumPy
reference of Algorithms 1 and 2 (tests/reference.py), and float32 Adam.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax.quantize import (
    QuantizedMoment,
    block_layout,
    code_values,
    dequantize,
    quantize,
    quantized_moments,
    state_bytes,
)
from adam_jax.tools.paper import data, models, train
from tests import reference
from tests.helpers import param_trajectory, reference_per_leaf, run_updates


def _numpy_blocks(x: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """Rows of blocks as the format defines them: the last axes (product >= block_size) in
    row-major order, cut into runs of the largest divisor up to block_size if it is at least
    half of it, else into equal runs padded with zeros; and the number of real elements."""
    k = 1
    while k < x.ndim and int(np.prod(x.shape[-k:])) < block_size:
        k += 1
    lead = x.shape[: x.ndim - k]
    rows = x.reshape(int(np.prod(lead)), -1)
    n = rows.shape[1]
    divisors = [b for b in range(1, min(n, block_size) + 1) if n % b == 0]
    if n <= block_size or 2 * divisors[-1] >= block_size:
        block = divisors[-1]
    else:
        block = -(-n // -(-n // block_size))
    blocks = -(-n // block)
    padded = np.zeros((rows.shape[0], blocks * block))
    padded[:, :n] = rows
    return padded.reshape(rows.shape[0], blocks, block), n


def _grid(signed: bool, exponent_bits: int) -> np.ndarray:
    """Every magnitude a code stands for, written out from the format's definition: the
    float numbers w = 2^(e - E) (1 + f / 2^mb) with exponent fields e = 1..E (E = 2^bits - 1)
    and mb = 8 - bits - sign mantissa bits, up to w = 1, each shifted down by the smallest one
    (2^(1 - E)), so that the first is 0 and the last is 1 - 2^(1 - E)."""
    mb = 8 - exponent_bits - int(signed)
    top = 2**exponent_bits - 1
    w = [2.0 ** (e - top) * (1 + f / 2**mb) for e in range(1, top) for f in range(2**mb)]
    return np.array([*w, 1.0]) - 2.0 ** (1 - top)


def test_signed_codes_are_float8_e4m3fn_numbers_scaled_and_shifted():
    """The signed 4-exponent-bit codes against an independent float8: ml_dtypes' e4m3fn (bias
    7). Magnitude code k is the e4m3fn number with bits k + 8, times 2^-8, minus 2^-14."""
    import ml_dtypes

    k = np.arange(113, dtype=np.uint8)
    fp8 = (k + 8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    np.testing.assert_array_equal(_grid(True, 4), fp8 * 2.0**-8 - 2.0**-14)
    np.testing.assert_array_equal(code_values(True, 4), _grid(True, 4))
    for signed, bits in [(False, 5), (False, 4)]:
        np.testing.assert_array_equal(code_values(signed, bits), _grid(signed, bits))
    codes = jnp.asarray(np.concatenate([k.astype(np.int8), -k[1:].astype(np.int8)]))
    q = QuantizedMoment(codes, jnp.ones(1), jnp.dtype(jnp.float32), 256, 4)
    sign = np.sign(np.asarray(codes, np.float64))
    want = sign * (np.concatenate([fp8, fp8[1:]]) * 2.0**-8 - 2.0**-14)
    np.testing.assert_array_equal(np.asarray(dequantize(q), np.float64), want)


@pytest.mark.parametrize("signed, exponent_bits", [(True, 4), (False, 5), (False, 4)])
@pytest.mark.parametrize(
    "shape, block_size", [((37, 53), 7), ((37, 53), 256), ((5, 3, 8), 16), ((3, 1009), 256)]
)
def test_round_trip_error_within_half_a_grid_step(shape, block_size, signed, exponent_bits):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 4, size=shape)
    if not signed:
        x = np.abs(x) ** (exponent_bits - 3)  # g^2-like values for 5 bits, |g|-like for 4
    x[1] = 0.0
    q = quantize(
        jnp.asarray(x, jnp.float32), block_size, signed=signed, exponent_bits=exponent_bits
    )
    back = np.asarray(dequantize(q), np.float64)
    assert back.shape == x.shape and q.codes.shape == x.shape
    assert q.codes.dtype == (jnp.int8 if signed else jnp.uint8)
    np.testing.assert_array_equal(back[1], 0.0)
    # The grid point at or below each value and the next one, scale = the block's max |x|.
    grid = _grid(signed, exponent_bits)
    blocks, _ = _numpy_blocks(np.abs(x.astype(np.float32)), block_size)
    scale = blocks.max(axis=-1, keepdims=True)
    unit = np.divide(blocks, scale, out=np.zeros_like(blocks), where=scale > 0)
    i = np.clip(np.searchsorted(grid, unit, side="right") - 1, 0, len(grid) - 2)
    step = scale * (grid[i + 1] - grid[i])
    allowed = step / 2
    if not signed:  # a positive value is never stored as 0: up to one step below the first code
        allowed = np.where((i == 0) & (blocks > 0), step, allowed)
    # Above the largest code (1 - 2^(1 - E)) values saturate to it.
    allowed = np.maximum(allowed, (unit - grid[-1]) * scale)
    err, _ = _numpy_blocks(np.abs(back - x.astype(np.float32)), block_size)
    assert np.all(err <= allowed * (1 + 1e-5) + 1e-37 * (1 + scale))


def test_zero_subnormal_and_tiny_blocks_decode_without_nan():
    for signed, bits in [(True, 4), (False, 5), (False, 4)]:
        for x in ([1e-36, 0.0], [0.0, 0.0], [1e-40, 0.0], [3e-39, 1e-45], [1e-30, 1e-36]):
            back = np.asarray(
                dequantize(
                    quantize(jnp.asarray(x, jnp.float32), 64, signed=signed, exponent_bits=bits)
                )
            )
            assert np.all(np.isfinite(back)), (x, back)
            assert np.all(np.abs(back - np.asarray(x, np.float32)) <= 0.01 * max(x) + 1e-37)


def test_layout_keeps_leading_axes_and_bytes_stay_at_most_2_1_per_parameter():
    assert block_layout((768, 3072), 256) == (1, 12, 256)  # last axis cut into 12 blocks
    assert block_layout((1024, 1000), 256) == (1, 4, 250)
    assert block_layout((64, 10), 256) == (2, 4, 160)  # short last axis: merged with the first
    assert block_layout((3, 1009), 256) == (1, 4, 253)  # 1009 is prime: 3 runs of 253, one of 250
    assert block_layout((), 256) == (0, 1, 1)
    params = models.mlp(64, 10).init(jax.random.PRNGKey(0))
    n = sum(x.size for x in jax.tree.leaves(params))
    q8 = state_bytes(quantized_moments(adam_jax.adam(1e-3)).init(params)) / n
    f32 = state_bytes(adam_jax.adam(1e-3).init(params)) / n
    assert q8 <= 2.1
    assert 8.0 <= f32 < 8.01
    gpt2_block = {
        "qkv": jnp.zeros((768, 2304)),
        "proj": jnp.zeros((768, 768)),
        "fc": jnp.zeros((768, 3072)),
        "out": jnp.zeros((3072, 768)),
        "ln": jnp.zeros((768,)),
        "bias": jnp.zeros((3072,)),
    }
    n = sum(x.size for x in jax.tree.leaves(gpt2_block))
    assert state_bytes(quantized_moments(adam_jax.adam(1e-3)).init(gpt2_block)) / n <= 2.04


@pytest.mark.parametrize(
    "make, ref_fn, options",
    [
        (adam_jax.scale_by_adam, reference.adam, {}),
        (adam_jax.scale_by_adam, reference.adam, {"amsgrad": True}),
        (adam_jax.scale_by_adam, reference.adam, {"nesterov": True, "eps_hat": True}),
        (adam_jax.scale_by_adamax, reference.adamax, {}),
    ],
    ids=["adam", "amsgrad", "nesterov-eps_hat", "adamax"],
)
def test_quantized_updates_track_the_reference(make, ref_fn, options):
    grads = reference.gradient_sequence(200, dtype=np.float32)
    ours, state = run_updates(quantized_moments(make(**options), block_size=4, min_size=0), grads)
    ref = reference_per_leaf(ref_fn, grads, **options)
    for k in ref:
        assert np.all(np.isfinite(np.asarray(ours[k])))
        err = np.linalg.norm(np.asarray(ours[k]) - ref[k]) / np.linalg.norm(ref[k])
        # 8-bit floats with 3 mantissa bits (4 for AdaMax's u) are 6-12.5% apart, so each stored
        # value carries an unbiased rounding error of up to that much: about one significant
        # digit (measured 2-9% here; the training-loss tests below are the quality bar).
        assert err < 0.12, (k, err)
    moment_states = [
        n
        for n in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, QuantizedMoment))
        if isinstance(n, QuantizedMoment)
    ]
    assert len(moment_states) == 3 * len(ref) if options.get("amsgrad") else 2 * len(ref)


def test_one_step_from_a_stored_state_is_float32_adam_up_to_rounding():
    """The new scales are bounds (no value saturates): one 8-bit step from a stored state equals
    float32 Adam from the decoded state, within the storage's rounding."""
    rng = np.random.default_rng(3)
    p = {"w": jnp.asarray(rng.normal(size=(16, 512)), jnp.float32)}
    tx8, tx32 = quantized_moments(adam_jax.scale_by_adam(), min_size=0), adam_jax.scale_by_adam()
    state = tx8.init(p)
    for t in range(30):
        g = {"w": jnp.asarray(rng.normal(size=(16, 512)) * 10.0 ** rng.uniform(-3, 1), jnp.float32)}
        decoded = jax.tree.map(
            lambda x: dequantize(x) if isinstance(x, QuantizedMoment) else x,
            state.inner_state,
            is_leaf=lambda x: isinstance(x, QuantizedMoment),
        )
        want_u, want = tx32.update(g, decoded, p)
        got_u, state = jax.jit(tx8.update)(g, state, p)
        np.testing.assert_allclose(
            np.asarray(got_u["w"]), np.asarray(want_u["w"]), rtol=1e-4, atol=1e-6
        )
        for field, bits in [("mu", 4), ("nu", 5)]:
            stored = getattr(state.inner_state, field)["w"]
            back, exact = np.asarray(dequantize(stored)), np.asarray(getattr(want, field)["w"])
            scale = np.repeat(np.asarray(stored.scales), 256, axis=-1)
            assert np.all(np.abs(exact) <= scale * (1 + 1e-6)), (t, field)  # the bound holds
            # One grid step at the value (stochastic rounding goes to either neighbour).
            grid = _grid(field == "mu", bits)
            i = np.clip(np.searchsorted(grid, np.abs(exact) / scale, "right") - 1, 0, len(grid) - 2)
            step = scale * (grid[i + 1] - grid[i])
            assert np.all(np.abs(back - exact) <= step * (1 + 1e-5) + 1e-30), (t, field)


def _trajectories(grads, params, **adam_options):
    out = {}
    for kind, tx in [
        ("8bit", quantized_moments(adam_jax.adam(1e-2, **adam_options), min_size=0)),
        ("f32", adam_jax.adam(1e-2, **adam_options)),
    ]:
        thetas, state = param_trajectory(tx, grads, params)
        out[kind] = (np.asarray(thetas["w"], np.float64), state)
    return out


def test_one_gradient_then_zeros_for_1000_steps_stays_finite():
    params = {"w": jnp.ones(4)}
    grads = [{"w": jnp.array([1.0, 0, 0, 0])}] + [{"w": jnp.zeros(4)}] * 1000
    out = _trajectories(grads, params)
    ours, state = out["8bit"]
    assert np.all(np.isfinite(ours))
    chex_finite(state)
    np.testing.assert_array_equal(ours[:, 1:], 1.0)  # never touched, as with float32 Adam
    np.testing.assert_allclose(ours[:, 0], out["f32"][0][:, 0], rtol=0, atol=2e-3)


def chex_finite(state):
    for path, x in jax.tree_util.tree_leaves_with_path(state):
        if jnp.issubdtype(x.dtype, jnp.floating):
            assert np.all(np.isfinite(np.asarray(x, np.float32))), jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    "dtype, spike",
    [
        (jnp.float32, 1e-30),
        (jnp.float32, 1e20),
        (jnp.float32, 1e30),
        (jnp.bfloat16, 1e20),
        (jnp.bfloat16, 1e-30),
        (jnp.float16, 6e4),
    ],
)
def test_tiny_and_huge_gradients_keep_the_state_finite(dtype, spike):
    """A spike in one element at step 3 among gradients of size 0.1; one block per row.

    The 8-bit state and every update stay finite. Outside the spike's block the parameters follow
    float32 Adam. Inside it the block's scales are set by the spike and decay at b2 a step, so
    its other elements move less than with float32 moments (never more than the Section 2.1
    bound): the known cost of an outlier in block-wise storage. Float32 Adam itself has v = inf
    where g^2 overflows float32 (1e20, 1e30), and that element never moves again."""
    rng = np.random.default_rng(0)
    lr = 1e-2
    params = {"w": jnp.asarray(rng.normal(size=(4, 256)), dtype)}
    grads = [{"w": jnp.asarray(rng.normal(size=(4, 256)) * 0.1, dtype)} for _ in range(40)]
    grads[3] = {"w": grads[3]["w"].at[1, 5].set(spike)}
    out = _trajectories(grads, params)
    ours, state = out["8bit"]
    ref, _ = out["f32"]
    assert np.all(np.isfinite(ours))
    chex_finite(state)
    others = [0, 2, 3]
    # 40 steps of 0.01: 10% of the largest travel (3-bit mantissas, rounded stochastically). In
    # half precision an update that differs a little rounds the parameter to a neighbouring
    # bf16/fp16 number (0.031 apart at |w| in [4, 8)): the largest difference is 1-2 of those
    # (0.04-0.07 over 6 seeds, as with the scales of the earlier bound pass); the mean is ~0.005.
    tol = 0.04 if dtype == jnp.float32 else 0.08
    assert np.max(np.abs(ours - ref)[:, others]) <= tol
    assert np.mean(np.abs(ours - ref)[-1, others]) <= 0.01
    steps = np.abs(np.diff(ours, axis=0)) / lr
    bound = (1 - 0.9) / np.sqrt(1 - 0.999)  # Section 2.1, the sparse case
    half_ulp = 0.0 if dtype == jnp.float32 else np.max(np.abs(ours)) * 2.0**-7 / lr
    assert np.max(steps) <= bound * 1.01 + half_ulp


def test_nan_has_a_code_of_its_own_and_leaves_its_block_alone():
    x = np.linspace(-2.0, 3.0, 512).reshape(2, 256)
    x[0, 7] = x[1, 0] = np.nan
    for signed, bits in [(True, 4), (False, 5), (False, 4)]:
        values = x if signed else np.abs(x)
        q = quantize(jnp.asarray(values, jnp.float32), 256, signed=signed, exponent_bits=bits)
        np.testing.assert_allclose(q.scales[:, 0], np.nanmax(np.abs(values), axis=1))
        back = np.asarray(dequantize(q))
        np.testing.assert_array_equal(np.isnan(back), np.isnan(values))
        finite = ~np.isnan(values)
        np.testing.assert_allclose(back[finite], values[finite], rtol=0.07, atol=1e-3)


def test_a_nan_gradient_loses_one_element_as_with_float32_adam():
    """Without ``apply_if_finite``, one NaN in a gradient makes that element's moments and
    parameter NaN in float32 Adam, and nothing else. The 8-bit state does the same: NaN is stored
    under a code of its own and left out of its block's scale, so the other 255 elements of the
    block go on as before (they used to become NaN with it)."""
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(4, 512)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.normal(size=(4, 512)) * 0.1, jnp.float32)} for _ in range(20)]
    grads[2] = {"w": grads[2]["w"].at[1, 5].set(jnp.nan)}
    out = _trajectories(grads, params)
    (ours, state), (ref, _) = out["8bit"], out["f32"]
    lost = ~np.isfinite(ref)
    assert lost[-1].sum() == 1 and lost[-1, 1, 5]
    np.testing.assert_array_equal(~np.isfinite(ours), lost)
    assert np.max(np.abs(ours - ref)[~lost]) <= 0.04  # 20 steps of 0.01
    for q in (state.inner_state[0].mu["w"], state.inner_state[0].nu["w"]):
        back = np.asarray(dequantize(q))
        assert np.isnan(back[1, 5]) and np.isfinite(np.delete(back.ravel(), 512 + 5)).all()
        assert np.all(np.isfinite(np.asarray(q.scales)))


def test_zero_size_leaves_are_stored_and_updated():
    """A leaf with no elements (min_size=0 stores it in 8 bits) used to raise ZeroDivisionError
    when its blocks were cut; it has empty codes and scales, and no update."""
    params = {
        "a": jnp.zeros((0,)),
        "b": jnp.zeros((0, 300)),
        "c": jnp.zeros((5, 0)),
        "d": jnp.zeros((2, 0, 3)),
        "w": jnp.ones((4, 64)),
    }
    grads = jax.tree.map(lambda x: jnp.full(x.shape, 0.5), params)
    for block_size in (1, 256):
        tx = quantized_moments(adam_jax.adam(1e-2), block_size=block_size, min_size=0)
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        want, _ = adam_jax.adam(1e-2).update(grads, adam_jax.adam(1e-2).init(params), params)
        for k in params:
            assert isinstance(state.inner_state[0].mu[k], QuantizedMoment)
            assert updates[k].shape == params[k].shape
            np.testing.assert_allclose(updates[k], want[k], rtol=1e-6)
        assert state.inner_state[0].mu["b"].scales.shape == (0, 2 if block_size == 256 else 300)


def test_half_precision_parameters_track_float32_adam():
    rng = np.random.default_rng(1)
    for dtype in (jnp.bfloat16, jnp.float16):
        params = {"w": jnp.asarray(rng.normal(size=(8, 300)), dtype)}
        grads = [{"w": jnp.asarray(rng.normal(size=(8, 300)), dtype)} for _ in range(50)]
        out = _trajectories(grads, params)
        chex_finite(out["8bit"][1])
        err = np.abs(out["8bit"][0] - out["f32"][0])
        # The largest of 2,400 parameters after 50 steps of 0.01 (bf16 spacing at |w| ~ 2-4 is
        # 0.016-0.031); the mean is the tighter check.
        assert np.max(err[-1]) < 0.08 and np.mean(err[-1]) < 0.01, dtype


def test_complex_parameters_are_refused_at_init():
    tx = quantized_moments(adam_jax.adam(1e-3), min_size=0)
    with pytest.raises(TypeError, match=r"parameter leaf \['c'\] is complex"):
        tx.init({"w": jnp.ones(3), "c": jnp.ones(3, jnp.complex64)})


def test_arguments_are_checked_at_construction():
    for bad in ["adam", None, adam_jax.adam]:
        with pytest.raises(TypeError, match=r"tx must be an optax\.GradientTransformation"):
            quantized_moments(bad)
    for bad in [0, 2.5, -3, True, "64"]:
        with pytest.raises(ValueError, match="block_size"):
            quantized_moments(adam_jax.adam(), block_size=bad)
    for bad in [-1, 2.5, True, "64"]:
        with pytest.raises(ValueError, match="min_size"):
            quantized_moments(adam_jax.adam(), min_size=bad)
    tx = quantized_moments(adam_jax.adam(), block_size=np.int64(64), min_size=np.int64(0))
    state = tx.init({"w": jnp.zeros((4, 64))})
    assert state.inner_state[0].mu["w"].scales.shape == (4, 1)
    with pytest.raises(ValueError, match="no scale_by_adam/scale_by_adamax state"):
        quantized_moments(optax.sgd(1e-3)).init({"w": jnp.zeros(3)})


def test_leaves_under_min_size_keep_the_float32_moments_of_tx():
    """By default leaves under 4096 elements keep tx's own float32 moments: their updates are
    those of float32 adam_jax.adam, bit for bit, and match optax.adam; the large leaf is stored in
    8 bits."""
    params = {"w": jnp.ones((64, 128)), "b": jnp.zeros(4095), "s": jnp.zeros(())}
    txs = {
        "8bit": quantized_moments(adam_jax.adam(1e-2)),
        "f32": adam_jax.adam(1e-2),
        "optax": optax.adam(1e-2),
    }
    states = {k: tx.init(params) for k, tx in txs.items()}
    mu = states["8bit"].inner_state[0].mu
    assert isinstance(mu["w"], QuantizedMoment)
    assert all(isinstance(mu[k], jax.Array) and mu[k].dtype == jnp.float32 for k in ("b", "s"))
    for step in range(5):
        keys = jax.random.split(jax.random.PRNGKey(step), 3)
        grads = {
            k: jax.random.normal(key, params[k].shape) * 10.0**step
            for k, key in zip(params, keys, strict=True)
        }
        out = {}
        for k, tx in txs.items():
            out[k], states[k] = jax.jit(tx.update)(grads, states[k], params)
        for leaf in ("b", "s"):
            np.testing.assert_array_equal(out["8bit"][leaf], out["f32"][leaf])
            np.testing.assert_allclose(out["8bit"][leaf], out["optax"][leaf], rtol=5e-5, atol=1e-9)
        if step:  # (the first update is +-lr for both)
            assert not np.array_equal(out["8bit"]["w"], out["f32"]["w"])  # 8 bits do round


def test_state_is_a_pytree_for_eval_shape_tree_utilities_and_repr():
    tx = quantized_moments(adam_jax.adam(1e-3, amsgrad=True), min_size=0)
    params = {"w": jnp.zeros((8, 512)), "b": jnp.zeros(8)}
    abstract = jax.eval_shape(tx.init, params)
    state = tx.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert ".inner_state[0].mu['w'].codes" in paths
    assert ".inner_state[0].nu_max['b'].scales" in paths
    doubled = jax.tree.map(lambda x: x, state)
    assert jax.tree.structure(doubled) == jax.tree.structure(state)
    assert repr(state.inner_state[0].nu["w"]) == (
        "QuantizedMoment(codes=uint8[8, 512], scales=float32[8, 2], dtype=float32, "
        "block_size=256, exponent_bits=5)"
    )
    jax.eval_shape(tx.update, params, abstract, params)


def test_stochastic_rounding_is_unbiased_and_lets_a_slow_average_move():
    """Why the codes are rounded stochastically: an average with decay 0.999 beside a block
    maximum that stays. Rounded to nearest it never moves (0.999 x rounds back to x); rounded
    stochastically (unbiased in the stored value) it decays as it should."""
    x = jnp.full((1, 4096), 0.3).at[0, 0].set(1.0)

    def stored(v, salt=None):  # the value v is stored as, rounded stochastically with a salt
        return dequantize(quantize(v, 4096, signed=False, exponent_bits=5, salt=salt))

    # jitted (the ops are those of the eager calls; eager dispatch of 200 steps took minutes)
    once = jax.jit(lambda salt: stored(x, salt)[0, 1:])
    means = [float(jnp.mean(once(jnp.uint32(s)))) for s in range(8)]
    assert abs(np.mean(means) - 0.3) < 3e-4  # unbiased

    def step(i, v):
        v_sr, v_rn = stored(0.999 * v[0], i.astype(jnp.uint32)), stored(0.999 * v[1])
        return v_sr.at[0, 0].set(1.0), v_rn.at[0, 0].set(1.0)

    v_sr, v_rn = jax.jit(lambda v: jax.lax.fori_loop(0, 200, step, (v, v)))(x)
    assert float(jnp.min(v_rn[0, 1:])) > 0.29  # stuck near 0.3; the true value is 0.2456
    np.testing.assert_allclose(float(jnp.mean(v_sr[0, 1:])), 0.3 * 0.999**200, rtol=0.01)


@pytest.mark.parametrize("name", ["mlp", "vae"])
def test_final_training_loss_within_one_percent_of_float32_state(name):
    """The paper's MLP (Section 6.2) and VAE (Section 6.4) on the digits, 30 epochs of Adam.

    The final loss is the mean of the last 5 epochs over seeds 0-2: single runs of the MLP (with
    dropout) differ by 1-2% from any perturbation, e.g. eps = 1.01e-8 instead of 1e-8.
    """
    ds = data.load("mnist")
    model = models.mlp(64, 10) if name == "mlp" else models.vae(64)
    hp = {"lr": np.array([1e-3])}
    losses = {}
    for kind, wrap in [("f32", lambda tx: tx), ("8bit", quantized_moments)]:
        make = lambda h, wrap=wrap: wrap(adam_jax.adam(h["lr"]))
        runs = [train.train_runs(model, ds.x, ds.y, make, hp, epochs=30, seed=s) for s in range(3)]
        losses[kind] = np.mean([r[0, -5:].mean() for r in runs])
    assert abs(losses["8bit"] - losses["f32"]) <= 0.01 * losses["f32"], losses


def test_adamax_training_loss_within_one_percent_of_float32_state():
    ds = data.load("mnist")
    model = models.vae(64)
    hp = {"lr": np.array([2e-3])}
    losses = {}
    for kind, wrap in [("f32", lambda tx: tx), ("8bit", quantized_moments)]:
        make = lambda h, wrap=wrap: wrap(adam_jax.adamax(h["lr"]))
        runs = [train.train_runs(model, ds.x, ds.y, make, hp, epochs=30, seed=s) for s in range(2)]
        losses[kind] = np.mean([r[0, -5:].mean() for r in runs])
    assert abs(losses["8bit"] - losses["f32"]) <= 0.01 * losses["f32"], losses


def test_rounding_in_the_optimizer_lets_a_slow_average_of_equal_elements_move():
    """The optimizer's own rounding, on the case the stochastic rounding is for: AdaMax's
    u = max(b2 u, |g|) with b2 = 0.999 decays by 0.1% a step beside a block maximum that stays
    (g = 1 in element 0), far below the code spacing (about 1.4% at 0.3). 4095 elements hold the
    same value and see the same (zero) gradient: their mean must follow 0.3 * 0.999^t, which
    needs numbers that differ between elements (a dither drawn from the values alone rounds them
    all alike, and one trajectory drifts by several code steps)."""
    tx = quantized_moments(adam_jax.scale_by_adamax(b2=0.999), block_size=4096, min_size=0)
    params = {"w": jnp.zeros((1, 4096))}
    state = tx.init(params)
    update = jax.jit(tx.update)
    _, state = update({"w": jnp.full((1, 4096), 0.3).at[0, 0].set(1.0)}, state, params)
    zeros = {"w": jnp.zeros((1, 4096)).at[0, 0].set(1.0)}
    for _ in range(199):
        _, state = update(zeros, state, params)
    u = np.asarray(dequantize(state.inner_state.nu["w"]), np.float64)[0]
    # The block maximum gets the largest code, its scale 1 / (that code's value): it is exact.
    assert state.inner_state.nu["w"].codes[0, 0] == len(code_values(False, 4)) - 1
    np.testing.assert_allclose(u[0], 1.0, rtol=1e-7)
    np.testing.assert_allclose(np.mean(u[1:]), 0.3 * 0.999**199, rtol=0.01)


def test_leaves_of_one_shape_share_compiled_kernels():
    """Compile time grows with the kernels XLA builds: with nothing leaf-specific in the 8-bit
    step (no per-leaf rounding constant), 6 leaves of one shape need about the kernels of 1, and
    tracing does each per-leaf step once per shape."""
    import re

    tx = quantized_moments(adam_jax.adam(1e-3), block_size=64, min_size=0)

    def kernels(n: int) -> tuple[int, int]:
        params = [jnp.ones((32, 128)) * (i + 1) for i in range(n)]
        state = tx.init(params)

        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        lowered = jax.jit(step).lower(params, state, params)
        hlo = lowered.compile().as_text()
        bodies = re.findall(r"\n%?fused_computation[\w.\-]* .*?\{(.*?)\n\}", hlo, re.S)
        distinct = {re.sub(r"%[\w.\-]+|metadata=\{[^}]*\}", "", b) for b in bodies}
        return len(bodies), len(distinct), lowered.as_text().count(" = ")

    one, six = kernels(1), kernels(6)
    assert six[0] >= 4 * one[0]  # every leaf has its own kernels ...
    # ... and mostly the same kernels: a per-leaf constant would add 2 or more per extra leaf
    # (10); XLA still keeps a few copies that differ in their parameters' order
    assert six[1] - one[1] < 5
    assert six[2] < 3 * one[2]  # the per-leaf steps were lowered once, then called
