"""Hyperparameter validation (``adam_jax._validate``), trace-time argument checks (``_checks``),
and the non-finite-gradient recipe (``optax.apply_if_finite``) on a training run."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import _validate
from tests import reference

# ---------------------------------------------------------------------------------------------
# _validate: the helpers every constructor calls.


@pytest.mark.parametrize(
    "check, good, bad, allowed",
    [
        (
            _validate.check_decay,
            [0, 0.0, 0.5, np.float32(0.9), np.array(0.99)],
            [1, 1.0, -1e-9],
            "[0, 1)",
        ),
        (_validate.check_nonnegative, [0, 1e-8, 3], [-1e-12, math.inf], "[0, inf)"),
        (
            lambda n, v: _validate.check_interval(n, v, 0.0, 1.0, low_open=True, high_open=False),
            [1.0, 1e-8],
            [0.0, 1.0 + 1e-12],
            "(0, 1]",
        ),
    ],
)
def test_interval_checks_name_argument_value_and_range(check, good, bad, allowed):
    for value in good:
        check("x", value)
    for value in [*bad, math.nan]:
        with pytest.raises(ValueError) as err:
            check("x", value)
        assert str(err.value) == f"x={value!r} is out of range: x must lie in {allowed}."


@pytest.mark.parametrize(
    "value, kind",
    [
        ("0.9", "str"),
        (True, "bool"),
        (np.bool_(True), "bool"),
        (1j, "complex"),
        (None, "NoneType"),
        ([0.9], "list"),
        (np.complex64(1), "complex64"),
        (np.ones(2), "ndarray"),
    ],
)
def test_wrong_kind_of_hyperparameter_is_a_type_error(value, kind):
    with pytest.raises(TypeError) as err:
        _validate.check_decay("b1", value)
    assert str(err.value) == f"b1={value!r} must be a real number; got {kind}."


def test_jax_values_are_checked_for_range_when_concrete_and_for_shape_and_dtype_when_traced():
    _validate.check_decay("b1", jnp.float32(0.5))
    with pytest.raises(ValueError, match=r"b1=5 \(a JAX array\) is out of range"):
        _validate.check_decay("b1", jnp.float32(5.0))  # concrete: its value is known now
    with pytest.raises(
        TypeError, match=r"b1 must be a real scalar; got a JAX array of shape \(3,\)"
    ):
        _validate.check_decay("b1", jnp.zeros(3))
    with pytest.raises(TypeError, match="dtype complex64"):
        _validate.check_decay("b1", jnp.complex64(0.5))

    seen = []

    @jax.jit
    def f(b1):  # a tracer is neither concretised nor rejected (even out of range)
        _validate.check_decay("b1", b1)
        seen.append(type(b1))
        return b1

    assert float(f(5.0)) == 5.0
    assert issubclass(seen[0], jax.core.Tracer)


def test_learning_rate_accepts_schedules_and_names_its_argument():
    _validate.check_learning_rate(optax.constant_schedule(-1.0))  # callables are not evaluated
    with pytest.raises(ValueError, match=r"^lr=-0.1 is out of range: lr must lie in \[0, inf\)\.$"):
        _validate.check_learning_rate(-0.1, name="lr")
    with pytest.raises(TypeError, match="learning_rate='1e-3' must be a real number"):
        _validate.check_learning_rate("1e-3")


def test_decay_pair_flag_dtype_and_positive_int():
    _validate.check_decay_pair("betas", (0.9, 0.999))
    _validate.check_decay_pair("betas", [0.0, 0.5])
    with pytest.raises(
        ValueError, match=r"^betas\[1\]=1.0 is out of range: betas\[1\] must lie in"
    ):
        _validate.check_decay_pair("betas", (0.9, 1.0))
    for bad in [0.9, (0.9,), (0.9, 0.99, 0.999), "ab"]:
        with pytest.raises(TypeError, match=r"must be a pair \(beta1, beta2\)"):
            _validate.check_decay_pair("betas", bad)

    _validate.check_flag("amsgrad", np.bool_(False))
    with pytest.raises(TypeError, match=r"^amsgrad=0 must be a Python bool"):
        _validate.check_flag("amsgrad", 0)

    for ok in [None, jnp.float32, "bfloat16", jnp.complex64, np.float16]:
        _validate.check_dtype("mu_dtype", ok)
    with pytest.raises(TypeError, match=r"^mu_dtype=bool must be a floating-point or complex"):
        _validate.check_dtype("mu_dtype", jnp.bool_)
    with pytest.raises(TypeError, match=r"^mu_dtype='flaot32' is not a dtype"):
        _validate.check_dtype("mu_dtype", "flaot32")

    _validate.check_positive_int("every_k", np.int64(3))
    with pytest.raises(
        ValueError, match=r"^every_k=0 is out of range: every_k must be an integer >= 1"
    ):
        _validate.check_positive_int("every_k", 0)
    for bad in [True, 2.0, "2"]:
        with pytest.raises(TypeError, match="must be an integer >= 1"):
            _validate.check_positive_int("every_k", bad)


# ---------------------------------------------------------------------------------------------
# Every public constructor, found by introspection (modules added later are included when they
# exist): each hyperparameter it has, under a name below, is rejected at construction when out of
# range, with a ValueError naming the argument and the value.

BAD_VALUES = {  # argument name -> an out-of-range value
    "learning_rate": -1.0,
    "lr": -1.0,
    "init_value": -1.0,
    "b1": 1.5,
    "b2": 1.5,
    "beta_1": 1.5,
    "beta_2": 1.5,
    "beta1": 1.5,
    "beta2": 1.5,
    "decay": 1.5,
    "eps": -1.0,
    "epsilon": -1.0,
    "eps_root": -1.0,
    "weight_decay": -1.0,
    "b1_decay": 0.0,
}
PAIR_BAD_VALUES = {"betas": (0.9, 1.5)}
# Where a constructor gives one of these names another meaning (say a learning-rate ``decay``
# >= 0), put its own out-of-range value here: {("adam_jax.module.name", "arg"): value}.
BAD_VALUE_OVERRIDES: dict[tuple[str, str], object] = {}
OPTIONAL_MODULES = ["adam_jax.compat", "adam_jax.monitoring", "adam_jax.schedules"]


def _public_constructors():
    modules = [adam_jax] + [
        importlib.import_module(name)
        for name in OPTIONAL_MODULES
        if importlib.util.find_spec(name) is not None
    ]
    found = {}
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                found[f"{module.__name__}.{name}"] = obj
    return found


def _validation_cases():
    cases = []
    for qualname, fn in _public_constructors().items():
        params = inspect.signature(fn).parameters
        for arg, bad in {**BAD_VALUES, **PAIR_BAD_VALUES}.items():
            if arg in params:
                bad = BAD_VALUE_OVERRIDES.get((qualname, arg), bad)
                cases.append(pytest.param(fn, arg, bad, id=f"{qualname}({arg}={bad!r})"))
    return cases


VALIDATION_CASES = _validation_cases()


def test_introspection_finds_the_core_constructors():
    ids = {case.id.split("(")[0] for case in VALIDATION_CASES}
    expected = ["adam", "adamax", "scale_by_adam", "scale_by_adamax", "bias_correction"]
    assert {f"adam_jax.{name}" for name in expected} <= ids
    assert "adam_jax.inverse_sqrt_schedule" in ids


# Valid values for required arguments that are not the one under test.
GOOD_VALUES = {
    **{name: 0.5 for name in BAD_VALUES},
    "betas": (0.9, 0.999),
    "inner": optax.identity(),
    "tx": optax.identity(),
    "optimizer": optax.identity(),
}


@pytest.mark.parametrize("fn, arg, bad", VALIDATION_CASES)
def test_every_public_constructor_rejects_out_of_range_hyperparameters(fn, arg, bad):
    required = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name != arg
    ]
    unknown = [name for name in required if name not in GOOD_VALUES]
    assert not unknown, f"add a valid value for {unknown} to GOOD_VALUES in {__file__}"
    with pytest.raises(ValueError) as err:
        fn(**{name: GOOD_VALUES[name] for name in required}, **{arg: bad})
    message = str(err.value)
    assert arg in message and "out of range" in message, message
    shown = bad[1] if isinstance(bad, tuple) else bad
    assert repr(shown) in message, message


# ---------------------------------------------------------------------------------------------
# _checks: update's arguments, beyond the cases of tests/test_errors.py.

PARAMS = {"layer": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}}


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda: adam_jax.scale_by_adamax(), "scale_by_adamax"),
        (lambda: adam_jax.adamax(1e-3), "scale_by_adamax"),
        (lambda: adam_jax.scale_by_adam(amsgrad=True), "scale_by_adam"),
    ],
)
def test_every_update_checks_shapes_and_dtypes(make, where):
    tx = make()
    state = tx.init(PARAMS)
    bad_shape = {"layer": {"kernel": jnp.ones((3, 5)), "bias": jnp.ones(4)}}
    with pytest.raises(
        ValueError,
        match=rf"^{where}: gradient leaf \['layer'\]\['kernel'\] has shape \(3, 5\), but in the optimizer state \(mu\) it has shape \(3, 4\)\.",
    ):
        jax.jit(tx.update)(bad_shape, state)
    bad_dtype = {"layer": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4, jnp.bool_)}}
    with pytest.raises(
        TypeError, match=rf"^{where}: gradient leaf \['layer'\]\['bias'\] has dtype bool;"
    ):
        tx.update(bad_dtype, state)


def test_bias_correction_checks_its_arguments():
    tx = adam_jax.bias_correction(0.9)
    state = tx.init(PARAMS)
    with pytest.raises(TypeError, match=r"^bias_correction: gradient leaf \['w'\] has dtype int32"):
        tx.update({"w": jnp.ones(3, jnp.int32)}, state)
    with pytest.raises(
        ValueError,
        match=r"^bias_correction: gradient leaf \['w'\] has shape \(3,\), but in the params it has shape \(2,\)",
    ):
        tx.update({"w": jnp.ones(3)}, state, {"w": jnp.ones(2)})


def test_structure_error_when_only_the_containers_differ():
    tx = adam_jax.scale_by_adam()
    state = tx.init([jnp.zeros(2), jnp.zeros(3)])
    with pytest.raises(ValueError, match="the leaf paths agree but the containers differ"):
        tx.update((jnp.ones(2), jnp.ones(3)), state)


def test_state_corrupted_between_moments_is_caught():
    """A state whose second moment does not match (e.g. restored from the wrong checkpoint)."""
    tx = adam_jax.scale_by_adam()
    state = tx.init({"w": jnp.zeros(3)})
    state = state._replace(nu={"w": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"in the optimizer state \(nu\) it has shape \(4,\)"):
        tx.update({"w": jnp.ones(3)}, state)


def test_long_lists_of_missing_leaves_are_abbreviated():
    tx = adam_jax.scale_by_adam()
    state = tx.init({f"w{i}": jnp.zeros(1) for i in range(5)})
    with pytest.raises(
        ValueError, match=r"lacks leaf \['w0'\], \['w1'\], \['w2'\] and 2 more that"
    ):
        tx.update({}, state)


def test_checks_accept_what_is_legitimate():
    """Mixed precision (bfloat16 or float64 gradients for float32 parameters): no error."""
    tx = adam_jax.adam(1e-3)
    p32 = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.ones(3, jnp.bfloat16)}, tx.init(p32), p32)
    assert updates["w"].dtype == jnp.bfloat16
    with jax.enable_x64(True):  # float64 gradients into float32 state
        updates, _ = tx.update({"w": jnp.ones(3, jnp.float64)}, tx.init(p32), p32)
        assert updates["w"].dtype == jnp.float64


def _grads_for(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def test_the_suggested_fixes_for_integer_leaves_work():
    """The TypeError tells the user to mask integer leaves; both recipes run and equal plain Adam."""
    params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
    float_grads = [_grads_for({"w": params["w"]}, s) for s in range(4)]
    expected = np.stack(reference.adam([g["w"] for g in float_grads]))

    masked = optax.masked(adam_jax.scale_by_adam(), {"w": True, "step": False})
    partitioned = optax.partition(
        {"adam": adam_jax.scale_by_adam(), "frozen": optax.set_to_zero()},
        {"w": "adam", "step": "frozen"},
    )
    for tx in [masked, partitioned]:
        state = tx.init(params)
        got = []
        for g in float_grads:
            grads = {"w": g["w"], "step": jnp.zeros((), jnp.int32)}
            updates, state = jax.jit(tx.update)(grads, state, params)
            got.append(updates["w"])
        np.testing.assert_allclose(np.stack(got), expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# A non-finite gradient at step k, guarded by optax.apply_if_finite: the run continues and ends
# where the run without that batch ends.

STEPS, K = 40, 17


def _batches():
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=5)
    out = []
    for _ in range(STEPS):
        x = rng.normal(size=(16, 5))
        out.append((x, x @ w_true + 0.1 * rng.normal(size=16)))
    return out


def _train(tx, batches):
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}

    def loss(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for x, y in batches:
        params, state = step(
            params, state, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        )
    return params, state


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_batch_at_step_k_is_skipped_by_apply_if_finite(bad):
    batches = _batches()
    poisoned = list(batches)
    x, y = poisoned[K]
    x = x.copy()
    x[3, 2] = bad  # one element of one example
    poisoned[K] = (x, y)

    guarded = optax.apply_if_finite(adam_jax.adam(0.05), max_consecutive_errors=3)
    params, state = _train(guarded, poisoned)
    clean, clean_state = _train(adam_jax.adam(0.05), batches[:K] + batches[K + 1 :])

    chex.assert_tree_all_finite(params)
    chex.assert_trees_all_close(params, clean, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(state.inner_state, clean_state, rtol=1e-6, atol=1e-7)
    assert int(state.total_notfinite) == 1
    assert int(state.notfinite_count) == 0  # reset by the finite steps after k
    assert int(state.inner_state[0].count) == STEPS - 1  # t did not advance at the bad step

    unguarded, _ = _train(adam_jax.adam(0.05), poisoned)  # the injected value reached the gradient
    assert not np.isfinite(np.asarray(unguarded["w"])).any()
