"""What a user sees for each bad input.

Each case is a snippet of code that is executed as written, and the exact message (or, for inputs
that are not errors, the observed outcome) it produces. The table on the docs' Reliability page is
generated from the same list when the site is built (``python -m tests.test_errors`` prints it),
so it never drifts from what the code does.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax

SETUP = textwrap.dedent(
    """\
    params = {"layer": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}}
    grads = {"layer": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
    tx = adam_jax.adam(1e-3)
    state = tx.init(params)
    """
)


@dataclass(frozen=True)
class Case:
    bad_input: str  # what the user got wrong, in words
    code: str  # executed after SETUP; shown in the docs
    sees: str  # the exception "TypeName: message", or the observed outcome of a non-error


def _error(exc: type[BaseException], message: str) -> str:
    return f"{exc.__name__}: {message}"


ERROR_CASES = [
    Case(
        "decay rate outside [0, 1)",
        "adam_jax.adam(b1=1.5)",
        _error(ValueError, "b1=1.5 is out of range: b1 must lie in [0, 1)."),
    ),
    Case(
        "negative learning rate",
        "adam_jax.adam(-1.0)",
        _error(
            ValueError,
            "learning_rate=-1.0 is out of range: learning_rate must lie in [0, inf).",
        ),
    ),
    Case(
        "negative eps",
        "adam_jax.adam(eps=-1)",
        _error(ValueError, "eps=-1 is out of range: eps must lie in [0, inf)."),
    ),
    Case(
        "NaN hyperparameter",
        'adam_jax.adam(b2=float("nan"))',
        _error(ValueError, "b2=nan is out of range: b2 must lie in [0, 1)."),
    ),
    Case(
        "AdaMax b2 = 1 (u_t would never forget)",
        "adam_jax.adamax(b2=1.0)",
        _error(ValueError, "b2=1.0 is out of range: b2 must lie in [0, 1)."),
    ),
    Case(
        "Theorem 4.1 decay lambda = 0",
        "adam_jax.scale_by_adam(b1_decay=0.0)",
        _error(ValueError, "b1_decay=0.0 is out of range: b1_decay must lie in (0, 1]."),
    ),
    Case(
        "bias correction of a non-decaying average",
        "adam_jax.bias_correction(1.0)",
        _error(ValueError, "decay=1.0 is out of range: decay must lie in [0, 1)."),
    ),
    Case(
        "negative schedule scale",
        "adam_jax.inverse_sqrt_schedule(-0.1)",
        _error(ValueError, "init_value=-0.1 is out of range: init_value must lie in [0, inf)."),
    ),
    Case(
        "hyperparameter as a string",
        'adam_jax.adam(b1="0.9")',
        _error(TypeError, "b1='0.9' must be a real number; got str."),
    ),
    Case(
        "hyperparameter as a bool",
        "adam_jax.adam(b2=True)",
        _error(TypeError, "b2=True must be a real number; got bool."),
    ),
    Case(
        "hyperparameter as a vector",
        "adam_jax.adam(b1=jnp.array([0.9, 0.99]))",
        _error(
            TypeError,
            "b1 must be a real scalar; got a JAX array of shape (2,) and dtype float32.",
        ),
    ),
    Case(
        "switch given as an int",
        "adam_jax.adam(amsgrad=1)",
        _error(TypeError, "amsgrad=1 must be a Python bool (True or False)."),
    ),
    Case(
        "integer moment dtype",
        "adam_jax.adam(mu_dtype=jnp.int8)",
        _error(
            TypeError,
            "mu_dtype=int8 must be a floating-point or complex dtype (e.g. jnp.float32, "
            "jnp.bfloat16); an integer or boolean moment would truncate every update.",
        ),
    ),
    Case(
        "gradient of the wrong shape",
        'tx.update({"layer": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(4)}}, state)',
        _error(
            ValueError,
            "scale_by_adam: gradient leaf ['layer']['kernel'] has shape (4, 3), but in the "
            "optimizer state (mu) it has shape (3, 4).",
        ),
    ),
    Case(
        "... also under jit (raised while tracing)",
        'jax.jit(tx.update)({"layer": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(4)}}, state)',
        _error(
            ValueError,
            "scale_by_adam: gradient leaf ['layer']['kernel'] has shape (4, 3), but in the "
            "optimizer state (mu) it has shape (3, 4).",
        ),
    ),
    Case(
        "gradient missing a leaf",
        'tx.update({"layer": {"kernel": jnp.ones((3, 4))}}, state)',
        _error(
            ValueError,
            "scale_by_adam: the gradient and the optimizer state (mu) have different tree "
            "structures: the gradient lacks leaf ['layer']['bias'] that the optimizer state (mu) "
            "has. Gradients must have the structure of the parameters given to init.",
        ),
    ),
    Case(
        "state of another model",
        'tx.update(grads, tx.init({"w": jnp.zeros(3)}))',
        _error(
            ValueError,
            "scale_by_adam: the gradient and the optimizer state (mu) have different tree "
            "structures: the gradient lacks leaf ['w'] that the optimizer state (mu) has; the "
            "gradient has leaf ['layer']['bias'], ['layer']['kernel'] that the optimizer state "
            "(mu) lacks. Gradients must have the structure of the parameters given to init.",
        ),
    ),
    Case(
        "params of another shape passed to update",
        'tx.update(grads, state, {"layer": {"kernel": jnp.zeros((3, 5)), "bias": jnp.zeros(4)}})',
        _error(
            ValueError,
            "scale_by_adam: gradient leaf ['layer']['kernel'] has shape (3, 4), but in the "
            "params it has shape (3, 5).",
        ),
    ),
    Case(
        "integer parameter",
        'tx.init({"w": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)})',
        _error(
            TypeError,
            "scale_by_adam: parameter leaf ['step'] has dtype int32; Adam only updates "
            "floating-point or complex leaves. Freeze it with optax.masked(tx, mask) or send it "
            "to optax.set_to_zero() via optax.partition.",
        ),
    ),
    Case(
        "boolean parameter",
        'tx.init({"w": jnp.zeros(3), "mask": jnp.ones(3, bool)})',
        _error(
            TypeError,
            "scale_by_adam: parameter leaf ['mask'] has dtype bool; Adam only updates "
            "floating-point or complex leaves. Freeze it with optax.masked(tx, mask) or send it "
            "to optax.set_to_zero() via optax.partition.",
        ),
    ),
    Case(
        "integer gradient",
        'tx.update({"layer": {"kernel": jnp.ones((3, 4), int), "bias": jnp.ones(4)}}, state)',
        _error(
            TypeError,
            "scale_by_adam: gradient leaf ['layer']['kernel'] has dtype int32; Adam only updates "
            "floating-point or complex leaves. Freeze it with optax.masked(tx, mask) or send it "
            "to optax.set_to_zero() via optax.partition.",
        ),
    ),
    Case(
        "complex gradient for a real parameter",
        'tx.update({"layer": {"kernel": 1j * jnp.ones((3, 4)), "bias": jnp.ones(4)}}, state)',
        _error(
            TypeError,
            "scale_by_adam: gradient leaf ['layer']['kernel'] is complex (complex64) but the "
            "optimizer state there is real (float32), so the imaginary part would be dropped. "
            "Initialise the optimizer with complex parameters, or pass real gradients.",
        ),
    ),
]


def _max_abs(tree: Any) -> float:
    leaves = [np.abs(np.asarray(x, np.complex128)) for x in jax.tree.leaves(tree)]
    return max((float(x.max()) for x in leaves if x.size), default=0.0)


def _all_equal(a: Any, b: Any) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _nan_grads(ns: dict) -> str:
    """An unguarded NaN reaches the moments: the paper's formula has no defence."""
    mu = ns["new_state"][0].mu
    return (
        f"no error; updates are {_max_abs(ns['updates'])}, and m, v hold NaN from then on "
        f"(NaN in m: {bool(np.isnan(np.asarray(mu['layer']['kernel'])).all())})"
    )


def _guarded_nan(ns: dict) -> str:
    s0, s1 = ns["state"], ns["new_state"]
    return (
        f"no error; updates are {_max_abs(ns['updates'])}, the Adam state is unchanged "
        f"({_all_equal(s0.inner_state, s1.inner_state)}), "
        f"notfinite_count={int(s1.notfinite_count)}"
    )


def _f16_zero(ns: dict) -> str:
    return (
        f"no error; updates are {_max_abs(ns['updates'])} in {ns['updates']['w'].dtype} "
        f"(optax.adam gives {np.asarray(ns['optax_updates']['w'])[0]})"
    )


def _saturated(ns: dict) -> str:
    count = ns["new_state"][0].count
    return (
        f"no error; count stays {int(count)}, updates finite "
        f"({bool(np.isfinite(_max_abs(ns['updates'])))})"
    )


def _empty(ns: dict) -> str:
    return f"no error; updates {ns['updates']!r}"


def _none_and_zero_size(ns: dict) -> str:
    u = ns["updates"]
    return f"no error; updates {{'b': {u['b']}, 'empty': shape {u['empty'].shape}}}"


# Inputs that are not errors: (case, function turning the executed namespace into what is seen).
OUTCOME_CASES = [
    (
        Case(
            "a NaN gradient, unguarded",
            "updates, new_state = tx.update(jax.tree.map(lambda g: g * jnp.nan, grads), state)",
            "no error; updates are nan, and m, v hold NaN from then on (NaN in m: True)",
        ),
        _nan_grads,
    ),
    (
        Case(
            "a NaN gradient, guarded by optax.apply_if_finite",
            "guarded = optax.apply_if_finite(adam_jax.adam(1e-3), max_consecutive_errors=5)\n"
            "state = guarded.init(params)\n"
            "updates, new_state = guarded.update(jax.tree.map(lambda g: g * jnp.nan, grads), state)",
            "no error; updates are 0.0, the Adam state is unchanged (True), notfinite_count=1",
        ),
        _guarded_nan,
    ),
    (
        Case(
            "float16 parameter, zero gradient at the first step",
            'p16 = {"w": jnp.zeros(2, jnp.float16)}\n'
            "updates, _ = tx.update(p16, tx.init(p16))\n"
            "optax_updates, _ = optax.adam(1e-3).update(p16, optax.adam(1e-3).init(p16))",
            "no error; updates are 0.0 in float16 (optax.adam gives nan)",
        ),
        _f16_zero,
    ),
    (
        Case(
            "step count at the int32 maximum",
            "state = (state[0]._replace(count=jnp.iinfo(jnp.int32).max), *state[1:])\n"
            "updates, new_state = tx.update(grads, state)",
            "no error; count stays 2147483647, updates finite (True)",
        ),
        _saturated,
    ),
    (
        Case(
            "empty parameter tree",
            "updates, _ = tx.update({}, tx.init({}))",
            "no error; updates {}",
        ),
        _empty,
    ),
    (
        Case(
            "None leaf and zero-size leaf",
            'p = {"a": None, "b": jnp.ones(2), "empty": jnp.zeros((0, 3))}\n'
            "updates, _ = tx.update(p, tx.init(p))",
            "no error; updates {'b': [-0.001 -0.001], 'empty': shape (0, 3)}",
        ),
        _none_and_zero_size,
    ),
]

CASES = ERROR_CASES + [case for case, _ in OUTCOME_CASES]


def _namespace() -> dict:
    ns: dict = {"adam_jax": adam_jax, "jax": jax, "jnp": jnp, "optax": optax}
    exec(SETUP, ns)
    return ns


def observe(case: Case) -> str:
    """Run ``case.code`` after SETUP and return what the user sees."""
    ns = _namespace()
    describe = dict((c.code, fn) for c, fn in OUTCOME_CASES).get(case.code)
    try:
        exec(case.code, ns)
    except (TypeError, ValueError) as err:
        return _error(type(err), str(err))
    if describe is None:
        return "no error"
    return describe(ns)


@pytest.mark.parametrize("case", CASES, ids=[c.bad_input for c in CASES])
def test_user_sees(case):
    assert observe(case) == case.sees


def test_unguarded_run_is_not_an_error_but_guarded_state_is_clean():
    """The two NaN rows differ only in the wrapper; the wrapped state equals the clean state."""
    ns = _namespace()
    exec(OUTCOME_CASES[1][0].code, ns)
    clean = ns["guarded"].init(ns["params"]).inner_state
    assert _all_equal(ns["new_state"].inner_state, clean)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown_table() -> str:
    """The docs' table: one row per case."""
    lines = ["| bad input | code | what the user sees |", "|---|---|---|"]
    for case in CASES:
        code = "<br>".join(f"`{_cell(line)}`" for line in case.code.splitlines())
        lines.append(f"| {case.bad_input} | {code} | {_cell(case.sees)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
