"""Damaged and hostile checkpoints end in typed errors (never a crash, a hang or a wrong value)."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_inspect.errors import CorruptModelError, InspectError, UnsafeModelError, \
    UnsupportedDialectError
from lstm_inspect.formats.tf import protos, snappy
from lstm_inspect.formats.tf.bundle import TableLimits, open_bundle
from lstm_inspect.formats.tf.crc32c import crc32c, masked

from . import _tables as T
from .test_bundle_values import assert_same_values

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def exercise(path, **kwargs) -> str:
    """Open, list, read every value: 'ok', or 'error' for a typed error (anything else propagates)."""
    try:
        with open_bundle(path, **kwargs) as bundle:
            for name, entry in bundle.entries.items():
                if entry.is_string and not entry.slices:
                    bundle.read_strings(name)
                elif entry.is_numeric:
                    bundle.read(name)
                    bundle.extent(name)
    except InspectError:
        return "error"
    return "ok"


def copy_case(tfzoo, case: str, folder: Path) -> Path:
    prefix = tfzoo.path(tfzoo.case(case)["prefix"])
    folder.mkdir(parents=True, exist_ok=True)
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(path, folder / path.name)
    return folder / prefix.name


# ----------------------------------------------------------------------------------------- real files, damaged
def test_truncating_the_index_at_every_offset(tfzoo, tmp_path):
    prefix = copy_case(tfzoo, "tf1_sharded", tmp_path)
    index = Path(f"{prefix}.index")
    data = index.read_bytes()
    assert exercise(prefix) == "ok"
    for size in range(len(data)):
        index.write_bytes(data[:size])
        assert exercise(prefix) == "error", size


def test_truncating_a_v1_file_at_every_offset(tfzoo, tmp_path):
    original = tfzoo.path(tfzoo.case("tf1_v1")["file"]).read_bytes()
    path = tmp_path / "model.ckpt"
    for size in range(len(original)):
        path.write_bytes(original[:size])
        assert exercise(path) == "error", size


def footer_padding(data: bytes) -> range:
    """Bytes of the footer after its 4 varints and before the magic: ignored by TF and by us."""
    footer, pos = data[-48:], 0
    for _ in range(4):
        while footer[pos] & 0x80:
            pos += 1
        pos += 1
    return range(len(data) - 48 + pos, len(data) - 8)


def test_every_bit_flip_in_the_index_is_caught(tfzoo, tmp_path):
    prefix = copy_case(tfzoo, "tf1_sharded", tmp_path)
    index = Path(f"{prefix}.index")
    data = index.read_bytes()
    ignored = footer_padding(data)
    for offset in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[offset] ^= 1 << bit
            index.write_bytes(flipped)
            outcome = exercise(prefix)
            # harmless: the padding, and the continuation bit of the last handle varint (it then runs
            # into a zero padding byte, an overlong encoding of the same value)
            harmless = offset in ignored or (offset == ignored.start - 1 and bit == 7)
            assert outcome == "error" or harmless, (offset, bit)


def test_a_flipped_value_is_caught_by_the_data_crc(tfzoo, tmp_path):
    truth = tfzoo.case("tf1_sharded")
    prefix = copy_case(tfzoo, "tf1_sharded", tmp_path)
    with open_bundle(prefix) as bundle:
        targets = [e for e in bundle.entries.values() if e.is_numeric and not e.slices]
    for entry in targets:
        shard = Path(f"{prefix}.data-{entry.shard:05d}-of-00002")
        original = shard.read_bytes()
        damaged = bytearray(original)
        damaged[entry.offset + entry.size // 2] ^= 0x10
        shard.write_bytes(damaged)
        with open_bundle(prefix) as bundle:
            with pytest.raises(CorruptModelError, match="checksum mismatch"):
                bundle.read(entry.name)
            with pytest.raises(CorruptModelError, match="checksum mismatch"):
                bundle.read(entry.name, slice(0, 1))  # a partial read verifies the whole entry first
        with open_bundle(prefix, check_crc=False) as bundle:  # the flipped byte is really what gets read
            expected = np.load(tfzoo.path(next(v["npy"] for v in truth["variables"] if v["name"] == entry.name)))
            assert not np.array_equal(bundle.read(entry.name), expected)
            with pytest.raises(CorruptModelError, match="checksum mismatch"):
                bundle.verify(entry.name)  # an explicit check runs whatever the bundle's setting
        shard.write_bytes(original)
    with open_bundle(prefix) as bundle:  # and the slices of a partitioned variable too
        part = bundle._parts["dev0/part"][1][1]
    shard = Path(f"{prefix}.data-00000-of-00002")
    damaged = bytearray(shard.read_bytes())
    damaged[part.offset] ^= 1
    shard.write_bytes(damaged)
    with open_bundle(prefix) as bundle, pytest.raises(CorruptModelError, match="checksum mismatch"):
        bundle.read("dev0/part")


def test_a_flipped_string_is_caught(tfzoo, tmp_path):
    prefix = copy_case(tfzoo, "tf1_sharded", tmp_path)
    with open_bundle(prefix) as bundle:
        entry = bundle.entries["dev1/name"]
    shard = Path(f"{prefix}.data-00001-of-00002")
    for offset in range(entry.offset, entry.offset + entry.size):
        original = shard.read_bytes()
        damaged = bytearray(original)
        damaged[offset] ^= 0x04
        shard.write_bytes(damaged)
        with open_bundle(prefix) as bundle, pytest.raises(CorruptModelError):
            bundle.read_strings("dev1/name")
        with open_bundle(prefix, check_crc=False) as bundle, pytest.raises(CorruptModelError):
            bundle.verify("dev1/name")
        shard.write_bytes(original)


def test_missing_and_truncated_shards(tfzoo, tmp_path):
    prefix = copy_case(tfzoo, "tf1_sharded", tmp_path)
    shard = Path(f"{prefix}.data-00001-of-00002")
    content = shard.read_bytes()
    shard.unlink()
    with pytest.raises(CorruptModelError, match=r"dev1/\w+ is in shard 1 .*which is missing"):
        open_bundle(prefix)
    shard.write_bytes(content[:-1])
    with pytest.raises(CorruptModelError, match="past the end of shard 1"):
        open_bundle(prefix)
    shard.write_bytes(content)
    bundle = open_bundle(prefix)
    shard.write_bytes(content[:10])  # shrinks after opening: the read itself notices
    with pytest.raises(CorruptModelError):
        for name, entry in bundle.entries.items():
            if entry.shard == 1 and entry.is_numeric:
                bundle.read(name)
    bundle.close()


def test_a_snappy_compressed_index_reads_the_same(tfzoo, tmp_path):
    """TF reads snappy blocks (reference §1.2); the same entries written as snappy give the same values."""
    truth = tfzoo.case("tf1_cells")
    prefix = copy_case(tfzoo, "tf1_cells", tmp_path)
    with open_bundle(prefix) as bundle:
        items = list((k, bytes(v)) for k, v in bundle._table.items())
    compressors = [T.snappy_literal]
    try:
        import cramjam

        compressors.append(lambda raw: bytes(cramjam.snappy.compress_raw(raw)))
    except ImportError:
        pass
    for compress in compressors:
        Path(f"{prefix}.index").write_bytes(T.table(items, block_size=512, compress=compress))
        with open_bundle(prefix) as bundle:
            assert {n: (e.dtype, list(e.shape)) for n, e in bundle.entries.items()} == \
                {v["name"]: (v["dtype"], v["shape"]) for v in truth["variables"]}
            for variable in truth["variables"]:
                assert_same_values(bundle, tfzoo, variable)


# ----------------------------------------------------------------------------------------- hand-made hostile
def write_bundle(folder: Path, entries: list[tuple[bytes, bytes]], shard: bytes = b"\x00" * 64,
                 header: bytes | None = None, **table_kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "ckpt"
    items = [(b"", T.header_proto() if header is None else header)] + sorted(entries)
    Path(f"{prefix}.index").write_bytes(T.table(items, **table_kwargs))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(shard)
    return prefix


FLOATS = np.arange(4, dtype="<f4").tobytes()
CRC = masked(crc32c(FLOATS))


def good_entry(**kwargs) -> bytes:
    values = dict(dtype=1, shape=(4,), offset=0, size=16, crc=CRC)
    values.update(kwargs)
    return T.entry_proto(**values)


def slice_key(name: bytes, extents) -> bytes:
    from lstm_inspect.formats.tf.bundle import _encode_slice_key

    return _encode_slice_key(name, tuple(extents))


HOSTILE = {
    "offset past the shard": ([(b"w", good_entry(offset=1 << 62))], CorruptModelError, "past the end"),
    "size past the shard": ([(b"w", good_entry(shape=(1 << 20,), size=4 << 20))], CorruptModelError, "past the end"),
    "size does not match the shape": ([(b"w", good_entry(size=12))], CorruptModelError, "needs 16"),
    "shape bomb": ([(b"w", good_entry(shape=(1 << 40, 1 << 40)))], UnsafeModelError, "over the"),
    "negative dimension": ([(b"w", good_entry(shape=(-1,)))], CorruptModelError, "negative"),
    "rank 100": ([(b"w", good_entry(shape=(1,) * 100, size=4))], CorruptModelError, "rank 100"),
    "shard out of range": ([(b"w", good_entry(shard=3))], CorruptModelError, "shard 3"),
    "no dtype": ([(b"w", good_entry(dtype=0))], CorruptModelError, "dtype"),
    "bad checksum field": ([(b"w", good_entry() + T.field(6, 1 << 40))], CorruptModelError, "checksum field"),
    "wrong data crc": ([(b"w", good_entry(crc=CRC ^ 1))], CorruptModelError, "checksum mismatch"),
    "not a protobuf": ([(b"w", b"\x0a\x7f")], CorruptModelError, "not a valid protocol buffer"),
    "overlong name": ([(b"n" * 5000, good_entry())], UnsafeModelError, "name of 5000 bytes"),
    "missing slice": ([(b"p", T.entry_proto(dtype=1, shape=(4,), slices=[((0, 2),), ((2, 2),)]))],
                      CorruptModelError, "is missing"),
    "overlapping slices": ([(b"p", T.entry_proto(dtype=1, shape=(4,), slices=[((0, 2),), ((1, 2),)])),
                            (slice_key(b"p", [(0, 2)]), good_entry(shape=(2,), size=8, crc=masked(crc32c(FLOATS[:8])))),
                            (slice_key(b"p", [(1, 2)]), good_entry(shape=(2,), size=8, crc=masked(crc32c(FLOATS[:8]))))],
                           CorruptModelError, "overlap"),
    "slice outside the shape": ([(b"p", T.entry_proto(dtype=1, shape=(4,), slices=[((3, 2),)]))],
                                CorruptModelError, "outside its shape"),
    "bad slice key": ([(b"\x00garbage", good_entry())], CorruptModelError, "malformed"),
    "unknown dtype": ([(b"w", good_entry(dtype=99))], UnsupportedDialectError, "DT_99"),
    "string lengths checksum": ([(b"s", T.entry_proto(dtype=7, shape=(1,), size=6, crc=0))],
                                CorruptModelError, "string lengths"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hand_made_hostile_entries(tmp_path, case):
    entries, error, message = HOSTILE[case]
    prefix = write_bundle(tmp_path, entries, shard=FLOATS + b"\x01\x00\x00\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(error, match=message):
        with open_bundle(prefix) as bundle:
            for name, entry in bundle.entries.items():
                bundle.read_strings(name) if entry.is_string else bundle.read(name)


HEADERS = {
    "big-endian": (T.header_proto(endianness=1), UnsupportedDialectError, "big-endian"),
    "odd byte order": (T.header_proto(endianness=7), CorruptModelError, "byte order"),
    "no shards": (T.header_proto(num_shards=0), CorruptModelError, "0 data shards"),
    "newer format": (T.header_proto(min_consumer=5), UnsupportedDialectError, "newer format"),
    "empty header": (b"", CorruptModelError, "empty"),
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_hand_made_hostile_headers(tmp_path, case):
    header, error, message = HEADERS[case]
    with pytest.raises(error, match=message):
        open_bundle(write_bundle(tmp_path, [(b"w", good_entry())], shard=FLOATS, header=header))


def test_a_valid_hand_made_bundle_reads(tmp_path):
    """The writer used for the hostile cases makes readable bundles when nothing is wrong."""
    prefix = write_bundle(tmp_path, [(b"w", good_entry())], shard=FLOATS)
    with open_bundle(prefix) as bundle:
        assert np.array_equal(bundle.read("w"), np.arange(4, dtype=np.float32))


def table_with_raw_block(tmp_path, body: bytes, kind: int) -> Path:
    """A table whose only data block is `body` with block type `kind` (CRC correct)."""
    items = [(b"", T.header_proto()), (b"w", good_entry())]
    out = bytearray(body + bytes([kind]) + struct.pack("<I", masked(crc32c(body + bytes([kind])))))
    meta = len(out)
    out += T.block([]) + b"\x00" + struct.pack("<I", masked(crc32c(T.block([]) + b"\x00")))
    index_offset = len(out)
    index = T.block([(b"x", T.varint(0) + T.varint(len(body)))], restart_interval=1)
    out += index + b"\x00" + struct.pack("<I", masked(crc32c(index + b"\x00")))
    footer = T.varint(meta) + T.varint(8) + T.varint(index_offset) + T.varint(len(index))
    prefix = tmp_path / "ckpt"
    Path(f"{prefix}.index").write_bytes(bytes(out) + footer.ljust(40, b"\x00") + T.MAGIC)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(FLOATS)
    assert items  # the block bodies below are made from these items
    return prefix


def test_snappy_blocks_that_lie(tmp_path):
    raw = T.block([(b"", T.header_proto()), (b"w", good_entry())])
    assert exercise(table_with_raw_block(tmp_path, T.snappy_literal(raw), 1)) == "ok"
    literal = T.snappy_literal(raw)[len(T.varint(len(raw))):]
    with pytest.raises(UnsafeModelError, match="over the"):  # declares 1 GiB: refused before any allocation
        open_bundle(table_with_raw_block(tmp_path, T.varint(1 << 30) + literal, 1))
    with pytest.raises(UnsafeModelError, match="over the"):
        open_bundle(table_with_raw_block(tmp_path, T.varint(1 << 20) + literal, 1),
                    table_limits=TableLimits(max_block_bytes=4096))
    with pytest.raises(CorruptModelError, match="snappy"):  # under the limit, but the data is short
        open_bundle(table_with_raw_block(tmp_path, T.varint(1 << 20) + literal, 1))
    with pytest.raises(CorruptModelError, match="snappy"):
        open_bundle(table_with_raw_block(tmp_path, T.varint(10) + b"\x01\x05", 1))  # copy before any output
    with pytest.raises(CorruptModelError, match="compression type 2"):
        open_bundle(table_with_raw_block(tmp_path, raw, 2))


def test_broken_block_structure(tmp_path):
    good = T.block([(b"", T.header_proto()), (b"w", good_entry())])
    cases = {
        "restart count too large": good[:-4] + struct.pack("<I", 1 << 20),
        "no restarts": good[:-4] + struct.pack("<I", 0),
        "tiny block": b"\x00",
        "shared beyond previous key": b"\x05\x01\x00w" + struct.pack("<II", 0, 1),
        "value past the end": b"\x00\x01\x7fw" + struct.pack("<II", 0, 1),
        "bad varint": b"\xff" * 12 + struct.pack("<II", 0, 1),
    }
    for what, body in cases.items():
        with pytest.raises(CorruptModelError):
            open_bundle(table_with_raw_block(tmp_path, body, 0))
        assert what


def test_keys_out_of_order_and_duplicates(tmp_path):
    for keys in ([b"b", b"a"], [b"a", b"a"]):
        items = [(b"", T.header_proto())] + [(k, good_entry()) for k in keys]
        prefix = tmp_path / "ckpt"
        Path(f"{prefix}.index").write_bytes(T.table(items))  # no sorting: the writer keeps the order
        Path(f"{prefix}.data-00000-of-00001").write_bytes(FLOATS)
        with pytest.raises(CorruptModelError, match="order"):
            open_bundle(prefix)
    items = [(b"a", good_entry()), (b"b", good_entry())]  # no header entry first
    Path(f"{prefix}.index").write_bytes(T.table(items))
    with pytest.raises(CorruptModelError, match="header"):
        open_bundle(prefix)


def test_too_many_entries(tmp_path):
    prefix = write_bundle(tmp_path, [(b"w%03d" % i, good_entry()) for i in range(50)], shard=FLOATS)
    with pytest.raises(UnsafeModelError, match="more than 20"):
        open_bundle(prefix, table_limits=TableLimits(max_entries=20))


# ----------------------------------------------------------------------------------------- random damage
def mutate(data: bytes, edits, cut) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[:cut]) if cut is not None else bytes(out)


@HYPOTHESIS
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(0, 2000), target=st.sampled_from(["index", "data", "v1"]))
def test_random_damage_only_gives_typed_errors(tfzoo, tmp_path_factory, edits, cut, target):
    folder = tmp_path_factory.mktemp("damage")
    if target == "v1":
        path = folder / "model.ckpt"
        path.write_bytes(mutate(tfzoo.path(tfzoo.case("tf1_v1")["file"]).read_bytes(), edits, cut))
        exercise(path)
        return
    prefix = copy_case(tfzoo, "tf1_sharded", folder)
    victim = Path(f"{prefix}.index") if target == "index" else Path(f"{prefix}.data-00000-of-00002")
    victim.write_bytes(mutate(victim.read_bytes(), edits, cut))
    exercise(prefix)


@HYPOTHESIS
@given(data=st.binary(max_size=300))
def test_random_bytes_in_the_proto_parsers(data):
    for parse in (protos.parse_trackable_object_graph, protos.parse_saved_model, protos.parse_keras_metadata,
                  protos.parse_checkpoint_state):
        try:
            parse(data)
        except (CorruptModelError, UnsafeModelError):
            pass


@HYPOTHESIS
@given(data=st.binary(max_size=200), limit=st.integers(0, 5000))
def test_random_bytes_in_snappy(data, limit):
    try:
        out = snappy.decompress(data, limit)
    except snappy.SnappyError:
        return
    assert len(out) <= limit
