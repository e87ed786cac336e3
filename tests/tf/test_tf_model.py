"""TF checkpoints and SavedModels as models: every way of opening them, which variables are the model's
and which the optimizer's (TensorFlow's and Keras's own account is the truth), layers and names."""
from __future__ import annotations

import math
import shutil

import pytest

from lstm_inspect.formats import open_model
from lstm_inspect.formats.sniff import Container, sniff
from lstm_inspect.model import Framework

from .helpers import case_path, cli, summary_json

CORPUS = "corpus/char-rnn-tensorflow-laurajul__model.ckpt-248399"


def all_weight_names(layers) -> list[str]:
    out = []
    for layer in layers:
        out += [w["name"] for w in layer["weights"]]
        out += all_weight_names(layer.get("layers", []))
    return out


# ----------------------------------------------------------------------------------------- opening
def test_every_way_of_naming_a_tf1_checkpoint_gives_the_same_model(tfzoo):
    prefix = case_path(tfzoo, "tf1_cells")
    reference = summary_json(prefix)
    for path in (f"{prefix}.index", f"{prefix}.data-00000-of-00001", f"{prefix}.meta", prefix.parent,
                 prefix.parent / "checkpoint"):
        assert sniff(path) is Container.TENSORFLOW, path
        data = summary_json(path)
        assert (data["total_params"], data["recurrent"], data["format"]) == \
            (reference["total_params"], reference["recurrent"], "tf-checkpoint"), path


def test_formats_framework_and_producer(tfzoo):
    expected = {"tf1_cells": ("tf-checkpoint", "TensorFlow 2.21.0"),  # read from the MetaInfoDef of the .meta
                "tf1_more": ("tf-checkpoint", None),  # saved without a .meta
                "tf1_v0": ("tf-checkpoint-v1", None), "tf1_v1": ("tf-checkpoint-v1", None),
                "tf_keras_fit": ("tf-checkpoint", None),
                "tf_keras_savedmodel": ("tf-saved-model", "TensorFlow 2.21.0"),
                "keras3_export": ("tf-saved-model", "TensorFlow 2.21.0")}
    for case, (fmt, producer) in expected.items():
        truth = tfzoo.case(case)
        path = tfzoo.path(truth.get("dir") or truth.get("prefix") or truth["file"])
        data = summary_json(path)
        assert (data["framework"], data["format"], data.get("producer")) == ("tensorflow", fmt, producer), case
        if producer:
            assert producer.endswith(tfzoo.truth["tensorflow"])


def test_a_prefix_that_does_not_exist_is_exit_2(tmp_path):
    cli("summary", tmp_path / "model.ckpt-7", code=2)


def test_a_savedmodel_copy_without_saved_model_pb_still_opens(tfzoo, tmp_path):
    folder = tfzoo.path(tfzoo.case("tf_keras_savedmodel")["dir"])
    copy = tmp_path / "sm"
    shutil.copytree(folder, copy)
    (copy / "saved_model.pb").unlink()
    data = summary_json(copy)
    assert data["format"] == "tf-saved-model" and data["model_class"] == "Functional"
    assert data["total_params"] == summary_json(folder)["total_params"]


# ----------------------------------------------------------------------------------------- TF1: model vs optimizer
@pytest.mark.parametrize("case", ["tf1_cells", "tf1_more"])
def test_tf1_model_variables_and_optimizer_state_as_tensorflow_counts_them(tfzoo, case):
    truth = tfzoo.case(case)
    data = summary_json(case_path(tfzoo, case))
    names = all_weight_names(data["layers"])
    assert sorted(names) == sorted(truth["model_variables"])
    assert data["total_params"] == sum(truth["model_variables"].values())
    assert data["optimizer_params"] == sum(truth["optimizer_variables"].values())
    assert len(names) == len(set(names))


def test_tf1_string_tensors_are_skipped_with_a_note(tfzoo):
    data = summary_json(case_path(tfzoo, "tf1_cells"))
    strings = sorted(v["name"] for v in tfzoo.case("tf1_cells")["variables"] if v["dtype"] == "string")
    note = next(n for n in data["notes"] if n.startswith("skipped"))
    assert all(name in note for name in strings) and f"{len(strings)} string" in note


def test_tf1_layers_grouped_by_scope(tfzoo):
    data = summary_json(case_path(tfzoo, "tf1_cells"))
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert layers["softmax"]["params"] == 5 * 7 + 7 and layers["embedding"]["params"] == 20 * 3
    assert layers["emb"]["params"] == 60 and layers["wide"]["params"] == 36  # partitioned, assembled
    assert layers["basic/rnn/basic_lstm_cell"]["class"] == "BasicLSTMCell"
    assert layers["proj/rnn/lstm_cell"]["class"] == "LSTMCell"
    assert layers["gru/rnn/gru_cell"]["class"] == "GRUCell"
    assert layers["simple/rnn/basic_rnn_cell"]["class"] == "BasicRNNCell"


def test_keras_layer_saved_by_a_tf1_saver_is_a_keras_layer(tfzoo):
    data = summary_json(case_path(tfzoo, "tf1_more"))
    klstm = next(r for r in data["recurrent"] if r["path"] == "klstm")
    assert (klstm["class"], klstm["units"], klstm["input_dim"]) == ("LSTM", 3, 3)
    assert "forget_bias" not in klstm  # Keras has no run-time forget bias
    assert any("RMSProp" in n for n in data["notes"])


