"""Regenerate docs/cli.md, the CLI reference, from the commands' own ``--help`` (plain text).

python -m tools.cli_reference          # rewrite docs/cli.md
python -m tools.cli_reference --check  # exit 1 if docs/cli.md is stale (the tests run this)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
COMMANDS: list[list[str]] = [
    [],
    ["score"],
    ["rerank"],
    ["eval"],
    ["demo"],
    ["doctor"],
    ["bench"],
    ["serve"],
    ["download"],
    ["score-cache"],
    ["score-cache", "stats"],
    ["score-cache", "clear"],
]
HEADER = (
    "# CLI reference\n\n"
    "Generated from each command's `--help` by `python -m tools.cli_reference`; a test fails when it is "
    "stale. Back to the [README](../README.md).\n"
)


def help_text(args: list[str]) -> str:
    os.environ.update({"TERMINAL_WIDTH": "100", "NO_COLOR": "1", "_TYPER_FORCE_DISABLE_TERMINAL": "1"})
    from typer.testing import CliRunner

    from bge_rerank_cli.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"}, color=False)
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    return "\n".join(lines).strip("\n")


def reference() -> str:
    parts = [HEADER]
    for args in COMMANDS:
        title = " ".join(["bge-rerank", *args])
        parts.append(f"## `{title}`\n\n```text\n{help_text(args)}\n```\n")
    return "\n".join(parts)


def main() -> int:
    fresh = reference()
    if "--check" in sys.argv:
        current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.is_file() else ""
        if fresh != current:
            print("docs/cli.md is stale: run `python -m tools.cli_reference`", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
