"""Damaged `.tflite` files end in typed errors only: truncation at every offset of a real file, and random bit
flips and overwritten words (hypothesis) in real, converted and hand-written files. Every file that still
parses is walked completely: recurrent recognition, then every tensor read and dequantized."""
from __future__ import annotations

import struct

import flatbuffers
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_inspect.errors import InspectError, UnsafeModelError
from lstm_inspect.formats.tflite.recurrent import find_recurrent
from lstm_inspect.formats.tflite.schema import read_tflite

from ..timing import cpu_budget
from .conftest import CORPUS
from .test_synthetic import one_step_lstm

SLOW = 5.0  # CPU seconds (scaled to the machine): no damaged file of these sizes may take longer


def exercise(path) -> str:
    """Everything a command would do with the file; returns the outcome ('ok' or the error's class name)."""
    with cpu_budget(SLOW, f"reading {path.name}"):
        try:
            model = read_tflite(path)
            find_recurrent(model)
            for graph in model.subgraphs:
                for tensor in graph.tensors:
                    if tensor.has_data:
                        try_read(tensor)
            outcome = "ok"
        except InspectError as err:
            assert str(err).strip() and "\n" not in str(err)
            outcome = type(err).__name__
    return outcome


def replace(path, data: bytes) -> None:
    """Unlink, then write: truncating a file that was just mapped costs milliseconds on this kind of storage."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def try_read(tensor) -> None:
    try:
        values = tensor.read()
        if values.dtype.kind == "f" or tensor.quantization is not None:
            tensor.dequantize(values)
    except InspectError:
        pass


def test_truncation_at_every_offset(tmp_path):
    data = (CORPUS / "tflite-micro__trained_lstm_int8.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    outcomes = {}
    for size in range(len(data)):
        replace(path, data[:size])
        outcome = exercise(path)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert "ok" not in outcomes  # every constant is inline: any cut loses something the reader needs
    assert set(outcomes) <= {"NotAModelError", "CorruptModelError"}


def mutate(data: bytes, flips: list[tuple[int, int]], words: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    for position, value in words:
        position %= len(out) - 3
        out[position:position + 4] = struct.pack("<I", value)
    return bytes(out)


FLIPS = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 7)), max_size=12)
WORD_VALUES = st.one_of(st.integers(0, 64), st.integers(0, 0xFFFFFFFF),
                        st.sampled_from([0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]))
WORDS = st.lists(st.tuples(st.integers(0, 1 << 30), WORD_VALUES), max_size=4)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fuzz_file(tmp_path, data: bytes, flips, words) -> None:
    path = tmp_path / "fuzz.tflite"
    replace(path, mutate(data, flips, words))
    exercise(path)


@pytest.mark.parametrize("name", ["tflite-micro__trained_lstm.tflite", "tflite-micro__trained_lstm_int8.tflite"])
@FUZZ
@given(flips=FLIPS, words=WORDS)
def test_damaged_corpus_files(tmp_path, name, flips, words):
    fuzz_file(tmp_path, (CORPUS / name).read_bytes(), flips, words)


@FUZZ
@given(flips=FLIPS, words=WORDS)
def test_damaged_converted_loops(tmp_path, tflite_zoo, flips, words):
    record = tflite_zoo["keras3-gru_v1-dynamic"]
    fuzz_file(tmp_path, record["_path"].read_bytes(), flips, words)


@FUZZ
@given(flips=FLIPS, words=WORDS)
def test_damaged_single_step_cell(tmp_path, spg, flips, words):
    fuzz_file(tmp_path, one_step_lstm(spg, np.random.default_rng(0)).bytes(), flips, words)


def shared_tables_model(spg, tensors: int, subgraphs: int) -> bytes:
    """One tensor table behind every offset of a `tensors`-long vector, and one such subgraph behind every
    offset of a `subgraphs`-long vector: tensors x subgraphs tables to visit from a few hundred kilobytes."""
    builder = flatbuffers.Builder(1024)
    name = builder.CreateString("t")
    spg.TensorStart(builder)
    spg.TensorAddName(builder, name)
    tensor_vector = repeated(builder, spg.TensorEnd(builder), tensors)
    spg.SubGraphStart(builder)
    spg.SubGraphAddTensors(builder, tensor_vector)
    graph_vector = repeated(builder, spg.SubGraphEnd(builder), subgraphs)
    spg.BufferStart(builder)
    buffer_vector = repeated(builder, spg.BufferEnd(builder), 1)
    spg.ModelStart(builder)
    spg.ModelAddVersion(builder, 3)
    spg.ModelAddSubgraphs(builder, graph_vector)
    spg.ModelAddBuffers(builder, buffer_vector)
    builder.Finish(spg.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def repeated(builder, target: int, count: int) -> int:
    """A vector of `count` offsets, all to `target`."""
    builder.StartVector(4, count, 4)
    for _ in range(count):
        builder.PrependUOffsetTRelative(target)
    return builder.EndVector()


def test_shared_tables_do_not_multiply_work(spg, tmp_path):
    path = tmp_path / "shared.tflite"
    replace(path, shared_tables_model(spg, tensors=20_000, subgraphs=500))  # 10 million tensors to visit
    assert path.stat().st_size < 200_000
    with pytest.raises(UnsafeModelError, match="objects"):
        read_tflite(path)
    assert exercise(path) == "UnsafeModelError"  # within SLOW seconds
