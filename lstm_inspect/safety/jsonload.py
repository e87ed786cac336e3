"""Untrusted JSON (Keras configs, metadata, lock files, safetensors headers): size, strict UTF-8,
no duplicate keys, no NaN/Infinity, bounded depth."""
from __future__ import annotations

import json
from typing import Any

from lstm_inspect.errors import CorruptModelError, UnsafeModelError
from lstm_inspect.safety.limits import DEFAULT_LIMITS, Limits, first_line, size_text
from lstm_inspect.safety.text import printable


def strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


class _DuplicateKey(Exception):
    pass


class _BadConstant(Exception):
    pass


def load_json(data: bytes | str, what: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Parse untrusted JSON: size, strict UTF-8, no duplicate keys, no NaN/Infinity, bounded depth.

    `data` may also be a str (h5py returns variable-length string attributes decoded).
    """
    if len(data) > limits.max_json_bytes:
        raise UnsafeModelError(f"{what} is {size_text(len(data))}, over the {size_text(limits.max_json_bytes)} limit")
    try:
        text = data.lstrip("\ufeff") if isinstance(data, str) else strip_bom(bytes(data)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptModelError(f"{what} is not valid UTF-8 (bad byte at offset {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise UnsafeModelError(f"{what} has a duplicate key '{printable(str(exc), 100)}' (refused)") from None
    except _BadConstant as exc:
        raise CorruptModelError(f"{what} contains {exc}, which is not valid JSON") from None
    except RecursionError:
        raise UnsafeModelError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise CorruptModelError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise CorruptModelError(f"{what} is not valid JSON ({first_line(exc)})") from None
    if _json_depth(value) > limits.max_json_depth:
        raise UnsafeModelError(f"{what} is nested more than {limits.max_json_depth} levels deep")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two values for one key: parsers disagree on which wins, so refuse instead of guessing."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _no_constants(name: str) -> Any:
    raise _BadConstant(name)


def _json_depth(value: Any) -> int:
    """Nesting depth, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest
