"""Hostile ONNX bytes through everything a command does after the container layer: sniffing, the layers,
the directions, every block read, the summary, a snapshot with checksums, explain. Whatever the bytes:
a result or a typed error (`InspectError`, exit 2), never another exception."""
from __future__ import annotations


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_inspect.cells import directions
from lstm_inspect.commands.explain import explain
from lstm_inspect.commands.lockfile import build_snapshot
from lstm_inspect.commands.summary import summarize
from lstm_inspect.errors import InspectError
from lstm_inspect.formats import open_model

from .test_hostile import SEED, _fields, _inner_truncations, _serialise
from ..timing import cpu_budget


def pipeline(data: bytes, path) -> str:
    """'ok', or the name of the typed error met."""
    path.write_bytes(data)
    try:
        with open_model(path) as model:
            dirs = directions(model)
            for d in dirs:
                for block in d.blocks:
                    block.read()
                explain(d)
            summarize(model, dirs)
            build_snapshot(model, str(path))
    except InspectError as err:
        return type(err).__name__
    return "ok"


def test_the_seed_model_passes_the_pipeline(tmp_path):
    assert pipeline(SEED, tmp_path / "m.onnx") == "ok"


def test_truncation_at_every_offset(tmp_path):
    with cpu_budget(120, "every truncation"):
        outcomes = {pipeline(SEED[:length], tmp_path / "m.onnx") for length in range(len(SEED))}
    assert {"CorruptModelError", "NotAModelError"} <= outcomes  # cut short; too short to be taken for ONNX


def test_truncation_of_every_inner_message(tmp_path):
    outcomes: dict = {}
    with cpu_budget(240, "every inner truncation"):
        for variant in _inner_truncations(_fields(SEED), cuts_per_field=12):
            result = pipeline(_serialise(variant), tmp_path / "m.onnx")
            outcomes[result] = outcomes.get(result, 0) + 1
    assert "ok" in outcomes and len(outcomes) > 2


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 7)), min_size=1, max_size=8))
def test_random_bit_flips(tmp_path, flips):
    data = bytearray(SEED)
    for position, bit in flips:
        data[position] ^= 1 << bit
    pipeline(bytes(data), tmp_path / "m.onnx")
