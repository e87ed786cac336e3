"""TensorFlow Lite models read without TensorFlow: a bounded flatbuffer reader (`flatbuf`), the parts of
the TFLite schema lstm-inspect needs (`schema.read_tflite`), and the three shapes a recurrent layer takes in
a `.tflite` file: fused operators, WHILE loops and unrolled graphs (`recurrent.find_recurrent`).
"""
