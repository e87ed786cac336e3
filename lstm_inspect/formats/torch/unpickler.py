"""A bounded pickle interpreter that turns PyTorch pickles into plain data and never runs the file.

Why not a `pickle.Unpickler` subclass with a restricted `find_class`: the C unpickler still calls
back into Python objects for APPEND (`append`/`extend`), SETITEM (`__setitem__`), BUILD
(`__setstate__` or a `__dict__` update, which also rewrites frozen dataclasses) and NEWOBJ
(`cls.__new__`); it grows its memo array to twice any LONG_BINPUT index (2**32 asks for 64 GiB) and
hashes dict keys recursively in C (a tuple nested a million deep overflows the C stack). Here every
opcode is handled by code in this file, on plain containers and inert stand-ins only, and every
bound is checked where the input could exceed it. torch made the same choice for
`torch.load(weights_only=True)` (`torch/_weights_only_unpickler.py` is a pure-Python pickle VM).

What a pickle can produce here:
- plain data: dict (and `collections.OrderedDict`), list, tuple, set, frozenset, str, bytes,
  bytearray, int, float, complex, bool, None, range, slice;
- `GlobalRef(module, name)` for every global the pickle names (an inert name, never imported);
- `ObjectStandIn` for an object of any class built by NEWOBJ, `copyreg._reconstructor` or INST/OBJ
  without arguments: the class name and what the pickle gave it (state, arguments, items), as data;
- whatever the caller's `persistent_load` and `make_tensor` return (lazy storages and tensors).

Calls (REDUCE, and INST/OBJ with arguments) are allowed only for a short whitelist, each implemented
here as a pure function on plain data: PyTorch's tensor and parameter rebuilders, `OrderedDict`,
`set`, `torch.Size`, `_codecs.encode` for protocol 2's bytes, NumPy scalars... Anything else is
refused with `UnsafeModelError` naming the global; globals from modules that only serve to run code
(os, subprocess, builtins.eval, importlib, ...) are refused as soon as they are named.

Bounds (`PickleLimits`): the stream length; opcodes run plus items built by whitelisted constructors
(`max_objects`, which also bounds memory since each opcode creates at most one object); memo entries
and memo indices; the length of each str/bytes/int; tuple nesting inside dict keys and set items
(hashing recurses); and, once the pickle is loaded, the nesting depth, reference cycles and the
number of paths through shared objects of the finished tree (`check_tree`, iterative).
"""
from __future__ import annotations

import _compat_pickle
import codecs
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from lstm_inspect.errors import CorruptModelError, UnsafeModelError, UnsupportedDialectError
from lstm_inspect.safety import printable

MiB = 1 << 20


@dataclass(frozen=True)
class PickleLimits:
    """Budgets for one pickle stream. Defaults are generous for real checkpoints; tests pass smaller ones."""

    max_pickle_bytes: int = 64 * MiB  # one data.pkl, or the pickles at the head of a legacy file
    max_objects: int = 2_000_000  # opcodes run + items built by whitelisted constructors
    max_memo: int = 1_000_000  # memo entries, and the largest memo index
    max_depth: int = 200  # nesting of the finished tree
    max_string_bytes: int = 32 * MiB  # one str, bytes or bytearray
    max_int_bytes: int = 1024  # LONG1/LONG4 payloads, digits of text INT/LONG/FLOAT
    max_key_nodes: int = 10_000  # tuples inside one dict key or set item (hashing recurses)


DEFAULT_PICKLE_LIMITS = PickleLimits()
_MAX_KEY_DEPTH = 64
_MAX_NDIM = 64


class TruncatedPickleError(CorruptModelError):
    """The stream ended inside a pickle (the caller may know the stream was cut on purpose)."""


