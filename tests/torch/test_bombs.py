"""Pickle bombs, storages beyond the end, truncation at every offset and random damage: only typed
errors come out (never an IndexError, struct.error, RecursionError, MemoryError or a hang), within
bounded time and memory."""
from __future__ import annotations

import collections
import json
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_inspect.errors import CorruptModelError, InspectError, NotAModelError, UnsafeModelError, \
    UnsupportedDialectError
from lstm_inspect.formats.torch.containers import read_torch
from lstm_inspect.formats.torch.state import find_model_state
from lstm_inspect.formats.torch.unpickler import PickleLimits, PickleMachine, check_tree
from lstm_inspect.safety import Limits

from . import builders
from ..timing import cpu_budget

EXAMPLES = int(os.environ.get("TORCH_HYPOTHESIS_EXAMPLES", "0"))  # set to explore more
SETTINGS = {"deadline": None, "derandomize": True, "database": None, "print_blob": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture]}
P2 = b"\x80\x02"


def load(data: bytes, limits: PickleLimits = PickleLimits()) -> object:
    machine = PickleMachine(data, what="bomb.pkl", limits=limits)
    value, _end = machine.load(0)
    check_tree(value, limits, "bomb.pkl", machine.objects)
    return value


def read_everything(path: Path, **kw: object) -> None:
    """What a command does: open, find the state dict, read every tensor."""
    with read_torch(path, **kw) as tf:
        find_model_state(tf)
        for _name, ref in tf.tensors():
            ref.read()


# ----------------------------------------------------------------------------------------------
# Bombs, one opcode stream each


def _deep_frozensets(depth: int) -> bytes:
    return P2 + b"(N\x91q\x00" + b"0(h\x00\x91q\x00" * depth + b"."


def _billion_laughs(levels: int, width: int) -> bytes:
    return P2 + b"]q\x00" + (b"](" + b"h\x00" * width + b"eq\x00") * levels + b"."


BOMBS = {
    "deep-lists": (P2 + b"]" * 300_000 + b"a" * 299_999 + b".", UnsafeModelError, "nested more than"),
    "deep-tuples": (P2 + b"N" + b"\x85" * 300_000 + b".", UnsafeModelError, "nested more than"),
    "deep-tuple-as-key": (P2 + b"}N" + b"\x85" * 300_000 + b"Ns.", UnsafeModelError, "key nested too deeply"),
    "deep-frozensets": (_deep_frozensets(100_000), UnsafeModelError, "nested more than"),
    "deep-dicts-by-memo": (P2 + b"}q\x00" + b"}q\x01X\x01\x00\x00\x00kh\x00sq\x00" * 50_000 + b".",
                           UnsafeModelError, "nested more than"),
    "billion-laughs": (_billion_laughs(40, 10), UnsafeModelError, "far more paths"),
    "long-binput-2-32": (P2 + b"Nr\xff\xff\xff\xff.", UnsafeModelError, "memo index 4294967295"),
    "text-put-huge": (b"Np99999999999999999999\n.", UnsafeModelError, "memo index"),
    "get-before-put": (P2 + b"h\x05.", CorruptModelError, "read before it is written"),
    "binunicode8-2-62": (P2 + b"\x8d" + struct.pack("<Q", 2**62) + b"abc.", CorruptModelError, "ends inside"),
    "binbytes-4g": (P2 + b"B\xff\xff\xff\xff" + b"x" * 100, CorruptModelError, "ends inside"),
    "long4-huge": (P2 + b"\x8b" + struct.pack("<i", 10**6) + b"\x01" * 10**6 + b".", UnsafeModelError,
                   "integer of 1000000 bytes"),
    "long4-negative": (P2 + b"\x8b\xff\xff\xff\xff.", CorruptModelError, "negative LONG4"),
    "text-int-10k-digits": (b"I" + b"9" * 10_000 + b"\n.", CorruptModelError, "longer than"),
    "self-containing-list": (P2 + b"]q\x00h\x00a.", UnsupportedDialectError, "reference cycle"),
    "self-containing-object": (P2 + b"c__main__\nNet\n)\x81q\x00}X\x01\x00\x00\x00sh\x00sb.",
                               UnsupportedDialectError, "reference cycle"),
    "stack-underflow": (P2 + b"a.", CorruptModelError, "stack underflow"),
    "pop-mark-missing": (P2 + b"N1.", CorruptModelError, "MARK"),
    "stop-empty": (P2 + b".", CorruptModelError, "STOP with an empty stack"),
    "unknown-opcode": (P2 + b"\xff.", CorruptModelError, "unknown opcode 0xff"),
    "protocol-6": (b"\x80\x06N.", UnsupportedDialectError, "protocol 6"),
    "ext1": (P2 + b"\x82\x01.", UnsupportedDialectError, "extension registry"),
    "next-buffer": (b"\x80\x05\x97.", UnsupportedDialectError, "out-of-band"),
    "frame-past-end": (b"\x80\x04\x95" + struct.pack("<Q", 10**9) + b"N.", CorruptModelError, "frame"),
    "setitem-into-list": (P2 + b"]NNs.", CorruptModelError, "SETITEM into a list"),
    "append-into-tuple": (P2 + b")Na.", CorruptModelError, "APPEND into a tuple"),
    "list-as-key": (P2 + b"}]Ns.", CorruptModelError, "unhashable"),
    "reduce-on-string": (P2 + b"X\x01\x00\x00\x00f)R.", CorruptModelError, "REDUCE on a str"),
    "newobj-on-int": (P2 + b"K\x01)\x81.", CorruptModelError, "NEWOBJ on a int"),
    "reduce-unknown-callable": (P2 + b"cmymodule\nhelper\n)R.", UnsafeModelError, "call the global mymodule.helper"),
    "dunder-attribute-chain": (P2 + b"ctorch\nnn.__class__.__base__\n.", UnsafeModelError, "refused to load"),
    "stack-global-non-str": (b"\x80\x04K\x01K\x02\x93.", CorruptModelError, "STACK_GLOBAL needs two strings"),
    "ordered-dict-bad-pairs": (P2 + b"ccollections\nOrderedDict\n]K\x01a\x85R.", CorruptModelError, "pairs"),
    "rebuild-without-storages": (P2 + b"ctorch._utils\n_rebuild_tensor_v2\n(NK\x00)))\x89NtR.", CorruptModelError,
                                 "where no tensors are expected"),
    "persid-without-loader": (P2 + b"NQ.", CorruptModelError, "persistent id where none is expected"),
    "string-not-quoted": (b"Sabc\n.", CorruptModelError, "not quoted"),
    "build-on-list": (P2 + b"]}b.", UnsafeModelError, "state of a list"),
}


