"""Treating every input as hostile: input limits and checks per container (`limits`, `hdf5`,
`zipcheck`, `jsonload`), printable names (`text`), and the disposable reader process (`guard`).

The names every reader needs are re-exported here; h5py is imported only by `hdf5`'s functions.
"""
from lstm_inspect.safety.jsonload import load_json
from lstm_inspect.safety.limits import DEFAULT_LIMITS, GiB, KiB, Limits, MiB
from lstm_inspect.safety.text import escape_name, printable
from lstm_inspect.safety.zipcheck import check_zip, read_member

__all__ = ["DEFAULT_LIMITS", "GiB", "KiB", "Limits", "MiB", "check_zip", "escape_name", "load_json",
           "printable", "read_member"]
