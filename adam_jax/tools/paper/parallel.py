"""Figures in parallel: ``reproduce all`` runs each figure in a process of its own, ``--jobs`` at
a time, then merges their rows into one ``results.csv``.

Each worker is ``adam-jax reproduce <figure>`` with the same size and seeds, writing to
``<out>/parts/<figure>``; it keeps its finished runs there as it goes, so Ctrl-C and ``--resume``
work per figure exactly as in one process. The merged file is the same as a one-process run's:
the rows of each figure are written in the same order, figure after figure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from adam_jax.tools.paper import runner

# Longest first (by each figure's CPU time in the committed quick run, results/quick/run.json), so
# that two processes finish at about the same time.
ORDER = ("fig3", "fig2", "fig4", "fig1")
GRACE_SECONDS = 60  # how long a worker gets to save its finished runs after Ctrl-C


class WorkerFailed(Exception):
    """A figure's process exited with an error (not Ctrl-C)."""


def default_jobs(figures: list[str]) -> int:
    """One process per figure, at most one per CPU core."""
    return max(1, min(len(figures), os.cpu_count() or 1))


def part_dir(out: Path, figure: str) -> Path:
    return out / "parts" / figure


def seed_parts_from(out: Path, figures: list[str]) -> None:
    """For ``--resume``: give each figure that has no part yet the rows ``<out>/results.csv``
    already holds for it (a run that finished, or was interrupted, in one process)."""
    merged = out / "results.csv"
    if not merged.is_file():
        return
    rows = runner.read_results(merged)
    for figure in figures:
        part = part_dir(out, figure)
        if not (part / "results.csv").is_file():
            part.mkdir(parents=True, exist_ok=True)
            runner.write_csv([r for r in rows if r["figure"] == figure], part / "results.csv")


def _command(args, size: str, figure: str, seeds: list[int], part: Path) -> list[str]:
    command = [sys.executable, "-m", "adam_jax", "reproduce", figure, "--jobs", "1"]
    command += {"quick": ["--quick"], "tiny": ["--tiny"], "full": []}[size]
    command += ["--seeds", ",".join(map(str, seeds)) + ",", "--out", str(part), "--no-progress"]
    command += ["--progress-file", str(part / "progress")]
    command += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    command += ["--few-epochs-only"] if args.few_epochs_only and figure == "fig4" else []
    command += ["--resume"] if args.resume else ["--overwrite"]  # the parts are the parent's
    return command


def _progress(part: Path) -> tuple[int, int]:
    try:
        done, grown = (part / "progress").read_text().split()
        return int(done), int(grown)
    except (OSError, ValueError):
        return 0, 0


def merge(out: Path, figures: list[str]) -> list[dict]:
    """The rows of every figure's part, in figure order, written to ``<out>/results.csv`` with the
    rows of other figures that it already holds (an earlier run's): returns them all."""
    merged = out / "results.csv"
    earlier = runner.read_csv(merged) if merged.is_file() else []
    rows = [r for r in earlier if r["figure"] not in figures]
    for figure in runner.FIGURES:
        path = part_dir(out, figure) / "results.csv"
        if figure in figures and path.is_file():
            rows += runner.read_csv(path)
    rows = runner.in_figure_order(rows)
    runner.write_csv(rows, merged)
    return rows


def run(args, size: str, figures: list[str], seeds: list[int], out: Path, jobs: int, bar,
        sitting: dict) -> list[dict]:  # fmt: skip
    """Run ``figures`` in up to ``jobs`` processes, showing their progress on the tqdm ``bar``;
    returns the merged rows. Each figure's
    training time (wall and CPU, as its own process measured them) goes into ``sitting``. On
    Ctrl-C the workers are asked to stop, the rows they finished are merged, and
    KeyboardInterrupt is raised again; a worker's error raises :class:`WorkerFailed`."""
    if args.resume:
        seed_parts_from(out, figures)
    waiting = [f for f in ORDER if f in figures]
    started: list[str] = []
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    base = bar.total
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                figure = waiting.pop(0)
                part = part_dir(out, figure)
                part.mkdir(parents=True, exist_ok=True)
                (part / "progress").unlink(missing_ok=True)
                log = open(part / "log.txt", "w")
                proc = subprocess.Popen(
                    _command(args, size, figure, seeds, part),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches them once, from _stop, not twice
                )  # fmt: skip
                running[figure] = (proc, log)
                started.append(figure)
            time.sleep(0.5)
            for figure, (proc, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[figure]
                if code == 130:
                    raise KeyboardInterrupt
                if code != 0:
                    raise WorkerFailed(
                        f"{figure} stopped with exit code {code}; its output is in "
                        f"{part_dir(out, figure) / 'log.txt'}"
                    )
            counts = [_progress(part_dir(out, f)) for f in figures]
            bar.total = base + sum(g for _, g in counts)
            bar.n = sum(d for d, _ in counts)
            bar.refresh()
    except BaseException:
        _stop(running)
        merge(out, figures)
        _collect_times(out, started, sitting)
        raise
    _collect_times(out, started, sitting)
    rows = merge(out, figures)
    shutil.rmtree(out / "parts")
    return rows


def _stop(running: dict) -> None:
    """Ask every worker to stop as Ctrl-C would (they save what they finished), then wait."""
    for proc, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + GRACE_SECONDS
    for proc, log in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _collect_times(out: Path, figures: list[str], sitting: dict) -> None:
    """Copy the training time each worker of ``figures`` measured in this sitting into
    ``sitting`` (a worker that stopped before writing its ``run.json`` adds nothing)."""
    for figure in figures:
        path = part_dir(out, figure) / "run.json"
        try:
            last = json.loads(path.read_text())["sittings"][-1]
            if last.get("start", "") < sitting["start"]:
                continue  # an earlier sitting's
            for field in ("figure_seconds", "figure_cpu_seconds"):
                sitting[field].update(last.get(field, {}))
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue  # unreadable: the worker's own --resume check names the problem
