"""The OrderedCode keys of partitioned variables (tensorflow/core/lib/strings/ordered_code.cc)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lstm_inspect.formats.tf.bundle import _decode_slice_key, _encode_slice_key, _read_signed_increasing, \
    _write_signed_increasing


def test_examples_from_the_source_and_the_reference():
    assert _write_signed_increasing(0x424242) == bytes.fromhex("f0424242")  # ordered_code.cc, example 1
    assert _write_signed_increasing(-0x800) == bytes.fromhex("3800")  # example 2
    assert _write_signed_increasing(-1) == b"\x7f" and _write_signed_increasing(4) == b"\x84"
    key = b"\x00emb/part\x00\x01\x01\x02\x80\x84\x80\x86"  # reference §1.2: (0, 4), (0, 6)
    assert _decode_slice_key(key) == (b"emb/part", ((0, 4), (0, 6)))
    assert _encode_slice_key(b"emb/part", ((0, 4), (0, 6))) == key
    escaped = _encode_slice_key(b"a\x00b\xffc", ((0, -1),))
    assert escaped == b"\x00a\x00\xffb\xff\x00c\x00\x01\x01\x01\x80\x7f"
    assert _decode_slice_key(escaped) == (b"a\x00b\xffc", ((0, -1),))


@given(st.integers(-(1 << 63), (1 << 63) - 1))
def test_signed_numbers_round_trip_in_order(value):
    encoded = _write_signed_increasing(value)
    assert _read_signed_increasing(encoded + b"tail", 0) == (value, len(encoded))
    assert (_write_signed_increasing(value - 1) < encoded) if value > -(1 << 63) else True


@given(st.binary(max_size=40), st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(-1, 1 << 40)), max_size=5))
def test_slice_keys_round_trip(name, extents):
    assert _decode_slice_key(_encode_slice_key(name, tuple(extents))) == (name, tuple(extents))
