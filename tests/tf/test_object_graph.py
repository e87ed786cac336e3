"""The one-pass object-graph decoder agrees with the general protobuf decoder (itself checked against
TF's own decoding in test_protos.py) on every graph TF wrote, and on damaged graphs it either agrees
or hands over to the general decoder."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_inspect.errors import InspectError
from lstm_inspect.formats.tf import objects, protos
from lstm_inspect.formats.tf.bundle import open_bundle

TF2 = ["keras3_nofit", "keras3_fit", "keras3_export", "tf_keras_nofit", "tf_keras_fit", "tf_keras_shards",
       "tf_keras_savedmodel", "tf_keras_weights"]


def graph_bytes(tfzoo, case: str) -> bytes:
    with open_bundle(tfzoo.path(tfzoo.case(case)["prefix"])) as bundle:
        return bundle.read_strings(protos.OBJECT_GRAPH_KEY)[0]


@pytest.mark.parametrize("case", TF2)
def test_fast_decoder_equals_the_general_one(tfzoo, case):
    raw = graph_bytes(tfzoo, case)
    fast = protos._fast_object_graph(raw, protos.DEFAULT_LIMITS)
    assert fast == protos._general_object_graph(raw, protos.DEFAULT_LIMITS)
    if "object_graph" in tfzoo.case(case):  # TF's own decoding of the same bytes
        assert len(fast.nodes) == len(tfzoo.case(case)["object_graph"]["nodes"])
        first = tfzoo.case(case)["object_graph"]["nodes"][0]
        assert [[c.node_id, c.local_name] for c in fast.nodes[0].children] == first["children"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_damaged_graphs_decode_alike_or_fail_typed(tfzoo, data):
    raw = bytearray(graph_bytes(tfzoo, "tf_keras_fit"))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    raw = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    try:
        general = protos._general_object_graph(raw, protos.DEFAULT_LIMITS)
    except InspectError:
        general = None
    try:
        fast = protos._fast_object_graph(raw, protos.DEFAULT_LIMITS)
    except protos._Irregular:
        fast = "handed over"
    assert fast == "handed over" or fast == general
    try:  # what the reader does with it: a graph, or a typed error; and cataloguing never crashes
        graph = protos.parse_trackable_object_graph(raw)
    except InspectError:
        return
    objects.catalogue(graph, lambda key: ((3,), "float32"))


def test_a_graph_with_cycles_and_shared_children_is_walked_once():
    T, R, A = protos.TrackableObject, protos.ObjectReference, protos.SerializedTensor
    graph = protos.TrackableObjectGraph((
        T((R(1, "model"), R(2, "optimizer")), (), ()),
        T((R(3, "kernel"), R(1, "self"), R(0, "root")), (), ()),
        T((R(3, "var"), R(4, "m")), (), ()),
        T((), (A("VARIABLE_VALUE", "dense/kernel", "model/kernel/.ATTRIBUTES/VARIABLE_VALUE"),), ()),
        T((), (A("VARIABLE_VALUE", "Adam/m/dense/kernel", "optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"),), ()),
    ))
    listing = objects.catalogue(graph, lambda key: ((2, 2), "float32"))
    assert [v.name for v in listing.model] == ["dense/kernel"]
    assert listing.optimizer == ["optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"] and not listing.other
