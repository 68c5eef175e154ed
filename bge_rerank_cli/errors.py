"""One exception family, in the library's own words, and the exit codes the CLI maps it to.

Library code raises these with a message that says what went wrong *and* what to do next. Where a
message names one of the caller's settings, it names it through :func:`option`, so that each front end
can say it in its own language: the Python API as the keyword (``max_length=4``), the CLI as its flag
(``--max-length 4``), the HTTP service as the request field. ``str(error)`` is the Python wording.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from enum import IntEnum
from typing import Any


def debug_enabled() -> bool:
    """``BGE_RERANK_DEBUG=1``: tracebacks where normally one line says what went wrong."""
    return os.environ.get("BGE_RERANK_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # unexpected error (a bug): shown with a hint to rerun with BGE_RERANK_DEBUG=1
    USAGE = 2  # bad flags or arguments (Typer/Click use 2 too)
    INPUT = 3  # malformed input data
    MODEL = 4  # model cannot be found, downloaded or loaded; device problems
    CHECKS_FAILED = 5  # doctor found a failing check; bench had a setup that failed
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM
    BROKEN_PIPE = 141  # the reader of stdout went away (`| head`), as SIGPIPE would end a shell tool


_MARK = "\x00"
_UNSET: Any = object()
_REFERENCE = re.compile(f"{_MARK}([a-z_]+)(?:\x01(.*?))?{_MARK}", re.DOTALL)

# How a front end names a setting: (name, value or None when only the setting is meant) -> text.
Namer = Callable[[str, Any], str]


def option(name: str, value: Any = _UNSET) -> str:
    """A reference to the caller's setting ``name`` (optionally with a value) inside an error message."""
    if value is _UNSET:
        return f"{_MARK}{name}{_MARK}"
    return f"{_MARK}{name}\x01{value!r}{_MARK}"


def python_name(name: str, value: Any) -> str:
    return name if value is None else f"{name}={value!r}"


def render(text: str, namer: Namer = python_name) -> str:
    """``text`` with each :func:`option` reference spelled by ``namer``."""
    if _MARK not in text:
        return text

    def spell(match: re.Match[str]) -> str:
        raw = match.group(2)
        return namer(match.group(1), None if raw is None else _literal(raw))

    return _REFERENCE.sub(spell, text)


def _literal(raw: str) -> Any:
    import ast

    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


class BgeRerankError(Exception):
    """Base class of every error bge-rerank reports to users."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def describe(self, namer: Namer = python_name) -> str:
        """The message and its hint, with settings named by ``namer`` (see :func:`option`)."""
        text = f"{self.message} {self.hint}" if self.hint else self.message
        return render(text, namer)

    def __str__(self) -> str:
        return self.describe()


class UsageError(BgeRerankError, ValueError):
    """A setting or argument the caller gave is wrong or contradicts another."""

    exit_code = ExitCode.USAGE


class InvalidOption(UsageError):
    """One setting has a value it cannot take: ``name`` names it, ``problem`` says why."""

    def __init__(self, name: str, problem: str, hint: str | None = None) -> None:
        super().__init__(f"{option(name)} {problem}", hint)
        self.name = name
        self.problem = problem


class ResumeError(UsageError):
    """A job cannot be resumed from the output and checkpoint given: nothing was changed or appended."""


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


class RandomWeightsWarning(UserWarning):
    """The model is a stand-in with random weights (``tools/random_model.py`` builds them): its scores and
    orders mean nothing. The Python API warns with it where the CLI prints its stand-in line."""
