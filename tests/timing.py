"""Bounded-work checks that hold on a loaded machine: CPU seconds (this process and the children it
reaped, such as the guard's reader), never wall time, and scaled by how slow this machine is on a
fixed workload measured once per session (the anchor). A hostile file that makes a parser loop or
blow up still fails these checks by orders of magnitude."""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from typing import Iterator

_ANCHOR_REFERENCE = 0.035  # CPU seconds of `_anchor_workload` on the CI machine class, unloaded
_scale: float | None = None


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _anchor_workload() -> float:
    start = time.process_time()
    sum(i * i for i in range(1_000_000))
    return time.process_time() - start


def machine_scale() -> float:
    """How much slower than the reference this machine runs the anchor (never below 1)."""
    global _scale
    if _scale is None:
        _scale = max(1.0, min(_anchor_workload() for _ in range(3)) / _ANCHOR_REFERENCE)
    return _scale


@contextmanager
def cpu_budget(seconds: float, what: str = "the block") -> Iterator[None]:
    """Fail when the block uses more than `seconds` of CPU (scaled to this machine)."""
    start = cpu_seconds()
    yield
    used, limit = cpu_seconds() - start, seconds * machine_scale()
    assert used < limit, f"{what} used {used:.2f} s of CPU, more than {limit:.2f} s"
