"""TensorFlow's own file formats, read without TensorFlow: tensor-bundle checkpoints (V2 `.index` +
`.data-*` shards, and the older V1 single-file tables), SavedModel folders and the protocol-buffer
messages around them (object graphs, `saved_model.pb`, `keras_metadata.pb`, the `checkpoint` file).
"""
