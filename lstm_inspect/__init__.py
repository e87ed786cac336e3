"""lstm-inspect: inspect and split the weights of saved Keras recurrent models without TensorFlow."""

__version__ = "0.1.0"
