"""Keras files of every dialect: legacy HDF5 (Keras 1, 2, tf.keras, 3), `.keras` zip and folder,
`.weights.h5`, sharded weights. `files.py` tells the dialects apart; `configs.py` reads the model
configs; `legacy_h5.py` and `keras3.py` put the weights onto the layers."""
