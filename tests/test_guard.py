"""Tests for lstm_inspect.safety.guard: crashes, hangs, limits and the pickle-free result transport."""
from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lstm_inspect.safety import guard
from lstm_inspect.errors import CorruptModelError, GuardError, InspectError, InternalError, UnsafeModelError
from lstm_inspect.safety.guard import run_guarded

CRASHERS = Path(os.environ.get("LSTM_INSPECT_CRASHERS",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hdf5-crashers"))
HANG_TIMEOUT = 3.0


def _read_model_config(path: str) -> int:
    with h5py.File(path, "r") as f:
        return len(f.attrs["model_config"])


@pytest.mark.parametrize("name, expected", [
    ("crash_1676.h5", "SIGSEGV"),
    ("crash_2200.h5", f"did not finish within {HANG_TIMEOUT:g} s"),
    ("crash_2957.h5", f"did not finish within {HANG_TIMEOUT:g} s"),
    ("crash_2979.h5", f"did not finish within {HANG_TIMEOUT:g} s"),
])
def test_hdf5_crashers_become_guard_errors(name: str, expected: str) -> None:
    path = CRASHERS / name
    if not path.exists():
        pytest.skip(f"fixture {path} not found")
    start = time.monotonic()
    with pytest.raises(GuardError) as info:
        run_guarded(_read_model_config, str(path), label=name, timeout=HANG_TIMEOUT)
    elapsed = time.monotonic() - start
    assert expected in info.value.message
    assert info.value.file == name and info.value.exit_code == 2
    assert "\n" not in str(info.value)
    assert elapsed < HANG_TIMEOUT + 2


def _arrays() -> dict:
    f32 = np.array([0.0, -0.0, 1.5, np.nan, np.inf, -np.inf, 1e-45, 3.4e38], dtype=np.float32)
    return {
        "f32": f32,
        "f16": np.array([[1.0, -2.5], [np.nan, 65504.0]], dtype=np.float16),
        "f64_big_endian": np.arange(6, dtype=">f8").reshape(2, 3),
        "i64": np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64),
        "u8": np.arange(256, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "zero_d": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        "strided": np.arange(20, dtype=np.float32)[::3],
        "unicode": np.array(["kernel", "récurrent"]),
        "tree": [1, 2.5, "s", None, True, (3, (4,)), {"__tuple__": 1}, {"nested": [f32, f32]}],
        "np_scalars": [np.float32(0.5), np.int64(7), np.bool_(True)],
        "shape": (4, 8),
        "big_int": 2**70,
    }


def _assert_same_array(got: np.ndarray, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def test_result_round_trips_bit_exactly() -> None:
    got, want = run_guarded(_arrays, label="x"), _arrays()
    for key in ("f32", "f16", "f64_big_endian", "i64", "u8", "bool", "zero_d", "empty", "fortran", "strided", "unicode"):
        _assert_same_array(got[key], want[key])
    tree = got["tree"]
    assert tree[:5] == [1, 2.5, "s", None, True]
    assert tree[5] == (3, (4,)) and isinstance(tree[5], tuple)
    assert tree[6] == {"__tuple__": 1}
    _assert_same_array(tree[7]["nested"][1], want["f32"])
    assert got["np_scalars"] == [0.5, 7, True]
    assert got["shape"] == (4, 8) and got["big_int"] == 2**70


def _big_result() -> dict:
    return {"w": np.random.default_rng(0).standard_normal((2500, 4000), dtype=np.float32)}  # 40 MB


def test_large_result_streams_back() -> None:
    start = time.perf_counter()
    got = run_guarded(_big_result, label="x")
    print(f"\n40 MB result round trip: {(time.perf_counter() - start) * 1000:.0f} ms")
    _assert_same_array(got["w"], _big_result()["w"])


def _raise(exc: BaseException) -> None:
    raise exc


def test_inspect_error_keeps_class_message_and_file() -> None:
    with pytest.raises(CorruptModelError) as info:
        run_guarded(_raise, CorruptModelError("missing weight lstm/kernel", file="inner.h5"), label="outer.h5")
    assert type(info.value) is CorruptModelError
    assert info.value.message == "missing weight lstm/kernel" and info.value.file == "inner.h5"
    with pytest.raises(UnsafeModelError) as info2:
        run_guarded(_raise, UnsafeModelError("zip bomb"), label="m.keras")
    assert info2.value.file == "m.keras"  # filled in from the label when the child gave none


class _LocalError(UnsafeModelError):
    """Not defined in lstm_inspect.errors: arrives as its nearest known base class."""


def test_unknown_inspect_subclass_maps_to_known_base() -> None:
    with pytest.raises(UnsafeModelError) as info:
        run_guarded(_raise, _LocalError("odd"), label="x")
    assert type(info.value) is UnsafeModelError and info.value.message == "odd"


def _value_error() -> None:
    raise ValueError("boom\nsecond line")


def test_other_exception_becomes_internal_error_with_traceback() -> None:
    with pytest.raises(InternalError) as info:
        run_guarded(_value_error, label="x.h5")
    err = info.value
    assert err.exit_code == 3 and err.file == "x.h5"
    assert err.message == "internal error: ValueError: boom second line (please report this)"
    assert "Traceback" in err.debug_traceback and "_value_error" in err.debug_traceback
    assert isinstance(err, InspectError)


def _allocate_huge() -> int:
    return int(np.ones(4 << 30, dtype=np.uint8).sum())


def test_memory_blowup_is_a_guard_error() -> None:
    with pytest.raises(GuardError) as info:
        run_guarded(_allocate_huge, label="x", memory_bytes=1 << 30)
    assert info.value.message == "needed more than 1024 MiB of memory"


def _busy() -> None:
    while True:
        pass


def test_cpu_limit() -> None:
    with pytest.raises(GuardError) as info:
        run_guarded(_busy, label="x", cpu_seconds=1, timeout=20)
    assert "CPU time" in info.value.message and "SIGXCPU" in info.value.message


def _write(path: str, fail: BaseException | None = None) -> str:
    with open(path, "wb") as fp:
        fp.write(b"x" * 4096)
        fp.flush()
    if fail is not None:
        raise fail
    return "written"


def test_writing_a_file_without_output_path_fails(tmp_path: Path) -> None:
    target = tmp_path / "sneaky.bin"
    with pytest.raises(InternalError) as info:
        run_guarded(_write, str(target), label="x")
    assert "File too large" in info.value.message
    assert not target.exists() or target.stat().st_size == 0


def test_output_path_written_on_success(tmp_path: Path) -> None:
    target = tmp_path / "export.tmp"
    assert run_guarded(_write, str(target), label="x", output_path=target) == "written"
    assert target.stat().st_size == 4096


@pytest.mark.parametrize("failure", [CorruptModelError("bad"), ValueError("bug")])
def test_output_path_removed_on_failure(tmp_path: Path, failure: BaseException) -> None:
    target = tmp_path / "export.tmp"
    with pytest.raises(InspectError):
        run_guarded(_write, str(target), failure, label="x", output_path=str(target))
    assert not target.exists()


def _write_then_crash(path: str) -> None:
    _write(path)
    os.kill(os.getpid(), signal.SIGSEGV)


def test_output_path_removed_after_crash(tmp_path: Path) -> None:
    target = tmp_path / "export.tmp"
    with pytest.raises(GuardError, match="SIGSEGV"):
        run_guarded(_write_then_crash, str(target), label="x", output_path=target)
    assert not target.exists()


def _report_pid_then(wfd: int, action: str) -> int:
    os.write(wfd, str(os.getpid()).encode() + b"\n")
    if action == "sleep":
        time.sleep(60)
    if action == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
    return 42


def _child_pid(rfd: int) -> int:
    return int(os.read(rfd, 100).split()[0])


def _assert_reaped(pid: int) -> None:
    with pytest.raises(ProcessLookupError):  # a zombie would still accept signal 0
        os.kill(pid, 0)


def test_timeout_kills_and_reaps_child() -> None:
    rfd, wfd = os.pipe()
    start = time.monotonic()
    with pytest.raises(GuardError) as info:
        run_guarded(_report_pid_then, wfd, "sleep", label="slow.h5", timeout=0.5)
    assert info.value.message == "did not finish within 0.5 s" and str(info.value) == "slow.h5: did not finish within 0.5 s"
    assert time.monotonic() - start < 3
    _assert_reaped(_child_pid(rfd))
    os.close(rfd), os.close(wfd)


def test_keyboard_interrupt_kills_child_and_reraises() -> None:
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    rfd, wfd = os.pipe()
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            run_guarded(_report_pid_then, wfd, "sleep", label="x", timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _assert_reaped(_child_pid(rfd))
    os.close(rfd), os.close(wfd)


def test_child_ignores_sigint() -> None:
    rfd, wfd = os.pipe()
    assert run_guarded(_report_pid_then, wfd, "sigint", label="x") == 42
    os.close(rfd), os.close(wfd)


def test_exit_without_result_and_abort() -> None:
    with pytest.raises(GuardError, match=r"exit status 7"):
        run_guarded(os._exit, 7, label="x")
    with pytest.raises(GuardError, match=r"SIGABRT, signal 6"):
        run_guarded(os.abort, label="x")


def test_unsendable_results_are_internal_errors() -> None:
    with pytest.raises(InternalError, match="cannot send a set"):
        run_guarded(lambda: {1, 2}, label="x")
    with pytest.raises(InternalError, match="object array"):
        run_guarded(lambda: np.array([None, 1], dtype=object), label="x")
    with pytest.raises(InternalError, match="int key"):
        run_guarded(lambda: {1: 2}, label="x")


def test_result_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "MAX_RESULT_BYTES", 1 << 20)
    with pytest.raises(GuardError, match="larger than 1 MiB"):
        run_guarded(lambda: np.zeros(1 << 20, dtype=np.float32), label="x")
    assert run_guarded(lambda: np.zeros(1000), label="x").shape == (1000,)


def test_unguarded_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    assert run_guarded(os.getpid, label="x") != me
    assert run_guarded(os.getpid, label="x", guarded=False) == me
    with pytest.raises(ValueError):  # in-process: exceptions propagate unchanged
        run_guarded(_value_error, label="x", guarded=False)
    monkeypatch.setenv("LSTM_INSPECT_NO_GUARD", "1")
    assert run_guarded(os.getpid, label="x") == me and not guard.guard_enabled()
    monkeypatch.delenv("LSTM_INSPECT_NO_GUARD")
    monkeypatch.delattr(os, "fork")
    assert run_guarded(os.getpid, label="x") == me


def test_fork_failure_is_a_guard_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    with pytest.raises(GuardError, match="could not start a reader process"):
        run_guarded(os.getpid, label="x")


def _nested() -> tuple:
    return os.getpid(), run_guarded(os.getpid, label="inner")


def test_nested_call_runs_in_the_same_child() -> None:
    outer, inner = run_guarded(_nested, label="x")
    assert outer == inner != os.getpid()


def test_output_path_removed_when_unguarded_call_fails(tmp_path: Path) -> None:
    target = tmp_path / "export.tmp"
    with pytest.raises(CorruptModelError):
        run_guarded(_write, str(target), CorruptModelError("bad"), label="x", output_path=target, guarded=False)
    assert not target.exists()


# --- the parent's validation of what comes down the pipe ---------------------------------------


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return guard._FRAME.pack(kind, len(payload)) + payload


def _npy(header: str) -> bytes:
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _receive(stream: bytes, limit: int = 1 << 20) -> dict:
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, stream)
        os.close(wfd)
        return guard._receive(rfd, time.monotonic() + 5, limit)
    finally:
        os.close(rfd)


def test_valid_stream_decodes() -> None:
    data = np.arange(3, dtype="<i4")
    body = _npy("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }") + data.tobytes()
    doc = b'{"ok":true,"value":{"a":{"__ndarray__":0}},"arrays":1}'
    reply = _receive(guard._MAGIC + _frame(b"J", doc) + _frame(b"A", body) + _frame(b"E") + _frame(b"Z"))
    _assert_same_array(reply["value"]["a"], data)


@pytest.mark.parametrize("stream, error", [
    (b"garbage!" + _frame(b"Z"), guard._BadStream),
    (guard._MAGIC + guard._FRAME.pack(b"J", 1 << 40), guard._BadStream),  # declared over the limit
    (guard._MAGIC + _frame(b"J", b"[1]"), guard._BadStream),
    (guard._MAGIC + _frame(b"J", b'{"ok":true,"value":{"__ndarray__":3},"arrays":0}') + _frame(b"Z"), guard._BadStream),
    (guard._MAGIC + _frame(b"J", b'{"ok":true,"value":1,"arrays":1}')
     + _frame(b"A", _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }")) + _frame(b"E") + _frame(b"Z"),
     guard._BadStream),  # object dtype: refused before numpy would unpickle
    (guard._MAGIC + _frame(b"J", b'{"ok":true,"value":1,"arrays":1}')
     + _frame(b"A", _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,), }")),
     guard._BadStream),  # a header declaring 8 GB: refused before allocation
    (guard._MAGIC + _frame(b"J", b'{"ok":true,"value":1,"arrays":0}'), guard._Truncated),
    (guard._MAGIC + _frame(b"J", b'{"ok":true}') + _frame(b"X"), guard._BadStream),
])
def test_malformed_streams_are_rejected(stream: bytes, error: type) -> None:
    with pytest.raises(error):
        _receive(stream)


def test_overhead_per_call() -> None:
    run_guarded(lambda: None, label="warm-up")
    times = []
    for _ in range(50):
        start = time.perf_counter()
        run_guarded(lambda: None, label="x")
        times.append(time.perf_counter() - start)
    print(f"\nguard overhead: median {statistics.median(times) * 1000:.2f} ms, "
          f"min {min(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms (h5py imported: {'h5py' in sys.modules})")
