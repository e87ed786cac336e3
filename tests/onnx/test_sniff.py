"""ONNX is recognised by its bytes (a ModelProto's first fields): every ONNX file the corpus, torch's
exporters, onnx.helper and lstm-inspect's own `convert` write, and nothing else: not the corpus's Keras,
TensorFlow and TFLite files, not other protocol-buffer messages (ONNX's own TensorProto, GraphProto,
NodeProto; a SavedModel; TF's checkpoint entries), not random bytes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from lstm_inspect.errors import CorruptModelError, NotAModelError
from lstm_inspect.formats.onnx.magic import looks_like_onnx
from lstm_inspect.formats.sniff import Container, sniff

from ..conftest import CORPUS
from .conftest import CORPUS_ONNX
from .helpers import model, out, pb_field

HEAD = 4096  # what the sniffer reads
OTHERS = sorted(p for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".onnx" and not p.name.endswith(".tsv")
                and p.suffix != ".md")


def _head(path: Path) -> tuple[bytes, int]:
    with open(path, "rb") as fh:
        return fh.read(HEAD), os.path.getsize(path)


@pytest.mark.parametrize("path", CORPUS_ONNX, ids=lambda p: p.name)
def test_corpus_onnx_files_sniff_as_onnx(path):
    assert sniff(path) is Container.ONNX


@pytest.mark.parametrize("path", OTHERS, ids=lambda p: p.name)
def test_other_corpus_files_are_not_onnx(path):
    assert not looks_like_onnx(*_head(path))
    try:
        assert sniff(path) is not Container.ONNX
    except NotAModelError:  # TFLite, TF checkpoints: not read here, and not taken for ONNX
        pass


def test_torch_exports_sniff_as_onnx(torch_exports):
    for path, _ in torch_exports.values():
        assert sniff(path) is Container.ONNX, path


def test_a_renamed_onnx_file_is_still_onnx(tmp_path):
    data = CORPUS_ONNX[0].read_bytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert sniff(path) is Container.ONNX


def _lstm_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 8, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 8, 2)).astype(np.float32), "R")]
    return model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2)], inits,
                 [out("x", shape=[4, 1, 3])], [out("y")])


@pytest.mark.parametrize("ir_version", [3, 4, 7, 8, 10, 11])
def test_every_ir_version_and_optional_header_field(ir_version):
    m = _lstm_model()
    m.ir_version = ir_version
    m.doc_string = "x" * 10_000  # a long doc string before the graph: the graph starts after the head
    m.domain, m.model_version = "ai.example", 3
    data = m.SerializeToString()
    assert looks_like_onnx(data[:HEAD], len(data))
    assert looks_like_onnx(data, len(data))


def test_a_truncated_model_is_reported_as_cut_short(tmp_path):
    from lstm_inspect.formats import open_model

    data = _lstm_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptModelError, match="an ONNX model cut short: its graph needs"):
        sniff(path)
    graph = onnx.ModelProto.FromString(data).graph.ByteSize()
    start = data.index(b"\x3a") + 3  # after the graph's key and its 2-byte length
    for length in range(start, start + graph):  # every cut inside the graph
        path.write_bytes(data[:length])
        with pytest.raises(CorruptModelError):  # cut short (sniffer) or not well-formed (reader)
            open_model(path)
    long_doc = _lstm_model()
    long_doc.doc_string = "é" * 5000
    data = long_doc.SerializeToString()
    path.write_bytes(data[:4500])
    with pytest.raises(CorruptModelError, match="cut short inside its header"):
        sniff(path)
    path.write_bytes(data)
    assert sniff(path) is Container.ONNX


def test_a_truncated_big_model_is_cut_short(tmp_path):
    """Past the sniffed head, the reader finds the truncation."""
    m = _lstm_model()
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(4096, np.float32), "pad"))
    data = m.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:-100])
    with pytest.raises(CorruptModelError, match="cut short"):
        sniff(path)


def test_a_model_without_a_graph_is_named_not_read(tmp_path):
    path = tmp_path / "empty.onnx"
    m = onnx.ModelProto(ir_version=8, producer_name="pytorch")
    path.write_bytes(m.SerializeToString())
    with pytest.raises(NotAModelError, match="looks like an ONNX model"):
        sniff(path)


def _messages() -> dict[str, bytes]:
    """Protocol-buffer messages that are not a ModelProto, several of them starting like one."""
    rng = np.random.default_rng(1)
    tensor = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "input_1")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2)
    graph = _lstm_model().graph
    return {
        "TensorProto (a backend test's input_1.pb)": tensor.SerializeToString(),
        "TensorProto dims 5": numpy_helper.from_array(np.zeros((5, 2), np.float32)).SerializeToString(),
        "NodeProto": node.SerializeToString(),
        "GraphProto": graph.SerializeToString(),
        "ValueInfoProto": out("x", shape=[4, 1, 3]).SerializeToString(),
        "OperatorSetIdProto": helper.make_opsetid("", 17).SerializeToString(),
        # SavedModel: saved_model_schema_version 1, then meta_graphs
        "SavedModel": pb_field(1, 1, wire=0) + pb_field(2, pb_field(1, pb_field(1, b"serve"))),
        # TF checkpoint BundleEntryProto: dtype 1, shape, shard_id, offset, size, crc32c (fixed32)
        "BundleEntryProto": pb_field(1, 1, wire=0) + pb_field(2, pb_field(2, pb_field(1, 4, wire=0)))
        + pb_field(4, 16, wire=0) + pb_field(5, 64, wire=0) + pb_field(6, 123456, wire=5),
        # ir_version then a field a ModelProto does not have
        "ModelProto-like with field 9": pb_field(1, 8, wire=0) + pb_field(9, b"abc"),
        "ModelProto-like, producer not UTF-8": pb_field(1, 8, wire=0) + pb_field(2, b"\xff\xfe") + pb_field(7, b""),
        "ModelProto-like, ir_version 1": pb_field(1, 1, wire=0) + pb_field(7, b""),
        "ModelProto-like, ir_version 900": pb_field(1, 900, wire=0) + pb_field(7, b""),
        "ModelProto-like, graph first": pb_field(7, b"") + pb_field(1, 8, wire=0),
        "ModelProto-like, ir_version twice": pb_field(1, 8, wire=0) + pb_field(1, 8, wire=0) + pb_field(7, b""),
        "ModelProto-like, graph longer than the file": pb_field(1, 8, wire=0) + b"\x3a\xff\xff\x03" + bytes(5000),
    }


@pytest.mark.parametrize("name", list(_messages()))
def test_other_protobuf_messages_are_not_onnx(name):
    data = _messages()[name]
    assert not looks_like_onnx(data[:HEAD], len(data)), name


def test_the_minimal_model_is_onnx():
    """The control for the messages above: ir_version and an (empty) graph are enough."""
    data = pb_field(1, 8, wire=0) + pb_field(7, b"")
    assert looks_like_onnx(data, len(data))


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=1, max_size=600))
def test_random_bytes_are_not_onnx(data):
    """Random bytes: only those that really begin with an IR version and ModelProto fields pass."""
    if looks_like_onnx(data, len(data)):
        assert data[0] == 0x08 and 3 <= data[1] <= 64, data[:8]


def test_random_bytes_rarely_start_like_a_model():
    rng = np.random.default_rng(7)
    hits = sum(looks_like_onnx(rng.bytes(64), 64) for _ in range(200_000))
    assert hits == 0
