"""`summary` against Keras's own numbers for models built at test time with Keras 3 and tf_keras, saved
in every dialect each can write (tests/zoo/build.py)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lstm_inspect import api
from lstm_inspect.cli import app

from .zoo_check import problems


def test_every_zoo_file_matches_keras(all_zoo):
    failures = {}
    for entry in all_zoo:
        summary = api.summary(entry["_abs"])
        found = problems(summary, entry)
        if found:
            failures[f"{entry['framework']}:{entry['file']}"] = found
    assert not failures, json.dumps(failures, indent=1)[:6000]


def test_zoo_covers_every_kind_and_dialect(all_zoo):
    classes = {d["class"] for e in all_zoo for d in e["recurrent"]}
    assert {"LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "CuDNNLSTM", "CuDNNGRU",
            "RNN", "LSTMCell", "GRUCell"} <= classes
    dialects = {(e["framework"], e["dialect"]) for e in all_zoo}
    assert {("keras3", "keras-zip"), ("keras3", "keras-dir"), ("keras3", "hdf5-legacy"),
            ("keras3", "keras-weights-h5"), ("keras3", "keras-weights-sharded"),
            ("tf_keras", "hdf5-legacy"), ("tf_keras", "hdf5-weights"), ("tf_keras", "keras-zip")} <= dialects
    resets = {d.get("reset_after") for e in all_zoo for d in e["recurrent"] if d["kind"] == "GRU"}
    assert resets == {True, False}


def test_cli_json_is_the_same_data(zoo_keras3):
    entry = next(e for e in zoo_keras3 if e["dialect"] == "keras-zip" and e["model"] == "bidi_lstm")
    result = CliRunner().invoke(app, ["summary", "--format", "json", entry["_abs"]])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total_params"] == entry["total_params"]
    assert not problems(data, entry)


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_every_direction_appears_in_text_formats(zoo_tf_keras, fmt):
    entry = next(e for e in zoo_tf_keras if e["dialect"] == "hdf5-legacy" and e["model"] == "nested")
    result = CliRunner().invoke(app, ["summary", "--format", fmt, entry["_abs"]])
    assert result.exit_code == 0, result.output
    for d in entry["recurrent"]:
        assert d["path"] in result.stdout
    assert f"{entry['total_params']:,}" in result.stdout