@pytest.mark.parametrize("name", BOMBS)
def test_bomb(name: str) -> None:
    data, error, message = BOMBS[name]
    with cpu_budget(5.0, name), pytest.raises(error, match=message) as err:
        load(data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["deep-lists", "deep-tuples", "deep-dicts-by-memo", "billion-laughs"])
def test_bomb_memory_stays_small(name: str) -> None:
    data, error, _message = BOMBS[name]
    tracemalloc.start()
    try:
        with pytest.raises(error):
            load(data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("data, limits, message", [
    (P2 + b"N" + b"p0\n" * 1 + b"".join(b"Nq" + bytes([i]) for i in range(200)) + b".", PickleLimits(max_memo=100),
     "memo index 100, beyond the limit of 100"),
    (P2 + b"(" + b"N" * 20_000 + b"l.", PickleLimits(max_objects=10_000), "more than 10000 objects"),
    (P2 + b"X" + struct.pack("<I", 5000) + b"x" * 5000 + b".", PickleLimits(max_string_bytes=4096), "over the 4096"),
    (P2 + b"]" * 60 + b"a" * 59 + b".", PickleLimits(max_depth=50), "nested more than 50"),
    (P2 + b"N" * 10 + b".", PickleLimits(max_pickle_bytes=8), "over the 8-byte limit"),
    # a big memoized string encoded again and again: each copy counts against the budget
    (P2 + b"X" + struct.pack("<I", 100_000) + b"x" * 100_000 + b"q\x00]("
     + b"c_codecs\nencode\nh\x00X\x06\x00\x00\x00latin1\x86R" * 50 + b"e.", PickleLimits(max_objects=100_000),
     "more than 100000 objects"),
])
def test_limits(data: bytes, limits: PickleLimits, message: str) -> None:
    with pytest.raises(UnsafeModelError, match=message):
        load(data, limits)


def test_bombs_through_the_containers(tmp_path: Path) -> None:
    """The same refusals through read_torch, in a zip's data.pkl and as a legacy file's object."""
    for name in ("deep-lists", "billion-laughs", "long-binput-2-32", "self-containing-list"):
        data, error, _message = BOMBS[name]
        zipped = builders.zip_with_pickle(tmp_path / f"{name}.pt", data)
        legacy = tmp_path / f"{name}-legacy.pt"
        legacy.write_bytes(builders.legacy_stream(data, []))
        for path in (zipped, legacy):
            with pytest.raises(error):
                read_torch(path)


# ----------------------------------------------------------------------------------------------
# Storages and offsets beyond the end


def _state_pickle(pid: tuple, size: tuple = (4,), stride: tuple = (1,), offset: int = 0) -> bytes:
    return builders.dumps(collections.OrderedDict(w=builders.tensor_v2(pid, offset, size, stride)))


def test_zip_storage_smaller_than_claimed(tmp_path: Path) -> None:
    path = builders.zip_with_pickle(tmp_path / "a.pt", _state_pickle(builders.storage_pid("0", 1000, False)),
                                    {"0": bytes(16)})
    with pytest.raises(CorruptModelError, match="holds 16 bytes but the pickle needs 4000"):
        read_torch(path)


@pytest.mark.parametrize("size, stride, offset", [((5,), (1,), 0), ((2, 2), (1, 3), 0), ((4,), (1,), 1),
                                                  ((2,), (2**62,), 0)])
def test_tensor_beyond_its_storage(tmp_path: Path, size: tuple, stride: tuple, offset: int) -> None:
    path = builders.zip_with_pickle(tmp_path / "a.pt", _state_pickle(builders.storage_pid("0", 4, False), size, stride,
                                                                     offset), {"0": bytes(16)})
    with pytest.raises(CorruptModelError, match="needs element"):
        read_torch(path)


@pytest.mark.parametrize("key", ["missing", "../../etc/passwd", "/etc/passwd", "0/../0"])
def test_storage_member_missing(tmp_path: Path, key: str) -> None:
    path = builders.zip_with_pickle(tmp_path / "a.pt", _state_pickle(builders.storage_pid(key, 4, False)),
                                    {"0": bytes(16)})
    with pytest.raises(CorruptModelError, match="is missing"):
        read_torch(path)


def test_broadcast_bomb_is_refused_on_read(tmp_path: Path) -> None:
    """One element seen as 2**40 (stride 0): valid in torch, but reading it would take 4 TiB."""
    path = builders.zip_with_pickle(tmp_path / "a.pt", _state_pickle(builders.storage_pid("0", 1, False), (2**40,),
                                                                     (0,)), {"0": bytes(4)})
    with read_torch(path) as tf:
        (ref,) = [r for _n, r in tf.tensors()]
        assert ref.read(np.s_[:3]).tolist() == [0.0, 0.0, 0.0]
        with pytest.raises(UnsafeModelError, match="limit to read"):
            ref.read()


def test_zip_member_overlapping_the_next(tmp_path: Path) -> None:
    """A storage whose local header claims a longer extra field than there is room for."""
    source = builders.save(collections.OrderedDict(w=torch.arange(4.0)), tmp_path / "ok.pt")
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as zf:
        info = zf.getinfo("ok/data/0")
    struct.pack_into("<H", data, info.header_offset + 28, 60_000)
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match="runs past the end of its space"):
        read_everything(tmp_path / "bad.pt")


