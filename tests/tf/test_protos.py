"""The proto parsers against TensorFlow's own protobuf classes (decoded in the builder process)."""
from __future__ import annotations

import json

import pytest

from lstm_inspect.errors import CorruptModelError, UnsafeModelError
from lstm_inspect.formats.tf import protos
from lstm_inspect.formats.tf.bundle import open_bundle

TF2_CHECKPOINTS = ["keras3_nofit", "keras3_fit", "tf_keras_nofit", "tf_keras_fit", "tf_keras_shards",
                   "tf_keras_savedmodel", "keras3_export"]


def object_graph(tfzoo, case: str) -> protos.TrackableObjectGraph:
    with open_bundle(tfzoo.path(tfzoo.case(case)["prefix"])) as bundle:
        (data,) = bundle.read_strings(protos.OBJECT_GRAPH_KEY)
    return protos.parse_trackable_object_graph(data)


@pytest.mark.parametrize("case", TF2_CHECKPOINTS)
def test_object_graph_equals_tf_decoding(tfzoo, case):
    graph = object_graph(tfzoo, case)
    ours = [{"children": [[c.node_id, c.local_name] for c in node.children],
             "attributes": [[a.name, a.full_name, a.checkpoint_key] for a in node.attributes],
             "slot_variables": [[s.original_variable_node_id, s.slot_name, s.slot_variable_node_id]
                                for s in node.slot_variables]} for node in graph.nodes]
    assert ours == tfzoo.case(case)["object_graph"]["nodes"]


@pytest.mark.parametrize("case", TF2_CHECKPOINTS)
def test_full_names_are_the_models_variable_names(tfzoo, case):
    """Each model weight's TF name appears as the full_name of a checkpoint key that holds its values."""
    truth = tfzoo.case(case)
    full_names = object_graph(tfzoo, case).full_names()
    listed = {v["name"] for v in truth["variables"]}
    assert set(full_names) <= listed  # every checkpoint_key is an entry of the bundle
    assert set(truth["model_variable_names"]) <= set(full_names.values())


def test_full_name_finds_the_right_values(tfzoo):
    """Keras 3 after fit files weights under optimizer/_trainable_variables: full_name still says whose."""
    import numpy as np

    truth = tfzoo.case("keras3_fit")
    by_full_name = {full: key for key, full in object_graph(tfzoo, "keras3_fit").full_names().items()}
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        for index, name in enumerate(truth["model_variable_names"]):
            expected = np.load(tfzoo.path(truth["model_weights"][f"w{index}"]))
            assert np.array_equal(bundle.read(by_full_name[name]), expected), name
    assert any("_trainable_variables" in key for key in by_full_name.values())


@pytest.mark.parametrize("case", ["tf_keras_savedmodel", "keras3_export"])
def test_saved_model_equals_tf_decoding(tfzoo, case):
    truth = tfzoo.case(case)["saved_model"]
    model = protos.read_saved_model(tfzoo.path(tfzoo.case(case)["dir"]))
    assert model.schema_version == truth["schema_version"]
    (meta,) = model.meta_graphs
    assert list(meta.tags) == truth["tags"] and meta.tensorflow_version == truth["tensorflow_version"]
    assert len(meta.object_graph.nodes) == len(truth["nodes"])
    for ours, theirs in zip(meta.object_graph.nodes, truth["nodes"]):
        assert ours.kind == theirs["kind"]
        assert [[c.node_id, c.local_name] for c in ours.children] == theirs["children"]
        if "variable" in theirs:
            v = ours.variable
            assert {"name": v.name, "dtype": v.dtype, "shape": list(v.shape), "trainable": v.trainable} == \
                theirs["variable"]
        if "user_object" in theirs:
            assert {"identifier": ours.user_object.identifier, "metadata": ours.user_object.metadata} == \
                theirs["user_object"]
    assert any(n.variable for n in meta.object_graph.nodes)


