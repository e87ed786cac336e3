"""One entry point for every file format: `open_model(path)` sniffs the bytes and hands the path to
the reader of that container, which returns the fields of a neutral `Model`.

Each reader module (and the library its format needs: h5py for Keras's HDF5, ...) is imported only
when a file of its format is opened. Readers never import TensorFlow, Keras or torch and never
unpickle or execute anything from a file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from lstm_inspect.errors import CorruptModelError, InspectError
from lstm_inspect.formats.sniff import Container, sniff
from lstm_inspect.model import Model
from lstm_inspect.safety import limits as input_limits
from lstm_inspect.safety.limits import Limits

__all__ = ["open_model"]

# A reader: (path, limits, closers) -> the Model fields it read; it appends what must be closed.
Reader = Callable[[Path, Limits, list], dict]


def open_model(path: str | os.PathLike, limits: Limits | None = None) -> Model:
    """Read any supported model file into the neutral Model. Close it when done (or use `with`)."""
    limits = limits or input_limits.Limits()  # looked up at call time: tests shrink the limits
    label = str(path)
    closers: list[Callable[[], None]] = []
    try:
        container = sniff(path, limits)
        fields = reader_for(container)(Path(path), limits, closers)
    except InspectError as err:
        _close_all(closers)
        err.file = err.file or label
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
        _close_all(closers)
        raise CorruptModelError(f"cannot be read: {_describe(err)}", file=label) from err
    except BaseException:
        _close_all(closers)
        raise
    return Model(file=label, _close=lambda: _close_all(closers), **fields)


def reader_for(container: Container) -> Reader:
    """The reader of a container, its module imported now (and only now)."""
    if container is Container.ONNX:
        from lstm_inspect.formats.onnx.reader import read_model
        return read_model
    if container is Container.TENSORFLOW:
        from lstm_inspect.formats.tf.reader import read_tensorflow
        return read_tensorflow
    if container is Container.TFLITE:
        from lstm_inspect.formats.tflite.reader import read_model
        return read_model
    from lstm_inspect.formats.keras.files import READERS
    return READERS[container]


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _close_all(closers: list[Callable[[], None]]) -> None:
    while closers:
        try:
            closers.pop()()
        except Exception:  # closing is best effort; the data was already read or the error raised
            pass
