"""Layouts the converter does not produce, written with TF's generated object API: bidirectional and RNN
fused ops, the one-step LSTM/RNN ops, new operator codes, external buffers, hand-made loops and cells; plus
the reader's own refusals (budgets, bad files, bad reads)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from lstm_inspect.errors import CorruptModelError, NotAModelError, UnsafeModelError, UnsupportedDialectError
from lstm_inspect.formats.tflite.flatbuf import Budget
from lstm_inspect.formats.tflite.recurrent import find_recurrent
from lstm_inspect.formats.tflite.schema import read_tflite
from lstm_inspect.safety import Limits

from .oracle import check_against_schema
from .synthetic import ModelWriter

LSTM_WEIGHT_ROLES = {1: "input_to_input_weights", 2: "input_to_forget_weights", 3: "input_to_cell_weights",
                     4: "input_to_output_weights", 5: "recurrent_to_input_weights",
                     6: "recurrent_to_forget_weights", 7: "recurrent_to_cell_weights",
                     8: "recurrent_to_output_weights", 12: "input_gate_bias", 13: "forget_gate_bias",
                     14: "cell_gate_bias", 15: "output_gate_bias"}


def write(tmp_path, writer: ModelWriter, name: str = "m.tflite"):
    path = tmp_path / name
    path.write_bytes(writer.bytes())
    return path


def lstm_weights(g, prefix: str, units: int, inputs: int, rng) -> list[int]:
    """Positions 1..17 of an LSTM op: weights and biases stored, peepholes and projection absent."""
    out = []
    for k in range(1, 18):
        role = LSTM_WEIGHT_ROLES.get(k)
        if role is None:
            out.append(-1)
            continue
        shape = (units, inputs) if k <= 4 else (units, units) if k <= 8 else (units,)
        out.append(g.const(f"{prefix}{role}", rng.standard_normal(shape)))
    return out


def test_bidirectional_lstm_op(spg, tmp_path):
    rng = np.random.default_rng(0)
    w = ModelWriter(spg)
    g = w.subgraph()
    x = g.tensor("x", (4, 1, 2))
    fw, bw = lstm_weights(g, "fw_", 3, 2, rng), lstm_weights(g, "bw_", 3, 2, rng)
    states = [g.tensor(f"model/bilstm/state{i}", (1, 3), variable=True) for i in range(4)]
    options = spg.BidirectionalSequenceLSTMOptionsT()
    options.cellClip, options.mergeOutputs, options.fusedActivationFunction = 5.0, True, 4  # time_major left out
    out = g.tensor("out", (4, 1, 6))
    g.op("BIDIRECTIONAL_SEQUENCE_LSTM", [x] + fw + bw + states + [-1] * 9, [out], options)
    g.io([x], [out])
    path = write(tmp_path, w)
    model = check_against_schema(path, spg)
    (op,) = find_recurrent(model).fused_ops
    assert (op.bidirectional, op.units, op.input_size, op.output_size) == (True, 3, 2, 3)
    assert op.options.as_dict() == {"fused_activation_function": "TANH", "cell_clip": 5.0, "proj_clip": 0.0,
                                    "merge_outputs": True, "time_major": True, "asymmetric_quantize_inputs": False}
    roles = {r.role: r for r in op.inputs}
    assert len(op.inputs) == 48
    assert roles["bw_input_to_cell_weights"].stored == bw[2]
    assert roles["fw_forget_gate_bias"].tensor == fw[12]
    assert [roles[r].tensor for r in ("fw_output_state", "fw_cell_state", "bw_output_state", "bw_cell_state")] == states
    assert roles["fw_output_state"].stored is None  # a variable, not a constant
    assert roles["aux_input"].tensor == -1 and roles["bw_aux_input_to_output_weights"].tensor == -1
    assert (op.layer_name, op.layer_path) == ("bilstm", "model/bilstm")


def test_rnn_family_and_one_step_ops(spg, tmp_path):
    rng = np.random.default_rng(1)
    w = ModelWriter(spg)
    g = w.subgraph()
    x, y = g.tensor("x", (1, 4, 2)), g.tensor("y", (1, 4, 3))

    def rnn_set(prefix):
        return [g.const(prefix + "w", rng.standard_normal((3, 2))), g.const(prefix + "r", rng.standard_normal((3, 3))),
                g.const(prefix + "b", rng.standard_normal(3)), g.tensor(prefix + "h", (1, 3), variable=True)]

    seq_options = spg.SequenceRNNOptionsT()
    seq_options.timeMajor, seq_options.fusedActivationFunction = True, 1
    uni = rnn_set("uni/")
    g.op("UNIDIRECTIONAL_SEQUENCE_RNN", [x] + uni, [y], seq_options)
    bi = rnn_set("fw/") + rnn_set("bw/")
    g.op("BIDIRECTIONAL_SEQUENCE_RNN", [x] + bi + [-1, -1, -1], [y, y], spg.BidirectionalSequenceRNNOptionsT())
    g.op("RNN", [x] + rnn_set("step/"), [y], spg.RNNOptionsT())
    basic = spg.LSTMOptionsT()
    basic.kernelType = 1
    prev = g.tensor("prev", (1, 3), variable=True)
    g.op("LSTM", [x, prev, g.const("wb", rng.standard_normal((12, 5))), g.const("bb", np.zeros(12)),
                  g.tensor("c", (1, 3), variable=True)], [y, y, y, y], basic)
    g.op("CUSTOM", [x], [y], custom="FlexSomething", code=32)
    path = write(tmp_path, w)
    model = check_against_schema(path, spg)
    report = find_recurrent(model)
    uni_op, bi_op, step_op, basic_op = report.fused_ops
    assert [r.role for r in uni_op.inputs] == ["input", "weights", "recurrent_weights", "bias", "hidden_state"]
    options = uni_op.options
    assert (uni_op.units, uni_op.input_size, options["time_major"], options["fused_activation_function"]) == (
        3, 2, True, "RELU")
    assert [r.role for r in bi_op.inputs][4:10] == ["fw_hidden_state", "bw_weights", "bw_recurrent_weights",
                                                   "bw_bias", "bw_hidden_state", "aux_input"]
    assert (bi_op.bidirectional, bi_op.units) == (True, 3)
    assert (step_op.op_name, step_op.cell, step_op.units) == ("RNN", "simple_rnn", 3)
    assert [r.role for r in basic_op.inputs] == ["input", "prev_activation", "weights", "biases", "prev_state"]
    assert (basic_op.units, basic_op.input_size, basic_op.output_size) == (3, 2, 3)
    assert [(f.kind, f.fused, f.bidirectional) for f in report.layers] == [
        ("simple_rnn", True, False), ("simple_rnn", True, True), ("simple_rnn", True, False), ("lstm", True, False)]
    assert dict(report.operators_by_kind)["FlexSomething"] == 1


def test_operator_code_is_the_larger_of_both_fields(spg, tmp_path):
    """Codes above 126 live in builtin_code (127 in the byte field); old files only have the byte field."""
    w = ModelWriter(spg)
    g = w.subgraph()
    x = g.tensor("x", (3,))
    g.op("CUMSUM", [x, g.tensor("axis", (), "int32", np.zeros((), np.int32))], [x], deprecated=127)
    g.op("", [x], [x], code=0, deprecated=44)
    model = check_against_schema(write(tmp_path, w), spg)
    ops = model.subgraphs[0].operators
    assert [(op.code, op.name) for op in ops] == [(128, "CUMSUM"), (44, "UNIDIRECTIONAL_SEQUENCE_LSTM")]
    assert model.operator_codes[0].deprecated_builtin_code == 127


def test_external_buffers_are_never_opened(spg, tmp_path):
    w = ModelWriter(spg)
    g = w.subgraph()
    t = g.tensor("w", (2, 2))
    g.graph.tensors[t].externalBuffer = 1
    group, ext = spg.ExternalBufferGroupT(), spg.ExternalBufferT()
    group.name = "../weights.bin"
    ext.id, ext.group, ext.offset, ext.length = 1, 0, 64, 16
    w.model.externalBufferGroups, w.model.externalBuffers = [group], [ext]
    model = read_tflite(write(tmp_path, w))
    assert model.external_buffer_groups == ("../weights.bin",)
    assert (model.external_buffers[0].offset, model.external_buffers[0].length) == (64, 16)
    with pytest.raises(UnsupportedDialectError, match="external file"):
        model.subgraphs[0].tensors[t].read()


def one_step_lstm(spg, rng, units: int = 4, inputs: int = 5) -> ModelWriter:
    """A stateful single-step LSTM: x and h are model inputs, as in streaming models (DTLN)."""
    w = ModelWriter(spg)
    g = w.subgraph()
    x, h, c = g.tensor("x", (1, inputs)), g.tensor("h", (1, units)), g.tensor("c", (1, units))
    wk = g.const("cell/kernel", rng.standard_normal((4 * units, inputs)))
    wr = g.const("cell/recurrent", rng.standard_normal((4 * units, units)))
    bias = g.const("cell/bias", rng.standard_normal(4 * units))
    t = {n: g.tensor(n, (1, 4 * units)) for n in ("zx", "zh", "z", "zb")}
    g.op("FULLY_CONNECTED", [x, wk, -1], [t["zx"]], spg.FullyConnectedOptionsT())
    g.op("FULLY_CONNECTED", [h, wr, -1], [t["zh"]], spg.FullyConnectedOptionsT())
    g.op("ADD", [t["zx"], t["zh"]], [t["z"]], spg.AddOptionsT())
    g.op("ADD", [t["z"], bias], [t["zb"]], spg.AddOptionsT())
    gates = [g.tensor(f"g{i}", (1, units)) for i in range(4)]
    split = spg.SplitOptionsT()
    split.numSplits = 4
    g.op("SPLIT", [g.tensor("axis", (), "int32", np.ones((), np.int32)), t["zb"]], gates, split)
    i, f, o = (g.tensor(n, (1, units)) for n in ("i", "f", "o"))
    cand, fc, ig, c2, tc, h2 = (g.tensor(n, (1, units)) for n in ("cand", "fc", "ig", "c2", "tc", "h2"))
    for src, dst in ((gates[0], i), (gates[1], f), (gates[3], o)):
        g.op("LOGISTIC", [src], [dst])
    g.op("TANH", [gates[2]], [cand])
    g.op("MUL", [f, c], [fc], spg.MulOptionsT())
    g.op("MUL", [i, cand], [ig], spg.MulOptionsT())
    g.op("ADD", [fc, ig], [c2], spg.AddOptionsT())
    g.op("TANH", [c2], [tc])
    g.op("MUL", [o, tc], [h2], spg.MulOptionsT())
    g.io([x, h, c], [h2, c2])
    return w


def test_single_step_cell_is_told_apart_by_shapes(spg, tmp_path):
    w = one_step_lstm(spg, np.random.default_rng(2))
    report = find_recurrent(check_against_schema(write(tmp_path, w), spg))
    (layer,) = report.unrolled
    cell = layer.cell
    assert (cell.kind, cell.units, cell.input_size, cell.steps, cell.evidence) == ("lstm", 4, 5, 1, "shapes")
    stored = (cell.kernel.stored, [r.stored for r in cell.recurrent_kernel], [b.stored for b in cell.bias])
    assert stored == (3, [4], [5])
    assert (cell.bias[0].via, layer.layer_name) == ("add", "cell")


def test_while_body_with_unrecognised_cell(spg, tmp_path):
    """Gate rows that fit no known cell: kind 'unknown', with the sizes and the reason."""
    rng = np.random.default_rng(3)
    w = ModelWriter(spg)
    main, cond, body = w.subgraph(), w.subgraph("loop/while_cond"), w.subgraph("model/odd/while_body")
    seq, h0 = main.tensor("seq", (1, 3)), main.tensor("h0", (1, 5))
    outs = [main.tensor("o0", (1, 3)), main.tensor("o1", (1, 5))]
    options = spg.WhileOptionsT()
    options.condSubgraphIndex, options.bodySubgraphIndex = 1, 2
    main.op("WHILE", [seq, h0], outs, options)
    main.io([seq, h0], outs[1:])
    cx, ch, done = cond.tensor("cx", (1, 3)), cond.tensor("ch", (1, 5)), cond.tensor("done", (), "int32")
    cond.io([cx, ch], [done])
    x, h = body.tensor("x", (1, 3)), body.tensor("h", (1, 5))
    a, b, s, h2 = (body.tensor(n, (1, 10)) for n in ("a", "b", "s", "h2"))
    body.op("FULLY_CONNECTED", [x, body.const("k", rng.standard_normal((10, 3))), -1], [a])
    body.op("FULLY_CONNECTED", [h, body.const("r", rng.standard_normal((10, 5))), -1], [b])
    body.op("ADD", [a, b], [s])
    body.op("TANH", [s], [h2])
    body.io([x, h], [x, h2])
    report = find_recurrent(check_against_schema(write(tmp_path, w), spg))
    (loop,) = report.loops
    (cell,) = loop.cells
    assert (loop.kind, cell.units, cell.input_size, cell.rows, cell.evidence) == ("unknown", 5, 3, 10, "data flow")
    assert "gate rows [10] for 5 units" in cell.note
    assert (loop.layer_name, loop.cond.index, loop.body.index, loop.body.operators, loop.body.constants) == (
        "odd", 1, 2, 4, 2)
    assert [(f.form, f.kind, f.fused) for f in report.layers] == [("while-loop", "unknown", False)]


def test_graph_with_a_cycle_ends(spg, tmp_path):
    """A hostile graph whose ops feed each other in a circle: recognition still ends."""
    w = one_step_lstm(spg, np.random.default_rng(4))
    graph = w.model.subgraphs[0]
    graph.operators[0].inputs[0] = graph.operators[-1].outputs[0]  # x now comes from h2
    graph.operators[1].inputs[0] = graph.operators[0].outputs[0]
    report = find_recurrent(read_tflite(write(tmp_path, w)))
    assert len(report.unrolled) <= 1


def test_budgets_refuse_runaway_files(spg, tmp_path):
    path = write(tmp_path, one_step_lstm(spg, np.random.default_rng(5)))
    with pytest.raises(UnsafeModelError, match="more than 20 objects"):
        read_tflite(path, budget=Budget(max_objects=20))
    with pytest.raises(UnsafeModelError, match="bytes of names"):
        read_tflite(path, budget=Budget(max_copied_bytes=10))
    with pytest.raises(CorruptModelError, match="nested more than 1 levels"):
        read_tflite(path, budget=Budget(max_depth=1))
    with pytest.raises(UnsafeModelError, match="over the 100-byte limit"):
        read_tflite(path, Limits(max_file_bytes=100))
    with pytest.raises(UnsafeModelError, match="limit for one tensor"):
        read_tflite(path, Limits(max_dataset_bytes=8))


def test_files_that_are_not_models(spg, tmp_path):
    good = one_step_lstm(spg, np.random.default_rng(6))
    data = good.bytes()
    cases = {"missing": None, "empty": b"", "short": b"\x10\0\0\0TFL", "other": data[:4] + b"XXXX" + data[8:]}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(NotAModelError):
            read_tflite(tmp_path / name)
    with pytest.raises(NotAModelError, match="not a regular file"):
        read_tflite(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotAModelError, match="not a regular file"):
        read_tflite(tmp_path / "fifo")  # opened non-blocking: no hang
    good.model.version = 2
    with pytest.raises(UnsupportedDialectError, match="schema version 2"):
        read_tflite(write(tmp_path, good))


def test_buffer_offsets_past_the_end(spg, tmp_path):
    w = one_step_lstm(spg, np.random.default_rng(7))
    w.model.buffers[3].data, w.model.buffers[3].offset, w.model.buffers[3].size = None, 1 << 20, 16
    with pytest.raises(CorruptModelError, match=r"Model\.buffers\[3\]: 16 bytes at offset 1048576 run past"):
        read_tflite(write(tmp_path, w))


def test_tensor_reads_check_what_they_read(spg, tmp_path):
    w = ModelWriter(spg)
    g = w.subgraph()
    short = g.tensor("short", (3,), data=np.zeros(2, np.float32))
    empty = g.tensor("empty", (3,))
    text = g.tensor("text", (1,), "float32", data=np.zeros(1, np.float32))
    g.graph.tensors[text].type = 5  # STRING
    path = write(tmp_path, w)
    tensors = read_tflite(path).subgraphs[0].tensors
    with pytest.raises(CorruptModelError, match="needs 12 bytes but its buffer holds 8"):
        tensors[short].read()
    with pytest.raises(CorruptModelError, match="holds no data"):
        tensors[empty].read()
    with pytest.raises(UnsupportedDialectError, match="STRING"):
        tensors[text].read()
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    with pytest.raises(CorruptModelError, match="changed after it was parsed"):
        tensors[short].extent.read()


def test_per_channel_dequantization(spg, tmp_path):
    w = ModelWriter(spg)
    g = w.subgraph()
    q = np.array([[1, -3, 127], [-128, 0, 5]], np.int8)
    t = g.tensor("q", (2, 3), "int8", data=q, scale=[0.5, 0.25], zero_point=[1, -2])
    g.graph.tensors[t].quantization.quantizedDimension = 0
    tensor = read_tflite(write(tmp_path, w)).subgraphs[0].tensors[t]
    expected = np.array([[0.0, -2.0, 63.0], [-31.5, 0.5, 1.75]], np.float32)
    assert tensor.quantization.per_channel
    assert np.array_equal(tensor.dequantize(), expected)
