"""Resume after a crash: a training process killed with SIGKILL in mid-run and restarted from its
last checkpoint ends with parameters and optimizer state bit-identical to an uninterrupted run of
the same script. Checkpoints are written either with orbax directly (a ``CheckpointManager``) or
with ``adam_jax.save_checkpoint``/``restore_checkpoint``."""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY, KILL_AFTER = 60, 5, 20
TIMEOUT_S = 150

# The training script: an MLP trained with adam_jax behind gradient clipping and the 1/sqrt(t)
# schedule (so the step count in the state matters). The batch of step t is a function of t alone;
# (params, opt_state) are checkpointed together every EVERY steps: by an orbax CheckpointManager, as
# a flat list of leaves restored into the tree structure of a fresh init, or by adam_jax.checkpoint
# into one directory per step (orbax writes to a temporary name and renames when complete).
SCRIPT = """
import pathlib, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
import orbax.checkpoint as ocp
import adam_jax

ckpt_dir, out_path = sys.argv[1], sys.argv[2]
steps, every, delay = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
method = sys.argv[6]

def batch(t):
    rng = np.random.default_rng(1000 + t)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    return x, np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)

def loss(p, x, y):
    h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
    return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)

rng = np.random.default_rng(0)
params = {
    "hidden": {"w": jnp.asarray(rng.normal(size=(6, 16)) / 3, jnp.float32), "b": jnp.zeros(16)},
    "out": {"w": jnp.asarray(rng.normal(size=(16, 1)) / 4, jnp.float32), "b": jnp.zeros(1)},
}
tx = optax.chain(
    optax.clip_by_global_norm(1.0), adam_jax.adam(adam_jax.inverse_sqrt_schedule(3e-2))
)
opt_state = tx.init(params)

@jax.jit
def train_step(params, opt_state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

treedef = jax.tree.structure((params, opt_state))
if method == "orbax":
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2))
    start = manager.latest_step() or 0
else:
    root = pathlib.Path(ckpt_dir)
    root.mkdir(exist_ok=True)
    start = max([int(p.name) for p in root.iterdir() if p.name.isdigit()], default=0)
if start and method == "orbax":
    like = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves((params, opt_state)))}
    leaves = manager.restore(start, args=ocp.args.StandardRestore(like))
    params, opt_state = jax.tree.unflatten(treedef, [jnp.asarray(leaves[str(i)]) for i in range(len(like))])
elif start:
    params, opt_state = adam_jax.restore_checkpoint(root / str(start), tx, params)
if start:
    print("resumed", start, flush=True)

for t in range(start, steps):
    params, opt_state = train_step(params, opt_state, *batch(t))
    if (t + 1) % every == 0:
        if method == "orbax":
            leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves((params, opt_state)))}
            manager.save(t + 1, args=ocp.args.StandardSave(leaves))
            manager.wait_until_finished()
        else:
            adam_jax.save_checkpoint(root / str(t + 1), params, opt_state)
        print("saved", t + 1, flush=True)
    time.sleep(delay)
if method == "orbax":
    manager.close()
np.savez(out_path, *[np.asarray(x) for x in jax.tree.leaves((params, opt_state))])
print("done", flush=True)
"""


def _start(script, ckpt, out, delay, method):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a plain training script has
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(ckpt),
            str(out),
            str(STEPS),
            str(EVERY),
            str(delay),
            method,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, killed as a whole
    )


def _lines(proc):
    """A queue receiving the process's output lines (None at EOF), read by a daemon thread."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(q, wanted, deadline, log):
    while True:
        line = q.get(timeout=max(deadline - time.monotonic(), 0.01))
        assert line is not None, "process ended early:\n" + "\n".join(log)
        log.append(line)
        if line == wanted:
            return


def _finish(proc, q, deadline, log):
    proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    while (line := q.get(timeout=10)) is not None:
        log.append(line)
    assert proc.returncode == 0, "\n".join(log)


@pytest.mark.parametrize("method", ["orbax", "adam_jax.checkpoint"])
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, method):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    deadline = time.monotonic() + TIMEOUT_S
    procs = []
    try:
        # The uninterrupted run and the run to be killed start together.
        whole = _start(script, tmp_path / "ckpt_whole", tmp_path / "whole.npz", 0.0, method)
        crashed = _start(script, tmp_path / "ckpt", tmp_path / "crashed.npz", 0.05, method)
        procs += [whole, crashed]
        whole_q, crashed_q = _lines(whole), _lines(crashed)

        crash_log: list[str] = []
        _wait_for(crashed_q, f"saved {KILL_AFTER}", deadline, crash_log)
        os.killpg(crashed.pid, signal.SIGKILL)  # in mid-run: 40 steps and 2 s of sleep remain
        crashed.wait(timeout=30)
        assert crashed.returncode == -signal.SIGKILL
        assert not (tmp_path / "crashed.npz").exists()

        resumed = _start(script, tmp_path / "ckpt", tmp_path / "crashed.npz", 0.0, method)
        procs.append(resumed)
        resumed_q = _lines(resumed)
        resume_log: list[str] = []
        _finish(resumed, resumed_q, deadline, resume_log)
        started = [int(line.split()[1]) for line in resume_log if line.startswith("resumed ")]
        assert len(started) == 1 and KILL_AFTER <= started[0] < STEPS, resume_log

        whole_log: list[str] = []
        _finish(whole, whole_q, deadline, whole_log)
    finally:
        for proc in procs:
            _kill(proc)

    a = np.load(tmp_path / "whole.npz")
    b = np.load(tmp_path / "crashed.npz")
    # Leaves: 4 parameters, then Adam's count, 2 x 4 moments and 11 recorded hyperparameters
    # (9 of scale_by_adam, the learning rate and its schedule's samples), then the schedule's count.
    assert len(a.files) == len(b.files) == 25
    for key in a.files:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"leaf {key}")
    assert int(b["arr_4"]) == int(b["arr_24"]) == STEPS  # the restored step counts continued