def test_zip_storage_damaged_in_place(tmp_path: Path) -> None:
    source = builders.save(collections.OrderedDict(w=torch.arange(4.0)), tmp_path / "ok.pt")
    data = bytearray(source.read_bytes())
    with read_torch(source) as tf:
        _path, offset = tf.tensors()[0][1].extent
    data[offset] ^= 0xFF
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match="CRC-32"):
        read_everything(tmp_path / "bad.pt")


@pytest.mark.parametrize("damage, message", [
    ("count", "holds 5 elements but the pickle says 4"),
    ("cut", "runs past the end"),
    ("extra-key", "which no tensor uses"),
    ("no-key", "has no data in the file"),
    ("duplicate-key", "lists a storage twice"),
    ("keys-not-list", "not a list of names"),
])
def test_legacy_storages_beyond_or_wrong(tmp_path: Path, damage: str, message: str) -> None:
    main = _state_pickle(builders.storage_pid("0", 4, True))
    raw = np.arange(4, dtype=np.float32).tobytes()
    keys = {"extra-key": ["0", "1"], "no-key": [], "duplicate-key": ["0", "0"], "keys-not-list": "0"}.get(damage)
    data = builders.legacy_stream(main, [("0", raw, 4)], keys=keys)
    if damage == "count":
        data = data[:-24] + struct.pack("<q", 5) + data[-16:]
    if damage == "cut":
        data = data[:-3]
    path = tmp_path / "a.pt"
    path.write_bytes(data)
    with pytest.raises(CorruptModelError, match=message):
        read_everything(path)


