"""Run a reader function in a disposable child process.

Why: libhdf5 can segfault or loop forever on a few changed bytes (see the hdf5-crashers fixtures),
and Python can catch neither. Each risky read therefore happens in a `fork()`ed child that has
resource limits; the parent turns every way the child can die into a one-line typed error.

Why fork and not multiprocessing: the parent has already imported h5py and numpy, so a forked
child starts in about a millisecond and needs no pickling of the function or its arguments.

Why no pickle on the way back: the child has parsed hostile bytes and may be compromised, so the
parent decodes only JSON plus `.npy` arrays read with `allow_pickle=False`, within size limits.

Call it from a single-threaded program: a fork while another thread holds a lock (h5py's
global lock, say) leaves the child stuck until the timeout.
"""
from __future__ import annotations

import faulthandler
import json
import math
import os
import select
import signal
import struct
import sys
import time
import traceback
from typing import Any, Callable, TypeVar

import numpy as np

from lstm_inspect import errors
from lstm_inspect.errors import GuardError, InspectError, InternalError, UsageError

T = TypeVar("T")

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_MEMORY_BYTES = 2 * GiB
MAX_RESULT_BYTES = 1 * GiB  # the parent refuses a larger result (module-level so tests can lower it)
NO_GUARD_ENV = "LSTM_INSPECT_NO_GUARD"
TIMEOUT_ENV = "LSTM_INSPECT_TIMEOUT"  # seconds; the default wall-clock limit when a caller gives none
DEFAULT_TIMEOUT = 30.0

_MAGIC = b"LSTMIG\x00\x01"
_FRAME = struct.Struct(">cQ")  # one kind byte, then the payload length
_JSON, _CHUNK, _ARRAY_END, _DONE = b"J", b"A", b"E", b"Z"
_MAX_CHUNK = 64 * MiB
_MAX_NPY_HEADER = 64 * 1024
_MAX_TREE_DEPTH = 100
_TAGS = ("__ndarray__", "__tuple__", "__dict__")
_SEND_FAILED = 70  # child exit status when it could not send its result
_PIPE_SIZE = 1 * MiB
_F_SETPIPE_SZ = 1031  # Linux fcntl; fewer syscalls for large results

_in_child = False  # set in a guarded child: nested calls run in-process (already sandboxed)


def run_guarded(
    fn: Callable[..., T],
    /,
    *args: Any,
    label: str,
    timeout: float | None = None,
    memory_bytes: int | None = DEFAULT_MEMORY_BYTES,
    cpu_seconds: int | None = None,
    output_path: str | os.PathLike[str] | None = None,
    guarded: bool | None = None,
    **kwargs: Any,
) -> T:
    """Return `fn(*args, **kwargs)` computed in a forked child with resource limits.

    `label` names the input in error messages (it becomes `file=` of every error). The child may
    write files only when `output_path` is given; if the call fails, that path is removed.
    `guarded=False`, env LSTM_INSPECT_NO_GUARD=1, a platform without fork, or a call from inside
    a guarded child all run `fn` in-process instead (exceptions then propagate unchanged).
    `timeout` (seconds of wall-clock time) defaults to env LSTM_INSPECT_TIMEOUT, else 30 s.
    The keyword names of this function (label, timeout, ...) cannot be passed on to `fn`.
    Without `output_path` the child cannot write to regular files at all (RLIMIT_FSIZE = 0),
    which includes a stdout/stderr redirected to a file.
    """
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be positive")
    try:
        if timeout is None:
            timeout = default_timeout()
        if not _should_guard(guarded):
            return fn(*args, **kwargs)
        limits = _ChildLimits(memory_bytes, cpu_seconds, writable=output_path is not None)
        return _run_in_child(fn, args, kwargs, label, timeout, limits)
    except BaseException:
        _remove_output(output_path)
        raise


