"""The README stays true to the code."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_cli_reference_in_readme_is_fresh():
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
