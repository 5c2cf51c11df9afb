"""SFO, the Sum of Functions Optimizer (Sohl-Dickstein, Poole & Ganguli, ICML 2014, "Fast
large-scale optimization by unifying stochastic gradient and quasi-Newton methods"), written from
the paper for Fig. 2b of Kingma & Ba.

SFO minimises F(x) = Σ_i f_i(x) over N subfunctions (here: minibatches). It keeps, for each f_i,
a quadratic model made at x_i, the last point where f_i was evaluated (g_i its gradient there):

    G_i(x) = f_i(x_i) + g_iᵀ(x - x_i) + ½ (x - x_i)ᵀ H_i (x - x_i).

Every vector lives in a shared subspace with an orthonormal basis P (K_max x D): a point is
x = Pᵀc, and every H_i is a K x K matrix in that subspace. One call of :meth:`SFO.step`:

1. choose one subfunction j: the one last evaluated farthest from x, in the metric of the summed
   curvature H = Σ_i H_i, (c - c_j)ᵀ H (c - c_j);
2. evaluate f_j and its gradient at x: one minibatch evaluation, one iteration;
3. add the gradient to the subspace (Gram-Schmidt, twice); when the basis is full, collapse it to
   the span of every subfunction's last gradient and last position and the current position;
4. append (c - c_j, Pg - g_j) to f_j's history (its last ``history`` pairs) and rebuild H_j by
   BFGS in the subspace, from β_j I, where β_j is the smallest non-zero singular value of the
   least-squares fit Δg ≈ Q Δx over the history (the curvature the history allows in the
   directions it has not seen);
5. move to the minimum of Σ_i G_i, shortened by the step scale s:
   c ← c + s · (H⁻¹ Σ_i (H_i c_i - g_i) - c).

The safeguard: when f_j is above its last value and above its model's prediction G_j(x) by more
than the improvement the last step predicted, ½ dᵀH d (or is not finite), f_j is evaluated again
at the previous position (a second iteration); if that is lower, the step is undone and s is
halved. Both evaluations enter f_j's history. Otherwise s decays back to 1 as
s ← 1/N + (1 - 1/N) s.

**Where this departs from the reference implementation** (``sfo.py`` of
github.com/Sohl-Dickstein/Sum-of-Functions-Optimizer, read to compare, not copied):

- No active set. The reference starts with 2 active subfunctions (chosen at random) and activates
  more when the gradients' standard error grows, or after a step failure. Here every subfunction
  is visited in its first pass, in index order, each evaluated twice in a row (as the reference
  does for each newly activated one), and the sum runs over the subfunctions evaluated so far.
- Pairs with non-positive curvature (Δgᵀ Δx ≤ 0, as ReLU networks give) are skipped by BFGS. The
  reference keeps them (with a complex factorisation) and afterwards replaces eigenvalues below
  max/10⁸ by the median positive one; here the eigenvalues are floored at max/10⁸.
- A subfunction evaluated for the first time is never a step failure (the reference fails it when
  its value is more than 3 standard deviations above the other subfunctions' mean), and a failed
  evaluation whose value is not finite is dropped, not shortened in 100x steps towards the
  previous position until it is within 10x of the predicted change.
- The collapsed subspace holds every evaluated subfunction's last gradient and position, the
  current point and, in a step with a second evaluation, its point (at most 2N + 2 directions);
  the reference keeps the first three and pads with random directions up to 2N + 2, and starts
  with a random direction when x₀ = 0 (here: an empty basis).
- H_i is stored as a dense K x K matrix (the reference keeps a low-rank factor and a diagonal);
  the same mathematics, N K² numbers beside the D K of the basis.
- As in the reference: history of 10 pairs, K_max = 3N + 3 (1.5 x (2N + 2)), H = 10⁵ I for the
  first subfunction before any history, the maximum-distance choice, float64 arithmetic.

Memory is linear in N: the basis alone is (3N + 3) x D float64 numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FAndGrad = Callable[[np.ndarray, int], tuple[float, np.ndarray]]

MAX_DEVIATION = 1e8  # largest ratio of an H_i's largest to smallest eigenvalue (the reference's)
TINY = 1e-12  # relative size below which a direction is already in the subspace


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class SFO:
    """The Sum of Functions Optimizer on a flat parameter vector (see the module docstring).

    SFO chooses which subfunction to evaluate and may evaluate one twice in a step, so it is a
    loop that calls ``f_and_grad(x, i) -> (f_i(x), ∇f_i(x))``, not an optax transformation.

    Args:
      f_and_grad: value and gradient (shape ``x0.shape``) of subfunction ``i`` at ``x``.
      x0: the starting point, a 1-d array.
      num_subfunctions: N, the number of subfunctions.
      max_dim: the largest dimension of the subspace (default 3N + 3, at least 2N + 4).
      history: the (Δx, Δg) pairs kept per subfunction for BFGS.
      hessian_init: the curvature assumed, H = hessian_init · I, before any history exists.
    """

    def __init__(
        self,
        f_and_grad: FAndGrad,
        x0: np.ndarray,
        num_subfunctions: int,
        max_dim: int | None = None,
        history: int = 10,
        hessian_init: float = 1e5,
    ) -> None:
        x0 = np.asarray(x0, np.float64)
        if x0.ndim != 1 or x0.size == 0:
            raise ValueError(f"x0 must be a non-empty 1-d array, got shape {x0.shape}")
        if not _is_int(num_subfunctions) or num_subfunctions < 1:
            raise ValueError(f"num_subfunctions must be an integer >= 1, got {num_subfunctions!r}")
        n = int(num_subfunctions)
        max_dim = 3 * n + 3 if max_dim is None else max_dim
        if not _is_int(max_dim) or max_dim < 2 * n + 4:
            raise ValueError(
                f"max_dim must be an integer >= 2 * num_subfunctions + 4 = {2 * n + 4} (room for "
                f"every last gradient and position, two points and two new gradients), got "
                f"{max_dim!r}"
            )
        if not _is_int(history) or history < 1:
            raise ValueError(f"history must be an integer >= 1, got {history!r}")
        if not (np.isfinite(hessian_init) and hessian_init > 0):
            raise ValueError(f"hessian_init must be a finite number > 0, got {hessian_init!r}")
        self.f_and_grad, self.n, self.hessian_init = f_and_grad, n, float(hessian_init)
        self.max_dim, self.dim = min(int(max_dim), x0.size), 0
        self.basis = np.zeros((self.max_dim, x0.size))  # rows 0..dim-1: orthonormal P
        k = self.max_dim
        self.c = np.zeros(k)  # the current point in the subspace: x = Pᵀc
        self.c_prev = np.zeros(k)  # the point before the last step (undone on a failure)
        self.c_extra = np.zeros(k)  # during a step: the point of a second evaluation
        self.c_i = np.zeros((n, k))  # the last point of evaluation of each subfunction
        self.g_i = np.zeros((n, k))  # ... its gradient there
        self.f_i = np.full(n, np.nan)  # ... and its value
        self.h_i = np.zeros((n, k, k))  # H_i
        self.beta = np.zeros(n)  # β_i, the curvature of H_i outside its history
        self.ds = np.zeros((n, int(history), k))  # history of Δx, oldest first
        self.dy = np.zeros((n, int(history), k))  # history of Δg
        self.stored = np.zeros(n, int)  # pairs in the history
        self.count = np.zeros(n, int)  # evaluations of each subfunction
        self.scale = 1.0  # s, the step scale
        self.predicted = 0.0  # the improvement the last step predicted
        self.evaluations = 0
        self.failures = 0
        self.collapses = 0
        self._add_directions(x0)
        self.c[: self.dim] = self.basis[: self.dim] @ x0
        self.c_prev[:] = self.c
        self.x = x0.copy()

    # -----------------------------------------------------------------------------------------
    # The subspace

    @property
    def p(self) -> np.ndarray:
        """The orthonormal basis in use, dim x D."""
        return self.basis[: self.dim]

    def _add_directions(self, *vectors: np.ndarray) -> None:
        """Add each vector's component outside the subspace to it, collapsing the basis first
        when they might not fit."""
        if self.dim + len(vectors) > self.max_dim and self.max_dim < self.basis.shape[1]:
            self._collapse()
        for v in vectors:
            length = np.linalg.norm(v)
            if not np.isfinite(length) or length == 0.0 or self.dim == self.max_dim:
                continue
            u = v / length
            for _ in range(2):  # classical Gram-Schmidt, repeated for orthogonality
                u = u - self.p.T @ (self.p @ u)
                norm = np.linalg.norm(u)
                if norm < TINY:
                    break
                u = u / norm
            else:
                self.basis[self.dim] = u
                self.h_i[:, self.dim, self.dim] = self.beta  # an unseen direction: β_i
                self.dim += 1

    def _collapse(self) -> None:
        """Replace the basis by one of the last gradients and positions and the current point."""
        seen = self.count > 0
        keep = [self.g_i[seen], self.c_i[seen], self.c[None], self.c_extra[None]]
        q, _ = np.linalg.qr(np.concatenate(keep)[:, : self.dim].T)  # r <= 2N + 2, room for 2
        r = q.shape[1]
        self.basis[:r] = q.T @ self.p
        self.basis[r:] = 0.0
        for a in (self.c, self.c_prev, self.c_extra, self.c_i, self.g_i, self.ds, self.dy):
            a[..., :r] = a[..., : self.dim] @ q
            a[..., r:] = 0.0
        h = q.T @ self.h_i[:, : self.dim, : self.dim] @ q
        self.h_i[:] = 0.0
        self.h_i[:, :r, :r] = h
        self.dim = r
        self.collapses += 1

    # -----------------------------------------------------------------------------------------
    # The models

    def _summed_h(self) -> np.ndarray:
        seen = self.count > 0
        return self.h_i[seen, : self.dim, : self.dim].sum(0)

    def _predict(self, j: int, c: np.ndarray) -> float:
        """G_j at the point c of the subspace."""
        d = (c - self.c_i[j])[: self.dim]
        h = self.h_i[j, : self.dim, : self.dim]
        return float(self.f_i[j] + self.g_i[j, : self.dim] @ d + 0.5 * d @ h @ d)

    def _remember(self, j: int, s: np.ndarray, y: np.ndarray) -> None:
        """Append the pair (Δx, Δg) to f_j's history, dropping the oldest when it is full."""
        if np.linalg.norm(s) > TINY and np.linalg.norm(y) > TINY:
            self.ds[j] = np.roll(self.ds[j], -1, axis=0)
            self.dy[j] = np.roll(self.dy[j], -1, axis=0)
            self.ds[j, -1], self.dy[j, -1] = s, y
            self.stored[j] = min(self.stored[j] + 1, self.ds.shape[1])

    def _record(self, j: int, c: np.ndarray, g: np.ndarray, f: float) -> None:
        """Make (c, g, f) f_j's last evaluation; the change since the previous one joins its
        history."""
        if self.count[j] > 0:
            self._remember(j, c - self.c_i[j], g - self.g_i[j])
        self.c_i[j], self.g_i[j], self.f_i[j] = c, g, f
        self.count[j] += 1

    def _rebuild_hessian(self, j: int) -> None:
        """H_j by BFGS from β_j I over f_j's history, oldest pair first."""
        k, m = self.dim, self.stored[j]
        s_hist, y_hist = self.ds[j, -m:, :k].T, self.dy[j, -m:, :k].T  # k x m
        if m == 0:  # no history: the median curvature of the others, per subfunction
            seen = int(np.sum(self.count > 0)) - 1
            others = self._summed_h() - self.h_i[j, :k, :k]
            beta = np.median(np.linalg.eigvalsh(others)) / seen if seen else self.hessian_init
        else:  # Q = Δg Δx⁺, the least-squares fit; β = the smallest of its m largest |eig|
            sigma = np.linalg.svd(y_hist @ np.linalg.pinv(s_hist), compute_uv=False)[:m]
            beta = sigma.min() if sigma.max() > 0 else self.beta[j]
            beta = max(beta, sigma.max() / MAX_DEVIATION)
        b = beta * np.eye(k)
        for s, y in zip(s_hist.T, y_hist.T, strict=True):
            sy = s @ y
            if sy <= TINY * np.linalg.norm(s) * np.linalg.norm(y):
                continue  # non-positive curvature: skipped (see the module docstring)
            bs = b @ s
            b = b + np.outer(y, y) / sy - np.outer(bs, bs) / (s @ bs)  # BFGS
        w, v = np.linalg.eigh(0.5 * (b + b.T))
        w = np.maximum(w, w.max() / MAX_DEVIATION)
        self.h_i[j] = 0.0
        self.h_i[j, :k, :k] = (v * w) @ v.T
        self.beta[j] = beta

    # -----------------------------------------------------------------------------------------
    # One step

    def _choose(self) -> int:
        """A subfunction evaluated fewer than twice (lowest index first), else the one farthest
        from the current point in the metric of the summed curvature."""
        new = np.flatnonzero(self.count < 2)
        if new.size:
            return int(new[0])
        d = (self.c - self.c_i)[:, : self.dim]
        return int(np.argmax(np.einsum("na,ab,nb->n", d, self._summed_h(), d)))

    def _evaluate(self, j: int) -> tuple[float, np.ndarray]:
        f, g = self.f_and_grad(self.x, j)
        self.evaluations += 1
        return float(f), np.asarray(g, np.float64)

    def _suspect(self, j: int, f: float, g: np.ndarray) -> bool:
        """Whether f_j's new value makes the last step a candidate for failure."""
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            return True
        if self.count[j] == 0 or f <= self.f_i[j]:
            return False
        return f - self._predict(j, self.c) > self.predicted

    def step(self) -> int:
        """One SFO step; returns the evaluations it made (1, or 2 after a suspect step)."""
        n_before = self.evaluations
        j = self._choose()
        f, g = self._evaluate(j)
        extra = None  # the gradient of a second evaluation of f_j, at the point c_extra
        failed = False
        self.c_extra[:] = 0.0
        if self._suspect(j, f, g):  # evaluate f_j again where the step started
            c_new, x_new = self.c.copy(), self.x
            self.c[:] = self.c_prev
            self.x = self.p.T @ self.c[: self.dim]
            f_prev, g_prev = self._evaluate(j)
            finite = np.isfinite(f) and np.all(np.isfinite(g))
            failed = f_prev < f or not finite
            if failed:  # stay back, halve the step scale
                self.failures += 1
                self.scale /= 2.0
                if finite:
                    extra, self.c_extra[:] = g, c_new
                f, g = f_prev, g_prev
            else:  # not a failure: back to the new point, the extra evaluation kept as history
                extra, self.c_extra[:] = g_prev, self.c
                self.c[:], self.x = c_new, x_new
        if not failed:
            self.scale = 1.0 / self.n + self.scale * (1.0 - 1.0 / self.n)
        self._add_directions(g, *(() if extra is None else (extra,)))
        g_proj = self._project(g)
        self._record(j, self.c.copy(), g_proj, f)
        if extra is not None:
            self._remember(j, self.c_extra - self.c, self._project(extra) - g_proj)
        self._rebuild_hessian(j)
        self._move()
        return self.evaluations - n_before

    def _project(self, v: np.ndarray) -> np.ndarray:
        out = np.zeros(self.max_dim)
        out[: self.dim] = self.p @ v
        return out

    def _move(self) -> None:
        """Step to the minimum of the summed models, shortened by the step scale."""
        k, seen = self.dim, self.count > 0
        h = self._summed_h()
        rhs = np.einsum("nab,nb->a", self.h_i[seen, :k, :k], self.c_i[seen, :k])
        rhs -= self.g_i[seen, :k].sum(0)
        d = self.scale * (np.linalg.solve(h, rhs) - self.c[:k])
        self.c_prev[:] = self.c
        self.c[:k] += d
        self.predicted = float(0.5 * d @ h @ d)
        self.x = self.p.T @ self.c[:k]
