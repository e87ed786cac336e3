"""Running the real CLI on hostile inputs, in-process and in batches.

`run_cli` invokes the Typer app through typer's test runner (the Click command is built once: building
it per call costs more than the guarded read itself). The guard still forks a child per file, so a
crash or a hang in libhdf5 is contained exactly as in production.

`run_batch` spreads thousands of cases (truncations, mutations) over two lean worker processes
(`python -m tests.hostile._harness JOBS OUT`): each worker imports only the CLI, so its forks are cheaper
than forks of the pytest process, and two of them use both cores. Workers write every case file
themselves (from a seed and a deterministic parameter) and report one JSON record per case.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Wall-clock limit of one guarded read in these tests (the CLI default is 30 s).
TIMEOUT = float(os.environ.get("HOSTILE_TIMEOUT", "3"))
GRACE = 3.0  # the parent needs a moment to kill and reap a child that ran into the timeout
CLI_ENV = {"LSTM_INSPECT_TIMEOUT": f"{TIMEOUT:g}", "LSTM_INSPECT_NO_GUARD": None, "LSTM_INSPECT_DEBUG": None,
           "COLUMNS": "120", "NO_COLOR": "1"}
# Messages of the guard when the child died or hung: such an input is a crasher.
CRASH_MARKERS = ("crashed while reading", "did not finish within", "was killed", "exited unexpectedly",
                 "failed while sending", "sent back an invalid")

_COMMAND = None


@dataclass
class CliResult:
    args: list
    exit_code: int
    stdout: str
    stderr: str
    exception: str | None  # repr of an exception that escaped the CLI (never expected)
    seconds: float

    @property
    def crashed(self) -> bool:
        return any(marker in self.stderr for marker in CRASH_MARKERS)

    def describe(self) -> str:
        return (f"{' '.join(map(str, self.args))} -> exit {self.exit_code} in {self.seconds:.2f} s; "
                f"stderr={self.stderr[-600:]!r}; exception={self.exception}")


def command():
    """The Typer app, its Click command built once: typer.testing's runner rebuilds it on every
    invoke, which costs more than a guarded read. (Typer >= 0.26 vendors Click, so `click` itself
    may not be installed: only typer's own runner is used.)"""
    global _COMMAND
    if _COMMAND is None:
        import typer.main
        import typer.testing

        from lstm_inspect.cli import app
        built = typer.main.get_command(app)
        original = typer.testing._get_command
        typer.testing._get_command = lambda a: built if a is app else original(a)
        _COMMAND = app
    return _COMMAND


READING_MODULES = ("lstm_inspect.api", "lstm_inspect.cells.keras", "lstm_inspect.formats.keras.files",
                   "lstm_inspect.commands.summary", "lstm_inspect.commands.explain", "lstm_inspect.commands.split",
                   "lstm_inspect.commands.lockfile", "lstm_inspect.render.summary", "lstm_inspect.render.explain",
                   "lstm_inspect.render.ci", "lstm_inspect.safety.guard", "lstm_inspect.writers.npz")


def preimport() -> None:
    """Import the reading path up front (workers: before the first fork; audit: before the hook)."""
    import importlib

    for name in READING_MODULES:
        importlib.import_module(name)


def run_cli(args: Sequence[str], env: dict | None = None) -> CliResult:
    """One CLI invocation in this process (the guard forks its reader child as usual)."""
    from typer.testing import CliRunner

    runner = CliRunner()
    args = [str(a) for a in args]
    start = time.monotonic()
    result = runner.invoke(command(), args, env=dict(CLI_ENV, **(env or {})), catch_exceptions=True)
    seconds = time.monotonic() - start
    exc = result.exception
    escaped = None if exc is None or isinstance(exc, SystemExit) else repr(exc)
    return CliResult(args, result.exit_code, result.stdout, result.stderr, escaped, seconds)


def contract_problems(res: CliResult, allowed: Iterable[int] = (2,)) -> list[str]:
    """Everything that breaks the exit-code contract for one invocation ([] when it holds)."""
    problems = []
    allowed = set(allowed)
    if res.exit_code not in allowed:
        problems.append(f"exit {res.exit_code}, expected {sorted(allowed)}")
    if res.exception is not None:
        problems.append(f"exception escaped: {res.exception}")
    if "Traceback" in res.stderr or "Traceback" in res.stdout:
        problems.append("traceback printed")
    if res.exit_code != 0:
        lines = res.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("lstm-inspect: "):
            problems.append(f"stderr is not one 'lstm-inspect: ...' line: {res.stderr[-400:]!r}")
        if "\x1b" in res.stderr:
            problems.append("raw escape character on stderr")
    if res.seconds > TIMEOUT + GRACE:
        problems.append(f"took {res.seconds:.1f} s (timeout {TIMEOUT:g} s)")
    return problems


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def run_split(model: Path | str, out_dir: Path, env: dict | None = None) -> tuple[CliResult, list[str]]:
    """split-gates into an empty folder; returns the result and what the folder holds afterwards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.iterdir():
        p.unlink()
    res = run_cli(["split-gates", str(model), "-o", str(out_dir / "gates.npz")], env=env)
    return res, folder_listing(out_dir)


def split_problems(res: CliResult, listing: list[str], allowed: Iterable[int] = (2,),
                   out_dir: Path | None = None) -> list[str]:
    """The contract for split-gates: a failure leaves nothing; a success leaves one sound archive."""
    problems = contract_problems(res, allowed)
    expected = ["gates.npz"] if res.exit_code == 0 else []
    if listing != expected:
        problems.append(f"output folder holds {listing}, expected {expected}")
    elif res.exit_code == 0 and out_dir is not None:
        problems += npz_problems(out_dir / "gates.npz")
    return problems


def npz_problems(path: Path) -> list[str]:
    """Every member's CRC, and every array loadable without pickle."""
    import zipfile

    import numpy as np
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                return [f"{path.name}: member {bad} fails its CRC"]
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                npz[key]
            if "__meta__" not in npz.files:
                return [f"{path.name}: no __meta__"]
    except Exception as exc:  # noqa: BLE001 - any failure to read the output is the finding
        return [f"{path.name} is not a sound npz: {type(exc).__name__}: {exc}"]
    return []


# ----------------------------------------------------------------------------------------------
# Deterministic damage


def truncate(data: bytes, length: int) -> bytes:
    return data[:length]


def mutate(data: bytes, case_seed: int) -> tuple[bytes, list[tuple[int, int]]]:
    """1-8 random bytes replaced by random values (positions may repeat), from a per-case seed."""
    rng = random.Random(case_seed)
    out = bytearray(data)
    changes = []
    for _ in range(rng.randint(1, 8)):
        pos, value = rng.randrange(len(out)), rng.randrange(256)
        out[pos] = value
        changes.append((pos, value))
    return bytes(out), changes


def fix_zip_crcs(data: bytes) -> bytes:
    """Recompute the CRC-32 of every stored member in its local and central headers.

    A mutation then looks like a deliberate edit (an attacker sets the right CRC) rather than bit rot,
    so the damaged bytes reach libhdf5 instead of failing the reader's CRC check. Data whose zip
    structure no longer parses is returned unchanged.
    """
    import io
    import struct
    import zipfile
    import zlib

    out = bytearray(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos, pos = zf.infolist(), zf.start_dir
    except Exception:  # noqa: BLE001 - damaged beyond parsing: nothing to fix
        return data
    for info in infos:
        if out[pos:pos + 4] != b"PK\x01\x02":
            return bytes(out)
        name_len, extra_len, comment_len = struct.unpack_from("<3H", out, pos + 28)
        local = info.header_offset
        if info.compress_type == zipfile.ZIP_STORED and out[local:local + 4] == b"PK\x03\x04":
            local_name, local_extra = struct.unpack_from("<2H", out, local + 26)
            start = local + 30 + local_name + local_extra
            crc = zlib.crc32(out[start:start + info.compress_size])
            struct.pack_into("<L", out, local + 14, crc)
            struct.pack_into("<L", out, pos + 16, crc)
        pos += 46 + name_len + extra_len + comment_len
    return bytes(out)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------
# Batches in worker processes


WORKERS = int(os.environ.get("HOSTILE_WORKERS", "0")) or min(4, (os.cpu_count() or 2) + 1)


def run_batch(jobs: list[dict], scratch: Path, workers: int = WORKERS) -> list[dict]:
    """Run jobs in `workers` parallel worker processes; returns one record per job, in job order.

    One more worker than cores: while a worker waits for its guarded child, another can run.

    A job: {"id", "seed" (path), "op" ("truncate" | "mutate" | "mutate-crc"), "param" (int),
    "split" (True | False | "if-ok": only when summary succeeded),
    "allowed" (exit codes), "format" (optional summary --format)}.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    procs = []
    for w in range(workers):
        share = jobs[w::workers]
        if not share:
            continue
        job_file, out_file = scratch / f"jobs{w}.json", scratch / f"results{w}.json"
        job_file.write_text(json.dumps(share))
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "tests.hostile._harness", str(job_file), str(out_file),
                                 str(scratch / f"work{w}")], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append((proc, out_file))
    records: list[dict] = []
    for proc, out_file in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"batch worker failed ({proc.returncode}):\n{stdout.decode()[-3000:]}\n"
                               f"{stderr.decode()[-3000:]}")
        records.extend(json.loads(out_file.read_text()))
    order = {job["id"]: i for i, job in enumerate(jobs)}
    return sorted(records, key=lambda r: order[r["id"]])


def _case_bytes(job: dict, cache: dict) -> bytes:
    seed = job["seed"]
    if seed not in cache:
        cache[seed] = Path(seed).read_bytes()
    data = cache[seed]
    if job["op"] == "truncate":
        return truncate(data, job["param"])
    if job["op"] == "mutate":
        return mutate(data, job["param"])[0]
    if job["op"] == "mutate-crc":
        return fix_zip_crcs(mutate(data, job["param"])[0])
    raise ValueError(job["op"])


def _run_job(job: dict, work: Path, found: Path, cache: dict) -> dict:
    data = _case_bytes(job, cache)
    suffix = "".join(Path(job["seed"]).suffixes) or ".h5"
    path = work / f"case{suffix}"
    path.write_bytes(data)
    res = run_cli(["summary", str(path)] + (["--format", job["format"]] if job.get("format") else []))
    record = {"id": job["id"], "op": job["op"], "param": job["param"], "seed": job["seed"],
              "summary": asdict(res), "summary_problems": contract_problems(res, job.get("allowed", (2,)))}
    record["summary"]["stdout"] = res.stdout[:200]
    crashed = res.crashed
    if job.get("split") is True or (job.get("split") == "if-ok" and res.exit_code == 0):
        split, listing = run_split(path, work / "out")
        record["split"] = asdict(split)
        record["split"]["stdout"] = split.stdout[:200]
        record["split_problems"] = split_problems(split, listing, job.get("allowed", (2,)), work / "out")
        crashed = crashed or split.crashed
    if crashed:
        digest = sha256(data)
        keep = found / f"{Path(job['seed']).name.split('.')[0]}_{job['op']}_{job['param']}_{digest[:12]}{suffix}"
        shutil.copyfile(path, keep)
        record["crasher"] = str(keep)
    path.unlink()
    return record


def _worker_main(job_file: str, out_file: str, work_dir: str) -> None:
    jobs = json.loads(Path(job_file).read_text())
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    found = work / "found"
    found.mkdir(parents=True)
    command()  # build the Click command and import the readers before the first case
    preimport()
    cache: dict = {}
    records = [_run_job(job, work, found, cache) for job in jobs]
    Path(out_file).write_text(json.dumps(records))


# ----------------------------------------------------------------------------------------------
# Audit-hook run (in its own process: audit hooks cannot be removed)

BANNED_EVENTS = ("marshal.loads", "marshal.load", "exec", "compile", "pickle.find_class", "subprocess.Popen",
                 "os.system", "os.exec", "os.posix_spawn", "os.spawn", "ctypes.dlopen", "code.__new__")
BANNED_PREFIXES = ("socket.",)
BANNED_MODULES = ("keras", "tensorflow", "tf_keras", "torch", "jax", "dill", "cloudpickle")


def _audit_main(spec_file: str, out_file: str) -> None:
    """Run the CLI in this process (no guard) on every path of the spec with an audit hook installed.

    Everything the commands need is imported and exercised first (warm-up on the sample models), so
    that `exec`/`compile`/`marshal.loads` events raised by imports are over before the hook goes in.
    Events raised while the import machinery runs are attributed to that import (checked by name).
    """
    import traceback
    from collections import Counter

    spec = json.loads(Path(spec_file).read_text())
    no_guard = {"LSTM_INSPECT_NO_GUARD": "1"}
    scratch = Path(spec["scratch"])
    out_dir = scratch / "out"

    def run_all(path: str) -> list[int]:
        codes = [run_cli(["summary", path], env=no_guard).exit_code]
        for fmt in spec.get("formats", []):
            codes.append(run_cli(["summary", "--format", fmt, path], env=no_guard).exit_code)
        split, _ = run_split(path, out_dir, env=no_guard)
        codes.append(split.exit_code)
        codes.append(run_cli(["explain", path], env=no_guard).exit_code)
        return codes

    command()
    preimport()
    for path in spec["warmup"]:
        run_all(path)
        for fmt in ("json", "markdown"):
            run_cli(["summary", "--format", fmt, path], env=no_guard)
    before = set(sys.modules)
    violations: list[dict] = []
    imports: list[str] = []

    def in_import_machinery() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith("<frozen importlib"):
                return True
            frame = frame.f_back
        return False

    def hook(event: str, args: tuple) -> None:
        if event == "import":
            name = str(args[0])
            imports.append(name)
            if name.split(".")[0] in BANNED_MODULES:
                violations.append({"event": event, "detail": name, "stack": traceback.format_stack(limit=12)})
            return
        if event in BANNED_EVENTS or event.startswith(BANNED_PREFIXES):
            if event in ("exec", "compile", "marshal.loads", "marshal.load") and in_import_machinery():
                return
            violations.append({"event": event, "detail": repr(args)[:300], "stack": traceback.format_stack(limit=12)})

    sys.addaudithook(hook)
    codes: Counter = Counter()
    for path in spec["paths"]:
        codes.update(run_all(path))
    new_modules = sorted(set(sys.modules) - before)
    found = len(violations)
    controls = []  # the hook itself must see what it is there to catch
    if spec.get("controls"):
        import marshal
        import pickle
        for name, action in (("marshal.loads", lambda: marshal.loads(marshal.dumps(1))),
                             ("exec", lambda: eval("1")), ("compile", lambda: compile("1", "<c>", "eval")),
                             ("pickle.find_class", lambda: pickle.loads(pickle.dumps(Path(".")))),
                             ("socket", lambda: __import__("socket").socket().close())):
            count = len(violations)
            action()
            controls.append([name, len(violations) > count])
        del violations[found:]
    Path(out_file).write_text(json.dumps({"controls": controls,
        "violations": violations, "imports": sorted(set(imports)), "new_modules": new_modules,
        "banned_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BANNED_MODULES),
        "exit_codes": dict(codes), "paths": len(spec["paths"])}))


if __name__ == "__main__":
    if sys.argv[1] == "--audit":
        _audit_main(*sys.argv[2:4])
    else:
        _worker_main(*sys.argv[1:4])


# ----------------------------------------------------------------------------------------------
# Checking a batch


LOCAL_CRASHERS = ROOT / "tests" / "fixtures" / "crashers"
SHARED_CRASHERS = ROOT.parent / "shared" / "fixtures" / "hdf5-crashers"


def known_crasher_digests() -> set[str]:
    files = list(SHARED_CRASHERS.glob("*.h5")) + [p for p in LOCAL_CRASHERS.glob("*")
                                                   if p.is_file() and p.name != "README.md"]
    return {sha256(p.read_bytes()) for p in files}


def check_records(records: list[dict], expected: int, what: str) -> None:
    """Assert the contract held for every case of a batch; keep any new crasher as a fixture."""
    from collections import Counter

    assert len(records) == expected, f"{what}: {len(records)} records, expected {expected}"
    codes = Counter(r["summary"]["exit_code"] for r in records)
    splits = sum(1 for r in records if "split" in r)
    crashers = [r for r in records if "crasher" in r]
    seconds = sum(r["summary"]["seconds"] + r.get("split", {}).get("seconds", 0) for r in records)
    print(f"\n{what}: {len(records)} cases (+{splits} split-gates runs), exit codes {dict(sorted(codes.items()))}, "
          f"{len(crashers)} crash/hang, {seconds:.1f} s of CLI time")
    new = []
    known = known_crasher_digests()
    for r in crashers:
        data = Path(r["crasher"]).read_bytes()
        if sha256(data) not in known:
            LOCAL_CRASHERS.mkdir(parents=True, exist_ok=True)
            target = LOCAL_CRASHERS / Path(r["crasher"]).name
            target.write_bytes(data)
            known.add(sha256(data))
            new.append(f"{target.name}: {r['summary']['stderr'].strip()}")
    bad = [f"{r['id']}: {'; '.join(r['summary_problems'] + r.get('split_problems', []))} "
           f"[{r['summary']['stderr'].strip()[-300:]}]"
           for r in records if r["summary_problems"] or r.get("split_problems")]
    assert not bad, f"{what}: {len(bad)} of {len(records)} cases break the contract:\n" + "\n".join(bad[:30])
    assert not new, (f"{what}: new crasher(s) saved under {LOCAL_CRASHERS} (commit them and add a README line "
                     "each):\n" + "\n".join(new))
