"""read_tflite against TF's generated schema classes and TF's interpreter, on every converted file and the
corpus; the model-level facts the converter is known for; buffers stored after the flatbuffer."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from lstm_inspect.formats.tflite.schema import BUILTIN_OPERATORS, TENSOR_TYPES, read_tflite

from .build_tflite import all_cases
from .conftest import CORPUS
from .oracle import check_against_interpreter, check_against_schema

CASES = all_cases()
CORPUS_FILES = ("tflite-micro__trained_lstm.tflite", "tflite-micro__trained_lstm_int8.tflite")
# The converter (TF 2.21) crashes on full-int8 quantization of every WHILE loop: all Keras 3 models but
# the unrolled one, and the tf_keras layers that do not fuse.
EXPECTED_FAILURES = {f"keras3-{m}-int8" for m in ("lstm", "bilstm", "gru", "gru_v1", "srnn", "rnn_lstmcell",
                                                  "stacked")} | {f"tf_keras-{m}-int8" for m in ("gru", "gru_v1", "srnn",
                                                                                            "rnn_lstmcell")}


def converted(tflite_zoo, case: str) -> dict:
    record = tflite_zoo[case]
    if record["status"] != "ok":
        pytest.skip(f"the converter failed on {case} (asserted by test_conversion_outcomes)")
    return record


def test_conversion_outcomes(tflite_zoo):
    """Which conversions TF 2.21 refuses (by crashing): exactly the full-int8 WHILE loops."""
    failed = {case for case, r in tflite_zoo.items() if r["status"] != "ok"}
    assert failed == EXPECTED_FAILURES, {c: tflite_zoo[c]["stderr_tail"][-300:] for c in failed ^ EXPECTED_FAILURES}
    for case in failed:
        assert tflite_zoo[case]["returncode"] == -11, case  # SIGSEGV


@pytest.mark.parametrize("case", CASES)
def test_converted_file_matches_schema_and_interpreter(tflite_zoo, spg, case):
    record = converted(tflite_zoo, case)
    model = check_against_schema(record["_path"], spg)
    compared = check_against_interpreter(model, record)
    if case.endswith("-flex"):  # TF's Python interpreter has no Flex delegate: it cannot allocate this one
        assert "Flex" in record["interpreter"]["allocate_error"] and compared == 0
    else:
        assert compared > 0  # every other model stores constants the interpreter gave back


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file_matches_schema(spg, name):
    check_against_schema(CORPUS / name, spg)


def test_tables_match_the_generated_enums(spg):
    ops = {v: k for k, v in vars(spg.BuiltinOperator).items() if not k.startswith("_")}
    assert BUILTIN_OPERATORS == tuple(ops[i] for i in range(len(ops)))
    types = {v: k for k, v in vars(spg.TensorType).items() if not k.startswith("_")}
    assert tuple(name for name, _ in TENSOR_TYPES) == tuple(types[i] for i in range(len(types)))


def test_corpus_float_model():
    model = read_tflite(CORPUS / "tflite-micro__trained_lstm.tflite")
    graph = model.subgraphs[0]
    lstm = graph.operators[0]
    assert (lstm.name, lstm.options["cell_clip"], lstm.options["fused_activation_function"]) == (
        "UNIDIRECTIONAL_SEQUENCE_LSTM", 10.0, "TANH")
    assert graph.tensors[lstm.inputs[2]].shape == (20, 28)  # input_to_forget_weights: (units, input)
    assert model.min_runtime_version == "1.13.1"
    assert model.signature_defs[0].key == "serving_default"


def test_corpus_int8_model():
    """Full integer: int8 weights with one scale each, int16 cell state with scale 2^-12, int32 biases,
    five intermediates (four float32 [0] and the effective hidden scale, int8)."""
    model = read_tflite(CORPUS / "tflite-micro__trained_lstm_int8.tflite")
    graph = model.subgraphs[0]
    lstm = graph.operators[0]
    tensors = graph.tensors
    cell = tensors[lstm.inputs[19]]
    assert (cell.type_name, cell.is_variable, cell.quantization.scale) == ("INT16", True, (2.0 ** -12,))
    assert len(lstm.intermediates) == 5
    kinds = [(tensors[i].name, tensors[i].type_name) for i in lstm.intermediates]
    assert kinds == [("input_to_input_intermediate", "FLOAT32"), ("input_to_forget_intermediate", "FLOAT32"),
                     ("input_to_cell_intermediate", "FLOAT32"), ("input_to_output_intermediate", "FLOAT32"),
                     ("effective_hidden_scale_intermediate", "INT8")]
    weight = tensors[lstm.inputs[2]]
    assert (weight.type_name, weight.shape, len(weight.quantization.scale)) == ("INT8", (20, 28), 1)
    assert tensors[lstm.inputs[13]].type_name == "INT32"
    values = weight.read()
    expected = (values.astype(np.float64) * weight.quantization.scale[0]).astype(np.float32)  # zero point 0
    assert np.array_equal(weight.dequantize(), expected)


@pytest.mark.parametrize("case", ["tf_keras-lstm-offset", "keras3-gru-offset"])
def test_buffers_stored_after_the_flatbuffer(tflite_zoo, case):
    """With use_buffer_offset the converter writes constants after the flatbuffer (as for files over 2 GB);
    the values equal those of the same model converted the usual way."""
    record = converted(tflite_zoo, case)
    model = read_tflite(record["_path"])
    stored = {t.buffer for g in model.subgraphs for t in g.tensors if t.has_data}
    assert stored and {model.buffers[i].stored for i in stored} == {"offset"}
    plain = read_tflite(converted(tflite_zoo, case.replace("offset", "float32"))["_path"])
    mine = sorted(t.read().tobytes() for g in model.subgraphs for t in g.tensors if t.has_data)
    theirs = sorted(t.read().tobytes() for g in plain.subgraphs for t in g.tensors if t.has_data)
    assert mine == theirs


def test_float16_weights_widen_exactly(tflite_zoo):
    model = read_tflite(converted(tflite_zoo, "tf_keras-lstm-float16")["_path"])
    halves = [t for t in model.subgraphs[0].tensors if t.type_name == "FLOAT16" and t.has_data]
    assert halves
    for t in halves:
        assert t.dequantize().dtype == np.float32
        assert np.array_equal(t.dequantize(), t.read().astype(np.float32))


def test_no_tensorflow_in_the_test_process():
    assert "tensorflow" not in sys.modules
