"""What a newcomer relies on: every setting documented, start-up kept light, the README's commands real."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_environment_variable_the_server_reads_is_documented() -> None:
    read = set(re.findall(r'"((?:KLING_MCP|PIXAZO)_[A-Z_]+)"', (ROOT / "kling_mcp" / "config.py").read_text()))
    readme = (ROOT / "README.md").read_text()
    assert read, "config.py reads no variables?"
    assert sorted(name for name in read if name not in readme) == []


def test_importing_the_server_loads_no_media_library() -> None:
    code = "import kling_mcp.server, kling_mcp.cli, sys; print(sorted(m for m in ('av', 'PIL') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_readme_opens_with_the_demo_and_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "kling-mcp demo" in block
    assert "python -m pytest" in block
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()