def test_cudnn_opaque_buffer_is_not_counted_twice(tfzoo):
    truth = tfzoo.case("tf1_handmade")
    data = summary_json(case_path(tfzoo, "tf1_handmade"))
    sizes = {v["name"]: math.prod(v["shape"]) for v in truth["variables"]}
    assert data["total_params"] == sum(sizes.values()) - sizes["cudnn_lstm/opaque_kernel"]
    assert any(n.startswith("cudnn_lstm/opaque_kernel: CudnnLSTM's opaque parameter buffer") for n in data["notes"])


# ----------------------------------------------------------------------------------------- TF2
@pytest.mark.parametrize("case", ["tf_keras_nofit", "tf_keras_fit", "tf_keras_shards", "keras3_nofit", "keras3_fit",
                                  "tf_keras_savedmodel", "keras3_export", "tf_keras_weights"])
def test_tf2_model_variables_are_the_keras_weights_by_name(tfzoo, case):
    truth = tfzoo.case(case)
    path = tfzoo.path(truth.get("dir") or truth["prefix"])
    data = summary_json(path)
    assert all_weight_names(data["layers"]) == truth["model_variable_names"]  # Keras's own order
    with open_model(path) as model:
        assert model.framework is Framework.TENSORFLOW
        assert [w.shape for w in model.all_weights()] == [tuple(shape) for shape in _weight_shapes(tfzoo, truth)]
    assert [layer["name"] for layer in data["layers"] if layer["class"] != "InputLayer"] == \
        ["enc_lstm", "bi_gru", "srnn", "head"]
    assert [r["path"] for r in data["recurrent"]] == ["enc_lstm", "bi_gru/forward", "bi_gru/backward", "srnn"]
    if "optimizer_values" in truth:
        assert data["optimizer_params"] == truth["optimizer_values"]


def _weight_shapes(tfzoo, truth):
    import numpy as np
    weights = truth.get("model_weights")
    if weights is None:  # the SavedModels and save_weights: shapes of the same model's weights (fit case)
        weights = tfzoo.case("tf_keras_fit")["model_weights"]
    return [np.load(tfzoo.path(weights[f"w{i}"])).shape for i in range(len(weights))]


def test_tf_keras_savedmodel_config_names_layers_as_the_h5_does(tfzoo):
    sm = summary_json(tfzoo.path(tfzoo.case("tf_keras_savedmodel")["dir"]))
    h5 = summary_json(tfzoo.path(tfzoo.case("tf_keras_fit")["keras_file"]))
    assert sm["has_config"] and sm["model_class"] == h5["model_class"] == "Functional"
    assert [(l["name"], l["class"], l["params"]) for l in sm["layers"]] == \
        [(l["name"], l["class"], l["params"]) for l in h5["layers"]]
    keys = ("path", "kind", "class", "units", "input_dim", "blocks", "reset_after", "activation",
            "recurrent_activation", "return_sequences", "output_shape", "state_shapes")
    assert [{k: r[k] for k in keys} for r in sm["recurrent"]] == [{k: r[k] for k in keys} for r in h5["recurrent"]]


def test_keras3_export_stores_each_weight_twice_and_counts_it_once(tfzoo):
    data = summary_json(tfzoo.path(tfzoo.case("keras3_export")["dir"]))
    assert data["total_params"] == summary_json(tfzoo.path(tfzoo.case("keras3_fit")["keras_file"]))["total_params"]
    assert any("stored twice" in n for n in data["notes"])
    assert any("seed_generator_state" in n for n in data["notes"])


# ----------------------------------------------------------------------------------------- the corpus
def test_corpus_checkpoint_matches_its_manifest_row(tfzoo):
    """MANIFEST-frameworks.tsv: 'MultiRNNCell of two lstm_cell (TF1 LSTMCell), 128 units each'."""
    if CORPUS not in tfzoo.cases:
        pytest.skip("the corpus checkpoint is not present")
    truth = tfzoo.case(CORPUS)
    data = summary_json(truth["prefix"])
    cells = [(r["path"], r["kind"], r["class"], r["units"]) for r in data["recurrent"]]
    assert cells == [("rnnlm/multi_rnn_cell/cell_0/lstm_cell", "LSTM", "LSTMCell", 128),
                     ("rnnlm/multi_rnn_cell/cell_1/lstm_cell", "LSTM", "LSTMCell", 128)]
    sizes = {v["name"]: math.prod(v["shape"]) for v in truth["variables"]}
    optimizer = {n for n in sizes if n.endswith(("/Adam", "/Adam_1")) or n in ("beta1_power", "beta2_power")}
    assert data["optimizer_params"] == sum(sizes[n] for n in optimizer)
    assert data["total_params"] == sum(v for n, v in sizes.items() if n not in optimizer)
    assert [r["input_dim"] for r in data["recurrent"]] == [128, 128]  # kernel (256, 512) = (128 + 128, 4·128)


def test_a_damaged_meta_file_only_costs_the_version(tfzoo, tmp_path):
    prefix = case_path(tfzoo, "tf1_cells")
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(path, tmp_path / path.name)
    copy = tmp_path / prefix.name
    meta = tmp_path / (prefix.name + ".meta")
    original = meta.read_bytes()
    for damaged in (original[:10], b"\x0a\xff\xff\xff\xff\x0f" + original[6:], b"", original[:200]):
        meta.write_bytes(damaged)
        data = summary_json(copy)
        assert data.get("producer") is None and data["total_params"] == summary_json(prefix)["total_params"]