def default_timeout() -> float:
    """The wall-clock limit of a guarded call: env LSTM_INSPECT_TIMEOUT (seconds), else 30 s."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{TIMEOUT_ENV} must be a positive number of seconds, not {text[:40]!r}")
    return value


def guard_enabled(guarded: bool | None = None) -> bool:
    """Whether `run_guarded(..., guarded=guarded)` would fork (for --debug output and tests)."""
    return _should_guard(guarded)


def _should_guard(guarded: bool | None) -> bool:
    """Fork unless asked not to, already in a guarded child, or fork is unavailable."""
    if guarded is False or _in_child or not hasattr(os, "fork"):
        return False
    if guarded is None and os.environ.get(NO_GUARD_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        return False
    return True


def _remove_output(output_path: str | os.PathLike[str] | None) -> None:
    """Drop a half-written export so a failed call never leaves a valid-looking file behind."""
    if output_path is None:
        return
    try:
        os.unlink(output_path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass


class _ChildLimits:
    """The resource limits applied inside the child."""

    def __init__(self, memory_bytes: int | None, cpu_seconds: int | None, *, writable: bool) -> None:
        self.memory_bytes = memory_bytes
        self.cpu_seconds = cpu_seconds
        self.writable = writable


# ----------------------------------------------------------------------------------------------
# Parent side


def _run_in_child(fn: Callable[..., T], args: tuple, kwargs: dict, label: str, timeout: float,
                  limits: _ChildLimits) -> T:
    """Fork, collect the reply, always reap the child (even on Ctrl-C), map failures to errors."""
    rfd, wfd = os.pipe()
    _grow_pipe(wfd)
    _flush_std_streams()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(rfd), os.close(wfd)
        raise GuardError(f"could not start a reader process ({exc.strerror or exc})", file=label) from None
    if pid == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
        os.close(rfd)
        _child_main(wfd, fn, args, kwargs, limits)
    os.close(wfd)
    child = _Child(pid, time.monotonic() + timeout)
    try:
        reply, problem = _collect(rfd, child)
        if reply is None:
            child.wait()
            raise _failure_from_status(child, problem, label, timeout, limits)
        child.wait()
        return _unpack_reply(reply, label, limits)
    finally:
        os.close(rfd)
        child.kill()


def _collect(rfd: int, child: "_Child") -> tuple[dict | None, str | None]:
    """Read the reply; on timeout or a bad stream kill the child at once. Returns (reply, why-not)."""
    try:
        return _receive(rfd, child.deadline, MAX_RESULT_BYTES), None
    except _Timeout:
        child.kill(timed_out=True)
        return None, None
    except _Truncated:
        return None, None
    except _BadStream as exc:
        child.kill()
        return None, str(exc)


class _Child:
    """A forked child process: waits with the deadline in mind, kills and reaps exactly once."""

    def __init__(self, pid: int, deadline: float) -> None:
        self.pid = pid
        self.deadline = deadline
        self.status: int | None = None
        self.cpu_used = 0.0
        self.timed_out = False

    def wait(self) -> int:
        """Reap the child; it has closed its pipe so it is exiting, but never wait past the deadline."""
        self._sleep_until_exit()
        delay = 0.0002
        while self.status is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.status, self.cpu_used = status, usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() >= self.deadline:
                self.kill(timed_out=True)
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.status  # type: ignore[return-value]

    def _sleep_until_exit(self) -> None:
        """Linux: a pidfd becomes readable exactly when the child exits (tearing down a large
        address space takes a few ms); elsewhere the polling loop in wait() does the job."""
        if self.status is not None or not hasattr(os, "pidfd_open"):
            return
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:
            return
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            remaining = self.deadline - time.monotonic()
            if remaining > 0:
                poller.poll(math.ceil(remaining * 1000))
        finally:
            os.close(fd)

    def kill(self, *, timed_out: bool = False) -> None:
        """SIGKILL (cannot be caught or ignored) and reap, so no zombie is left behind."""
        self.timed_out = self.timed_out or timed_out
        if self.status is not None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.status, self.cpu_used = _wait_retrying(self.pid)


def _wait_retrying(pid: int) -> tuple[int, float]:
    """Blocking wait4 that finishes even if a Ctrl-C arrives meanwhile (re-raised afterwards)."""
    interrupted: BaseException | None = None
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            result = (status, usage.ru_utime + usage.ru_stime)
            break
        except ChildProcessError:
            result = (0, 0.0)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted
    return result


def _failure_from_status(child: _Child, problem: str | None, label: str, timeout: float,
                         limits: _ChildLimits) -> InspectError:
    """Explain why no (valid) reply came: bad stream, timeout, a signal or an odd exit."""
    if problem is not None:
        return GuardError(f"its reader process sent back an invalid result ({problem})", file=label)
    if child.timed_out:
        return GuardError(f"did not finish within {timeout:g} s", file=label)
    status = child.status or 0
    if os.WIFSIGNALED(status):
        return _signal_error(os.WTERMSIG(status), child.cpu_used, label, limits)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    if code == _SEND_FAILED:
        return GuardError("its reader process failed while sending its result", file=label)
    return GuardError(f"its reader process exited unexpectedly (exit status {code})", file=label)


def _signal_error(signum: int, cpu_used: float, label: str, limits: _ChildLimits) -> GuardError:
    """One line per way of dying: CPU limit, an outside SIGKILL (OOM killer), or a crash."""
    name = _signal_name(signum)
    over_cpu = limits.cpu_seconds is not None and cpu_used >= limits.cpu_seconds
    if signum == getattr(signal, "SIGXCPU", None) or (signum == signal.SIGKILL and over_cpu):
        return GuardError(f"used more than {limits.cpu_seconds} s of CPU time ({name})", file=label)
    if signum == signal.SIGKILL:
        return GuardError("its reader process was killed (SIGKILL), perhaps for lack of memory", file=label)
    return GuardError(f"the HDF5 library crashed while reading it ({name}, signal {signum})", file=label)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe buffer means far fewer wake-ups when tens of MB of arrays come back."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, OSError):
        pass


def _flush_std_streams() -> None:
    """Flush before fork so buffered output is not duplicated by the child."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _unpack_reply(reply: dict, label: str, limits: _ChildLimits) -> Any:
    """An ok reply is the value; an error reply becomes the matching typed error."""
    if reply.get("ok") is True:
        return reply["value"]
    raise _error_from_reply(reply.get("error"), label, limits)


