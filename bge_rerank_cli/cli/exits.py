"""The CLI's side of errors: library errors in flag language, one ``error:`` line, and exit codes.

Library errors name settings through :func:`bge_rerank_cli.errors.option`; here they are spelled as the
flags that set them. Usage errors that Typer raises while parsing get the same one-line style.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import BgeRerankError, ExitCode, debug_enabled
from .console import err_console, setup_logging

# Library setting -> flag, where the flag is not simply --name-with-dashes.
_FLAGS = {
    "output": "-o",
    "passages": "--passage",
    "documents": "--doc",
    "query_max_length": "--max-length",
}
_PLACEHOLDERS = {"output": "-o FILE", "documents": "-d TEXT (repeatable) or --docs-file FILE"}


def flag_name(name: str, value: Any) -> str:
    """How the CLI spells setting ``name`` (with ``value``): ``--max-length 4``, ``--resume``, ``-o FILE``."""
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    if value is None:
        return _PLACEHOLDERS.get(name, flag)
    if value is True:
        return flag
    if value is False:
        return "--no-" + flag.removeprefix("--")
    return f"{flag} {value}"


def error_line(message: str) -> None:
    err_console.print(f"[red]error:[/] {escape(message)}")


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn domain errors into one stderr line and an exit code; tracebacks only with BGE_RERANK_DEBUG=1."""
    setup_logging(debug_enabled())
    try:
        yield
    except BgeRerankError as exc:
        if debug_enabled():
            raise
        error_line(exc.describe(flag_name))
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:
        raise typer.Exit(broken_pipe()) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if debug_enabled():
            raise
        error_line(
            f"unexpected {type(exc).__name__}: {exc} "
            "(this is a bug in bge-rerank; rerun with BGE_RERANK_DEBUG=1 for the traceback and report it)"
        )
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def broken_pipe() -> int:
    """The reader went away (e.g. `| head`): stop quietly, as `yes | head` does, with SIGPIPE's status."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return int(ExitCode.BROKEN_PIPE)


def _usage_message(exc: typer.TyperException) -> str:
    """A bad option value as ``--flag message`` (Typer: "Invalid value for '--flag' / '-f' (env var:
    ...): Value error, message"); other usage errors as Typer words them."""
    param = getattr(exc, "param", None)
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    if type(exc).__name__ != "BadParameter" or not opts:
        return exc.format_message()
    message = exc.message.removeprefix("Value error, ")
    return f"{opts[0]} {message}" if message.startswith("must") else f"{opts[0]}: {message}"


class Group(TyperGroup):
    """The command group: Typer's parsing errors printed in our one-line ``error:`` style, and a closed
    stdout pipe ending with SIGPIPE's status wherever it happens."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone_mode = kwargs.pop("standalone_mode", True)
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except typer.TyperException as exc:  # Typer's usage errors (bad or missing option values)
            code = getattr(exc, "exit_code", ExitCode.USAGE)
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.stdout.write(exc.format_message() + "\n")
            else:
                ctx = getattr(exc, "ctx", None)
                where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                error_line(_usage_message(exc) + where)
        except typer.Abort:
            error_line("aborted.")
            code = ExitCode.FAILURE
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            code = broken_pipe()
        if not standalone_mode:
            return code
        sys.exit(int(code or 0))
