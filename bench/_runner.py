"""Shared measuring helpers for the bench scripts (standard library only; never imports TF).

Each measured command runs as its own subprocess. Wall time is perf_counter around spawn..reap.
Peak RSS is `ru_maxrss` of the measured process as reported by `/usr/bin/time -f %M` (GNU time
forks from its own ~1 MiB image, then execs the command, then wait4()s it). On Linux that value is
the max over the process and every descendant it reaped (a per-process peak, not a sum), so a
child-process guard inside lstm-inspect is covered. Why not os.wait4 from here directly: Python
spawns with vfork, and Linux carries the *parent's* RSS high-water mark across exec into the
child's ru_maxrss, so every command would read >= this bench process's RSS (~30 MiB). Without
/usr/bin/time we fall back to that (flagged as an upper bound). `tree=True` additionally samples the summed
VmRSS of the whole process tree every ~2 ms (sampling costs CPU: use it on separate runs).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
MiB = 1024 * 1024
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
RSS_NOTE = ("peak RSS via /usr/bin/time %M (max single process incl. reaped children)" if GNU_TIME
            else "peak RSS via os.wait4: UPPER BOUND, includes the bench process's own RSS")


def lstm_inspect_cmd() -> list[str]:
    """The console script, with the package's bytecode compiled first.

    `pip install .` compiles .pyc files; an editable install under PYTHONDONTWRITEBYTECODE=1 (set on
    these machines) would recompile every module on every run (~0.1 s), which no user pays."""
    import lstm_inspect
    subprocess.run([PY, "-m", "compileall", "-q", os.path.dirname(lstm_inspect.__file__)], check=False)
    exe = shutil.which("lstm-inspect")
    return [exe] if exe else [PY, "-m", "lstm_inspect"]


@dataclass
class Run:
    wall: float
    maxrss_kib: int
    rc: int
    user: float = 0.0  # CPU seconds of the command and every process it reaped
    sys: float = 0.0
    stdout: str = ""
    stderr: str = ""
    tree_peak_kib: int | None = None


@dataclass
class Series:
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.rc == 0 for r in self.runs)

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def user(self) -> float:
        return statistics.median(r.user for r in self.runs)

    @property
    def sys(self) -> float:
        return statistics.median(r.sys for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.user + r.sys for r in self.runs)

    @property
    def rss_mib(self) -> float:
        return max(r.maxrss_kib for r in self.runs) / 1024

    @property
    def tree_mib(self) -> float | None:
        vals = [r.tree_peak_kib for r in self.runs if r.tree_peak_kib is not None]
        return max(vals) / 1024 if vals else None

    def error(self) -> str:
        bad = next((r for r in self.runs if r.rc != 0), None)
        if bad is None:
            return ""
        lines = [ln for ln in bad.stderr.strip().splitlines() if ln.strip()]
        return f"rc={bad.rc}: {lines[-1] if lines else '(no stderr)'}"


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


_HAVE_ROLLUP = os.path.exists("/proc/self/smaps_rollup")
TREE_NOTE = ("tree PSS = summed proportional set size of the whole process tree (pages a fork "
             "shares count once), sampled every 2 ms in one extra run" if _HAVE_ROLLUP else
             "tree RSS = summed VmRSS of the whole process tree (fork-shared pages counted "
             "twice), sampled every 2 ms in one extra run")


def _rss_kib(pid: int) -> int:
    """PSS of pid (smaps_rollup), else VmRSS; 0 if it is gone."""
    path, key = ((f"/proc/{pid}/smaps_rollup", b"Pss:") if _HAVE_ROLLUP
                 else (f"/proc/{pid}/status", b"VmRSS:"))
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int, period: float = 0.002):
        super().__init__(daemon=True)
        self.pid, self.period, self.peak = pid, period, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            kids = _children_map()
            todo, total = [self.pid], 0
            while todo:
                p = todo.pop()
                total += _rss_kib(p)
                todo.extend(kids.get(p, ()))
            self.peak = max(self.peak, total)
            self.stop.wait(self.period)


def run(argv: list[str], *, env: dict | None = None, tree: bool = False,
        keep_stdout: bool = False) -> Run:
    """Run argv once; stdout/stderr go to temp files (no pipe back-pressure)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        if GNU_TIME:
            argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss.name, *argv]
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             env={**os.environ, **(env or {})})
        sampler = _TreeSampler(p.pid) if tree else None
        if sampler:
            sampler.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if sampler:
            sampler.stop.set()
            sampler.join()
        out.seek(0)
        err.seek(0)
        maxrss = ru.ru_maxrss
        if GNU_TIME:
            lines = rss.read().split()
            maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else maxrss
        return Run(wall=wall, maxrss_kib=maxrss, rc=p.returncode, user=ru.ru_utime, sys=ru.ru_stime,
                   stdout=out.read().decode(errors="replace") if keep_stdout else "",
                   stderr=err.read().decode(errors="replace")[-4000:],
                   tree_peak_kib=sampler.peak if sampler else None)


def repeat(label: str, argv: list[str], n: int, *, env: dict | None = None, before=None,
           keep_stdout: bool = False, stop_on_error: bool = True) -> Series:
    s = Series(label)
    for _ in range(n):
        if before:
            before()
        r = run(argv, env=env, keep_stdout=keep_stdout)
        s.runs.append(r)
        if r.rc != 0 and stop_on_error:
            break
    return s


def warm(path: Path) -> float:
    """Read a file once so it sits in the page cache; returns seconds taken."""
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(16 * MiB):
            pass
    return time.perf_counter() - t0


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}x" if x < 10 else f"{x:.1f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def status(target_ok: bool) -> str:
    return "PASS" if target_ok else "FAIL"
