"""Gate layouts as data: `cut` (file tensors -> blocks) and `fuse` (blocks -> a framework's tensors)
are inverses for every layout, bit for bit; quantized weights read dequantized."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import CellKind, Transform
from lstm_inspect.model import Quantization, Weight


def weight(name: str, array: np.ndarray, quantization: Quantization | None = None) -> Weight:
    return Weight(name, tuple(array.shape), array.dtype.name, _read=lambda sel=Ellipsis: array[sel],
                  quantization=quantization)


def random_tensors(layout: layouts.GateLayout, sizes: layouts.Sizes, rng, lead: tuple[int, ...] = ()):
    out = {}
    for part in layout.parts:
        if part.whole:
            shape = (sizes.units, sizes.rows_of_u)[:: -1 if part.transform is Transform.TRANSPOSE else 1]
            if sizes.recurrent_dim is None:
                continue
        else:
            shape = layouts.expected_shape(part, sizes)
            if part.base_ndim() == 2 and not part.stack is layouts.Stack.LEADING:
                shape = lead + shape
        out[part.tensor] = rng.standard_normal(shape).astype(np.float32)
    return out


@pytest.mark.parametrize("name", sorted(layouts.LAYOUTS))
@settings(max_examples=15, deadline=None)
@given(units=st.integers(1, 6), input_dim=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_cut_then_fuse_gives_back_every_tensor(name, units, input_dim, seed):
    layout = layouts.LAYOUTS[name]
    rng = np.random.default_rng(seed)
    sizes = layouts.Sizes(units, input_dim)
    lead = (2, 3) if layout.kind is CellKind.CONV_LSTM else ()
    tensors = random_tensors(layout, sizes, rng, lead)
    blocks = layouts.cut(layout, {k: weight(k, v) for k, v in tensors.items()}, sizes)
    values = {b.name: b.read() for b in blocks}
    assert all(v.shape == b.shape for b, v in zip(blocks, values.values()))
    back = layouts.fuse(layout, values, sizes)
    assert set(back) == set(tensors)
    for key, original in tensors.items():
        assert back[key].tobytes() == original.tobytes(), key


def test_blocks_are_in_the_math_layout():
    """PyTorch weight_ih rows i, f, g, o: W_c is rows 2H:3H transposed, so x @ W_c = (W_ih x)[2H:3H]."""
    rng = np.random.default_rng(0)
    H, I = 3, 4
    weight_ih = rng.standard_normal((4 * H, I))
    tensors = {"weight_ih": weight("weight_ih", weight_ih), "weight_hh": weight("weight_hh", rng.standard_normal((4 * H, H)))}
    blocks = {b.name: b.read() for b in layouts.cut(layouts.PYTORCH[CellKind.LSTM], tensors, layouts.Sizes(H, I))}
    np.testing.assert_array_equal(blocks["W_c"], weight_ih[2 * H:3 * H].T)
    x = rng.standard_normal(I)
    np.testing.assert_allclose(x @ blocks["W_c"], (weight_ih @ x)[2 * H:3 * H], rtol=1e-12)
    assert layouts.PYTORCH[CellKind.LSTM].native_order == "i, f, g, o"
    assert layouts.PYTORCH[CellKind.GRU].native_order == "r, z, n"
    assert layouts.ONNX[CellKind.LSTM].gate_order == ("i", "o", "f", "c")


def test_missing_second_bias_is_written_as_zeros():
    H = 2
    blocks = {f"{k}_{g}": np.full((3, H) if k == "W" else (H, H) if k == "U" else (H,), 1.0)
              for k in ("W", "U", "b") for g in "ifco"}
    out = layouts.fuse(layouts.PYTORCH[CellKind.LSTM], blocks, layouts.Sizes(H, 3))
    assert np.all(out["bias_hh"] == 0) and np.all(out["bias_ih"] == 1)
    no_bias = {k: v for k, v in blocks.items() if not k.startswith("b")}
    assert set(layouts.fuse(layouts.PYTORCH[CellKind.LSTM], no_bias, layouts.Sizes(H, 3))) == \
        {"weight_ih", "weight_hh"}


def test_a_wrong_shape_is_a_clear_error():
    from lstm_inspect.errors import CorruptModelError
    tensors = {"kernel": weight("lstm/kernel", np.zeros((5, 12), np.float32)),
               "recurrent_kernel": weight("lstm/recurrent_kernel", np.zeros((4, 16), np.float32))}
    with pytest.raises(CorruptModelError, match=r"lstm/kernel has shape \(5, 12\), expected \(5, 16\)"):
        layouts.cut(layouts.KERAS[CellKind.LSTM], tensors, layouts.Sizes(4, 5), path="lstm")


@pytest.mark.parametrize("selection", [Ellipsis, (slice(None), slice(2, 5)), (slice(1, 3), slice(None)),
                                       (slice(None), 4), (2, slice(None)), (slice(None, None, 2), slice(0, 6))])
@pytest.mark.parametrize("axis", [0, 1, None])
def test_quantized_weights_read_dequantized(selection, axis):
    rng = np.random.default_rng(1)
    stored = rng.integers(-128, 128, size=(4, 6)).astype(np.int8)
    n = stored.shape[axis] if axis is not None else 1
    scale = rng.uniform(0.001, 0.1, n)
    zero = rng.integers(-5, 5, n)
    w = weight("fc", stored, Quantization(tuple(scale), tuple(int(z) for z in zero), axis))
    shape = (-1, 1) if axis == 0 else (1, -1)
    full = ((stored.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)) if axis is not None \
        else (stored.astype(np.float64) - zero[0]) * scale[0]
    got = w.read_values(selection)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, full.astype(np.float32)[selection])
    assert w.value_dtype == "float32"
