"""Property-based tests (Hypothesis) over trees, shapes, dtypes, hyperparameters and gradients.

For trees of leaves of any shape (0-size and scalars included, ``None`` leaves and empty trees
too), of dtype float16, bfloat16, float32, float64 (with jax x64) or complex64, hyperparameters
drawn across their valid ranges and every structural option, and a random gradient sequence:

- the updates equal the NumPy float64 reference of the paper (``tests/reference.py``), step by
  step, within the precision of the gradient's dtype;
- they come back in the gradient's dtype, in the gradient's tree structure, and are finite;
- ``jax.jit`` and op-by-op execution agree;
- the Section 2.1 bound holds with eps = 0 (see ``test_adam_section_2_1_bound_in_the_papers_cases``
  for which form of it).

Finiteness needs Algorithm 1 to be defined: with eps = 0, the first step divides 0 by 0 where the
first gradient is 0, and a later step divides m by 0 where v has become 0 (b2 = 0 and a zero
gradient). So Adam's sequences have a non-zero first gradient everywhere and b2 >= 0.5 (v_t > 0 for
every t), and eps > 0 is drawn as well. AdaMax needs neither: its update is 0 where u_t = 0.

Examples are derandomized so CI is reproducible; ``ADAM_JAX_FUZZ=10`` runs ten times as many,
freshly random.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import adam_jax
from tests import reference

_FUZZ = int(os.environ.get("ADAM_JAX_FUZZ", "0"))


def _settings(max_examples: int):
    return settings(
        max_examples=max_examples * max(_FUZZ, 1),
        deadline=None,  # the first call of each example compiles
        derandomize=not _FUZZ,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no slow "explain" phase
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------------
# Strategies.

DTYPES = ["float16", "bfloat16", "float32", "float64", "complex64"]
# Relative precision of the output dtype, and of the dtype arithmetic runs in (at least float32).
OUT_EPS = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "complex64": 2.0**-24}
OUT_EPS["float64"] = 2.0**-53


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A leaf to be: its shape and dtype (a plain class, so a pytree leaf)."""

    shape: tuple[int, ...]
    dtype: str


@st.composite
def trees(draw, x64: bool):
    dtypes = DTYPES if x64 else [d for d in DTYPES if d != "float64"]
    leaf = st.builds(
        Leaf, st.lists(st.integers(0, 4), max_size=3).map(tuple), st.sampled_from(dtypes)
    )
    node = st.recursive(
        leaf | st.none(),
        lambda children: (
            st.lists(children, max_size=3).map(tuple)
            | st.dictionaries(
                st.sampled_from(["kernel", "bias", "layer", "w"]), children, max_size=3
            )
        ),
        max_leaves=5,
    )
    return draw(node)


def _is_leaf(x) -> bool:
    return isinstance(x, Leaf)


def _record(spec) -> None:
    """Label the example for ``--hypothesis-show-statistics``: which dtypes and edge cases."""
    leaves = jax.tree.leaves(spec, is_leaf=_is_leaf)
    if not leaves:
        event("empty tree")
    if any(x is None for x in jax.tree.leaves(spec, is_leaf=lambda x: x is None or _is_leaf(x))):
        event("None leaf")
    for leaf in leaves:
        event(f"dtype {leaf.dtype}")
        if 0 in leaf.shape:
            event("zero-size leaf")


def gradient_sequence(spec, steps: int, seed: int, zero_first: bool):
    """``steps`` gradient trees shaped by ``spec``: magnitudes from 1e-2 to 1e2, random signs or
    phases, about one element in five exactly 0 (never at t = 1 unless ``zero_first``)."""
    rng = np.random.default_rng(seed)

    def one(leaf: Leaf, t: int):
        mag = 10.0 ** rng.uniform(-2, 2, size=leaf.shape)
        if leaf.dtype == "complex64":
            x = mag * np.exp(2j * np.pi * rng.uniform(size=leaf.shape))
        else:
            x = mag * rng.choice([-1.0, 1.0], size=leaf.shape)
        if t > 1 or zero_first:
            x = np.where(rng.uniform(size=leaf.shape) < 0.2, 0.0, x)
        return jnp.asarray(x, leaf.dtype)

    def at(t: int):
        return jax.tree.map(lambda leaf: one(leaf, t), spec, is_leaf=_is_leaf)

    return [at(t) for t in range(1, steps + 1)]


def run(tx, grads_seq, *, jit: bool):
    """Updates of ``tx`` over the sequence, params (zeros shaped like the gradients) passed in."""
    params = jax.tree.map(jnp.zeros_like, grads_seq[0])
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    out = []
    for g in grads_seq:
        u, state = update(g, state, params)
        out.append(u)
    return out