def _error_from_reply(err: Any, label: str, limits: _ChildLimits) -> InspectError:
    """Rebuild an error from a child's description, trusting only known class names."""
    if not isinstance(err, dict):
        return GuardError("its reader process sent back an invalid error report", file=label)
    kind = err.get("kind")
    if kind == "memory" and limits.memory_bytes is None:
        return GuardError("ran out of memory", file=label)
    if kind == "memory":
        return GuardError(f"needed more than {_mib(limits.memory_bytes)} MiB of memory", file=label)
    if kind == "inspect":
        return _inspect_error(err, label)
    etype, msg = _text(err.get("type"), 200), _one_line(_text(err.get("message"), 2000))
    return InternalError(f"internal error: {etype}: {msg} (please report this)", file=label,
                         debug_traceback=_text(err.get("traceback"), 200_000))


def _inspect_error(err: dict, label: str) -> InspectError:
    """Same class (first known name in the child's MRO), same message, same file."""
    known = _known_error_classes()
    names = err.get("classes") if isinstance(err.get("classes"), list) else []
    cls = next((known[n] for n in names if isinstance(n, str) and n in known), InspectError)
    file = err.get("file") if isinstance(err.get("file"), str) else label
    message = _text(err.get("message"), 10_000)
    if cls is InternalError or issubclass(cls, InternalError):
        return cls(message, file=file, debug_traceback=_text(err.get("traceback"), 200_000) or None)
    return cls(message, file=file)


def _known_error_classes() -> dict[str, type[InspectError]]:
    return {name: obj for name, obj in vars(errors).items()
            if isinstance(obj, type) and issubclass(obj, InspectError)}


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _mib(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / MiB:g}"


