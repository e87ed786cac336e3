"""`explain`: golden texts for each cell family, and the term-by-term parameter count equal to Keras's
count_params() for every recurrent direction of the zoo."""
from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from lstm_inspect.cli import app

from .test_cli import check_golden

GOLDEN_MODELS = [
    ("keras3", "lstm_seq", "keras-zip"),
    ("keras3", "gru_reset_after", "keras-zip"),
    ("keras3", "gru_no_reset_after", "keras-zip"),
    ("keras3", "simple_rnn", "keras-zip"),
    ("keras3", "convlstm2d", "keras-zip"),
    ("tf_keras", "cudnn_lstm", "hdf5-legacy"),
    ("tf_keras", "activations", "hdf5-legacy"),
]


def explain(path: str, *args: str) -> str:
    result = CliRunner().invoke(app, ["explain", path, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("framework,model,dialect", GOLDEN_MODELS)
def test_golden_explanations(all_zoo, framework, model, dialect):
    entry = next(e for e in all_zoo if (e["framework"], e["model"], e["dialect"]) == (framework, model, dialect))
    check_golden(f"explain_{framework}_{model}.txt", explain(entry["_abs"]))


def test_markdown_format(zoo_keras3):
    entry = next(e for e in zoo_keras3 if e["model"] == "lstm_seq" and e["dialect"] == "keras-zip")
    text = explain(entry["_abs"], "--format", "markdown")
    assert text.startswith("### ") and "```text" in text


def test_parameter_derivation_equals_count_params(all_zoo):
    """The last number of the 'parameters:' line is Keras's count_params() of that direction."""
    checked = 0
    for entry in all_zoo:
        if entry["dialect"] not in ("hdf5-legacy", "keras-zip"):
            continue
        text = explain(entry["_abs"])
        totals = [int(m.replace(",", "")) for m in re.findall(r"parameters: .* = ([\d,]+)", text)]
        assert totals == [d["params"] for d in entry["recurrent"]], entry["file"]
        checked += len(totals)
    assert checked > 50


def test_explain_names_hard_sigmoid(zoo_tf_keras):
    entry = next(e for e in zoo_tf_keras if e["model"] == "activations" and e["dialect"] == "hdf5-legacy")
    text = explain(entry["_abs"])
    assert "hard_sigmoid" in text and "clip(0.2·x + 0.5, 0, 1)" in text