def per_leaf_reference(ref_fn, grads_seq, *, magnitude=False, **hyper):
    """The reference on each leaf's sequence (in float64/complex128): a list over leaves of arrays
    stacked over steps. ``magnitude=True`` runs it on |g| instead: every term of the moments then
    counts with its size, which bounds the rounding error of the sums (see ``check_against``)."""
    columns = zip(*[jax.tree.leaves(g) for g in grads_seq], strict=True)
    out = []
    for column in columns:
        wide = [
            np.asarray(g).astype(np.result_type(np.asarray(g).dtype, np.float64)) for g in column
        ]
        if magnitude:
            wide = [np.abs(g) for g in wide]
        out.append(np.stack(ref_fn(wide, **hyper)))
    return out


def check_against(grads_seq, ours, expected, magnitude, b1, b2):
    """Structure, dtype, finiteness and closeness to the reference, leaf by leaf and step by step.

    The tolerance is elementwise: a few units in the last place of the gradient's dtype relative
    to the reference value, plus the rounding of the moment sums, which is relative to the sum of
    the sizes of their terms: the reference run on |g| (``magnitude``), times the precision of the
    dtype arithmetic runs in (float32, or float64 for float64 leaves). Rounding b to that dtype
    changes the weights b^k of the average by a relative k*eps, about eps/(1 - b) over its
    horizon, so that enters the relative part (a bound; the measured error is far smaller)."""
    for t, (g, u) in enumerate(zip(grads_seq, ours, strict=True)):
        assert jax.tree.structure(u) == jax.tree.structure(g)
        for i, (gl, ul) in enumerate(zip(jax.tree.leaves(g), jax.tree.leaves(u), strict=True)):
            dtype = jnp.result_type(gl)
            assert ul.dtype == dtype, (t, i, ul.dtype, dtype)
            assert ul.shape == gl.shape
            got = np.asarray(ul).astype(np.complex128 if np.iscomplexobj(ul) else np.float64)
            assert np.isfinite(got).all(), (t, i, got)
            want = expected[i][t]
            compute_eps = OUT_EPS["float64"] if dtype == jnp.float64 else OUT_EPS["float32"]
            rtol = 4 * OUT_EPS[dtype.name] + 16 * compute_eps * (1 / (1 - b1) + 1 / (1 - b2))
            # Results below the smallest normal number of the arithmetic or output dtype underflow.
            tiny = float(jnp.finfo(dtype).smallest_subnormal) + (
                1e-300 if compute_eps < 1e-10 else 1e-37
            )
            tol = rtol * np.abs(want) + 32 * compute_eps * magnitude[i][t] + tiny
            bad = np.abs(got - want) > tol
            assert not bad.any(), (
                f"step {t + 1} leaf {i} ({dtype}): got {got[bad][:3]}, want {want[bad][:3]}"
            )


# ---------------------------------------------------------------------------------------------
# Adam.

adam_hyper = st.fixed_dictionaries(
    {
        "b1": st.floats(0.0, 0.99),
        "b2": st.floats(0.5, 0.9999),
        "eps": st.sampled_from([0.0, 1e-8, 1e-3]),
        "eps_root": st.sampled_from([0.0, 1e-8]),
        "eps_hat": st.booleans(),
        "bias_correction": st.booleans(),
        "b1_decay": st.sampled_from([1.0, 0.99]),
        "amsgrad": st.booleans(),
        "nesterov": st.booleans(),
    }
)


