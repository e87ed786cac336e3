"""find_recurrent on every converted file: the fused / WHILE / unrolled facts of TF 2.21's converter, the
recognised weights against the Keras model's own get_weights(), and the two real files of the corpus."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from lstm_inspect.formats.tflite.recurrent import FusedOp, find_recurrent
from lstm_inspect.formats.tflite.schema import Tensor, read_tflite

from .build_tflite import all_cases
from .conftest import CORPUS

GATES = ("input", "forget", "cell", "output")
BACKWARD_FIRST = [("backward_lstm", True), ("forward_lstm", False)]
# (form, kind) of every recurrent layer in file order, with the Keras layer it comes from and whether its
# input is reversed in time.
EXPECTED = {
    ("tf_keras", "lstm"): ("fused-op", "lstm", [("lstm", False)]),
    ("tf_keras", "lstm_tm"): ("fused-op", "lstm", [("lstm", False)]),
    ("tf_keras", "bilstm"): ("fused-op", "lstm", BACKWARD_FIRST),
    ("tf_keras", "stacked"): ("fused-op", "lstm", [("lstm_a", False), ("lstm_b", False)]),
    ("tf_keras", "gru"): ("while-loop", "gru", [("gru", False)]),
    ("tf_keras", "gru_v1"): ("while-loop", "gru", [("gru", False)]),
    ("tf_keras", "srnn"): ("while-loop", "simple_rnn", [("srnn", False)]),
    ("tf_keras", "rnn_lstmcell"): ("while-loop", "lstm", [("rnn", False)]),
    ("tf_keras", "unroll"): ("unrolled", "lstm", [("lstm", False)]),
    ("keras3", "lstm"): ("while-loop", "lstm", [("lstm", False)]),
    ("keras3", "lstm_flex"): ("while-loop", "lstm", [("lstm", False)]),
    ("keras3", "bilstm"): ("while-loop", "lstm", BACKWARD_FIRST),
    ("keras3", "gru"): ("while-loop", "gru", [("gru", False)]),
    ("keras3", "gru_v1"): ("while-loop", "gru", [("gru", False)]),
    ("keras3", "srnn"): ("while-loop", "simple_rnn", [("srnn", False)]),
    ("keras3", "rnn_lstmcell"): ("while-loop", "lstm", [("rnn", False)]),
    ("keras3", "stacked"): ("while-loop", "lstm", [("lstm_a", False), ("lstm_b", False)]),
    ("keras3", "unroll"): ("unrolled", "lstm", [("lstm", False)]),
}


def converted(tflite_zoo, case: str) -> dict:
    record = tflite_zoo[case]
    if record["status"] != "ok":
        pytest.skip(f"the converter failed on {case} (asserted in test_schema)")
    return record


def keras_weights(record: dict, name: str) -> tuple[dict, list[np.ndarray]]:
    layer = next(layer for layer in record["layers"] if layer["name"] == name)
    return layer, [np.load(record["_dir"] / w["file"], allow_pickle=False) for w in layer["weights"]]


def assert_stored(tensor: Tensor, truth: np.ndarray, what: str) -> None:
    """Float32 exactly; float16 exactly the rounded truth; integers within half a quantization step."""
    values = tensor.dequantize()
    assert values.shape == truth.shape, what
    if tensor.type_name == "FLOAT32":
        assert np.array_equal(values, truth), what
    elif tensor.type_name == "FLOAT16":
        assert np.array_equal(values, truth.astype(np.float16).astype(np.float32)), what
    else:
        step = quantization_step(tensor, truth.shape)
        assert np.all(np.abs(values - truth) <= 0.5 * step * (1 + 1e-4)), \
            f"{what}: {np.max(np.abs(values - truth) / step):.3f} steps off"


def quantization_step(tensor: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    q = tensor.quantization
    scale = np.asarray(q.scale, dtype=np.float64)
    if len(scale) == 1:
        return np.broadcast_to(scale, shape)
    axes = [1] * len(shape)
    axes[q.quantized_dimension] = len(scale)
    return np.broadcast_to(scale.reshape(axes), shape)


def layer_name_matches(found: str, keras_name: str, framework: str) -> bool:
    """Keras 3 traces layers in name scopes made unique with a suffix ('lstm' -> 'lstm_1')."""
    pattern = rf"{re.escape(keras_name)}(_\d+)?" if framework == "keras3" else re.escape(keras_name)
    return re.fullmatch(pattern, found) is not None


def recurrent_cases() -> list[str]:
    return [c for c in all_cases() if tuple(c.split("-")[:2]) in EXPECTED]


@pytest.mark.parametrize("case", recurrent_cases())
def test_layers_found_as_the_converter_made_them(tflite_zoo, case):
    record = converted(tflite_zoo, case)
    framework, model_kind, variant = case.split("-")
    form, kind, layers = EXPECTED[(framework, model_kind)]
    report = find_recurrent(read_tflite(record["_path"]))
    assert [(f.form, f.kind, f.fused, f.reversed_input) for f in report.layers] == [
        (form, kind, form == "fused-op", reversed_) for _, reversed_ in layers]
    for fact, (keras_name, _) in zip(report.layers, layers):
        if form == "fused-op":  # TF 2.21's fused ops keep no layer name (arith.constant..., tfl.pseudo_qconst...)
            assert fact.name == f"op{fact.op_index}"
        else:
            assert layer_name_matches(fact.name, keras_name, framework), (fact.name, keras_name)
    if framework == "keras3":
        assert not report.fused_ops  # Keras 3 never yields a fused op


@pytest.mark.parametrize("case", [c for c in recurrent_cases() if "fused-op" == EXPECTED[tuple(c.split("-")[:2])][0]])
def test_fused_lstm_inputs_are_the_keras_blocks(tflite_zoo, case):
    record = converted(tflite_zoo, case)
    variant = case.split("-")[2]
    model = read_tflite(record["_path"])
    report = find_recurrent(model)
    _, _, layers = EXPECTED[tuple(case.split("-")[:2])]
    for op, (keras_name, _) in zip(report.fused_ops, layers):
        layer, (kernel, recurrent, bias) = keras_weights(record, keras_name)
        units = layer["units"]
        assert (op.op_name, op.units, op.output_size, op.input_size) == (
            "UNIDIRECTIONAL_SEQUENCE_LSTM", units, units, kernel.shape[0])
        tensors = model.subgraphs[op.subgraph].tensors
        for g, gate in enumerate(GATES):
            block = slice(g * units, (g + 1) * units)
            assert_stored(tensors[op.role(f"input_to_{gate}_weights").stored], kernel[:, block].T, gate)
            assert_stored(tensors[op.role(f"recurrent_to_{gate}_weights").stored], recurrent[:, block].T, gate)
            assert_stored(tensors[op.role(f"{gate}_gate_bias").stored], bias[block], gate)
        absent = [r.role for r in op.inputs if r.tensor == -1]
        assert absent == ["cell_to_input_weights", "cell_to_forget_weights", "cell_to_output_weights",
                          "projection_weights", "projection_bias", "input_layer_norm_coefficients",
                          "forget_layer_norm_coefficients", "cell_layer_norm_coefficients",
                          "output_layer_norm_coefficients"]
        check_fused_options(op, variant, time_major=case.startswith("tf_keras-lstm_tm"))
        if variant == "int8":
            check_full_integer_lstm(op, tensors)


def check_fused_options(op: FusedOp, variant: str, time_major: bool) -> None:
    """The converter adds cell_clip=10 (Keras has no clipping); dynamic range asks for asymmetric inputs."""
    options = op.options.as_dict()
    assert options == {"fused_activation_function": "TANH", "cell_clip": 10.0, "proj_clip": 0.0,
                       "time_major": time_major, "asymmetric_quantize_inputs": variant == "dynamic",
                       "diagonal_recurrent_tensors": False}
    assert op.version == (3 if variant == "dynamic" else 1)


def check_full_integer_lstm(op: FusedOp, tensors: tuple[Tensor, ...]) -> None:
    cell = tensors[op.role("cell_state").tensor]
    assert cell.type_name == "INT16" and cell.is_variable
    exponent = np.log2(cell.quantization.scale[0])
    assert exponent == round(exponent)  # a power of two
    assert len(op.intermediates) == 5
    assert tensors[op.role("input_to_forget_weights").stored].type_name == "INT8"
    assert tensors[op.role("forget_gate_bias").stored].type_name == "INT32"


@pytest.mark.parametrize("case", [c for c in recurrent_cases() if "fused-op" != EXPECTED[tuple(c.split("-")[:2])][0]])
def test_recognised_cells_hold_the_keras_weights(tflite_zoo, case):
    record = converted(tflite_zoo, case)
    framework, model_kind, _ = case.split("-")
    form, kind, layers = EXPECTED[(framework, model_kind)]
    model = read_tflite(record["_path"])
    report = find_recurrent(model)
    cells = [c for loop in report.loops for c in loop.cells] + [u.cell for u in report.unrolled]
    assert len(cells) == len(layers)
    for cell, (keras_name, _) in zip(cells, layers):
        layer, (kernel, recurrent, bias) = keras_weights(record, keras_name)
        tensors = model.subgraphs[cell.subgraph].tensors
        assert (cell.kind, cell.units, cell.input_size, cell.evidence) == (kind, layer["units"], kernel.shape[0],
                                                                          "data flow")
        assert_stored(tensors[cell.kernel.stored], kernel.T, "kernel")
        stacked = np.concatenate([tensors[r.stored].dequantize() for r in cell.recurrent_kernel])
        assert stacked.shape == recurrent.T.shape
        for part, ref in zip(np.split(recurrent.T, np.cumsum([tensors[r.stored].shape[0] for r in
                                                               cell.recurrent_kernel])[:-1]), cell.recurrent_kernel):
            assert_stored(tensors[ref.stored], part, "recurrent kernel")
        check_biases(cell, tensors, bias, layer)
        # Unrolled, the first step has no recurrent FC (the zero initial state is folded away).
        steps = record["steps"] if form == "unrolled" else 1
        assert (cell.steps, len(cell.recurrent_ops)) == (steps, max(steps - 1, 1) * len(cell.recurrent_kernel))


def check_biases(cell, tensors, bias: np.ndarray, layer: dict) -> None:
    """GRU with reset_after: the input half as `bias`, the recurrent half as `recurrent_bias`; otherwise
    every bias constant holds the whole Keras bias."""
    assert cell.reset_after == (layer["reset_after"] if cell.kind == "gru" else None)
    halves = (bias[0], bias[1]) if cell.reset_after else (bias, None)
    assert cell.bias
    for ref in cell.bias:
        assert_stored(tensors[ref.stored], halves[0], f"bias via {ref.via}")
    assert bool(cell.recurrent_bias) == bool(cell.reset_after)
    for ref in cell.recurrent_bias:
        assert_stored(tensors[ref.stored], halves[1], f"recurrent bias via {ref.via}")


def test_gru_without_reset_after_splits_the_recurrent_kernel(tflite_zoo):
    """reset_after=False applies the candidate's recurrent matmul to r*h: two FCs, (2u, u) then (u, u)."""
    model = read_tflite(converted(tflite_zoo, "keras3-gru_v1-float32")["_path"])
    (cell,) = find_recurrent(model).loops[0].cells
    shapes = [model.subgraphs[cell.subgraph].tensors[r.stored].shape for r in cell.recurrent_kernel]
    assert shapes == [(80, 40), (40, 40)]


