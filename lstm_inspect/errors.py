"""A small family of typed errors. The CLI translates them to exit codes in one place (cli.py).

Exit-code contract: 0 ok, 1 a check/verify failed, 2 bad input or usage, 3 an internal error, 130 Ctrl-C.
"""
from __future__ import annotations


class InspectError(Exception):
    """Base class: an expected failure with a one-line message for the user."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


class NotAModelError(InspectError):
    """The input is not a file lstm-inspect can read as a model (wrong magic, empty, a directory...)."""


class UnsupportedDialectError(InspectError):
    """The container is readable but its layout is not one we understand."""


class CorruptModelError(InspectError):
    """The file claims a known dialect but its content contradicts itself (missing weight, bad shape...)."""


class UnsafeModelError(InspectError):
    """The file asks for something we refuse to do (pickled arrays, external links, zip bombs...)."""


class GuardError(InspectError):
    """The guarded child process crashed, hung or ran out of resources while reading the file."""


class UsageError(InspectError):
    """Bad command-line arguments or options (bad pattern, output exists without --force...)."""


class MissingExtraError(InspectError):
    """An optional dependency (TensorFlow, torch, onnx) is needed for this command."""


class InternalError(InspectError):
    """A bug in lstm-inspect: an unexpected exception, often raised in a guarded child process.

    `debug_traceback` holds the formatted traceback (from the child when guarded) so the CLI can
    print it with --debug; the message stays one line for everyone else.
    """

    exit_code = 3

    def __init__(self, message: str, *, file: str | None = None, debug_traceback: str | None = None) -> None:
        super().__init__(message, file=file)
        self.debug_traceback = debug_traceback