@dataclass(frozen=True)
class GlobalRef:
    """A global the pickle names (a class, function or constant): only its name, never imported."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class ObjectStandIn:
    """An object of a class the reader never imports: its class name and what the pickle gave it.

    `state` is what BUILD set (usually the instance `__dict__`; a `(dict, slots)` pair for classes
    with slots); `args` the NEWOBJ / constructor arguments; `items` and `list_items` what SETITEMS
    and APPENDS put into an instance of a dict or list subclass. Compared by identity.
    """

    module: str
    name: str
    state: Any = None
    args: tuple = ()
    items: dict = field(default_factory=dict)
    list_items: list = field(default_factory=list)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def attributes(self) -> dict:
        """The instance attributes BUILD set ({} when the state is something else)."""
        found = state_attributes(self.state)
        return {} if found is None else found

    def __repr__(self) -> str:
        return f"<ObjectStandIn {printable(self.qualname, 200)}>"


PersistentLoad = Callable[[Any], Any]
# make_tensor(storage, storage_offset, size, stride, dtype_name_or_None) -> a tensor reference
MakeTensor = Callable[[Any, int, tuple, tuple, "str | None"], Any]

# ----------------------------------------------------------------------------------------------
# Which globals exist for us


# Module names torch.load maps (torch's own renames; NumPy 2's new name for the same module).
_MODULE_ALIASES = {"torch.tensor": "torch._tensor", "numpy._core.multiarray": "numpy.core.multiarray"}

# Modules that exist to run code, reach the system or load more pickles: refused when named.
_DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "importlib", "imp",
    "runpy", "pickle", "_pickle", "cPickle", "pickletools", "marshal", "types", "code", "codeop", "shutil",
    "socket", "_socket", "ssl", "ctypes", "_ctypes", "cffi", "webbrowser", "pty", "platform", "signal",
    "multiprocessing", "threading", "_thread", "thread", "asyncio", "concurrent", "http", "urllib", "urllib2",
    "httplib", "requests", "ftplib", "smtplib", "telnetlib", "xmlrpc", "socketserver", "tempfile", "io", "_io",
    "functools", "_functools", "operator", "_operator", "inspect", "gc", "pdb", "bdb", "timeit", "trace",
    "pydoc", "distutils", "setuptools", "pip", "site", "sysconfig", "zipimport", "glob", "fileinput",
    "pathlib", "select", "selectors", "mmap", "resource", "fcntl", "termios", "atexit", "commands", "popen2",
    "dill", "cloudpickle", "joblib", "shelve", "dbm", "sqlite3", "zipfile", "tarfile", "ast", "dis",
    "compileall", "py_compile", "venv", "ensurepip", "unittest", "doctest", "tkinter", "weakref",
})
_DANGEROUS_PREFIXES = ("torch.hub", "torch.serialization", "torch.package", "torch.utils.cpp_extension",
                       "torch._dynamo", "torch._inductor", "torch.multiprocessing", "torch.distributed",
                       "torch.ops", "torch._ops", "torch._C", "numpy.lib.npyio", "numpy.lib.format",
                       "numpy.f2py", "numpy.distutils", "numpy.testing", "numpy.ctypeslib")
_DANGEROUS_NAMES = frozenset({"torch.load", "torch.save", "torch.jit.load", "torch.compile",
                              "numpy.load", "numpy.loadtxt", "numpy.fromfile", "numpy.memmap", "numpy.genfromtxt"})
# The builtins a data pickle can name (types and constants); every other builtin is refused.
_SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "complex", "bytearray", "bytes", "range", "object",
                            "dict", "list", "tuple", "str", "int", "float", "bool", "Ellipsis", "NotImplemented"})

TORCH_TENSOR_TYPES = frozenset({"torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter"})
# Tensors PyTorch rebuilds with these need torch (quantized, sparse, device-only, subclass...).
_UNSUPPORTED_REBUILDERS = frozenset({
    "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_sparse_csr_tensor", "_rebuild_nested_tensor",
    "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_xla_tensor", "_rebuild_mlc_tensor",
})
_NUMPY_SCALAR_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                                 "c8", "c16", "?", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                 "uint32", "uint64", "float16", "float32", "float64", "complex64", "complex128"})


def resolve_global(module: str, name: str, protocol: int = 3) -> GlobalRef:
    """The inert reference for a global, or UnsafeModelError when the global exists to run code.

    Pickles of protocol < 3 name Python 2 modules (`__builtin__.set`, `copy_reg._reconstructor`,
    `commands.Popen`): they are mapped to Python 3 names as pickle's `fix_imports` (and so torch.load)
    does, so that what is checked and reported is what an unpickler would import.
    """
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    module = _MODULE_ALIASES.get(module, module)
    qualname = f"{module}.{name}"
    top = module.split(".", 1)[0]
    refused = (
        (top == "builtins" and name not in _SAFE_BUILTINS)
        or top in _DANGEROUS_MODULES or module.startswith(_DANGEROUS_PREFIXES) or qualname in _DANGEROUS_NAMES
        or not name or not module
        # a dotted name is an attribute chain: `x.__globals__` and friends reach everything
        or any(part.startswith("__") for part in name.split(".") if part not in ("__newobj__", "__newobj_ex__"))
    )
    if refused:
        raise UnsafeModelError(f"refused to load the global {printable(qualname, 200)} from the pickle")
    return GlobalRef(module, name)


# ----------------------------------------------------------------------------------------------
# The machine


class _Stop(Exception):
    pass


class PickleMachine:
    """Interprets the pickles of one stream; several pickles in a row (the legacy format) share the
    object budget. `what` names the stream in messages ("data.pkl")."""

    def __init__(self, data: bytes | memoryview, *, what: str, limits: PickleLimits = DEFAULT_PICKLE_LIMITS,
                 make_tensor: MakeTensor | None = None) -> None:
        if len(data) > limits.max_pickle_bytes:
            raise UnsafeModelError(f"{what} is {len(data)} bytes, over the {limits.max_pickle_bytes}-byte "
                                   "limit for a pickle")
        self.data = bytes(data)
        self.what, self.limits = what, limits
        self.make_tensor = make_tensor
        self.objects = 0
        self.tensor_types: set[type] = set()
        # What built an object that BUILD may reach (for messages and the namespace rule); the list
        # keeps those objects alive so their ids stay theirs.
        self._origin: dict[int, str] = {}
        self._keepalive: list[Any] = []
        self._dispatch = _dispatch_table(self)

    # -- driving --------------------------------------------------------------------------------

    def load(self, pos: int, persistent_load: PersistentLoad | None = None) -> tuple[Any, int]:
        """Run one pickle from `pos`; returns (its object, the position after STOP)."""
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.persistent_load = persistent_load
        self.pos = pos
        self.protocol = 0  # until a PROTO opcode says otherwise, as in pickle itself
        data, dispatch, max_objects = self.data, self._dispatch, self.limits.max_objects
        op_start = pos
        try:
            while True:
                op_start = self.pos
                if op_start >= len(data):
                    raise TruncatedPickleError(f"{self.what} ends inside a pickle (at byte {op_start})")
                handler = dispatch[data[op_start]]
                self.pos = op_start + 1
                self.objects += 1
                if self.objects > max_objects:
                    raise UnsafeModelError(f"{self.what} builds more than {max_objects} objects (refused)")
                if handler is None:
                    raise CorruptModelError(f"{self.what} is not a valid pickle: unknown opcode "
                                            f"0x{data[op_start]:02x} at byte {op_start}")
                handler()
        except _Stop:
            value = self.stack.pop() if self.stack else self._fail("STOP with an empty stack", op_start)
        except IndexError:
            self._fail("it pops more than it pushed (stack underflow)", op_start)
        except RecursionError:  # not expected: nothing here recurses; kept as a last line of defence
            raise UnsafeModelError(f"{self.what} is nested too deeply") from None
        self.stack, self.metastack, self.memo = [], [], {}
        return value, self.pos

    def _fail(self, message: str, at: int | None = None) -> Any:
        where = self.pos - 1 if at is None else at
        raise CorruptModelError(f"{self.what} is not a valid pickle: {message} (at byte {where})")

    def _charge(self, count: int) -> None:
        self.objects += count
        if self.objects > self.limits.max_objects:
            raise UnsafeModelError(f"{self.what} builds more than {self.limits.max_objects} objects (refused)")

    # -- reading the stream ---------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        start, end = self.pos, self.pos + n
        if end > len(self.data):
            raise TruncatedPickleError(f"{self.what} ends inside a pickle (needs {n} bytes at byte {start})")
        self.pos = end
        return self.data[start:end]

    def _unpack(self, fmt: struct.Struct) -> Any:
        return fmt.unpack(self._read(fmt.size))[0]

    def _readline(self, limit: int) -> bytes:
        end = self.data.find(b"\n", self.pos, self.pos + limit + 1)
        if end < 0:
            if len(self.data) - self.pos <= limit:
                raise TruncatedPickleError(f"{self.what} ends inside a pickle (a text line at byte {self.pos})")
            self._fail(f"a text argument longer than {limit} bytes")
        line, self.pos = self.data[self.pos:end], end + 1
        return line

    def _sized(self, n: int, what: str) -> bytes:
        if n < 0:
            self._fail(f"negative {what} length")
        if n > self.limits.max_string_bytes:
            if self.pos + n > len(self.data):
                raise TruncatedPickleError(f"{self.what} ends inside a pickle ({what} of {n} bytes "
                                           f"at byte {self.pos})")
            raise UnsafeModelError(f"{self.what} holds a {what} of {n} bytes, over the "
                                   f"{self.limits.max_string_bytes}-byte limit")
        return self._read(n)

    def _text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return self._fail(f"{what} is not valid UTF-8")

    def _py2_string(self, raw: bytes) -> str | bytes:
        """Python 2 `str`: text as torch.load decodes it (UTF-8); raw bytes when it is not text."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw

    def _number_line(self) -> str:
        line = self._readline(self.limits.max_int_bytes)
        try:
            return line.decode("ascii")
        except UnicodeDecodeError:
            return self._fail("a number that is not ASCII")

    # -- stack and memo ---------------------------------------------------------------------------

    def _pop_mark(self) -> list[Any]:
        if not self.metastack:
            self._fail("an opcode needs a MARK that is not there")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def _memo_index(self, idx: int) -> int:
        if not 0 <= idx < self.limits.max_memo:
            raise UnsafeModelError(f"{self.what} uses memo index {idx}, beyond the limit of "
                                   f"{self.limits.max_memo} (refused)")
        return idx

    def _put(self, idx: int) -> None:
        self._memo_index(idx)  # so the memo never holds more than max_memo entries either
        if not self.stack:
            self._fail("PUT with an empty stack")
        self.memo[idx] = self.stack[-1]

    def _get(self, idx: int) -> None:
        try:
            self.stack.append(self.memo[self._memo_index(idx)])
        except KeyError:
            self._fail(f"memo entry {idx} is read before it is written")

    def _remember(self, obj: Any, origin: str) -> Any:
        self._origin[id(obj)] = origin
        self._keepalive.append(obj)
        return obj

    # -- keys -------------------------------------------------------------------------------------

    def _key(self, key: Any) -> Any:
        """A dict key or set item, checked so that hashing it stays shallow and cannot run code."""
        if type(key) is tuple:
            self._check_key_tuple(key)
        elif isinstance(key, (list, dict, set, bytearray, slice)):
            self._fail(f"a {type(key).__name__} used as a dict key or set item (unhashable)")
        try:
            hash(key)  # every remaining type hashes without calling anything from the file
        except TypeError:
            self._fail(f"a {_kind(key)} used as a dict key or set item (unhashable)")
        return key

    def _check_key_tuple(self, key: tuple) -> None:
        nodes, stack = 0, [(key, 1)]
        while stack:
            node, depth = stack.pop()
            nodes += 1
            if nodes > self.limits.max_key_nodes or depth > _MAX_KEY_DEPTH:
                raise UnsafeModelError(f"{self.what} uses a dict key nested too deeply or too large (refused)")
            for item in node:
                if type(item) is tuple:
                    stack.append((item, depth + 1))
                elif isinstance(item, (list, dict, set, bytearray, slice)):
                    self._fail(f"a tuple holding a {type(item).__name__} used as a dict key (unhashable)")

    # ==============================================================================================
    # Opcodes

    def op_proto(self) -> None:
        version = self._read(1)[0]
        if version > 5:
            raise UnsupportedDialectError(f"{self.what} uses pickle protocol {version}, newer than 5")
        self.protocol = version

    def op_frame(self) -> None:
        size = self._unpack(_Q)
        if size > len(self.data) - self.pos:
            raise TruncatedPickleError(f"{self.what} ends inside a pickle frame of {size} bytes")

    def op_stop(self) -> None:
        raise _Stop

    def op_mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_pop(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def op_pop_mark(self) -> None:
        self._pop_mark()

    def op_dup(self) -> None:
        self.stack.append(self.stack[-1])

    # numbers and constants

    def op_none(self) -> None:
        self.stack.append(None)

    def op_newtrue(self) -> None:
        self.stack.append(True)

    def op_newfalse(self) -> None:
        self.stack.append(False)

    def op_int(self) -> None:
        text = self._number_line()
        if text in ("00", "01"):  # Python 2's booleans
            self.stack.append(text == "01")
            return
        self.stack.append(self._parse_int(text))

    def op_long(self) -> None:
        text = self._number_line()
        self.stack.append(self._parse_int(text[:-1] if text.endswith("L") else text))

    def _parse_int(self, text: str) -> int:
        try:
            return int(text, 0)
        except ValueError:
            return self._fail("a malformed integer")

    def op_binint(self) -> None:
        self.stack.append(self._unpack(_i))

    def op_binint1(self) -> None:
        self.stack.append(self._read(1)[0])

    def op_binint2(self) -> None:
        self.stack.append(self._unpack(_H))

    def op_long1(self) -> None:
        self.stack.append(int.from_bytes(self._read(self._read(1)[0]), "little", signed=True))

    def op_long4(self) -> None:
        n = self._unpack(_i)
        if n < 0:
            self._fail("negative LONG4 length")
        if n > self.limits.max_int_bytes:
            raise UnsafeModelError(f"{self.what} holds an integer of {n} bytes, over the "
                                   f"{self.limits.max_int_bytes}-byte limit")
        self.stack.append(int.from_bytes(self._read(n), "little", signed=True))

    def op_float(self) -> None:
        text = self._number_line()
        try:
            self.stack.append(float(text))
        except ValueError:
            self._fail("a malformed float")

    def op_binfloat(self) -> None:
        self.stack.append(self._unpack(_d))

    # strings

    def op_string(self) -> None:
        line = self._readline(self.limits.max_string_bytes)
        if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b"'", b'"'):
            self._fail("STRING argument is not quoted")
        try:
            raw = codecs.escape_decode(line[1:-1])[0]
        except ValueError:
            self._fail("STRING argument has a bad escape")
        self.stack.append(self._py2_string(raw))

    def op_binstring(self) -> None:
        self.stack.append(self._py2_string(self._sized(self._unpack(_i), "string")))

    def op_short_binstring(self) -> None:
        self.stack.append(self._py2_string(self._read(self._read(1)[0])))

    def op_binbytes(self) -> None:
        self.stack.append(self._sized(self._unpack(_I), "bytes value"))

    def op_short_binbytes(self) -> None:
        self.stack.append(self._read(self._read(1)[0]))

    def op_binbytes8(self) -> None:
        self.stack.append(self._sized(self._unpack(_Q), "bytes value"))

    def op_bytearray8(self) -> None:
        self.stack.append(bytearray(self._sized(self._unpack(_Q), "bytearray")))

    def op_unicode(self) -> None:
        line = self._readline(self.limits.max_string_bytes)
        try:
            self.stack.append(line.decode("raw-unicode-escape"))
        except UnicodeDecodeError:
            self._fail("UNICODE argument has a bad escape")

    def op_binunicode(self) -> None:
        self.stack.append(self._text(self._sized(self._unpack(_I), "string"), "a string"))

    def op_short_binunicode(self) -> None:
        self.stack.append(self._text(self._read(self._read(1)[0]), "a string"))

    def op_binunicode8(self) -> None:
        self.stack.append(self._text(self._sized(self._unpack(_Q), "string"), "a string"))

    def op_buffer(self) -> None:
        raise UnsupportedDialectError(f"{self.what} uses out-of-band buffers (pickle protocol 5), "
                                      "which a saved file cannot carry")

    # containers

    def op_empty_tuple(self) -> None:
        self.stack.append(())

    def op_tuple(self) -> None:
        items = self._pop_mark()  # before naming self.stack: popping the mark replaces it
        self.stack.append(tuple(items))

    def op_tuple1(self) -> None:
        self.stack[-1] = (self.stack[-1],)

    def op_tuple2(self) -> None:
        second = self.stack.pop()
        self.stack[-1] = (self.stack[-1], second)

    def op_tuple3(self) -> None:
        third, second = self.stack.pop(), self.stack.pop()
        self.stack[-1] = (self.stack[-1], second, third)

    def op_empty_list(self) -> None:
        self.stack.append([])

    def op_list(self) -> None:
        items = self._pop_mark()
        self.stack.append(items)

    def op_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def op_appends(self) -> None:
        items = self._pop_mark()
        self._extend(self.stack[-1], items)

    def _extend(self, target: Any, items: list) -> None:
        if type(target) is list:
            target.extend(items)
        elif type(target) is ObjectStandIn:
            target.list_items.extend(items)
        else:
            self._fail(f"APPEND into a {_kind(target)}")

    def op_empty_dict(self) -> None:
        self.stack.append({})

    def op_dict(self) -> None:
        items = self._pop_mark()
        if len(items) % 2:
            self._fail("DICT with an odd number of items")
        self.stack.append({self._key(items[i]): items[i + 1] for i in range(0, len(items), 2)})

    def op_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def op_setitems(self) -> None:
        items = self._pop_mark()
        if len(items) % 2:
            self._fail("SETITEMS with an odd number of items")
        self._set_items(self.stack[-1], items)

    def _set_items(self, target: Any, items: list) -> None:
        if isinstance(target, dict):
            destination = target
        elif type(target) is ObjectStandIn:
            destination = target.items
        else:
            return self._fail(f"SETITEM into a {_kind(target)}")
        for i in range(0, len(items), 2):
            destination[self._key(items[i])] = items[i + 1]

    def op_empty_set(self) -> None:
        self.stack.append(set())

    def op_additems(self) -> None:
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            self._fail(f"ADDITEMS into a {_kind(target)}")
        target.update(self._key(item) for item in items)

    def op_frozenset(self) -> None:
        items = self._pop_mark()
        self.stack.append(frozenset(self._key(item) for item in items))

    # memo

    def op_put(self) -> None:
        self._put(self._parse_int(self._number_line()))

    def op_binput(self) -> None:
        self._put(self._read(1)[0])

    def op_long_binput(self) -> None:
        self._put(self._unpack(_I))

    def op_memoize(self) -> None:
        self._put(len(self.memo))

    def op_get(self) -> None:
        self._get(self._parse_int(self._number_line()))

    def op_binget(self) -> None:
        self._get(self._read(1)[0])

    def op_long_binget(self) -> None:
        self._get(self._unpack(_I))

    def op_ext(self) -> None:
        raise UnsupportedDialectError(f"{self.what} uses the copyreg extension registry (EXT opcodes), "
                                      "which PyTorch files never do")

    # globals, calls and objects

    def op_global(self) -> None:
        module = self._text(self._readline(4096), "a module name")
        name = self._text(self._readline(4096), "a global name")
        self.stack.append(resolve_global(module, name, self.protocol))

    def op_stack_global(self) -> None:
        name, module = self.stack.pop(), self.stack.pop()
        if type(module) is not str or type(name) is not str:
            self._fail("STACK_GLOBAL needs two strings")
        self.stack.append(resolve_global(module, name, self.protocol))

    def op_persid(self) -> None:
        self._persistent(self._text(self._readline(4096), "a persistent id"))

    def op_binpersid(self) -> None:
        self._persistent(self.stack.pop())

    def _persistent(self, pid: Any) -> None:
        if self.persistent_load is None:
            self._fail("a persistent id where none is expected")
        self._charge(1)
        self.stack.append(self.persistent_load(pid))

    def op_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self._call(func, args)

    def op_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack[-1]
        self.stack[-1] = self._new(cls, args)

    def op_newobj_ex(self) -> None:
        kwargs, args = self.stack.pop(), self.stack.pop()
        if type(kwargs) is not dict:
            self._fail("NEWOBJ_EX keyword arguments are not a dict")
        cls = self.stack[-1]
        self.stack[-1] = self._new(cls, args, kwargs)

    def op_inst(self) -> None:
        module = self._text(self._readline(4096), "a module name")
        name = self._text(self._readline(4096), "a class name")
        cls = resolve_global(module, name, self.protocol)
        args = tuple(self._pop_mark())
        self.stack.append(self._instantiate(cls, args))

    def op_obj(self) -> None:
        items = self._pop_mark()
        if not items:
            self._fail("OBJ without a class")
        self.stack.append(self._instantiate(items[0], tuple(items[1:])))

    def _instantiate(self, cls: Any, args: tuple) -> Any:
        """INST/OBJ: without arguments Python only allocates (`cls.__new__`); with arguments it calls."""
        return self._call(cls, args) if args else self._new(cls, ())

    def op_build(self) -> None:
        state = self.stack.pop()
        self._build(self.stack[-1], state)

    # ==============================================================================================
    # Calls: the whitelist

    def _call(self, func: Any, args: Any) -> Any:
        if type(func) is not GlobalRef:
            return self._fail(f"REDUCE on a {_kind(func)}, not a global")
        if type(args) is not tuple:
            return self._fail(f"arguments of {printable(func.qualname, 200)} are not a tuple")
        handler = _CALLS.get(func.qualname)
        if handler is None:
            if func.module.startswith("torch") and func.name in _UNSUPPORTED_REBUILDERS:
                raise UnsupportedDialectError(
                    f"holds a tensor PyTorch rebuilds with {func.qualname} (quantized, sparse, nested or "
                    "device-only tensors are not supported)")
            raise UnsafeModelError(f"refused to call the global {printable(func.qualname, 200)} from the pickle "
                                   "(only PyTorch's tensor rebuilders and plain containers may be called)")
        try:
            result = handler(self, *args)
        except TypeError:  # wrong number of arguments for the whitelisted signature
            return self._fail(f"{func.qualname} called with {len(args)} arguments")
        return result

    def _new(self, cls: Any, args: Any, kwargs: dict | None = None) -> Any:
        """NEWOBJ: `cls.__new__(cls, *args)` allocates without running `__init__`; a stand-in records it."""
        if type(cls) is not GlobalRef:
            return self._fail(f"NEWOBJ on a {_kind(cls)}, not a class")
        if type(args) is not tuple:
            return self._fail(f"arguments of {printable(cls.qualname, 200)} are not a tuple")
        special = _NEWS.get(cls.qualname)
        if special is not None:
            return special(self, args)
        self._charge(len(args))
        extra = (kwargs,) if kwargs else ()
        return ObjectStandIn(cls.module, cls.name, args=args + extra)

    def _build(self, target: Any, state: Any) -> None:
        """BUILD: a stand-in records its state; a few whitelisted results accept theirs, checked, as
        plain data (a real unpickler would set those attributes, so special names are refused)."""
        if type(target) is ObjectStandIn:  # recorded as data: any attribute name is just a name here
            if isinstance(target.state, dict) and isinstance(state, dict):
                target.state.update(state)
            else:
                target.state = state
            return
        origin = self._describe(target)
        self._check_state(origin, state)
        if self._origin.get(id(target)) == "argparse.Namespace" and type(target) is dict:
            if not isinstance(state, dict):
                self._fail("the state of an argparse.Namespace is not a dict")
            target.update(state)
        elif type(target) is OrderedDict:
            if not (state is None or isinstance(state, dict) or _is_slot_state(state)):
                self._fail("the state of an OrderedDict is not a dict")
            # torch's state dicts carry `_metadata` (per-module versions) here: nothing to keep.
        elif type(target) in self.tensor_types:
            pass  # old Variable/Parameter state (requires_grad, hooks): plain data, not needed
        else:
            raise UnsafeModelError(f"refused to set the state of {origin} from the pickle (BUILD only "
                                   "applies to objects of stand-in classes)")

    def _check_state(self, origin: str, state: Any) -> None:
        """A state that would set special attributes (`__class__`, `__reduce__`, ...) is hostile."""
        parts = state if _is_slot_state(state) else (state,)
        for part in parts:
            if not isinstance(part, dict):
                continue
            for key in part:
                if type(key) is str and key.startswith("__") and key.endswith("__"):
                    raise UnsafeModelError(f"refused the state the pickle gives to {origin}: it sets "
                                           f"{printable(key, 100)}")

    def _describe(self, obj: Any) -> str:
        if type(obj) is ObjectStandIn:
            return printable(obj.qualname, 200)
        origin = self._origin.get(id(obj))
        return origin if origin is not None else f"a {_kind(obj)}"

    # -- whitelisted callables (each takes the machine, then the pickle's arguments) ------------------

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None, origin: str) -> Any:
        if self.make_tensor is None:
            self._fail(f"{origin} where no tensors are expected")
        size, stride = _int_tuple(self, size, "size"), _int_tuple(self, stride, "stride")
        if len(size) != len(stride) or len(size) > _MAX_NDIM:
            self._fail(f"{origin}: size {len(size)}-d and stride {len(stride)}-d do not match (or over "
                       f"{_MAX_NDIM} dimensions)")
        if type(offset) is not int or offset < 0 or any(n < 0 for n in size):
            self._fail(f"{origin}: negative storage offset or size")
        if any(s < 0 for s in stride):
            raise UnsupportedDialectError(f"{origin}: a tensor with negative strides")
        tensor = self.make_tensor(storage, offset, size, stride, dtype)
        self.tensor_types.add(type(tensor))
        return self._remember(tensor, origin)

    def call_rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any) -> Any:
        return self._tensor(storage, offset, size, stride, None, "torch._utils._rebuild_tensor")

    def call_rebuild_tensor_v2(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                               backward_hooks: Any, metadata: Any = None) -> Any:
        return self._tensor(storage, offset, size, stride, None, "torch._utils._rebuild_tensor_v2")

    def call_rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                               backward_hooks: Any, dtype: Any, metadata: Any = None) -> Any:
        name = torch_dtype_name(dtype)
        if name is None:
            self._fail("torch._utils._rebuild_tensor_v3 without a known torch dtype")
        return self._tensor(storage, offset, size, stride, name, "torch._utils._rebuild_tensor_v3")

    def call_rebuild_parameter(self, data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
        return self._tensor_arg(data, "torch._utils._rebuild_parameter")

    def call_rebuild_parameter_with_state(self, data: Any, requires_grad: Any, backward_hooks: Any,
                                          state: Any) -> Any:
        self._check_state("torch.nn.Parameter", state)
        return self._tensor_arg(data, "torch._utils._rebuild_parameter_with_state")

    def call_parameter(self, data: Any = None, requires_grad: Any = True) -> Any:
        """`Parameter(data, requires_grad)` (torch 0.3 pickled parameters as this call): the tensor."""
        return self._tensor_arg(data, "torch.nn.parameter.Parameter")

    def _tensor_arg(self, data: Any, origin: str) -> Any:
        if type(data) not in self.tensor_types:
            self._fail(f"{origin} of a {_kind(data)}, not a tensor")
        return data

    def call_rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
        """A tensor whose type or attributes were pickled around it: rebuilt as a plain tensor."""
        if type(new_type) is not GlobalRef or new_type.qualname not in TORCH_TENSOR_TYPES:
            raise UnsupportedDialectError(f"holds a tensor subclass ({_ref_name(new_type)}), which needs its "
                                          "own code to load")
        if type(func) is not GlobalRef or func.qualname not in _TENSOR_REBUILDERS:
            raise UnsafeModelError(f"refused to call the global {_ref_name(func)} from the pickle "
                                   "(inside torch._tensor._rebuild_from_type_v2)")
        self._check_state("a tensor", state)
        return self._call(func, args)

    def call_ordered_dict(self, pairs: Any = ()) -> OrderedDict:
        result: OrderedDict = OrderedDict()
        for pair in _items_of(self, pairs, "collections.OrderedDict"):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                self._fail("collections.OrderedDict of something that is not (key, value) pairs")
            result[self._key(pair[0])] = pair[1]
        return self._remember(result, "collections.OrderedDict")

    def call_dict_like(self, source: Any = None) -> dict:
        """`defaultdict(factory)` or `Counter(mapping)`: a plain dict (a factory is a name, not kept)."""
        if isinstance(source, dict):
            self._charge(len(source))
            return dict(source)
        return {}

    def call_set(self, items: Any = ()) -> set:
        return {self._key(item) for item in _items_of(self, items, "set")}

    def call_frozenset(self, items: Any = ()) -> frozenset:
        return frozenset(self._key(item) for item in _items_of(self, items, "frozenset"))

    def call_slice(self, *args: Any) -> slice:
        if len(args) > 3 or any(a is not None and type(a) is not int for a in args):
            self._fail("slice of something other than integers")
        return slice(*args)

    def call_range(self, *args: Any) -> range:
        if not 1 <= len(args) <= 3 or any(type(a) is not int for a in args) or (len(args) == 3 and args[2] == 0):
            self._fail("range of something other than integers")
        return range(*args)

    def call_complex(self, real: Any = 0.0, imag: Any = 0.0) -> complex:
        if type(real) not in (int, float) or type(imag) not in (int, float):
            self._fail("complex of something other than numbers")
        return complex(real, imag)

    def call_bytes(self, source: Any = b"", encoding: Any = None) -> bytes:
        return bytes(self._byte_string(source, encoding, "bytes"))

    def call_bytearray(self, source: Any = b"", encoding: Any = None) -> bytearray:
        return bytearray(self._byte_string(source, encoding, "bytearray"))

    def call_codecs_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        """`_codecs.encode(str, 'latin1')`: how protocol 2 pickles Python 3 bytes."""
        return self._byte_string(text, encoding, "_codecs.encode")

    def _byte_string(self, source: Any, encoding: Any, origin: str) -> bytes:
        if isinstance(source, (bytes, bytearray)) and encoding is None:
            raw = bytes(source)
        elif type(source) is str and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
            try:
                raw = source.encode(encoding)
            except UnicodeEncodeError:
                return self._fail(f"{origin}: the text does not fit the {encoding} encoding")
        else:
            return self._fail(f"{origin} of a {_kind(source)}")
        self._charge(len(raw) // 16)  # repeated calls on one big memoized string must not add up unseen
        return raw

    def call_reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        """`copyreg._reconstructor(cls, object, None)`: protocols 0 and 1 allocating an instance."""
        return self._new(cls, () if state is None else (state,))

    def call_newobj(self, cls: Any = None, *args: Any) -> Any:
        return self._new(cls, args)

    def call_newobj_ex(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if type(kwargs) is not dict:
            self._fail("copyreg.__newobj_ex__ keyword arguments are not a dict")
        return self._new(cls, args, kwargs)

    def call_torch_size(self, dims: Any = ()) -> tuple:
        return _int_tuple(self, dims, "torch.Size")

    def call_torch_device(self, kind: Any, index: Any = None) -> str:
        """A device as the string torch prints (`cpu`, `cuda:0`)."""
        if type(kind) is not str or (index is not None and type(index) is not int):
            self._fail("torch.device of something other than a name and an index")
        return kind if index is None else f"{kind}:{index}"

    def call_jit_list(self, items: Any) -> list:
        """TorchScript's build_tensorlist / build_intlist / ...: the list itself."""
        if type(items) is not list:
            self._fail("a TorchScript list builder of something other than a list")
        return items

    def call_restore_type_tag(self, value: Any, type_str: Any) -> Any:
        return value

    def call_numpy_dtype(self, *args: Any) -> ObjectStandIn:
        """`numpy.dtype('f8', False, True)` + BUILD: recorded; numpy scalars decode it as data."""
        self._charge(len(args))
        return ObjectStandIn("numpy", "dtype", args=args)

    def call_numpy_reconstruct(self, cls: Any, shape: Any, typecode: Any) -> ObjectStandIn:
        """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` + BUILD: an array kept as its
        pickled state (version, shape, dtype, fortran order, raw bytes): data, never rebuilt here."""
        return ObjectStandIn("numpy", "ndarray", args=(cls, shape, typecode))

    def call_numpy_scalar(self, dtype: Any, data: Any = None) -> Any:
        """`numpy.core.multiarray.scalar(dtype, raw bytes)`, for plain numeric dtypes only."""
        np_dtype = _numpy_dtype(dtype)
        if np_dtype is None or not isinstance(data, (bytes, bytearray)) or len(data) != np_dtype.itemsize:
            raise UnsupportedDialectError("holds a NumPy scalar of a type lstm-inspect does not decode")
        return np.frombuffer(bytes(data), dtype=np_dtype)[0]

    def new_ordered_dict(self, args: tuple) -> OrderedDict:
        return self.call_ordered_dict(*args)

    def new_namespace(self, args: tuple) -> dict:
        """`argparse.Namespace` (training arguments in checkpoints): a plain dict of its attributes."""
        return self._remember({}, "argparse.Namespace")

    def new_parameter(self, args: tuple) -> Any:
        return self._call(GlobalRef("torch.nn.parameter", "Parameter"), args)

    def new_set(self, args: tuple) -> set:
        return self.call_set(*args)


def _is_slot_state(state: Any) -> bool:
    return type(state) is tuple and len(state) == 2 and all(isinstance(p, (dict, type(None))) for p in state)


def state_attributes(state: Any) -> dict | None:
    """The attributes a BUILD state sets: a dict state, or both halves of a `(dict, slots)` pair
    merged; None when the state is something else (a tuple a class's `__setstate__` reads)."""
    if isinstance(state, dict):
        return state
    if _is_slot_state(state):
        merged: dict = {}
        for part in state:
            merged.update(part or {})
        return merged
    return None


def _items_of(machine: PickleMachine, items: Any, origin: str) -> Any:
    if not isinstance(items, (list, tuple, set, frozenset)):
        machine._fail(f"{origin} of a {_kind(items)}")
    machine._charge(len(items))
    return items


def _int_tuple(machine: PickleMachine, value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_NDIM or any(type(v) is not int for v in value):
        machine._fail(f"a tensor {what} that is not a short sequence of integers")
    return tuple(value)


def _kind(obj: Any) -> str:
    if type(obj) is ObjectStandIn:
        return f"{printable(obj.qualname, 200)} object"
    if type(obj) is GlobalRef:
        return f"global {printable(obj.qualname, 200)}"
    return type(obj).__name__


def _ref_name(obj: Any) -> str:
    return printable(obj.qualname, 200) if type(obj) is GlobalRef else f"a {_kind(obj)}"


# torch dtypes as pickles name them (`torch.float32`, ...): numpy-style names, bfloat16 kept.
TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool",
    "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128", "cdouble": "complex128",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
}


def torch_dtype_name(ref: Any) -> str | None:
    """`torch.float32` (a GlobalRef) → 'float32'; None for anything else."""
    if type(ref) is GlobalRef and ref.module == "torch":
        return TORCH_DTYPES.get(ref.name)
    return None


def _numpy_dtype(stand_in: Any) -> np.dtype | None:
    if type(stand_in) is not ObjectStandIn or stand_in.qualname != "numpy.dtype" or not stand_in.args:
        return None
    code = stand_in.args[0]
    if type(code) is not str or code not in _NUMPY_SCALAR_CODES:
        return None
    state = stand_in.state
    order = state[1] if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "=") else "="
    return np.dtype(code).newbyteorder(order) if order != "|" else np.dtype(code)


_TENSOR_REBUILDERS = frozenset({"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
                                "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
                                "torch._utils._rebuild_parameter_with_state"})
M = PickleMachine
_CALLS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": M.call_rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": M.call_rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": M.call_rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": M.call_rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": M.call_rebuild_parameter_with_state,
    "torch._utils._rebuild_from_type_v2": M.call_rebuild_from_type_v2,
    "torch._tensor._rebuild_from_type_v2": M.call_rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": M.call_parameter,
    "torch.Size": M.call_torch_size,
    "torch.device": M.call_torch_device,
    "torch.jit._pickle.build_tensorlist": M.call_jit_list,
    "torch.jit._pickle.build_intlist": M.call_jit_list,
    "torch.jit._pickle.build_doublelist": M.call_jit_list,
    "torch.jit._pickle.build_boollist": M.call_jit_list,
    "torch.jit._pickle.restore_type_tag": M.call_restore_type_tag,
    "collections.OrderedDict": M.call_ordered_dict,
    "collections.defaultdict": M.call_dict_like,
    "collections.Counter": M.call_dict_like,
    "builtins.set": M.call_set,
    "builtins.frozenset": M.call_frozenset,
    "builtins.slice": M.call_slice,
    "builtins.range": M.call_range,
    "builtins.complex": M.call_complex,
    "builtins.bytes": M.call_bytes,
    "builtins.bytearray": M.call_bytearray,
    "_codecs.encode": M.call_codecs_encode,
    "copyreg._reconstructor": M.call_reconstructor,
    "copyreg.__newobj__": M.call_newobj,
    "copyreg.__newobj_ex__": M.call_newobj_ex,
    "numpy.dtype": M.call_numpy_dtype,
    "numpy.core.multiarray._reconstruct": M.call_numpy_reconstruct,
    "numpy.core.multiarray.scalar": M.call_numpy_scalar,
}
# NEWOBJ of these classes builds plain data instead of a stand-in.
_NEWS: dict[str, Callable[[PickleMachine, tuple], Any]] = {
    "collections.OrderedDict": M.new_ordered_dict,
    "argparse.Namespace": M.new_namespace,
    "torch.nn.parameter.Parameter": M.new_parameter,
    "builtins.set": M.new_set,
}
del M

_i, _I, _H, _Q, _d = (struct.Struct(f) for f in ("<i", "<I", "<H", "<Q", ">d"))

_OPCODES = {
    b"\x80": "proto", b"\x95": "frame", b".": "stop", b"(": "mark", b"0": "pop", b"1": "pop_mark",
    b"2": "dup", b"N": "none", b"\x88": "newtrue", b"\x89": "newfalse", b"I": "int", b"L": "long",
    b"J": "binint", b"K": "binint1", b"M": "binint2", b"\x8a": "long1", b"\x8b": "long4", b"F": "float",
    b"G": "binfloat", b"S": "string", b"T": "binstring", b"U": "short_binstring", b"B": "binbytes",
    b"C": "short_binbytes", b"\x8e": "binbytes8", b"\x96": "bytearray8", b"V": "unicode", b"X": "binunicode",
    b"\x8c": "short_binunicode", b"\x8d": "binunicode8", b"\x97": "buffer", b"\x98": "buffer",
    b")": "empty_tuple", b"t": "tuple", b"\x85": "tuple1", b"\x86": "tuple2", b"\x87": "tuple3",
    b"]": "empty_list", b"l": "list", b"a": "append", b"e": "appends", b"}": "empty_dict", b"d": "dict",
    b"s": "setitem", b"u": "setitems", b"\x8f": "empty_set", b"\x90": "additems", b"\x91": "frozenset",
    b"p": "put", b"q": "binput", b"r": "long_binput", b"\x94": "memoize", b"g": "get", b"h": "binget",
    b"j": "long_binget", b"\x82": "ext", b"\x83": "ext", b"\x84": "ext", b"c": "global",
    b"\x93": "stack_global", b"P": "persid", b"Q": "binpersid", b"R": "reduce", b"\x81": "newobj",
    b"\x92": "newobj_ex", b"i": "inst", b"o": "obj", b"b": "build",
}


def _dispatch_table(machine: PickleMachine) -> list[Callable[[], None] | None]:
    table: list[Callable[[], None] | None] = [None] * 256
    for code, name in _OPCODES.items():
        table[code[0]] = getattr(machine, f"op_{name}")
    return table


# ----------------------------------------------------------------------------------------------
# The finished tree


_NESTED_KEYS = (tuple, frozenset)  # hashable containers a key or set item can be


def children(node: Any) -> list | tuple | None:
    """The values a plain-data node holds (keys and set items that are containers included); None
    for a leaf."""
    kind = type(node)
    if kind is dict or kind is OrderedDict:
        keys = [k for k in node if type(k) in _NESTED_KEYS]
        return keys + list(node.values()) if keys else list(node.values())
    if kind is list or kind is tuple:
        return node
    if kind is set or kind is frozenset:
        return [k for k in node if type(k) in _NESTED_KEYS]
    if kind is ObjectStandIn:
        return [node.state, node.args, node.items, node.list_items]
    return None


def check_tree(root: Any, limits: PickleLimits, what: str, built: int) -> None:
    """Refuse a tree nested deeper than the limit, holding a reference cycle, or whose shared
    objects multiply the paths through it (billion laughs): a walk may visit a few times the
    `built` objects (some are shared on purpose: TorchScript lists each weight twice), no more.
    Every later walk of the tree is then bounded."""
    budget = min(limits.max_objects, 4 * built + 10_000)
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        items = children(node)
        if items is None or not items and type(node) is not ObjectStandIn:
            continue
        if depth >= limits.max_depth:
            raise UnsafeModelError(f"{what} is nested more than {limits.max_depth} levels deep (refused)")
        if id(node) in on_path:
            raise UnsupportedDialectError(f"{what} holds a reference cycle (an object that contains itself)")
        budget -= len(items) + 1
        if budget < 0:
            raise UnsafeModelError(f"{what} reaches its {built} objects through far more paths of shared "
                                   "references (refused: a pickle bomb?)")
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in reversed(items))
