"""What the commands share: the argument parser's one-line errors and the memory check that
refuses a run too big for the machine before anything is allocated."""

from __future__ import annotations

import argparse
import os
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def memory_limit(device=None) -> tuple[int, str] | None:
    """The bytes of memory arrays can take, and whose memory it is: the JAX ``device``'s limit
    when it reports one (GPU, TPU), else this machine's physical memory; None when unknown."""
    stats = device.memory_stats() if device is not None else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"the memory of the {device.device_kind}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def too_big(needed: int, what: str, fix: str, device=None) -> str | None:
    """The one-line refusal of a run whose estimated ``needed`` bytes exceed
    :func:`memory_limit`, else None: checked before anything is allocated."""
    limit = memory_limit(device)
    if limit is None or needed <= limit[0]:
        return None
    return f"{what} needs about {gib(needed)}, more than the {gib(limit[0])} of {limit[1]}; {fix}"