def _safetensors(header: object, payload: bytes, raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


@pytest.mark.parametrize("header, payload, error, message", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}, bytes(16), CorruptModelError, "outside the file"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, bytes(16), CorruptModelError, "shape needs 16"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2],
                                                                      "data_offsets": [4, 12]}},
     bytes(16), CorruptModelError, "overlap"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [-4, 12]}}, bytes(16), CorruptModelError, "outside"),
    ({"a": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, bytes(16), UnsupportedDialectError, "dtype F4"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(16), CorruptModelError, "bad shape"),
    ({"a": {"dtype": "F32", "shape": [1]}}, bytes(16), CorruptModelError, "lacks"),
    ({"__metadata__": {"a": 1}}, b"", CorruptModelError, "map of strings"),
    ({"a": 1}, b"", CorruptModelError, "lacks"),
])
def test_safetensors_header_checks(tmp_path: Path, header: object, payload: bytes, error: type, message: str) -> None:
    path = tmp_path / "a.safetensors"
    path.write_bytes(_safetensors(header, payload))
    with pytest.raises(error, match=message):
        read_torch(path)


def test_safetensors_header_bounds(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{" + bytes(100))
    with pytest.raises(NotAModelError):  # a length beyond the file: not even sniffed as safetensors
        read_torch(path)
    path.write_bytes(_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)))
    with pytest.raises(UnsafeModelError, match="over the 10-byte limit"):
        read_torch(path, Limits(max_json_bytes=10))
    path.write_bytes(_safetensors(None, b"", raw_header=b'{"a": 1, "a": 2}'))
    with pytest.raises(UnsafeModelError, match="duplicate key"):
        read_torch(path)
    path.write_bytes(_safetensors([1, 2], b""))
    with pytest.raises(NotAModelError, match="not a PyTorch file"):  # a header must be an object
        read_torch(path)


def test_pickle_member_over_the_limit(tmp_path: Path, small_zip: Path) -> None:
    with pytest.raises(UnsafeModelError, match="data.pkl is .* over the 64-byte limit"):
        read_torch(small_zip, pickle_limits=PickleLimits(max_pickle_bytes=64))
    legacy = builders.save(builders.rnn_modules()["lstm_cell"].state_dict(), tmp_path / "l.pt", legacy=True)
    with pytest.raises(UnsafeModelError, match="over the 600-byte limit"):
        read_torch(legacy, pickle_limits=PickleLimits(max_pickle_bytes=600))


# ----------------------------------------------------------------------------------------------
# Truncation at every offset


def _all_prefixes_fail(data: bytes, target: Path) -> list[str]:
    problems = []
    for n in range(len(data)):
        target.write_bytes(data[:n])
        try:
            read_everything(target)
            problems.append(f"{n}: read without error")
        except InspectError:
            pass
        except Exception as exc:  # noqa: BLE001 - the point is to catch anything untyped
            problems.append(f"{n}: {type(exc).__name__}: {exc}")
    return problems


def test_truncated_legacy_file_at_every_offset(small_legacy: Path, tmp_path: Path) -> None:
    data = small_legacy.read_bytes()
    read_everything(small_legacy)
    assert _all_prefixes_fail(data, tmp_path / "cut.pt") == []


def test_truncated_zip_at_every_offset(small_zip: Path, tmp_path: Path) -> None:
    data = small_zip.read_bytes()
    assert _all_prefixes_fail(data, tmp_path / "cut.pt") == []


@pytest.mark.parametrize("seed", ["zip", "torchscript"])
def test_damaged_zip_directory_at_every_byte(small_zip: Path, tmp_path: Path, seed: str) -> None:
    """Every byte of the central directory and its end record set to 0x00, 0xFF and flipped (sizes,
    offsets, name lengths...), and bytes cut or added before the members (zipfile then shifts every
    offset, some below zero): a typed error or a sound read. TorchScript puts storages first."""
    if seed == "torchscript":
        torch.manual_seed(8)
        small_zip = builders.save_script(torch.nn.RNNCell(2, 2), tmp_path / "script.pt")
    data = small_zip.read_bytes()
    start = data.find(b"PK\x01\x02")
    variants = {f"{at}={value:#x}": data[:at] + bytes([value]) + data[at + 1:] for at in range(start, len(data))
                for value in {0x00, 0xFF, data[at] ^ 0x80} - {data[at]}}
    variants.update({f"cut {n}": data[:10] + data[10 + n:] for n in range(1, 80)})
    variants.update({f"add {n}": data[:10] + bytes(n) + data[10:] for n in (1, 8, 64)})
    target, problems = tmp_path / "damaged.pt", []
    for name, variant in variants.items():
        target.write_bytes(variant)
        try:
            read_everything(target)
        except InspectError:
            pass
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    assert problems == []


