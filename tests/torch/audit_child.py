"""Run in its own process by test_safety (audit hooks cannot be removed): read hostile files with
an audit hook installed and report what the hook saw. Only the reader and numpy are imported."""
from __future__ import annotations

import json
import sys
import traceback
from collections import Counter
from pathlib import Path

BANNED_EVENTS = ("exec", "compile", "import", "marshal.loads", "marshal.load", "pickle.find_class",
                 "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                 "os.forkpty", "ctypes.dlopen", "ctypes.dlsym", "code.__new__", "function.__new__",
                 "builtins.input", "webbrowser.open", "shutil.rmtree", "os.remove", "os.rename")
BANNED_PREFIXES = ("socket.", "urllib.", "http.")
BANNED_MODULES = ("torch", "tensorflow", "keras", "dill", "cloudpickle")


def main(spec_file: str, out_file: str) -> None:
    from lstm_inspect.errors import InspectError
    from lstm_inspect.formats.torch.containers import read_torch
    from lstm_inspect.formats.torch.state import find_model_state

    spec = json.loads(Path(spec_file).read_text())

    def read_all(path: str) -> str:
        try:
            with read_torch(path) as tf:
                find_model_state(tf)
                for _name, ref in tf.tensors():
                    ref.read()
            return "ok"
        except InspectError as err:
            return type(err).__name__

    for path in spec["warmup"]:
        read_all(path)
    violations: list[dict] = []
    current = {"path": None}

    busy = [False]  # the hook's own traceback reads source files: those opens are not the reader's

    def hook(event: str, args: tuple) -> None:
        if current["path"] is None or busy[0]:
            return
        busy[0] = True
        try:
            check(event, args)
        finally:
            busy[0] = False

    def check(event: str, args: tuple) -> None:
        if event in BANNED_EVENTS or event.startswith(BANNED_PREFIXES):
            violations.append({"event": event, "args": repr(args)[:300], "path": current["path"],
                               "stack": traceback.format_stack(limit=8)})
        elif event == "open" and args and not isinstance(args[0], int) and str(args[0]) != current["path"]:
            # the model file itself, and a file object over its already open descriptor, are fine
            violations.append({"event": event, "args": repr(args)[:300], "path": current["path"]})

    sys.addaudithook(hook)
    errors: Counter = Counter()
    for path in spec["paths"]:
        current["path"] = path
        errors[read_all(path)] += 1
        current["path"] = None
    controls = {}
    for name, action in (("exec", lambda: eval("1")), ("import", lambda: __import__("colorsys"))):
        current["path"] = "<control>"
        count = len(violations)
        action()
        controls[name] = len(violations) > count
        del violations[count:]
        current["path"] = None
    Path(out_file).write_text(json.dumps({
        "violations": violations, "errors": dict(errors), "controls": controls,
        "banned_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BANNED_MODULES)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
