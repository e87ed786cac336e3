"""`.tflite` files as the neutral Model and its directions, on every converted file, the hand-built fused
operators and the corpus. Oracles: TF's generated schema classes (stored buffers, operator indices,
quantization), the Keras models' own get_weights() (the blocks), the arrays written into the hand-built
files, and the manifest of the corpus."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from lstm_inspect import api
from lstm_inspect.cells import directions
from lstm_inspect.cells.core import Transform
from lstm_inspect.commands.summary import summarize
from lstm_inspect.model import Framework

from .build_tflite import all_cases
from .conftest import CORPUS, converted
from .runnable import GATE_NAMES
from .test_recurrent import EXPECTED, keras_weights, manifest_says, recurrent_cases

KERAS_GATES = {"LSTM": "ifco", "GRU": "zrh", "SimpleRNN": ""}


def stored_buffers(spg, path) -> tuple[dict[int, int], int, str | None]:
    """Oracle: {buffer index: values} of every buffer a tensor stores data in, the number of tensors with
    data, and the min_runtime_version metadata."""
    data = path.read_bytes()
    ref = spg.Model.GetRootAsModel(data, 0)
    buffers, tensors = {}, 0
    for sg in range(ref.SubgraphsLength()):
        graph = ref.Subgraphs(sg)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            buffer = ref.Buffers(tensor.Buffer())
            if buffer.DataLength() or (buffer.Offset() > 1 and buffer.Size()):
                tensors += 1
                buffers.setdefault(tensor.Buffer(), math.prod(tensor.ShapeAsNumpy()) if tensor.ShapeLength() else 1)
    version = None
    for k in range(ref.MetadataLength()):
        if ref.Metadata(k).Name() == b"min_runtime_version":
            version = ref.Buffers(ref.Metadata(k).Buffer()).DataAsNumpy().tobytes().rstrip(b"\0").decode()
    return buffers, tensors, version


@pytest.mark.parametrize("case", all_cases())
def test_every_stored_buffer_counted_once(tflite_zoo, spg, case):
    record = converted(tflite_zoo, case)
    buffers, tensors, version = stored_buffers(spg, record["_path"])
    with api.open_model(record["_path"]) as model:
        assert (model.framework, model.format) == (Framework.TFLITE, "tflite")
        assert model.producer == f"MLIR Converted.; min_runtime_version {version}"
        assert model.total_params == sum(buffers.values())
        locations = [w.location for w in model.all_weights()]
        assert len(locations) == len(set(locations)) == len(buffers)
        stored = model.format_facts["stored_constants"]
        assert (stored["buffers"], stored["tensors"], stored["shared"]) == (len(buffers), tensors,
                                                                            tensors - len(buffers))
        assert sum(v["values"] for v in stored["by_dtype"].values()) == model.total_params


@pytest.mark.parametrize("case", all_cases())
def test_keras_parameter_count(tflite_zoo, case):
    """The zoo's models hold only recurrent layers: the Keras count is the sum of their weights."""
    record = converted(tflite_zoo, case)
    keras = sum(math.prod(w["shape"]) for layer in record["layers"] for w in layer["weights"])
    facts = api.summary(record["_path"])["tflite"]["parameters"]
    assert (facts["keras"], facts["recurrent"], facts["other_layers"], facts["unknown"]) == (keras, keras, 0, 0)


def expected_paths(record: dict, spg) -> list[str]:
    """Directions' paths from the Keras names (fused operators: op<k> from the file's operator list)."""
    framework, model, _ = record["case"].split("-")
    form, _, layers = EXPECTED[(framework, model)]
    if form != "fused-op":
        suffix = r"(_\d+)?" if framework == "keras3" else ""
        if model == "bilstm":
            return [rf"bidi{suffix}/forward", rf"bidi{suffix}/backward"]
        return [re.escape(name) + suffix for name, _ in layers]
    ref = spg.Model.GetRootAsModel(record["_path"].read_bytes(), 0)
    graph = ref.Subgraphs(0)
    codes = [max(ref.OperatorCodes(k).BuiltinCode(), ref.OperatorCodes(k).DeprecatedBuiltinCode())
             for k in range(ref.OperatorCodesLength())]
    ops = [k for k in range(graph.OperatorsLength())
           if codes[graph.Operators(k).OpcodeIndex()] == spg.BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM]
    if model == "bilstm":  # the backward operator comes first
        return [f"op{ops[0]}\\+op{ops[1]}/forward", f"op{ops[0]}\\+op{ops[1]}/backward"]
    return [f"op{k}" for k in ops]


