"""Names from files, made safe to print: no control characters, escapes or rich markup."""
from __future__ import annotations


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_name(s: str | bytes, *, max_chars: int = 1000) -> str:
    """A name from a file, safe to print on one line through rich: control characters, newlines,
    ANSI escapes, bidi overrides and other non-printables are shown as \\x.. / \\u.. escapes,
    undecodable bytes (surrogateescape) as \\x.., and rich markup is escaped.
    """
    from rich.markup import escape  # only when printing through rich: keeps the reading path light

    if isinstance(s, bytes):
        s = s.decode("utf-8", "surrogateescape")
    return escape(printable(s, max_chars))


def printable(s: str, max_chars: int = 1000) -> str:
    """One printable line (no rich escaping); longer names are cut with an ellipsis."""
    cut = len(s) > max_chars
    if s.isprintable() and not cut:
        return s
    out = []
    for ch in s[:max_chars]:
        if ch.isprintable():
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        else:
            out.append(_escape_char(ord(ch)))
    return "".join(out) + ("…" if cut else "")


def _escape_char(cp: int) -> str:
    if 0xDC80 <= cp <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{cp - 0xDC00:02x}"
    if cp < 0x100:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"
