"""The --expect mini-language: parsing (pure) and evaluation on snapshots of real corpus files."""
from __future__ import annotations

from pathlib import Path

import pytest

from lstm_inspect.commands import expect, lockfile
from lstm_inspect.errors import UsageError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@pytest.fixture(scope="module")
def keras1():
    """Keras 1.2.2 Sequential: lstm_1 (LSTM, 50 units, input 1) -> dense_1 (Dense 1); 10,451 params."""
    return lockfile.snapshot_data(CORPUS / "dl4j__simple_lstm_tf_keras_1_model.h5", with_checksums=False)


@pytest.fixture(scope="module")
def bidi():
    """Keras 3 Bidirectional(LSTM 50) x 2 + dense layers (nifty__bilstm_model.keras)."""
    return lockfile.snapshot_data(CORPUS / "nifty__bilstm_model.keras", with_checksums=False)


@pytest.mark.parametrize("text, selector, attribute, op, value", [
    ("lstm.units=128", "lstm", "units", "==", 128.0),
    ("lstm.units == 128", "lstm", "units", "==", 128.0),
    ("bidi/forward.kind=GRU", "bidi/forward", "kind", "==", "GRU"),
    ("total_params<=2e6", None, "total_params", "<=", 2e6),
    ("params < 1.5M", None, "params", "<", 1.5e6),
    ("total_params>=64k", None, "total_params", ">=", 64e3),
    ("total_params!=2_000_000", None, "total_params", "!=", 2e6),
    ("recurrent.count=2", "recurrent", "count", "==", 2.0),
    ("gru.reset_after=TRUE", "gru", "reset_after", "==", True),
    ("lstm.gates=ifco", "lstm", "gates", "==", ("i", "f", "c", "o")),
    ("lstm.gates='i f c o'", "lstm", "gates", "==", ("i", "f", "c", "o")),
    ("conv.kernel_size=3x3", "conv", "kernel_size", "==", ("3", "3")),
    ("enc/dec.lstm.activation=\"tanh\"", "enc/dec.lstm", "activation", "==", "tanh"),
    ("bidi.merge_mode=concat", "bidi", "merge_mode", "==", "concat"),
    ("lstm.return_state=none", "lstm", "return_state", "==", None),
    ("lstm_*.units>16", "lstm_*", "units", ">", 16.0),
])
def test_parse(text, selector, attribute, op, value):
    e = expect.parse(text)
    assert (e.selector, e.attribute, e.op, e.value) == (selector, attribute, op, value)


@pytest.mark.parametrize("text, message", [
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("lstm.units 128", "cannot parse"),
    ("lstm.units", "cannot parse"),
    ("lstm.units=", "no value after '='"),
    ("=128", "nothing before '='"),
    ("lstm.units=<3", "operator '=<' is not one of"),
    ("lstm.units=>3", "operator '=>' is not one of"),
    ("lstm.units<>3", "operator '<>' is not one of"),
    ("lstm.unitz=3", "unknown attribute 'unitz'"),
    ("lstm.units=abc", "expected a number, not 'abc'"),
    ("lstm.units='12'", "expected a number"),
    ("lstm.return_sequences=maybe", "expected true or false"),
    ("lstm.kind<GRU", "< compares numbers, but kind is a string"),
    ("bidi.merge_mode>concat", "> needs a number"),
    ("units=3", "'units' is not a model attribute"),
    (".units=3", "empty selector or attribute"),
    ("lstm.=3", "empty selector or attribute"),
    ("my lstm.units=3", "has spaces"),
    ("total_params<=2e6e6", "expected a number"),
])
def test_parse_errors_are_usage_errors(text, message):
    with pytest.raises(UsageError) as info:
        expect.parse(text)
    assert message in str(info.value)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


@pytest.mark.parametrize("text, passed", [
    ("lstm_1.units=50", True),
    ("lstm.units=50", True),            # a kind selects every direction of that kind
    ("LSTM.units=50", True),
    ("lstm.units=51", False),
    ("lstm_1.input_dim=1", True),
    ("lstm_1.kind=lstm", True),         # strings compare case-insensitively
    ("lstm_1.class=LSTM", True),
    ("lstm_1.gates=i,f,c,o", True),
    ("lstm_1.gates=z,r,h", False),
    ("lstm_1.recurrent_activation=hard_sigmoid", True),
    ("lstm_1.return_sequences=false", True),
    ("lstm_1.stateful=true", False),
    ("lstm_1.params=10400", True),
    ("lstm_1.trainable=true", True),    # falls back to the layer's attributes
    ("dense_1.class=Dense", True),
    ("dense.count=1", True),
    ("dense_1.params<=51", True),
    ("dense_1.units=1", False),         # Keras 1 names it output_dim
    ("dense_1.output_dim=1", True),
    ("dense_1.dtype=float32", True),
    ("recurrent.count=1", True),
    ("recurrent.count>1", False),
    ("layers.count=2", True),
    ("gru.count=0", True),
    ("gru.units=50", False),            # nothing matches: a finding, not a usage error
    ("total_params=10451", True),
    ("total_params<=2e6", True),
    ("trainable_params<10k", False),
    ("format=hdf5-legacy", True),
    ("keras_version=1.2.2", True),
    ("lstm_*.units=50", True),
    ("d*.class=Dense", True),
])
def test_evaluate_on_a_keras1_model(keras1, text, passed):
    result = expect.evaluate(expect.parse(text), keras1)
    assert result.passed is passed, result.findings
    assert result.name == f"expect {text}"
    for f in result.findings:
        assert f.message.startswith(text) and f.check == "expect"


def test_evaluate_on_bidirectional_paths(bidi):
    def ok(text: str) -> bool:
        return expect.evaluate(expect.parse(text), bidi).passed

    assert ok("recurrent.count=4")
    assert ok("bidirectional/forward.kind=LSTM") and ok("bidirectional/backward.go_backwards=true")
    assert ok("bidirectional/*.units=50") and ok("bidirectional.count=1")
    assert ok("bidirectional.class=Bidirectional") and ok("bidirectional.merge_mode=concat")
    assert ok("bidirectional_1/forward.input_dim=100")
    assert not ok("bidirectional/forward.kind=GRU")
    failed = expect.evaluate(expect.parse("lstm.units=64"), bidi)
    assert len(failed.findings) == 4  # one per direction that does not hold
    assert {f.subject for f in failed.findings} == {"bidirectional/forward", "bidirectional/backward",
                                                    "bidirectional_1/forward", "bidirectional_1/backward"}


def test_parse_number():
    assert expect.parse_number("2e6") == 2e6
    assert expect.parse_number("2_000") == 2000
    assert expect.parse_number("1.5M") == 1.5e6
    assert expect.parse_number("64k") == 64000
    assert expect.parse_number("-3") == -3
    for bad in ("", "abc", "2e", "1..2", "k", "2 M"):
        assert expect.parse_number(bad) is None, bad
