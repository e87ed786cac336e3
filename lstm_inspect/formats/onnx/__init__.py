"""ONNX models read without onnx or onnxruntime: `proto` turns the bytes into frozen records (tensor
values stay lazy), `fold` computes the small constant chains exporters put in front of weights, and
`recurrent` finds the LSTM, GRU and RNN nodes (main graph and every subgraph) with their inputs."""