def test_while_loop_sizes_match_the_schema(tflite_zoo, spg):
    path = converted(tflite_zoo, "keras3-stacked-float32")["_path"]
    ref = spg.Model.GetRootAsModel(path.read_bytes(), 0)
    report = find_recurrent(read_tflite(path))
    assert len(report.loops) == 2
    for loop in report.loops:
        op = ref.Subgraphs(loop.subgraph).Operators(loop.op_index)
        options = spg.WhileOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        assert (loop.cond.index, loop.body.index) == (options.CondSubgraphIndex(), options.BodySubgraphIndex())
        body = ref.Subgraphs(loop.body.index)
        constants = [body.Tensors(i) for i in range(body.TensorsLength())]
        constants = [t for t in constants if ref.Buffers(t.Buffer()).DataLength() and not t.IsVariable()]
        assert (loop.body.operators, loop.body.tensors, loop.body.constants) == (
            body.OperatorsLength(), body.TensorsLength(), len(constants))
        assert dict(loop.body.ops_by_kind)["FULLY_CONNECTED"] == 2
        assert loop.custom_ops == ()


def test_flex_tensorlist_ops_are_reported(tflite_zoo):
    report = find_recurrent(read_tflite(converted(tflite_zoo, "keras3-lstm_flex-flex")["_path"]))
    (loop,) = report.loops
    assert loop.custom_ops == ("FlexTensorListSetItem",)
    assert {"FlexTensorListReserve", "FlexTensorListStack"} <= dict(report.operators_by_kind).keys()
    assert loop.kind == "lstm"


