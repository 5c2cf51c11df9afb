"""Two processes on 127.0.0.1 (jax.distributed, CPU gloo, 2 devices each) against one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from tests import multiprocess_worker as worker
from tests.xla_env import xla_flags

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_cluster(num_processes: int, out: Path, logs: Path) -> list[int]:
    """Start the workers, wait at most TIMEOUT_S in all, kill whatever is left; exit codes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["XLA_FLAGS"] = xla_flags(2)
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    procs, files = [], []
    try:
        for i in range(num_processes):
            log = open(logs / f"worker{i}.log", "wb")  # closed in the finally below
            files.append(log)
            cmd = [
                sys.executable,
                str(Path(worker.__file__)),
                str(port),
                str(i),
                str(num_processes),
                str(out),
            ]
            procs.append(
                subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            )
        deadline = time.monotonic() + TIMEOUT_S
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()


def test_two_processes_match_single_process(tmp_path):
    out = tmp_path / "final.npz"
    codes = _run_cluster(2, out, tmp_path)
    if codes != [0, 0]:
        logs = "\n".join(
            f"--- worker {i} (exit {c}) ---\n" + (tmp_path / f"worker{i}.log").read_text()[-3000:]
            for i, c in enumerate(codes)
        )
        raise AssertionError(f"workers exited {codes} (None: killed after {TIMEOUT_S}s)\n{logs}")
    got = dict(np.load(out))
    for ckpt in ("ckpt", "q8_ckpt"):  # written by both processes, read back
        assert (tmp_path / ckpt / "opt_state").is_dir()

    # The same global batches in this process, on one device, unsharded. 8-bit: equal up to a
    # stochastically rounded code that float32 rounding in the sharded program can move by one.
    names = set()
    for prefix, make_tx, rtol in (("", worker.make_tx, 1e-5), ("q8_", worker.make_tx_8bit, 1e-3)):
        params, xs, ys = worker.problem()
        initial = dict(params)
        tx = make_tx()
        step = jax.jit(worker.make_step(tx))
        state = tx.init(params)
        for x, y in zip(xs, ys, strict=True):
            params, state = step(params, state, x, y)
        for k, v in params.items():
            names.add(prefix + k)
            np.testing.assert_allclose(
                got[prefix + k], np.asarray(v), rtol=rtol, atol=rtol / 10, err_msg=prefix + k
            )
            assert not np.allclose(got[prefix + k], initial[k]), f"{prefix}{k} did not move"
    assert set(got) == names
