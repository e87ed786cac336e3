"""PyTorch files read without torch and without running anything from the file.

`unpickler` interprets pickle streams into plain data (dicts, lists, tuples, scalars, lazy tensor
references and inert stand-ins for classes); `containers` opens the zip, legacy, safetensors and
TorchScript layouts around it; `state` finds the model's state dict inside what was read.
"""
