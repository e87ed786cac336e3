"""CRC-32C against published vectors and the C packages; snappy against a C snappy and hand-made blocks.

(Both are also checked against TensorFlow itself: every block and tensor CRC of the TF-written
checkpoints in test_bundle_values, with the pure fallback forced in one test.)
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_inspect.formats.tf import crc32c as crc
from lstm_inspect.formats.tf import snappy

# RFC 3720 appendix B.4 (iSCSI), and the classic check value of "123456789".
VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0),
]


def natives() -> list:
    """(name, function) of each C package importable here, built the way crc32c.py builds it."""
    found = []
    try:
        import google_crc32c

        found.append(("google-crc32c", crc._google_extend(google_crc32c.extend)))
    except ImportError:
        pass
    try:
        import crc32c as package

        found.append(("crc32c", lambda data, value=0: package.crc32c(data, value)))
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("data,expected", VECTORS)
def test_published_vectors(data, expected):
    assert crc._crc32c_pure(data) == expected
    assert crc.crc32c(data) == expected


def test_the_numpy_lanes_on_long_inputs():
    """Inputs long enough for the lane path (and odd lengths around its boundaries) equal the byte loop."""
    rng = np.random.default_rng(5)
    for size in (4095, 4096, 4097, 4096 + 255, 65536 + 13, 3 * (1 << 20) + 7):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        expected = crc._register_python(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
        assert crc._crc32c_pure(data) == expected, size


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=20_000), cut=st.integers(0, 20_000))
def test_extending_equals_one_pass(data, cut):
    cut = min(cut, len(data))
    assert crc._crc32c_pure(data[cut:], crc._crc32c_pure(data[:cut])) == crc._crc32c_pure(data)


def test_c_packages_agree_on_every_buffer_type():
    found = natives()
    if not found:
        pytest.skip("neither google-crc32c nor crc32c is installed")
    data = np.random.default_rng(7).integers(0, 256, 9 << 20, dtype=np.uint8)
    expected = crc._crc32c_pure(data.tobytes())
    for name, function in found:
        for buffer in (data.tobytes(), bytearray(data.tobytes()), memoryview(data), memoryview(data.tobytes())):
            assert function(buffer, 0) == expected, (name, type(buffer))
        assert function(data[5:].tobytes(), function(data[:5].tobytes(), 0)) == expected, name


def test_mask_round_trip():
    for value in (0, 1, 0xFFFFFFFF, 0xE3069283, 0x12345678):
        assert crc.unmask(crc.masked(value)) == value
    assert crc.masked(0) == 0xA282EAD8  # rotate(0) + kMaskDelta
    assert crc.masked(0xE3069283) != 0xE3069283


def test_implementation_is_named():
    assert crc.IMPLEMENTATION in ("google-crc32c", "crc32c", "numpy")


# ----------------------------------------------------------------------------------------- snappy
def test_hand_made_blocks():
    assert snappy.decompress(b"\x00", 10) == b""
    assert snappy.decompress(b"\x03\x08abc", 10) == b"abc"
    assert snappy.decompress(b"\x0a\x00a\x15\x01", 10) == b"a" * 10
    # literal "ab", then a 2-byte-offset copy (tag kind 2) of length 6 at offset 2
    assert snappy.decompress(b"\x08\x04ab" + bytes([(6 - 1) << 2 | 2]) + b"\x02\x00", 8) == b"abababab"
    # a 4-byte-offset copy (kind 3) of length 3 at offset 3
    assert snappy.decompress(b"\x06\x08xyz" + bytes([(3 - 1) << 2 | 3]) + b"\x03\x00\x00\x00", 6) == b"xyzxyz"
    # a literal whose length minus one is in the next byte (tag 60)
    assert snappy.decompress(b"\x64" + bytes([60 << 2, 99]) + b"q" * 100, 100) == b"q" * 100


@pytest.mark.parametrize("block,problem", [
    (b"", "length header"), (b"\x80\x80\x80\x80\x80\x01", "length header"), (b"\x05\x10ab", "truncated literal"),
    (b"\x04\x00a\x05", "truncated copy"), (b"\x04\x01\x00", "refers"), (b"\x02\x00a\x05\x01", "past the declared"),
    (b"\x05\x00a", "holds 1 bytes"), (b"\x01\x04ab", "past the declared"),
])
def test_bad_blocks(block, problem):
    with pytest.raises(snappy.SnappyError, match=problem):
        snappy.decompress(block, 100)


def test_the_limit_is_checked_before_anything_is_produced():
    with pytest.raises(snappy.SnappyLimitError):
        snappy.decompress(b"\xff\xff\xff\xff\x0f", 1 << 20)  # declares 4 GiB - 1


def test_against_a_c_snappy():
    cramjam = pytest.importorskip("cramjam")
    rng = np.random.default_rng(3)
    samples = [b"", b"x", os.urandom(5000), b"abc" * 40_000, bytes(rng.integers(0, 4, 300_000, dtype=np.uint8)),
               b"".join(str(i).encode() for i in range(30_000))]
    for data in samples:
        compressed = bytes(cramjam.snappy.compress_raw(data))
        assert snappy.decompress(compressed, len(data)) == data
        if data:
            with pytest.raises(snappy.SnappyLimitError):
                snappy.decompress(compressed, len(data) - 1)