def test_keras_metadata_equals_tf_decoding(tfzoo):
    case = tfzoo.case("tf_keras_savedmodel")
    nodes = protos.read_keras_metadata(tfzoo.path(case["dir"]))
    assert [{"node_id": n.node_id, "node_path": n.node_path, "identifier": n.identifier, "metadata": n.metadata}
            for n in nodes] == case["saved_model"]["keras_metadata"]
    root = next(n for n in nodes if n.node_path == "root")
    assert root.metadata_json()["class_name"] in ("Functional", "Model")
    assert protos.read_keras_metadata(tfzoo.path(tfzoo.case("keras3_export")["dir"])) is None


def test_keras_metadata_node_ids_index_the_checkpoint_graph(tfzoo):
    """keras_metadata node_id = node index of the variables' object graph (reference §2.4)."""
    case = tfzoo.case("tf_keras_savedmodel")
    graph = object_graph(tfzoo, "tf_keras_savedmodel")
    for node in protos.read_keras_metadata(tfzoo.path(case["dir"])):
        target = 0
        for step in node.node_path.split(".")[1:]:
            target = next(c.node_id for c in graph.nodes[target].children if c.local_name == step)
        assert target == node.node_id, node.node_path


def test_checkpoint_state_text_format():
    state = protos.parse_checkpoint_state(
        b'# written by TF\nmodel_checkpoint_path: "model.ckpt-3"\n'
        b'all_model_checkpoint_paths: "model.ckpt-2"\nall_model_checkpoint_paths: "model.ckpt-3"\n'
        b"all_model_checkpoint_timestamps: 1700000000.5\nall_model_checkpoint_timestamps: 1700000001\n"
        b"last_preserved_timestamp: 1699999999.25\nunknown_field: 7\n")
    assert state.latest == "model.ckpt-3" and state.all_model_checkpoint_paths == ("model.ckpt-2", "model.ckpt-3")
    assert state.all_model_checkpoint_timestamps == (1700000000.5, 1700000001.0)
    assert state.last_preserved_timestamp == 1699999999.25
    escaped = protos.parse_checkpoint_state(rb'model_checkpoint_path: "a\"b\\c\303\274\x41\n"')
    assert escaped.latest == 'a"b\\cüA\n'
    only_all = protos.parse_checkpoint_state(b"all_model_checkpoint_paths: 'x'\nall_model_checkpoint_paths: 'y'")
    assert only_all.latest == "y"
    assert protos.parse_checkpoint_state(b"").latest is None
    for bad in (b"model_checkpoint_path", b'model_checkpoint_path: "unterminated', b"model_checkpoint_path: 12",
                b'model_checkpoint_path: "bad \\q escape"', b'model_checkpoint_path: "\xff"',
                b"last_preserved_timestamp: soon"):
        with pytest.raises(CorruptModelError):
            protos.parse_checkpoint_state(bad)
    with pytest.raises(UnsafeModelError):
        protos.parse_checkpoint_state(b" " * (protos.MAX_STATE_FILE_BYTES + 1))


def test_object_graph_refuses_dangling_node_ids():
    # one node whose child points at node 5 of a 1-node graph: 0a {0a {08 05 12 01 'x'}}
    child = b"\x08\x05\x12\x01x"
    node = b"\x0a" + bytes([len(child)]) + child
    with pytest.raises(CorruptModelError, match="node 5"):
        protos.parse_trackable_object_graph(b"\x0a" + bytes([len(node)]) + node)
    with pytest.raises(CorruptModelError):
        protos.parse_trackable_object_graph(b"\x0a\x05\x0a")
    assert protos.parse_trackable_object_graph(b"").nodes == ()


def test_metadata_json_goes_through_the_safe_loader():
    node = protos.KerasObjectMetadata(3, "root", "_tf_keras_network", '{"a": 1, "a": 2}', None)
    with pytest.raises(UnsafeModelError, match="duplicate"):
        node.metadata_json()
    assert json.loads('{"b": 1}') == protos.KerasObjectMetadata(0, "", "", '{"b": 1}', None).metadata_json()
