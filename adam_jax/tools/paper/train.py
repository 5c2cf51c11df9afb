"""Training engine: many runs of one model from one initialisation, vectorised over hyperparameters.

All runs in a call share the initial parameters, the minibatch order and the dropout masks; they
differ only in the optimizer's hyperparameters, which are ``jax.vmap``-ed (adam_jax and optax accept
traced hyperparameters). An epoch is one ``jax.jit``-compiled ``lax.scan`` over its minibatches.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax.tools.paper import models
from adam_jax.tools.paper.models import Model

BATCH_SIZE = 128  # Section 6: minibatches of 128 throughout
MAX_EVAL = 10_000  # the plotted training cost is evaluated on at most this many examples
EVAL_CHUNK = 1_000

MakeTx = Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]


def _eval_split(n: int) -> tuple[int, int]:
    """(number of chunks, chunk size) of the evaluation subset of the training set."""
    if n <= 2 * EVAL_CHUNK:
        return 1, n
    return min(n, MAX_EVAL) // EVAL_CHUNK, EVAL_CHUNK


@functools.partial(jax.jit, static_argnums=1)
def _pass_batches(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """One pass over ``n`` examples: a permutation cut into minibatches of ``BATCH_SIZE`` (the
    remainder dropped) and one dropout key per minibatch."""
    steps = n // BATCH_SIZE
    k_perm, k_drop = jax.random.split(key)
    order = jax.random.permutation(k_perm, n)[: steps * BATCH_SIZE].reshape(steps, BATCH_SIZE)
    return order, jax.random.split(k_drop, steps)


class Minibatches:
    """The minibatches of a run, as a stream: pass after pass over the data, each a fresh
    permutation, read in chunks of any number of iterations. With chunks of one pass each,
    chunk e is pass e; with the paper's iterations per epoch on a smaller data set (469 for
    MNIST on the 1,797 digits, 14 per pass) a chunk spans passes."""

    def __init__(self, key: jax.Array, n: int, iterations: int) -> None:
        self.n, self.steps = n, n // BATCH_SIZE
        self.keys = jax.random.split(key, -(-iterations // self.steps))
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _pass(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        if p not in self.cache:
            self.cache = {p: tuple(np.asarray(a) for a in _pass_batches(self.keys[p], self.n))}
        return self.cache[p]

    def chunk(self, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices (size, BATCH_SIZE), dropout keys) of iterations start .. start + size - 1."""
        orders, keys = [], []
        i = start
        while i < start + size:
            p, offset = divmod(i, self.steps)
            take = min(self.steps - offset, start + size - i)
            order, key = self._pass(p)
            orders.append(order[offset : offset + take])
            keys.append(key[offset : offset + take])
            i += take
        return np.concatenate(orders), np.concatenate(keys)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw_packed_masks(keys: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """:func:`models.dropout_mask` for each key, packed 8 entries a byte along the last axis."""
    return jax.vmap(lambda k: jnp.packbits(models.dropout_mask(k, rate, shape), axis=-1))(keys)


class DropoutMasks:
    """The input dropout masks of minibatches, drawn once per dropout key and kept in
    ``directory`` (8 entries a byte), for a model whose only training randomness is input
    dropout (``Model.input_dropout``). Every run of a seed draws the same masks, so runs after
    the first read them instead of drawing them again: on the full run's bag-of-words
    minibatches (128 x 10,000) drawing is most of an iteration. The masks are the ones the
    model's loss draws from the same keys, bit for bit."""

    def __init__(self, directory: Path, rate: float, shape: tuple[int, ...]) -> None:
        self.directory, self.rate, self.shape = Path(directory), rate, shape

    def chunk(self, keys: np.ndarray) -> np.ndarray:
        """The packed masks of the minibatches with dropout ``keys``, shape (len(keys), *shape[:-1],
        ceil(shape[-1] / 8)), uint8."""
        keys = np.asarray(keys)
        name = hashlib.sha256(repr((self.rate, self.shape)).encode() + keys.tobytes()).hexdigest()
        path = self.directory / f"{name}.npy"
        if path.is_file():
            return np.load(path)
        packed = np.asarray(_draw_packed_masks(jnp.asarray(keys), self.rate, self.shape))
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, packed)
        tmp.replace(path)
        return packed


@functools.lru_cache(maxsize=64)
def _compiled(model: Model, make_tx: MakeTx, vectorize: bool, masked: bool = False):
    """Jitted (cost, init, epoch) functions of ``model`` and ``make_tx``, built once and reused by
    every call with the same model and optimizer: data, parameters and keys are arguments. With
    ``masked`` the epoch takes the packed input dropout masks of its minibatches
    (:class:`DropoutMasks`) and applies them instead of drawing them."""

    def cost(params, x_eval, y_eval, k_eval):
        per_chunk = jax.lax.map(
            lambda xy: model.loss(params, xy[0].astype(jnp.float32), xy[1], k_eval, False),
            (x_eval, y_eval),
        )
        return jnp.mean(per_chunk)

    def init_one(h, params0):
        return make_tx(h).init(params0)

    def epoch_one(h, params, opt_state, order, keys, masks, data):
        tx = make_tx(h)
        x_dev, y_dev, x_eval, y_eval, k_eval = data

        def step(carry, batch):
            p, s = carry
            idx, key, packed = batch
            xb, yb = x_dev[idx].astype(jnp.float32), y_dev[idx]
            if masked:  # the model's own input dropout, with the mask drawn beforehand
                keep = jnp.unpackbits(packed, axis=-1, count=xb.shape[-1]).astype(bool)
                xb = models.apply_dropout(keep, xb, model.input_dropout)
            loss, grads = jax.value_and_grad(model.loss)(p, xb, yb, key, not masked)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, opt_state), step_loss = jax.lax.scan(
            step, (params, opt_state), (order, keys, masks)
        )
        return params, opt_state, cost(params, x_eval, y_eval, k_eval), step_loss

    def run_epoch(h, params, opt_state, order, keys, masks, data):
        if vectorize:
            return jax.vmap(epoch_one, in_axes=(0, 0, 0, None, None, None, None))(
                h, params, opt_state, order, keys, masks, data
            )
        return epoch_one(h, params, opt_state, order, keys, masks, data)

    init = jax.vmap(init_one, in_axes=(0, None)) if vectorize else init_one
    return jax.jit(cost), jax.jit(init), jax.jit(run_epoch)