def manifest_says(name: str) -> str:
    """The 'what is in it' column of MANIFEST-frameworks.tsv for one corpus file."""
    with open(CORPUS / "MANIFEST-frameworks.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return next(r for r in rows if r["file"] == name)["what is in it (read independently; the tool must find the same)"]


def test_corpus_fused_lstm():
    """Its state keeps the layer's name (model/sequential/lstm/zeros); the weights are arith.constant*."""
    name = "tflite-micro__trained_lstm.tflite"
    report = find_recurrent(read_tflite(CORPUS / name))
    (op,) = report.fused_ops
    found = (f"fused {op.op_name}, {op.units} units, input {op.input_size}, float32, "
             f"cell_clip {op.options['cell_clip']:g}")
    assert found == manifest_says(name)
    assert (op.layer_name, op.layer_path) == ("lstm", "model/sequential/lstm")
    assert dict(report.operators_by_kind) == {"UNIDIRECTIONAL_SEQUENCE_LSTM": 1, "RESHAPE": 1,
                                              "FULLY_CONNECTED": 1, "SOFTMAX": 1}
    assert not report.loops and not report.unrolled


def test_corpus_int8_fused_lstm():
    name = "tflite-micro__trained_lstm_int8.tflite"
    model = read_tflite(CORPUS / name)
    (op,) = find_recurrent(model).fused_ops
    tensors = model.subgraphs[0].tensors
    check_full_integer_lstm(op, tensors)
    cell = tensors[op.role("cell_state").tensor]
    exponent = int(np.log2(cell.quantization.scale[0]))
    found = (f"fused {op.op_name}, {op.units} units, input {op.input_size}, full int8 "
             f"({cell.type_name.lower()} cell state, scale 2^{exponent}), {len(op.intermediates)} intermediate tensors")
    assert found == manifest_says(name)
    assert op.layer_name == "op0"  # no tensor of this file keeps the Keras name
