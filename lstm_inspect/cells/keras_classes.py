"""Keras's recurrent classes: which layer and cell classes compute which cell kind."""
from __future__ import annotations

from lstm_inspect.cells.core import CellKind

CLASS_KIND = {
    "LSTM": CellKind.LSTM, "LSTMCell": CellKind.LSTM, "CuDNNLSTM": CellKind.LSTM,
    "PeepholeLSTMCell": CellKind.LSTM,
    "GRU": CellKind.GRU, "GRUCell": CellKind.GRU, "CuDNNGRU": CellKind.GRU,
    "SimpleRNN": CellKind.SIMPLE_RNN, "SimpleRNNCell": CellKind.SIMPLE_RNN,
    "ConvLSTM1D": CellKind.CONV_LSTM, "ConvLSTM2D": CellKind.CONV_LSTM, "ConvLSTM3D": CellKind.CONV_LSTM,
    "ConvLSTMCell": CellKind.CONV_LSTM, "ConvLSTM1DCell": CellKind.CONV_LSTM,
    "ConvLSTM2DCell": CellKind.CONV_LSTM, "ConvLSTM3DCell": CellKind.CONV_LSTM,
}
CUDNN_CLASSES = frozenset({"CuDNNLSTM", "CuDNNGRU"})


def kind_of(class_name: str) -> CellKind | None:
    return CLASS_KIND.get(class_name)
