"""The docs stay true to the code."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_cli_reference_is_fresh():
    result = subprocess.run(
        [sys.executable, "-m", "tools.cli_reference", "--check"], capture_output=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()


def test_readme_commands_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for command in ("bash scripts/main.sh", "bash scripts/test.sh"):
        assert command in readme
        assert (REPO / command.split()[1]).is_file()
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 15_000
    assert "docs/cli.md" in readme
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(
            r"\]\(((?:\.\./|docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", page.read_text(encoding="utf-8")
        ):
            assert (page.parent / target).resolve().is_file(), f"{page.name} links to missing {target}"


def test_exit_codes_are_documented():
    from bge_rerank_cli.errors import ExitCode

    errors_doc = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    for code in ExitCode:
        assert (
            f"| {int(code)} " in errors_doc
            or f"{int(code)} /" in errors_doc
            or f"/ {int(code)}" in errors_doc
        ), code


def test_every_option_has_help_and_usage_lines_read():
    """`--help` describes every option, and an optional argument shows once bracketed (`[INPUT]`)."""
    import typer.main

    from bge_rerank_cli.cli import app

    group = typer.main.get_command(app)
    undocumented = [
        f"{name} {param.opts[0]}"
        for name, command in group.commands.items()  # type: ignore[attr-defined]
        for param in command.params
        if getattr(param, "param_type_name", "") == "option" and not param.hidden and not param.help
    ]
    assert undocumented == []
    reference = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert "[[" not in reference and "Usage: bge-rerank score [OPTIONS] [INPUT]" in reference


def test_help_groups_options_into_sections():
    """`score --help` lists its options in plain-text sections, input first and --help last, and every
    option of every command sits in exactly one section."""
    import re as _re

    import typer.main
    from typer.testing import CliRunner

    from bge_rerank_cli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    titles = _re.findall(r"^([A-Z][\w ()-]*):$", result.output, flags=_re.M)
    assert titles[:2] == ["Arguments", "Input"] and titles[-1] == "Options"
    assert titles.index("Model") < titles.index("Speed") < titles.index("Output") < titles.index("Long jobs")
    assert "│" not in result.output and "╭" not in result.output  # plain text: copyable
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        text = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        for param in command.params:
            if getattr(param, "param_type_name", "") == "option" and not param.hidden:
                flag = max(param.opts, key=len)
                assert _re.search(_re.escape(flag) + r"[ \n]", text), (name, flag)