def train_runs(
    model: Model,
    x: np.ndarray,
    y: np.ndarray,
    make_tx: MakeTx,
    hparams: Mapping[str, np.ndarray],
    epochs: int,
    seed: int,
    on_epoch: Callable[[], None] | None = None,
    vectorize: bool = True,
) -> np.ndarray:
    """The training cost of each run after each epoch, shape (R, epochs + 1): the first result of
    :func:`train_runs_with_steps` (see there)."""
    return train_runs_with_steps(
        model, x, y, make_tx, hparams, epochs, seed, on_epoch=on_epoch, vectorize=vectorize
    )[0]


def train_runs_with_steps(
    model: Model,
    x: np.ndarray,
    y: np.ndarray,
    make_tx: MakeTx,
    hparams: Mapping[str, np.ndarray],
    epochs: int,
    seed: int,
    on_epoch: Callable[[], None] | None = None,
    vectorize: bool = True,
    step_epochs: int = 0,
    steps_per_epoch: int | None = None,
    masks_dir: Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train one run per entry of ``hparams`` (arrays of equal length R) for ``epochs`` epochs.

    Returns ``(costs, step_costs)``. ``costs``, shape (R, epochs + 1), is the training cost:
    column 0 at the initial parameters, column e after epoch e, evaluated without dropout on (up
    to ``MAX_EVAL`` of) the training set. ``step_costs``, shape (R, step_epochs * steps per
    epoch), is the minibatch cost (with dropout) at every iteration of the first ``step_epochs``
    epochs, before that iteration's update. Diverged runs give inf or nan, which the caller
    treats as failures. ``seed`` fixes the initialisation, the minibatch order and the dropout
    masks. An "epoch" is ``steps_per_epoch`` iterations (default: one pass over the data, ``len(y)
    // BATCH_SIZE``); the full run sets it to the paper's iterations per epoch, so its epochs are
    paper-equivalent whatever the size of the data (:class:`Minibatches`). ``vectorize=False`` trains the runs one after another with one compiled epoch (used for
    the CNN, which on a 2-core CPU trains faster one run after another than vmapped). With ``masks_dir``, a model whose only training randomness is input dropout
    draws its masks once per key into that directory (:class:`DropoutMasks`), shared by every call
    given the same directory; the results are the same bit for bit.
    """
    n = len(y)
    if n < BATCH_SIZE:
        raise ValueError(f"need at least {BATCH_SIZE} training examples, got {n}")
    steps = steps_per_epoch or n // BATCH_SIZE
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
    k_init, k_eval, k_epochs = jax.random.split(jax.random.PRNGKey(seed), 3)
    params0 = model.init(k_init)
    chunks, chunk = _eval_split(n)
    x_eval = x_dev[: chunks * chunk].reshape(chunks, chunk, *x.shape[1:])
    y_eval = y_dev[: chunks * chunk].reshape(chunks, chunk)
    data = (x_dev, y_dev, x_eval, y_eval, k_eval)
    masks = None
    if masks_dir is not None and model.input_dropout > 0.0:
        masks = DropoutMasks(masks_dir, model.input_dropout, (BATCH_SIZE, *x.shape[1:]))
    cost, init, run_epoch = _compiled(model, make_tx, vectorize, masks is not None)

    runs = len(next(iter(hp.values())))
    initial = float(cost(params0, x_eval, y_eval, k_eval))
    losses = np.full((runs, epochs + 1), initial, np.float64)
    step_epochs = min(step_epochs, epochs)
    step_losses = np.zeros((runs, step_epochs * steps), np.float64)
    batches = Minibatches(k_epochs, n, epochs * steps)
    groups = [slice(None)] if vectorize else [slice(r, r + 1) for r in range(runs)]
    for rows in groups:
        h = {k: v[rows] for k, v in hp.items()}
        if vectorize:
            params = jax.tree.map(lambda a: jnp.broadcast_to(a, (runs, *a.shape)), params0)
        else:
            h = {k: v[0] for k, v in h.items()}
            params = params0
        opt_state = init(h, params0)
        for e in range(1, epochs + 1):
            order, keys = batches.chunk((e - 1) * steps, steps)
            packed = None if masks is None else masks.chunk(keys)
            params, opt_state, loss, step_loss = run_epoch(
                h, params, opt_state, order, keys, packed, data
            )
            losses[rows, e] = np.asarray(loss)
            if e <= step_epochs:
                step_losses[rows, (e - 1) * steps : e * steps] = np.asarray(step_loss)
            if on_epoch is not None:
                on_epoch()
    return losses, step_losses