# ----------------------------------------------------------------------------------------------
# Child side


def _child_main(wfd: int, fn: Callable[..., Any], args: tuple, kwargs: dict,
                limits: _ChildLimits) -> None:  # pragma: no cover - runs in the child
    """Set up the sandbox, run fn, send the reply, and leave without running parent cleanups."""
    global _in_child
    status = 0
    try:
        _in_child = True
        _child_signals()
        _child_rlimits(limits)
        doc, arrays = _call_and_pack(fn, args, kwargs)
        _send(wfd, doc, arrays)
    except BaseException:
        status = _SEND_FAILED
    finally:
        _flush_std_streams()  # keep fn's own prints (the parent flushed its buffers before fork)
        os._exit(status)


def _child_signals() -> None:
    """Ctrl-C is the parent's job (it kills us); other handlers revert to default behaviour.

    faulthandler is disabled so a crash is reported once, by the parent, not as a stack dump.
    SIGXFSZ stays ignored (Python's default) so a forbidden write raises an exception instead.
    """
    faulthandler.disable()
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    handlers = [("SIGINT", signal.SIG_IGN)] + [(name, signal.SIG_DFL) for name in (
        "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGXCPU")]
    for name, handler in handlers:
        try:
            signal.signal(getattr(signal, name), handler)
        except (AttributeError, ValueError, OSError):
            pass


def _child_rlimits(limits: _ChildLimits) -> None:
    """Address space, CPU time, no core dumps, and no file writes unless an export is expected."""
    import resource

    _set_rlimit(resource.RLIMIT_CORE, 0)
    if limits.memory_bytes is not None:
        _set_rlimit(resource.RLIMIT_AS, limits.memory_bytes)
    if limits.cpu_seconds is not None:
        # SIGXCPU at the soft limit; SIGKILL one second later if it is somehow survived.
        _set_rlimit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    if not limits.writable:
        _set_rlimit(resource.RLIMIT_FSIZE, 0)


def _set_rlimit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower both limits (so fn cannot raise them back), never above the inherited hard limit."""
    import resource

    _, old_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if old_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, old_hard), min(hard, old_hard)
    resource.setrlimit(which, (soft, hard))


def _call_and_pack(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[dict, list[np.ndarray]]:
    """Run fn and turn its value (or its exception) into a JSON document plus arrays."""
    try:
        value = fn(*args, **kwargs)
        arrays: list[np.ndarray] = []
        tree = _encode(value, arrays, {}, 0)
        return {"ok": True, "value": tree, "arrays": len(arrays)}, arrays
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        return {"ok": False, "error": _describe_exception(exc)}, []


def _describe_exception(exc: BaseException) -> dict:
    """What the parent needs to rebuild the error: never the exception object itself."""
    if isinstance(exc, InspectError):
        return {"kind": "inspect", "classes": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc.message), "file": exc.file,
                "traceback": getattr(exc, "debug_traceback", None)}
    if _is_out_of_memory(exc):
        return {"kind": "memory"}
    return {"kind": "internal", "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or libhdf5 reporting a failed allocation (RLIMIT_AS reached inside C code)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, OSError) and "memory allocation failed" in text


def _encode(obj: Any, arrays: list[np.ndarray], memo: dict[int, int], depth: int) -> Any:
    """JSON-able tree; arrays become {"__ndarray__": i}; tuples and tag-like dicts are tagged."""
    if depth > _MAX_TREE_DEPTH:
        raise TypeError("the result is nested too deeply to send from the guarded process")
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str.__str__(obj)  # the plain value, also for str-based enums and np.str_
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _add_array(obj, arrays, memo)}
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, dict):
        return _encode_dict(obj, arrays, memo, depth)
    if isinstance(obj, list):
        return [_encode(v, arrays, memo, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, memo, depth + 1) for v in obj]}
    raise TypeError(f"cannot send a {type(obj).__name__} from the guarded process")


def _encode_dict(obj: dict, arrays: list[np.ndarray], memo: dict[int, int], depth: int) -> dict:
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"cannot send a dict with a {type(key).__name__} key from the guarded process")
        out[key] = _encode(value, arrays, memo, depth + 1)
    return {"__dict__": out} if len(out) == 1 and next(iter(out)) in _TAGS else out


def _add_array(arr: np.ndarray, arrays: list[np.ndarray], memo: dict[int, int]) -> int:
    if arr.dtype.hasobject:
        raise TypeError("cannot send an object array from the guarded process")
    if id(arr) not in memo:
        memo[id(arr)] = len(arrays)
        arrays.append(arr)
    return memo[id(arr)]


def _send(fd: int, doc: dict, arrays: list[np.ndarray]) -> None:  # pragma: no cover - child
    """Magic, one JSON frame, each array as .npy bytes in chunk frames, then a done frame."""
    try:
        # ASCII with \u escapes: a name read from a file may hold lone surrogates (h5py decodes
        # undecodable bytes with surrogateescape), which strict UTF-8 cannot encode.
        body = json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    except (ValueError, TypeError, RecursionError) as exc:
        body = json.dumps({"ok": False, "error": _describe_exception(exc)}).encode("utf-8")
        arrays = []
    _write_all(fd, _MAGIC + _FRAME.pack(_JSON, len(body)))
    _write_all(fd, body)
    out = _ChunkWriter(fd)
    for arr in arrays:
        np.lib.format.write_array(out, arr, allow_pickle=False)
        _write_all(fd, _FRAME.pack(_ARRAY_END, 0))
    _write_all(fd, _FRAME.pack(_DONE, 0))


class _ChunkWriter:
    """File-like for write_array: each write becomes one chunk frame (streamed, never whole).

    Deliberately not an io.BufferedWriter: numpy would then use tofile(), which needs a seekable fd.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _MAX_CHUNK):
            piece = view[start:start + _MAX_CHUNK]
            _write_all(self.fd, _FRAME.pack(_CHUNK, len(piece)))
            _write_all(self.fd, piece)
        return len(view)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ----------------------------------------------------------------------------------------------
