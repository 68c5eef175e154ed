"""Plain-text ``--help`` with the options grouped into sections (Input, Model, Speed, Output, ...).

Typer groups options by ``rich_help_panel`` only in its Rich help, which draws boxes around them: a
wrapped install hint copied from a box carries the box's edges. This keeps Click's plain, copyable help
and takes the grouping from the same ``rich_help_panel`` each option declares. Sections come in the
order below: what the command reads, then its own options (those without a panel, under "Options") and
sections (a server's limits, a first stage), then the shared ones (model, speed, output, ...). Where
--help is the only option without a panel, its "Options" section comes last.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

OTHER = "Options"
INPUT = "Input"
SHARED = ("Model", "Speed", "Long passages", "Output", "Long jobs", "Scale-out (Ray)")


def _rank(title: str, only_help: bool) -> tuple[int, int]:
    if title == INPUT:
        return (0, 0)
    if title in SHARED:
        return (2, SHARED.index(title))
    if title == OTHER:
        return (3, 0) if only_help else (1, 0)
    return (1, 1)  # a command's own sections, in their declared order


class PanelCommand(TyperCommand):
    """A command whose ``--help`` lists its options in one section per panel."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        sections: dict[str, list[tuple[str, str]]] = {}
        unpanelled: list[str | None] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                panel = getattr(param, "rich_help_panel", None)
                if panel is None:
                    unpanelled.append(param.name)
                sections.setdefault(panel or OTHER, []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        only_help = unpanelled == ["help"]
        for title in sorted(sections, key=lambda title: _rank(title, only_help)):
            records = sections[title]
            with formatter.section(title):
                formatter.write_dl(records)