@_settings(max_examples=30)
@given(
    x64=st.booleans(),
    data=st.data(),
    hyper=adam_hyper,
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_adam_matches_reference_on_any_tree(x64, data, hyper, steps, seed):
    with jax.enable_x64(x64):
        spec = data.draw(trees(x64))
        _record(spec)
        grads = gradient_sequence(spec, steps, seed, zero_first=False)
        tx = adam_jax.scale_by_adam(**hyper)
        jitted = run(tx, grads, jit=True)
        eager = run(tx, grads, jit=False)
        expected = per_leaf_reference(reference.adam, grads, **hyper)
        magnitude = per_leaf_reference(reference.adam, grads, magnitude=True, **hyper)
        check_against(grads, jitted, expected, magnitude, hyper["b1"], hyper["b2"])
        check_against(grads, eager, expected, magnitude, hyper["b1"], hyper["b2"])

        # Section 2.1 with eps >= 0 (the bound for eps = 0 holds a fortiori): for any sequence,
        # |m_hat/sqrt(v_hat)| <= tests/reference.strict_step_bound (Cauchy-Schwarz). AMSGrad's
        # larger denominator and eps_hat (= Algorithm 1 when eps = 0) only make steps smaller.
        plain = hyper["bias_correction"] and hyper["b1_decay"] == 1.0 and not hyper["nesterov"]
        if plain and hyper["eps"] == 0.0 and hyper["eps_root"] == 0.0:
            for t, u in enumerate(jitted, start=1):
                bound = reference.strict_step_bound(hyper["b1"], hyper["b2"], t)
                for leaf in jax.tree.leaves(u):
                    mag = np.abs(np.asarray(leaf).astype(np.complex128))
                    assert (mag <= bound * (1 + 8 * OUT_EPS[leaf.dtype.name]) + 1e-6).all()


@_settings(max_examples=20)
@given(
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.5, 0.9999),
    steps=st.integers(1, 60),
    case=st.sampled_from(["sparse", "constant"]),
    magnitudes=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=4),
    negative=st.booleans(),
)
def test_adam_section_2_1_bound_in_the_papers_cases(b1, b2, steps, case, magnitudes, negative):
    """The paper's |Delta_t| <= alpha (1-b1)/sqrt(1-b2) if (1-b1) > sqrt(1-b2), else alpha, eps = 0.

    It holds exactly in the cases Section 2.1 discusses: the extreme sparse case (gradient zero at
    every step but the current one) and a constant gradient (|Delta_t| = alpha: the step is the
    sign of g). It is not a bound for every sequence: i.i.d. N(0, 1) gradients exceed it by up to
    2% and i.i.d. U(0, 1) gradients by up to 20% (measured with the reference for five common
    (b1, b2), 300 steps of 200 elements), which is why the test above uses the Cauchy-Schwarz form.
    """
    g = np.asarray(magnitudes, np.float32) * (-1.0 if negative else 1.0)
    if case == "sparse":
        grads = [{"w": np.zeros_like(g)} for _ in range(steps - 1)] + [{"w": g}]
    else:
        grads = [{"w": g} for _ in range(steps)]
    tx = adam_jax.scale_by_adam(b1, b2, eps=0.0)
    last = np.asarray(run(tx, [jax.tree.map(jnp.asarray, x) for x in grads], jit=True)[-1]["w"])
    bound = reference.step_bound(b1, b2)
    assert (np.abs(last) <= bound * (1 + 1e-5)).all(), (last, bound)
    if case == "constant":  # the step has size alpha, in the direction of -g
        np.testing.assert_allclose(last, np.sign(g), rtol=1e-5)
    # Scale invariance (Section 2.1): c*g gives the same step; exact for c a power of two.
    scaled = [{"w": jnp.asarray(x["w"] * np.float32(2.0**-7))} for x in grads]
    np.testing.assert_array_equal(np.asarray(run(tx, scaled, jit=True)[-1]["w"]), last)


# ---------------------------------------------------------------------------------------------
# AdaMax.

adamax_hyper = st.fixed_dictionaries(
    {
        "b1": st.floats(0.0, 0.99),
        "b2": st.floats(0.5, 0.9999),
        "eps": st.sampled_from([0.0, 1e-8]),
        "bias_correction": st.booleans(),
        "b1_decay": st.sampled_from([1.0, 0.99]),
    }
)


def adamax_bound(b1, b2, t):
    """|m_hat/u_t| for any sequence: |g_{t-k}| <= u_t/b2^k, so
    |m_t| <= (1-b1) u_t sum_{k<t} (b1/b2)^k; then divide by 1 - b1^t (1 when b1 = 0)."""
    r = b1 / b2
    geometric = t if r == 1 else (1 - r**t) / (1 - r)
    return (1 - b1) * geometric / (1 - b1**t)


@_settings(max_examples=25)
@given(
    x64=st.booleans(),
    data=st.data(),
    hyper=adamax_hyper,
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    zero_first=st.booleans(),
)
def test_adamax_matches_reference_on_any_tree(x64, data, hyper, steps, seed, zero_first):
    with jax.enable_x64(x64):
        spec = data.draw(trees(x64))
        _record(spec)
        grads = gradient_sequence(spec, steps, seed, zero_first=zero_first)
        tx = adam_jax.scale_by_adamax(**hyper)
        jitted = run(tx, grads, jit=True)
        eager = run(tx, grads, jit=False)
        expected = per_leaf_reference(reference.adamax, grads, **hyper)
        magnitude = per_leaf_reference(reference.adamax, grads, magnitude=True, **hyper)
        check_against(grads, jitted, expected, magnitude, hyper["b1"], hyper["b2"])
        check_against(grads, eager, expected, magnitude, hyper["b1"], hyper["b2"])
        b1 = hyper["b1"]

        # Section 7.1: |Delta_t| <= alpha up to the factor of adamax_bound for any sequence.
        if hyper["bias_correction"] and hyper["b1_decay"] == 1.0:
            for t, u in enumerate(jitted, start=1):
                bound = adamax_bound(b1, hyper["b2"], t)
                for leaf in jax.tree.leaves(u):
                    mag = np.abs(np.asarray(leaf).astype(np.complex128))
                    assert (mag <= bound * (1 + 8 * OUT_EPS[leaf.dtype.name]) + 1e-6).all()
