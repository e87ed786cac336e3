"""The `check --expect` mini-language: small assertions on a model without a lock file.

    EXPR      := [SELECTOR "."] ATTRIBUTE OP VALUE
    OP        := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    SELECTOR  := "recurrent" | "layers"        every recurrent direction / every top-level layer
               | a direction path               lstm, bidi/forward, encoder/enc_lstm
               | a layer name                   head, bidi, encoder/dense_1 (nested)
               | a kind or class               lstm, gru, simplernn, convlstm, dense, bidirectional
               | a glob                         bidi/*, lstm_*
    VALUE     := a number (128, 2e6, 2_000_000, 1.5M, 64k), true/false, none, a word or a quoted string,
                 a list for gates/kernel_size (i,f,c,o or "i f c o"; 3,3)

Examples: `lstm.units=128`, `bidi/forward.kind=GRU`, `total_params<=2e6`, `recurrent.count=2`,
`gru.reset_after=true`, `head.class=Dense`, `layers.count>=3`.

Without a selector the attribute is one of the model's: total_params (or params), trainable_params,
non_trainable_params, total_bytes, format, keras_version. With a selector matching several entities the
assertion must hold for each (and at least one must match); `.count` is the number matched.
Strings compare case-insensitively. An expression that cannot be parsed, an unknown attribute, or an
ordering operator with a non-number is a UsageError (exit 2); a false assertion is a finding (exit 1).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Mapping

from lstm_inspect.commands.lockfile import CONFIG_FACTS, CheckResult, Finding
from lstm_inspect.errors import UsageError

OPS = ("==", "!=", "<=", ">=", "=", "<", ">")
_EXPR = re.compile(r"^\s*(?P<lhs>[^=!<>]*?)\s*(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<rhs>.*?)\s*$", re.S)
_NUMBER = re.compile(r"^[+-]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d+)?(?P<suffix>[kMG])?$")
_SUFFIX = {"k": 1e3, "M": 1e6, "G": 1e9}

MODEL_ATTRS = {"total_params": "number", "params": "number", "trainable_params": "number",
               "non_trainable_params": "number", "total_bytes": "number", "format": "string",
               "keras_version": "string"}
DIRECTION_ATTRS = {"kind": "string", "class": "string", "units": "number", "input_dim": "number",
                   "gates": "list", "params": "number", "use_bias": "bool", "reset_after": "bool",
                   "activation": "string", "recurrent_activation": "string", "return_sequences": "bool",
                   "return_state": "bool", "stateful": "bool", "go_backwards": "bool", "kernel_size": "list",
                   "path": "string", "layer": "string"}
LAYER_ATTRS = {"name": "string", "class": "string", "params": "number", "trainable": "bool",
               "weights": "number", "dtype": "string"}
SELECTOR_ATTRS = {"count": "number"}
EXAMPLE = "e.g. lstm.units=128, bidi/forward.kind=GRU, total_params<=2e6, recurrent.count=2"


def _attr_types() -> dict[str, str]:
    types: dict[str, str] = {k: "any" for k in CONFIG_FACTS}
    types.update(LAYER_ATTRS)
    types.update(DIRECTION_ATTRS)
    types.update(SELECTOR_ATTRS)
    return types


ATTR_TYPES = _attr_types()


@dataclass(frozen=True)
class Expectation:
    text: str
    selector: str | None  # None: a model attribute
    attribute: str
    op: str
    value: Any            # parsed: float, bool, None, str or tuple[str, ...]
    raw: str


def parse(text: str) -> Expectation:
    """Parse one `--expect` expression; a UsageError explains what is wrong."""
    where = f"--expect {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{where}: empty expression ({EXAMPLE})")
    m = _EXPR.match(text)
    if not m:
        raise UsageError(f"cannot parse {where}: expected <selector>.<attribute> <op> <value> with op one of "
                         f"= == != < <= > >= ({EXAMPLE})")
    lhs, written, rhs = m.group("lhs"), m.group("op"), m.group("rhs")
    op = "==" if written == "=" else written
    if not lhs:
        raise UsageError(f"cannot parse {where}: nothing before {written!r} ({EXAMPLE})")
    if not rhs:
        raise UsageError(f"cannot parse {where}: no value after {written!r} ({EXAMPLE})")
    if rhs[0] in "=!<>":
        bad = written + re.match(r"[=!<>]+", rhs).group(0)
        raise UsageError(f"cannot parse {where}: operator {bad!r} is not one of = == != < <= > >=")
    if any(ch.isspace() for ch in lhs.strip()):
        raise UsageError(f"cannot parse {where}: {lhs!r} has spaces; write <selector>.<attribute> ({EXAMPLE})")
    selector, dot, attribute = lhs.rpartition(".")
    if not dot:
        if lhs not in MODEL_ATTRS:
            raise UsageError(f"{where}: {lhs!r} is not a model attribute "
                             f"({', '.join(MODEL_ATTRS)}); for a layer write <layer>.<attribute>")
        selector, attribute = None, lhs
        kind = MODEL_ATTRS[lhs]
    else:
        if not selector or not attribute:
            raise UsageError(f"cannot parse {where}: empty selector or attribute in {lhs!r} ({EXAMPLE})")
        if attribute not in ATTR_TYPES:
            raise UsageError(f"{where}: unknown attribute {attribute!r} (known: "
                             f"{', '.join(sorted(ATTR_TYPES))})")
        kind = ATTR_TYPES[attribute]
    if op not in ("==", "!=") and kind not in ("number", "any"):
        raise UsageError(f"{where}: {op} compares numbers, but {attribute} is a {kind}; use = or !=")
    value = _parse_value(rhs, kind, where)
    if op not in ("==", "!=") and not isinstance(value, float):
        raise UsageError(f"{where}: {op} needs a number, not {rhs!r}")
    return Expectation(text.strip(), selector, attribute, op, value, rhs)


def parse_number(text: str) -> float | None:
    m = _NUMBER.match(text.strip())
    if not m:
        return None
    body = text.strip()
    suffix = m.group("suffix")
    if suffix:
        body = body[:-1]
    try:
        value = float(body.replace("_", ""))
    except ValueError:
        return None
    return value * _SUFFIX[suffix] if suffix else value


def _unquote(text: str) -> str | None:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return None


def _parse_value(rhs: str, kind: str, where: str) -> Any:
    quoted = _unquote(rhs)
    if quoted is not None:
        if kind == "list":
            return _as_list(quoted)
        if kind in ("number", "bool"):
            raise UsageError(f"{where}: expected a {kind}, not the string {rhs!r}")
        return quoted
    lowered = rhs.lower()
    if lowered in ("none", "null"):
        return None
    if kind == "bool" or (kind == "any" and lowered in ("true", "false")):
        if lowered in ("true", "false"):
            return lowered == "true"
        raise UsageError(f"{where}: expected true or false, not {rhs!r}")
    if kind == "list":
        return _as_list(rhs)
    number = parse_number(rhs)
    if kind == "number":
        if number is None:
            raise UsageError(f"{where}: expected a number, not {rhs!r}")
        return number
    if kind == "any" and number is not None:
        return number
    if any(ch in rhs for ch in "=!<>"):
        raise UsageError(f"cannot parse {where}: unexpected operator in the value {rhs!r}")
    return rhs


def _as_list(text: str) -> tuple[str, ...]:
    body = text.strip().strip("[]()")
    parts = [p for p in re.split(r"[,\s]+|x(?=\d)", body) if p]
    if len(parts) == 1 and parts[0].isalpha() and len(parts[0]) > 1:
        parts = list(parts[0])  # gates written as "ifco"
    return tuple(parts)


# ------------------------------------------------------------------------------------------------
# Evaluation on a snapshot dict (lockfile.snapshot_data)

def _walk_layers(layers: list, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for layer in layers:
        if layer.get("class") == "InputLayer":
            continue
        path = f"{prefix}/{layer['name']}" if prefix else layer["name"]
        out.append((path, layer))
        out.extend(_walk_layers(layer.get("layers") or [], path))
    return out


def _glob_match(path: str, pattern: str) -> bool:
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:k]), pattern) for k in range(1, len(parts) + 1))


def _layer_entity(path: str, layer: dict) -> dict:
    dtypes = sorted({w["dtype"] for w in layer["weights"]})
    entity = {"name": layer["name"], "class": layer["class"], "params": layer["params"],
              "trainable": layer["trainable"], "weights": len(layer["weights"]),
              "dtype": dtypes[0] if len(dtypes) == 1 else ("mixed" if dtypes else None)}
    for k, v in (layer.get("config") or {}).items():
        entity.setdefault(k, v)
    return entity


def select(selector: str, data: Mapping) -> list[tuple[str, dict]]:
    """(label, attributes) of every entity the selector names."""
    dirs = data["recurrent"]
    layers = _walk_layers(data["layers"])
    by_path = dict(layers)
    top = {layer["name"]: layer for layer in data["layers"]}

    def with_layer(d: dict) -> tuple[str, dict]:
        attrs = dict(d)
        owner = by_path.get(d["path"]) or top.get(d.get("layer") or d["path"].split("/", 1)[0])
        if owner is not None:
            for k, v in _layer_entity(d["path"], owner).items():
                attrs.setdefault(k, v)
        return d["path"], attrs

    if selector == "recurrent":
        return [with_layer(d) for d in dirs]
    if selector == "layers":
        return [(p, _layer_entity(p, layer)) for p, layer in layers if "/" not in p]
    exact = [d for d in dirs if d["path"] == selector]
    if exact:
        return [with_layer(d) for d in exact]
    if selector in by_path:
        return [(selector, _layer_entity(selector, by_path[selector]))]
    low = selector.lower()
    by_kind = [d for d in dirs if d["kind"].lower() == low or d["class"].lower() == low]
    if by_kind:
        return [with_layer(d) for d in by_kind]
    by_class = [(p, layer) for p, layer in layers if layer["class"].lower() == low]
    if by_class:
        return [(p, _layer_entity(p, layer)) for p, layer in by_class]
    if any(ch in selector for ch in "*?["):
        globbed = [d for d in dirs if _glob_match(d["path"], selector)]
        if globbed:
            return [with_layer(d) for d in globbed]
        return [(p, _layer_entity(p, layer)) for p, layer in layers if fnmatch.fnmatchcase(p, selector)]
    return []


def _model_value(attribute: str, data: Mapping) -> Any:
    totals = data["totals"]
    return {"total_params": totals["params"], "params": totals["params"],
            "trainable_params": totals["trainable_params"],
            "non_trainable_params": totals["non_trainable_params"],
            "total_bytes": totals.get("bytes"), "format": data["source"]["format"],
            "keras_version": data["source"].get("keras_version")}[attribute]


def _holds(actual: Any, op: str, expected: Any) -> bool:
    if isinstance(expected, float):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return op == "!="
        return {"==": actual == expected, "!=": actual != expected, "<": actual < expected,
                "<=": actual <= expected, ">": actual > expected, ">=": actual >= expected}[op]
    if isinstance(expected, tuple):
        same = isinstance(actual, (list, tuple)) and [str(a).lower() for a in actual] == \
            [str(e).lower() for e in expected]
    elif isinstance(expected, bool) or expected is None:
        same = actual is expected
    else:
        same = actual is not None and not isinstance(actual, bool) and \
            str(actual).lower() == str(expected).lower()
    return same if op == "==" else not same


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}" if abs(value) >= 10000 else str(int(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def evaluate(exp: Expectation, data: Mapping) -> CheckResult:
    """One check named after the expression; a finding for each entity where it does not hold."""
    name = f"expect {exp.text}"
    want = f"{exp.op} {_show(exp.value)}"

    def finding(subject: str, message: str, actual: Any) -> Finding:
        return Finding.make("expect", subject, "expect", f"{exp.text}: {message}", f"{exp.op} {_show(exp.value)}",
                            _plain(actual))

    if exp.selector is None:
        actual = _model_value(exp.attribute, data)
        if _holds(actual, exp.op, exp.value):
            return CheckResult(name, "expect")
        return CheckResult(name, "expect", (finding("model", f"{exp.attribute} is {_show(actual)}, expected {want}",
                                                    actual),))
    entities = select(exp.selector, data)
    if exp.attribute == "count":
        if _holds(len(entities), exp.op, exp.value):
            return CheckResult(name, "expect")
        return CheckResult(name, "expect", (finding(exp.selector, f"{len(entities)} matched {exp.selector!r}, "
                                                                  f"expected {want}", len(entities)),))
    if not entities:
        known = ", ".join(d["path"] for d in data["recurrent"]) or "none"
        return CheckResult(name, "expect", (finding(exp.selector, f"no layer or recurrent direction matches "
                                                                  f"{exp.selector!r} (recurrent: {known})", None),))
    found = []
    for label, attrs in entities:
        if exp.attribute not in attrs:
            found.append(finding(label, f"{label} has no {exp.attribute}", None))
            continue
        actual = attrs[exp.attribute]
        if actual is None and exp.value is not None:
            found.append(finding(label, f"{label}: {exp.attribute} is not recorded in this file, "
                                        f"expected {want}", None))
        elif not _holds(actual, exp.op, exp.value):
            found.append(finding(label, f"{label}: {exp.attribute} is {_show(actual)}, expected {want}", actual))
    return CheckResult(name, "expect", tuple(found))
