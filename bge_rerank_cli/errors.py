"""One exception family and the exit codes the CLI maps it to.

Domain code raises these with a message that says what went wrong *and* what to do next;
the CLI prints the message on one line and exits with the error's code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # unexpected error (a bug): shown with a hint to rerun with BGE_RERANK_DEBUG=1
    USAGE = 2  # bad flags or arguments (Typer/Click use 2 too)
    INPUT = 3  # malformed input data
    MODEL = 4  # model cannot be found, downloaded or loaded; device problems
    INTERRUPTED = 130  # SIGINT


class BgeRerankError(Exception):
    """Base class of every error bge-rerank reports to users."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class UsageError(BgeRerankError):
    exit_code = ExitCode.USAGE


class InputError(BgeRerankError):
    """Malformed input. ``line`` is 1-based when the problem is on a given line."""

    exit_code = ExitCode.INPUT

    def __init__(self, message: str, *, source: str = "<input>", line: int | None = None) -> None:
        where = f"{source}: line {line}: " if line is not None else f"{source}: "
        super().__init__(where + message)
        self.source = source
        self.line = line
        self.reason = message


class ModelError(BgeRerankError):
    exit_code = ExitCode.MODEL
