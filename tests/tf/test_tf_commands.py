"""Every command on TF checkpoints and SavedModels, through the CLI: summary, split-gates (bit-exact
blocks, the forget-bias rule in __meta__), explain, convert (torch and onnxruntime against TF's own
forward pass), snapshot/check/diff (a tf_keras .h5 against its TF2 checkpoint and SavedModel), damaged
files (exit 2), and the import probe (no TensorFlow, Keras or h5py on the reading path)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_inspect.cells import directions
from lstm_inspect.formats import open_model

from .helpers import case_path, cli, runs_of, summary_json
from .test_corrupt import footer_padding
from .test_tf_cells import expected_blocks, tf_values

ROOT = Path(__file__).resolve().parents[2]


def run_of(tfzoo, case: str, name: str) -> dict:
    return next(r for r in runs_of(tfzoo, case) if r["name"] == name)


# ----------------------------------------------------------------------------------------- summary
def test_summary_json_of_a_tf1_checkpoint(tfzoo):
    data = summary_json(case_path(tfzoo, "tf1_cells"))
    by_path = {r["path"]: r for r in data["recurrent"]}
    proj = by_path["proj/rnn/lstm_cell"]
    assert (proj["units"], proj["input_dim"], proj["projection_size"], proj["forget_bias"]) == (5, 3, 4, 1.0)
    assert proj["blocks"]["U_i"] == [4, 5] and proj["blocks"]["P"] == [5, 4] and proj["blocks"]["p_f"] == [5]
    assert by_path["basic/rnn/basic_lstm_cell"]["forget_bias"] == 1.0  # assumed: the file cannot say 0.5
    assert "forget_bias" not in by_path["gru/rnn/gru_cell"]
    assert by_path["bidirectional_rnn/bw/lstm_cell"]["go_backwards"] is True
    assert [p for p in by_path if p.startswith("stack_bidirectional_rnn/")] == [
        f"stack_bidirectional_rnn/cell_{k}/bidirectional_rnn/{side}/lstm_cell" for k in (0, 1) for side in ("bw", "fw")]
    assert len(data["recurrent"]) == 15


def test_forget_bias_option_replaces_the_assumption(tfzoo):
    data = json.loads(cli("summary", "-f", "json", "--forget-bias", "0.5", case_path(tfzoo, "tf1_cells")))
    basic = next(r for r in data["recurrent"] if r["path"] == "basic/rnn/basic_lstm_cell")
    assert basic["forget_bias"] == 0.5 and any("--forget-bias" in n for n in basic["notes"])
    cli("summary", "--forget-bias", "0.5", tfzoo.path(tfzoo.case("tf_keras_fit")["prefix"]), code=2)


def test_summary_table_names_producer_and_optimizer(tfzoo):
    text = cli("summary", case_path(tfzoo, "tf1_cells"))
    assert "tf-checkpoint · written by TensorFlow" in text and "Optimizer state:" in text
    assert "forget_bias 1 added to the forget gate at run time (not stored)" in text


# ----------------------------------------------------------------------------------------- split-gates
@pytest.mark.parametrize("case", ["tf1_cells", "tf1_handmade", "tf1_v0", "tf1_more"])
def test_split_gates_writes_the_blocks_bit_exact(tfzoo, tmp_path, case):
    out = tmp_path / "gates.npz"
    cli("split-gates", case_path(tfzoo, case), "-o", out)
    values = tf_values(tfzoo, case)
    with np.load(out, allow_pickle=False) as archive, open_model(case_path(tfzoo, case)) as model:
        meta = json.loads(str(archive["__meta__"]))
        assert meta["source"]["framework"] == "tensorflow"
        for d in directions(model):
            if not d.source_layout.startswith("tf1-"):
                continue
            expected = expected_blocks(d, values)
            for name, array in expected.items():
                got = archive[f"{d.path}/{name}"]
                assert got.tobytes() == np.ascontiguousarray(array).tobytes(), (d.path, name)
            facts = meta["directions"][d.path]
            assert facts["source_layout"] == d.source_layout
            if d.kind.value == "LSTM":
                assert facts["forget_bias"] == d.forget_bias and facts["forget_bias_folded"] is False


def test_split_gates_with_forget_bias_keeps_b_f_as_stored(tfzoo, tmp_path):
    prefix = case_path(tfzoo, "tf1_cells")
    cli("split-gates", prefix, "-o", tmp_path / "a.npz", "-l", "basic/*")
    cli("split-gates", prefix, "-o", tmp_path / "b.npz", "-l", "basic/*", "--forget-bias", "0.5")
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        key = "basic/rnn/basic_lstm_cell/b_f"
        assert a[key].tobytes() == b[key].tobytes()
        meta = json.loads(str(b["__meta__"]))["directions"]["basic/rnn/basic_lstm_cell"]
        assert meta["forget_bias"] == 0.5 and "b_f is written as stored" in meta["forget_bias_rule"]


def test_split_gates_streams_row_bands(tfzoo, tmp_path, monkeypatch):
    """The W rows and the U rows of a TF1 kernel are read as two bands (one read each), not whole per block."""
    from lstm_inspect.commands import split

    reads: list = []
    original = split.write_blocks

    def spy(tmp, blocks, meta, progress=None):
        for _, block in blocks:
            original_read = block.source._read
            if not getattr(original_read, "_spied", False):
                def counting(selection=Ellipsis, _read=original_read, _name=block.source.name):
                    reads.append((_name, selection))
                    return _read(selection)
                counting._spied = True
                object.__setattr__(block.source, "_read", counting)
        return original(tmp, blocks, meta, progress)

    monkeypatch.setattr(split, "write_blocks", spy)
    monkeypatch.setenv("LSTM_INSPECT_NO_GUARD", "1")
    cli("split-gates", case_path(tfzoo, "tf1_cells"), "-o", tmp_path / "g.npz", "-l", "proj/*")
    kernel = [s for name, s in reads if name == "proj/rnn/lstm_cell/kernel"]
    assert kernel == [slice(0, 3), slice(3, 7)]  # rows of x, rows of h: each read once for its four gates


# ----------------------------------------------------------------------------------------- explain
def test_explain_answers_the_tf1_questions(tfzoo):
    text = cli("explain", case_path(tfzoo, "tf1_cells"), "-l", "proj/*", "-l", "basic/*", "--forget-bias", "0.5")
    proj = text[text.index("proj/rnn/lstm_cell"):]
    assert "num_units = 5: the size of the cell state c_t. With num_proj = 4 the output and h_t have 4" in proj
    assert "f_t = σ(x_t W_f + h_{t-1} U_f + b_f + forget_bias + p_f ⊙ c_{t-1})" in proj
    assert "h_t = m_t P" in proj and "(3+4)·20 + 20 + 3·5 + 5·4 = 195" in proj
    assert "forget_bias = 0.5" in text and "columns i, j, f, o" in text
    assert "initial_state=" in text and "static_rnn unrolls" in text and "tf.while_loop" in text
    gru = cli("explain", case_path(tfzoo, "tf1_cells"), "-l", "gru/*")
    assert "TF's u" in gru and "reset_after=False" in gru and "(3+6)·12 + 12 + (3+6)·6 + 6 = 180" in gru


# ----------------------------------------------------------------------------------------- convert
def test_convert_to_pytorch_matches_tensorflows_forward_pass(tfzoo, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    prefix = case_path(tfzoo, "tf1_cells")
    out = tmp_path / "m.safetensors"
    cli("convert", prefix, "--to", "pytorch", "-o", out, "-l", "basic/*", "-l", "projonly/*", "-l", "simple/*",
        "--forget-bias", "0.5")
    tensors = load_file(out)
    cases = {"basic": ("basic.rnn.basic_lstm_cell", torch.nn.LSTM(3, 5, batch_first=True), 0.5),
             "projonly": ("projonly.rnn.lstm_cell", torch.nn.LSTM(3, 6, batch_first=True, proj_size=3), None),
             "simple": ("simple.rnn.basic_rnn_cell", torch.nn.RNN(3, 3, batch_first=True), None)}
    for name, (prefix_key, module, _) in cases.items():
        run = run_of(tfzoo, "tf1_cells", name)
        if name == "projonly":  # convert with the cell's default (1.0) is right here: the cell used it
            cli("convert", case_path(tfzoo, "tf1_cells"), "--to", "pytorch", "-o", tmp_path / "p.safetensors",
                "-l", "projonly/*")
            state = load_file(tmp_path / "p.safetensors")
        else:
            state = tensors
        module.load_state_dict({k[len(prefix_key) + 1:]: torch.from_numpy(v) for k, v in state.items()
                                if k.startswith(prefix_key + ".")})
        with torch.no_grad():
            y, _ = module(torch.from_numpy(np.load(run["_x"])))
        assert np.max(np.abs(y.numpy() - np.load(run["_y"]))) <= 1e-5, name


def test_convert_to_onnx_matches_tensorflows_forward_pass(tfzoo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    cli("convert", case_path(tfzoo, "tf1_cells"), "--to", "onnx", "-o", out, "-l", "peep/*", "-l", "gru/*",
        "-l", "bidirectional_rnn/bw/*")
    for name, file in (("peep", "peep__rnn__lstm_cell.onnx"), ("gru", "gru__rnn__gru_cell.onnx"),
                       ("bidi_bw", "bidirectional_rnn__bw__lstm_cell.onnx")):
        run = run_of(tfzoo, "tf1_cells", name)
        x = np.load(run["_x"]).astype(np.float32)
        session = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        y = session.run(None, {"X": x})[0]
        if name == "bidi_bw":  # go_backwards: the graph reads x reversed, Y in processing order; TF reverses back
            y = y[:, ::-1]
        assert np.max(np.abs(y - np.load(run["_y"]))) <= 1e-5, name


def test_convert_refuses_what_the_target_cannot_compute(tfzoo, tmp_path):
    prefix = case_path(tfzoo, "tf1_cells")
    cli("convert", prefix, "--to", "pytorch", "-o", tmp_path / "a.safetensors", "-l", "peep/*", code=2)
    cli("convert", prefix, "--to", "onnx", "-o", tmp_path / "b", "-l", "projonly/*", code=2)
    cli("convert", prefix, "--to", "pytorch", "-o", tmp_path / "c.safetensors", "-l", "gru/*", code=2)
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------------------- snapshot, check, diff
def test_snapshot_and_check_of_a_checkpoint(tfzoo, tmp_path):
    prefix = case_path(tfzoo, "tf1_cells")
    lock = tmp_path / "lock.json"
    cli("snapshot", prefix, "-o", lock)
    cli("check", prefix, "--against", lock, "--weights")
    cli("check", prefix, "-e", "recurrent.count=15", "-e", "proj/rnn/lstm_cell.units=5")
    cli("check", case_path(tfzoo, "tf1_more"), "--against", lock, code=1)


@pytest.mark.parametrize("other", [("tf_keras_fit", "prefix"), ("tf_keras_savedmodel", "dir"),
                                   ("tf_keras_weights", "prefix")])
def test_diff_of_a_tf_keras_h5_and_its_tf_files_is_identical(tfzoo, other):
    h5 = tfzoo.path(tfzoo.case("tf_keras_fit")["keras_file"])
    case, key = other
    data = json.loads(cli("diff", "-f", "json", h5, tfzoo.path(tfzoo.case(case)[key])))
    assert data["identical_structure"], data["findings"]
    assert len(data["changes"]) == 4
    for change in data["changes"]:
        assert all(block["relative"] == 0.0 for block in change["blocks"].values()), change["path"]


@pytest.mark.parametrize("case,key", [("keras3_fit", "prefix"), ("keras3_export", "dir")])
def test_diff_of_a_keras3_file_and_its_tf_files_is_identical(tfzoo, case, key):
    keras_file = tfzoo.path(tfzoo.case("keras3_fit")["keras_file"])
    data = json.loads(cli("diff", "-f", "json", keras_file, tfzoo.path(tfzoo.case(case)[key])))
    assert data["identical_structure"], data["findings"]
    assert all(b["relative"] == 0.0 for c in data["changes"] for b in c["blocks"].values())


def test_diff_of_two_tf1_checkpoints_shows_the_training_step(tfzoo):
    truth = tfzoo.case("tf1_cells")
    data = json.loads(cli("diff", "-f", "json", tfzoo.path(truth["older_prefix"]), tfzoo.path(truth["prefix"])))
    assert data["identical_structure"]
    assert all(b["relative"] > 0 for c in data["changes"] for b in c["blocks"].values())


# ----------------------------------------------------------------------------------------- damaged files
def copy_checkpoint(tfzoo, case: str, folder: Path) -> Path:
    prefix = case_path(tfzoo, case)
    folder.mkdir(parents=True, exist_ok=True)
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(path, folder / path.name)
    return folder / prefix.name


def test_truncated_and_flipped_index_end_in_exit_2(tfzoo, tmp_path):
    """Through the CLI (the reader's every-offset tests are in test_corrupt.py): a truncated index is
    always exit 2; a flipped byte is exit 2 unless it lies in the footer's zero padding, which TF
    ignores too (then the summary is unchanged)."""
    prefix = copy_checkpoint(tfzoo, "tf1_more", tmp_path / "ckpt")
    index = Path(f"{prefix}.index")
    original = index.read_bytes()
    reference = cli("summary", "-f", "json", prefix)
    padding = footer_padding(original)
    for cut in range(0, len(original), max(1, len(original) // 40)):
        index.write_bytes(original[:cut])
        cli("summary", prefix, code=2)
    caught = 0
    for at in range(0, len(original), max(1, len(original) // 60)):
        damaged = bytearray(original)
        damaged[at] ^= 0x10
        index.write_bytes(bytes(damaged))
        if at in padding:
            assert cli("summary", "-f", "json", prefix) == reference
        else:
            cli("summary", prefix, code=2)
            caught += 1
    assert caught >= 40


def test_damaged_data_is_exit_2_when_values_are_read(tfzoo, tmp_path):
    from lstm_inspect.formats.tf.bundle import open_bundle

    prefix = copy_checkpoint(tfzoo, "tf1_more", tmp_path / "ckpt")
    with open_bundle(prefix) as bundle:
        kernel = bundle.entries["enc/rnn/lstm_cell/kernel"]
    shard = Path(f"{prefix}.data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[kernel.offset + kernel.size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    cli("summary", prefix)  # the index alone is intact
    cli("split-gates", prefix, "-o", tmp_path / "g.npz", code=2)
    assert not (tmp_path / "g.npz").exists()
    shard.write_bytes(bytes(data[: len(data) // 3]))
    cli("summary", prefix, code=2)  # truncated: the index points past the shard's end


# ----------------------------------------------------------------------------------------- import probe
@pytest.mark.parametrize("command", [["summary", "{p}"], ["split-gates", "{p}", "-o", "{tmp}/out.npz"],
                                     ["explain", "{p}"], ["summary", "{sm}"]])
def test_reading_path_imports_no_framework_and_no_h5py(tfzoo, tmp_path, command):
    args = [a.format(p=case_path(tfzoo, "tf1_cells"), sm=tfzoo.path(tfzoo.case("tf_keras_savedmodel")["dir"]),
                     tmp=tmp_path) for a in command]
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['lstm-inspect'] + {args!r}\n"
        "try:\n"
        "    runpy.run_module('lstm_inspect', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'torch',\n"
        "             'onnx', 'onnxruntime', 'flatbuffers', 'safetensors', 'h5py', 'google'))\n"
        "print('IMPORTED:' + ','.join(bad), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.rstrip().endswith("IMPORTED:"), proc.stderr[-2000:]


@pytest.mark.parametrize("member", ["keras_metadata.pb", "saved_model.pb"])
def test_damaged_savedmodel_metadata_is_exit_2_or_read(tfzoo, tmp_path, member):
    """Truncated or flipped keras_metadata.pb / saved_model.pb: a typed error (exit 2) or a summary,
    never an internal error (exit 3) or a hang."""
    folder = tmp_path / "sm"
    shutil.copytree(tfzoo.path(tfzoo.case("tf_keras_savedmodel")["dir"]), folder)
    target = folder / member
    original = target.read_bytes()
    step = max(1, len(original) // 25)
    outcomes = set()
    for at in range(0, len(original), step):
        for damaged in (original[:at], original[:at] + bytes([original[at] ^ 0x5A]) + original[at + 1:]):
            target.write_bytes(damaged)
            from lstm_inspect.cli import app
            from .helpers import RUNNER
            result = RUNNER.invoke(app, ["summary", "-f", "json", str(folder)])
            assert result.exit_code in (0, 2), (at, result.output)
            outcomes.add(result.exit_code)
    assert 2 in outcomes