# Parent side: reading and validating the stream


class _Timeout(Exception):
    """The deadline passed while waiting for the child."""


class _Truncated(Exception):
    """The pipe closed before a complete reply: the child died or exited early."""


class _BadStream(Exception):
    """The bytes on the pipe break the protocol or a size limit."""


class _Pipe:
    """Blocking reads with a deadline and a total byte budget."""

    def __init__(self, fd: int, deadline: float, budget: int) -> None:
        self.fd = fd
        self.deadline = deadline
        self.budget = budget
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read_exact(self, n: int) -> bytearray:
        if n > self.budget:
            raise _BadStream(f"result larger than {_mib(MAX_RESULT_BYTES)} MiB")
        self.budget -= n
        buf = bytearray(n)
        view, pos = memoryview(buf), 0
        while pos < n:
            self._wait_readable()
            got = os.readv(self.fd, [view[pos:]])
            if got == 0:
                raise _Truncated()
            pos += got
        return buf

    def _wait_readable(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 or not self.poller.poll(math.ceil(remaining * 1000)):
            raise _Timeout()

    def frame(self) -> tuple[bytes, int]:
        kind, length = _FRAME.unpack(self.read_exact(_FRAME.size))
        return kind, length


def _receive(fd: int, deadline: float, limit: int) -> dict:
    """Read and validate one complete reply; arrays are substituted into the decoded tree."""
    pipe = _Pipe(fd, deadline, limit)
    if bytes(pipe.read_exact(len(_MAGIC))) != _MAGIC:
        raise _BadStream("bad magic")
    kind, length = pipe.frame()
    if kind != _JSON:
        raise _BadStream("expected a JSON frame")
    doc = _parse_json(pipe.read_exact(length))
    count = doc.get("arrays", 0)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1_000_000:
        raise _BadStream("bad array count")
    arrays = [_read_npy(pipe) for _ in range(count)]
    if pipe.frame() != (_DONE, 0):
        raise _BadStream("missing end frame")
    if doc.get("ok") is True:
        doc["value"] = _decode(doc.get("value"), arrays, 0)
    return doc


def _parse_json(body: bytearray) -> dict:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _BadStream(f"bad JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise _BadStream("the reply is not a JSON object")
    return doc


def _read_npy(pipe: _Pipe) -> np.ndarray:
    """Check the .npy header (no objects, size within budget) before numpy allocates anything."""
    blob = _NpyFrames(pipe)
    shape, dtype = _peek_npy_header(blob)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > pipe.budget:
        raise _BadStream(f"result larger than {_mib(MAX_RESULT_BYTES)} MiB")
    try:
        arr = np.lib.format.read_array(blob, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _BadStream(f"bad array: {exc}") from None
    if blob.read(1) != b"" or not blob.done:
        raise _BadStream("array has trailing data")
    return arr


def _peek_npy_header(blob: "_NpyFrames") -> tuple[tuple[int, ...], np.dtype]:
    """Parse the header ourselves, then push its bytes back for read_array to parse again."""
    prefix = blob.read(8)
    if len(prefix) != 8 or prefix[:6] != b"\x93NUMPY" or prefix[6] not in (1, 2):
        raise _BadStream("bad .npy magic")
    width = 2 if prefix[6] == 1 else 4
    raw_len = blob.read(width)
    hlen = int.from_bytes(raw_len, "little") if len(raw_len) == width else -1
    if not 0 <= hlen <= _MAX_NPY_HEADER:
        raise _BadStream("bad .npy header length")
    header = blob.read(hlen)
    import io

    reader = np.lib.format.read_array_header_1_0 if prefix[6] == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, _fortran, dtype = reader(io.BytesIO(raw_len + header), max_header_size=_MAX_NPY_HEADER)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise _BadStream(f"bad .npy header: {exc}") from None
    if dtype.hasobject:
        raise _BadStream("object arrays are refused")
    blob.push_back(prefix + raw_len + header)
    return shape, dtype


class _NpyFrames:
    """A read-only file-like view of one array's chunk frames, ending at the array-end frame."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.left = 0  # bytes left in the current chunk
        self.done = False
        self.pending = b""

    def push_back(self, data: bytes) -> None:
        self.pending = data + self.pending

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise _BadStream("unbounded read")
        parts, want = [], n
        if self.pending:
            parts.append(self.pending[:want])
            self.pending = self.pending[want:]
            want -= len(parts[-1])
        while want > 0 and self._next_chunk():
            take = min(want, self.left)
            parts.append(self.pipe.read_exact(take))
            self.left -= take
            want -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _next_chunk(self) -> bool:
        while self.left == 0 and not self.done:
            kind, length = self.pipe.frame()
            if kind == _ARRAY_END and length == 0:
                self.done = True
            elif kind == _CHUNK and length <= _MAX_CHUNK:
                self.left = length
            else:
                raise _BadStream("bad array frame")
        return self.left > 0


def _decode(node: Any, arrays: list[np.ndarray], depth: int) -> Any:
    """Inverse of _encode; every tag is validated (the child is not trusted)."""
    if depth > _MAX_TREE_DEPTH + 2:
        raise _BadStream("result nested too deeply")
    if isinstance(node, list):
        return [_decode(v, arrays, depth + 1) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (tag, inner), = node.items()
        if tag == "__ndarray__":
            if not isinstance(inner, int) or isinstance(inner, bool) or not 0 <= inner < len(arrays):
                raise _BadStream("bad array placeholder")
            return arrays[inner]
        if tag == "__tuple__":
            if not isinstance(inner, list):
                raise _BadStream("bad tuple")
            return tuple(_decode(v, arrays, depth + 1) for v in inner)
        if tag == "__dict__":
            if not isinstance(inner, dict):
                raise _BadStream("bad dict")
            return {k: _decode(v, arrays, depth + 1) for k, v in inner.items()}
    return {k: _decode(v, arrays, depth + 1) for k, v in node.items()}