def keras_layer_of(record: dict, index: int) -> str:
    framework, model, _ = record["case"].split("-")
    if model == "bilstm":
        return ("forward_lstm", "backward_lstm")[index]
    return EXPECTED[(framework, model)][2][index][0]


def truth_blocks(kind: str, layer: dict, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Keras kernel/recurrent/bias cut per gate: the blocks the tool must find."""
    kernel, recurrent = arrays[0], arrays[1]
    bias = arrays[2] if len(arrays) > 2 else None
    units = layer["units"]
    out = {}
    for g, gate in enumerate(KERAS_GATES[kind] or [""]):
        cols = slice(g * units, (g + 1) * units)
        suffix = f"_{gate}" if gate else ""
        out[f"W{suffix}"], out[f"U{suffix}"] = kernel[:, cols], recurrent[:, cols]
        if bias is not None and bias.ndim == 2:  # GRU reset_after: input and recurrent bias
            out[f"b{suffix}"], out[f"bU{suffix}"] = bias[0, cols], bias[1, cols]
        elif bias is not None:
            out[f"b{suffix}"] = bias[cols]
    return out


def step_of(block) -> np.ndarray | None:
    """The quantization step of every value of a block (its source's scales, cut and turned as the block)."""
    q = block.source.quantization
    if q is None:
        return None
    shape = block.source.shape
    scale = np.asarray(q.scale, dtype=np.float64)
    if q.axis is None:
        full = np.broadcast_to(scale[0], shape)
    else:
        axes = [1] * len(shape)
        axes[q.axis] = len(scale)
        full = np.broadcast_to(scale.reshape(axes), shape)
    part = full if block.selection is Ellipsis else full[block.selection]
    return part.T if block.transform is Transform.TRANSPOSE else part


def assert_block(block, truth: np.ndarray, variant: str, what: str) -> None:
    values = block.read()
    assert values.shape == truth.shape, what
    step = step_of(block)
    if block.source.dtype == "float16":
        assert values.dtype == np.float16 and np.array_equal(values, truth.astype(np.float16)), what
    elif step is None:
        assert np.array_equal(values, truth), what  # float32: bit for bit
    else:
        assert values.dtype == np.float32
        assert np.all(np.abs(values.astype(np.float64) - truth) <= 0.5 * step * (1 + 1e-4)), what
    if variant == "float32":
        assert step is None and block.source.dtype == "float32", what


@pytest.mark.parametrize("case", recurrent_cases())
def test_directions_hold_the_keras_blocks(tflite_zoo, spg, case):
    record = converted(tflite_zoo, case)
    framework, model, variant = case.split("-")
    form, kind, layers = EXPECTED[(framework, model)]
    with api.open_model(record["_path"]) as m:
        dirs = directions(m)
        patterns = expected_paths(record, spg)
        assert len(dirs) == len(patterns)
        for k, (d, pattern) in enumerate(zip(dirs, patterns)):
            assert re.fullmatch(pattern, d.path), (d.path, pattern)
            layer, arrays = keras_weights(record, keras_layer_of(record, k))
            assert (d.kind.value.lower().replace("simplernn", "simple_rnn"), d.units, d.input_dim) == (
                kind, layer["units"], arrays[0].shape[0])
            assert d.go_backwards == d.path.endswith("/backward")
            assert d.reset_after == (layer["reset_after"] if kind == "gru" else None)
            assert d.cell_clip == (10.0 if form == "fused-op" else None)
            fused_note = [n for n in d.notes if n.startswith(("fused:", "not fused:"))]
            assert len(fused_note) == 1 and fused_note[0].startswith("fused:" if form == "fused-op" else "not fused:")
            truth = truth_blocks(d.kind.value, layer, arrays)
            assert sorted(b.name for b in d.blocks) == sorted(truth)
            for block in d.blocks:
                assert_block(block, truth[block.name], variant, f"{d.path} {block.name}")


@pytest.mark.parametrize("case", [c for c in recurrent_cases() if c.split("-")[2] in ("dynamic", "int8")])
def test_summary_states_each_blocks_quantization(tflite_zoo, spg, case):
    """Per block: the stored dtype, and the scales and zero points of exactly the block's channels."""
    record = converted(tflite_zoo, case)
    ref = spg.Model.GetRootAsModel(record["_path"].read_bytes(), 0)
    with api.open_model(record["_path"]) as m:
        dirs = directions(m)
        summary = summarize(m, dirs)
    for d, entry in zip(dirs, summary["recurrent"]):
        assert set(entry["quantization"]) == {b.name for b in d.blocks}
        for block in d.blocks:
            sg, t = map(int, re.fullmatch(r"subgraph (\d+) tensor (\d+)", block.source.location).groups())
            tensor = ref.Subgraphs(sg).Tensors(t)
            q = tensor.Quantization()
            storage = entry["quantization"][block.name]
            assert storage["stored_dtype"] == block.source.dtype
            if q is None or not q.ScaleLength() or block.source.dtype.startswith("float"):
                assert "scale" not in storage
                continue
            scales, zeros = list(q.ScaleAsNumpy()), list(q.ZeroPointAsNumpy())
            if len(scales) == 1:
                assert (storage["scale"], storage["zero_point"], storage["axis"]) == (scales, zeros, None)
            else:  # per channel on the rows of (n·units, in): the block's columns once transposed
                rows = slice(None) if block.selection is Ellipsis else block.selection[q.QuantizedDimension()]
                assert storage["scale"] == [float(s) for s in scales[rows]]
                assert storage["zero_point"] == [int(z) for z in zeros[rows]]
                assert storage["axis"] == (1 if block.transform is Transform.TRANSPOSE else 0)


def test_float_files_state_no_quantization(tflite_zoo):
    record = converted(tflite_zoo, "tf_keras-lstm-float32")
    (entry,) = api.summary(record["_path"])["recurrent"]
    assert "quantization" not in entry


@pytest.mark.parametrize("case", ["keras3-gru-float16", "tf_keras-lstm-float16"])
def test_float16_blocks_are_stated_and_kept_as_stored(tflite_zoo, case):
    record = converted(tflite_zoo, case)
    (entry,) = api.summary(record["_path"])["recurrent"]
    assert {v["stored_dtype"] for v in entry["quantization"].values()} == {"float16"}
    assert all("scale" not in v for v in entry["quantization"].values())


def test_unrolled_int8_bias_copies_are_not_parameters(tflite_zoo):
    """The quantized unrolled graph stores the bias twice (int32 FC bias, int8 ADD constant): the blocks
    come from the int32 copy, and the int8 copy is counted as a copy, not a parameter."""
    record = converted(tflite_zoo, "tf_keras-unroll-int8")
    summary = api.summary(record["_path"])
    stored = summary["tflite"]["stored_constants"]["by_kind"]
    assert stored["copy"]["values"] == 4 * 40
    (d,) = summary["recurrent"]
    assert {d["quantization"][f"b_{g}"]["stored_dtype"] for g in "ifco"} == {"int32"}
    assert any("stored 2 times" in n for n in d["notes"])


# ----------------------------------------------------------------------------------------------
# hand-built fused operators


def test_fused_extras_are_cut_from_the_operator_roles(runnable_models):
    """Peepholes, projection, layer norm, CIFG: each block is the role's array (transposed for matrices)."""
    for name in ("fancy_lstm", "cifg_lstm"):
        path, truth = runnable_models[name]
        with api.open_model(path) as m:
            (d,) = directions(m)
        blocks = {b.name: b.read() for b in d.blocks}
        expected = {"P": truth["projection_weights"].T, "bP": truth["projection_bias"]}
        for g, role in GATE_NAMES.items():
            for kind, key, transpose in (("W", f"input_to_{role}_weights", True), ("U", f"recurrent_to_{role}_weights",
                                                                                   True),
                                         ("b", f"{role}_gate_bias", False), ("p", f"cell_to_{role}_weights", False),
                                         ("ln", f"{role}_layer_norm_coefficients", False)):
                if key in truth:
                    expected[f"{kind}_{g}"] = truth[key].T if transpose else truth[key]
        assert set(blocks) == set(expected), name
        for key, value in expected.items():
            assert np.array_equal(blocks[key], value), (name, key)
        assert (d.units, d.input_dim, d.projection_size, d.cell_clip, d.proj_clip) == (4, 3, 3, 3.0, 0.5)
        assert ("W_i" in blocks) == (name == "fancy_lstm")


def test_bidirectional_operator_sides(runnable_models):
    path, truth = runnable_models["bidirectional_lstm"]
    with api.open_model(path) as m:
        dirs = directions(m)
    assert [(d.path, d.go_backwards) for d in dirs] == [("bi/forward", False), ("bi/backward", True)]
    for d, side in zip(dirs, ("forward", "backward")):
        assert np.array_equal(d.block("W_c").read(), truth[side]["input_to_cell_weights"].T)
        assert np.array_equal(d.block("U_o").read(), truth[side]["recurrent_to_output_weights"].T)


def test_rnn_operator(runnable_models):
    path, truth = runnable_models["rnn_time_major"]
    with api.open_model(path) as m:
        (d,) = directions(m)
    assert (d.kind.value, d.activation, d.units, d.input_dim) == ("SimpleRNN", "tanh", 4, 3)
    assert np.array_equal(d.block("W").read(), truth["weights"].T)
    assert np.array_equal(d.block("U").read(), truth["recurrent_weights"].T)
    assert any("time_major" in n for n in d.notes)


# ----------------------------------------------------------------------------------------------
# the corpus


def test_corpus_float_model():
    """Manifest truth, the Keras parameter count of its architecture (LSTM(20) on 28 features, Flatten,
    Dense(10) on 28·20) and the grouping of the other constants by the layer names the converter kept."""
    name = "tflite-micro__trained_lstm.tflite"
    summary = api.summary(CORPUS / name)
    (d,) = summary["recurrent"]
    found = (f"fused {summary['tflite']['recurrent_layers'][0]['operator']}, {d['units']} units, input "
             f"{d['input_dim']}, float32, cell_clip {d['cell_clip']:g}")
    assert found == manifest_says(name)
    lstm, dense = 4 * (20 * (28 + 20) + 20), 28 * 20 * 10 + 10
    params = summary["tflite"]["parameters"]
    assert (params["keras"], params["recurrent"], params["other_layers"]) == (lstm + dense, lstm, dense)
    assert [(layer["name"], layer["class"], layer["params"]) for layer in summary["layers"]] == [
        ("lstm", "UNIDIRECTIONAL_SEQUENCE_LSTM", lstm), ("output", "FULLY_CONNECTED", dense), ("flatten", "RESHAPE", 2)]
    assert summary["total_params"] == lstm + dense + 2 and summary["trainable_params"] == lstm + dense
    assert summary["tflite"]["stored_constants"]["variable_tensors"] == {"tensors": 2, "values": 40}
    assert d["path"] == "lstm" and "quantization" not in d


def test_corpus_int8_model():
    name = "tflite-micro__trained_lstm_int8.tflite"
    summary = api.summary(CORPUS / name)
    (d,) = summary["recurrent"]
    assert (d["path"], d["units"], d["input_dim"], d["cell_clip"]) == ("op0", 20, 28, 10.0)
    assert {v["stored_dtype"] for k, v in d["quantization"].items() if k[0] in "WU"} == {"int8"}
    assert {v["stored_dtype"] for k, v in d["quantization"].items() if k[0] == "b"} == {"int32"}
    assert all(v["zero_point"] == [0] and len(v["scale"]) == 1 for v in d["quantization"].values())
    assert any("int16 cell state (scale 2^-12), 5 intermediate tensors" in n for n in d["notes"])
    assert summary["tflite"]["parameters"]["keras"] == 4 * (20 * 48 + 20) + 28 * 20 * 10 + 10


def test_unrecognised_loop_is_reported_not_dropped(spg, tmp_path):
    """A WHILE loop whose body holds no known cell: a layer with the loop's sizes and a note, no direction."""
    from .synthetic import ModelWriter
    rng = np.random.default_rng(3)
    w = ModelWriter(spg)
    main, cond, body = w.subgraph(), w.subgraph("loop/while_cond"), w.subgraph("model/odd/while_body")
    seq, h0 = main.tensor("seq", (1, 3)), main.tensor("h0", (1, 5))
    outs = [main.tensor("o0", (1, 3)), main.tensor("o1", (1, 5))]
    options = spg.WhileOptionsT()
    options.condSubgraphIndex, options.bodySubgraphIndex = 1, 2
    main.op("WHILE", [seq, h0], outs, options)
    main.io([seq, h0], outs[1:])
    cond.io([cond.tensor("cx", (1, 3)), cond.tensor("ch", (1, 5))], [cond.tensor("done", (), "int32")])
    x, h = body.tensor("x", (1, 3)), body.tensor("h", (1, 5))
    a, b, s, h2 = (body.tensor(n, (1, 10)) for n in ("a", "b", "s", "h2"))
    body.op("FULLY_CONNECTED", [x, body.const("k", rng.standard_normal((10, 3))), -1], [a])
    body.op("FULLY_CONNECTED", [h, body.const("r", rng.standard_normal((10, 5))), -1], [b])
    body.op("ADD", [a, b], [s])
    body.op("TANH", [s], [h2])
    body.io([x, h], [x, h2])
    path = tmp_path / "odd.tflite"
    path.write_bytes(w.bytes())
    summary = api.summary(path)
    assert summary["recurrent"] == []
    (layer,) = summary["layers"]
    assert (layer["name"], layer["class"], layer["params"]) == ("odd", "WHILE", 80)
    (fact,) = summary["tflite"]["recurrent_layers"]
    assert (fact["form"], fact["kind"], fact["fused"], fact["body"]["operators"]) == ("while-loop", "unknown", False, 4)
    (note,) = summary["notes"]
    assert note.startswith("odd: WHILE loop (operator 0, body subgraph 2 with 4 operators, 2 constants) whose cell "
                           "was not recognised: gate rows [10] for 5 units")
    # its two FULLY_CONNECTED weights (10·3 + 10·5) count as parameters, as any FC weight does
    assert summary["tflite"]["parameters"]["keras"] == 80


def test_other_constants_grouped_by_operator(tflite_zoo):
    """tf_keras LSTM: the fused operator keeps no name; the STRIDED_SLICE after it reads three int32 constants."""
    summary = api.summary(converted(tflite_zoo, "tf_keras-lstm-float32")["_path"])
    assert [(layer["name"], layer["class"], layer["params"]) for layer in summary["layers"]] == [
        ("op0", "UNIDIRECTIONAL_SEQUENCE_LSTM", 4 * (40 * 88 + 40)), ("op1", "STRIDED_SLICE", 9)]
    by_kind = summary["tflite"]["stored_constants"]["by_kind"]
    assert by_kind["shape"]["values"] == 9 and summary["non_trainable_params"] == 9


def test_a_bias_shared_by_two_layers_is_not_a_parameter(spg, tmp_path):
    """Two Dense layers without a bias of their own, converted with one zero bias tensor for both: the
    converter's, not a layer's. The weights count; the shared bias is stored once and counted apart."""
    from .synthetic import ModelWriter
    w = ModelWriter(spg)
    g = w.subgraph()
    x, y1, y2 = g.tensor("x", (1, 3)), g.tensor("y1", (1, 4)), g.tensor("y2", (1, 4))
    zero = g.const("zeros", np.zeros(4))
    g.op("FULLY_CONNECTED", [x, g.const("m/dense_a/MatMul", np.ones((4, 3))), zero], [y1])
    g.op("FULLY_CONNECTED", [x, g.const("m/dense_b/MatMul", np.ones((4, 3))), zero], [y2])
    g.io([x], [y1, y2])
    path = tmp_path / "shared.tflite"
    path.write_bytes(w.bytes())
    summary = api.summary(path)
    assert summary["tflite"]["parameters"] == {"keras": 24, "recurrent": 0, "other_layers": 24, "unknown": 0}
    assert summary["tflite"]["stored_constants"]["by_kind"]["shared-bias"]["values"] == 4
    assert (summary["total_params"], summary["trainable_params"]) == (28, 24)
    assert [layer["name"] for layer in summary["layers"]] == ["op0", "dense_a", "dense_b"]