def test_truncated_data_pkl_at_every_offset(small_zip: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(small_zip) as zf:
        data_pkl = zf.read("cell/data.pkl")
    problems = []
    for n in range(len(data_pkl)):
        path = builders.replace_members(small_zip, tmp_path / "cut.pt", {"data.pkl": data_pkl[:n]})
        try:
            read_everything(path)
            problems.append(f"{n}: read without error")
        except InspectError:
            pass
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{n}: {type(exc).__name__}: {exc}")
    assert problems == []


def test_truncated_safetensors_at_every_offset(tmp_path: Path) -> None:
    source = builders.save_safetensors(builders.rnn_modules()["gru_cell"].state_dict(), tmp_path / "s.safetensors")
    assert _all_prefixes_fail(source.read_bytes(), tmp_path / "cut.safetensors") == []


# ----------------------------------------------------------------------------------------------
# Random damage (hypothesis)


@st.composite
def damage(draw: st.DrawFn, size: int) -> list[tuple[str, int, bytes]]:
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["overwrite", "insert", "delete", "flip"]))
        at = draw(st.integers(0, max(size - 1, 0)))
        edits.append((kind, at, draw(st.binary(min_size=1, max_size=8))))
    return edits


def apply(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, at, blob in edits:
        at = min(at, len(out))
        if kind == "overwrite":
            out[at:at + len(blob)] = blob
        elif kind == "insert":
            out[at:at] = blob
        elif kind == "delete":
            del out[at:at + len(blob)]
        elif out:
            out[min(at, len(out) - 1)] ^= 1 << (blob[0] % 8)
    return bytes(out)


def _only_typed(path: Path) -> None:
    with cpu_budget(5.0, f"reading {path.name}"):
        try:
            read_everything(path)
        except InspectError as err:
            assert "\n" not in str(err)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    module = builders.rnn_modules()["lstm_proj"]
    out = {
        "legacy": builders.save(module.state_dict(), folder / "l.pt", legacy=True),
        "whole-legacy": builders.save(builders.rnn_modules()["rnn_relu"], folder / "w.pt", legacy=True),
        "safetensors": builders.save_safetensors(module.state_dict(), folder / "s.safetensors"),
    }
    zipped = builders.save(builders.checkpoint(builders.rnn_modules()["gru_cell"]), folder / "c.pt")
    with zipfile.ZipFile(zipped) as zf:
        data_pkl = zf.read("c/data.pkl")
    return {**{k: v.read_bytes() for k, v in out.items()}, "data.pkl": data_pkl, "zip": zipped.read_bytes(),
            "zip-path": str(zipped).encode()}


@settings(max_examples=EXAMPLES or 150, **SETTINGS)
@given(data=st.data())
def test_random_damage_of_files(seeds: dict[str, bytes], tmp_path: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["legacy", "whole-legacy", "safetensors", "zip"]))
    damaged = apply(seeds[kind], data.draw(damage(len(seeds[kind]))))
    path = tmp_path / "damaged.pt"
    path.write_bytes(damaged)
    _only_typed(path)


@settings(max_examples=EXAMPLES or 250, **SETTINGS)
@given(data=st.data())
def test_random_damage_of_data_pkl(seeds: dict[str, bytes], tmp_path: Path, data: st.DataObject) -> None:
    """The zip stays valid (CRCs recomputed): the damage reaches the pickle interpreter."""
    damaged = apply(seeds["data.pkl"], data.draw(damage(len(seeds["data.pkl"]))))
    path = builders.replace_members(Path(seeds["zip-path"].decode()), tmp_path / "damaged.pt", {"data.pkl": damaged})
    _only_typed(path)


OPCODE_BYTES = b"(.012NIFJKMLGSTUBCXVa]el}dsutp)\x85\x86\x87hgjqrbc\x80\x81\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91" \
    b"\x92\x93\x94\x95\x96Q\x97R"


@settings(max_examples=EXAMPLES or 400, **SETTINGS)
@given(body=st.lists(st.one_of(st.sampled_from(list(OPCODE_BYTES)), st.integers(0, 255)), max_size=80))
def test_opcode_soup(body: list[int]) -> None:
    """Random opcode sequences straight into the interpreter: a value or a typed error."""
    try:
        load(b"\x80\x02" + bytes(body) + b".", PickleLimits(max_objects=10_000))
    except InspectError as err:
        assert "\n" not in str(err)
