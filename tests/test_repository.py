"""What a newcomer relies on: every setting documented, start-up kept light, the README's commands real, and the
code's citations pointing at sections of the repository's own docs."""

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
    demo, tests = (line.split("#", 1)[0].strip() for line in block.strip().splitlines()[:2])
    assert "kling-mcp demo" in demo
    assert "python -m pytest" in tests
    # Each creates the virtual environment it uses: stock Pythons refuse a bare pip install (PEP 668).
    assert demo.startswith("python3 -m venv ")
    assert tests.startswith("python3 -m venv ")
    assert tests in (ROOT / ".ci" / "run").read_text(), "CI must run the README's test command as written"


CONTRACT_SECTIONS = (
    "§1 Gateway and authentication",
    "§2 Routes",
    "§3 Request bodies and limits",
    "§4 Submit response",
    "§5 Status polling and status values",
    "§6 Output media",
    "§7 Errors",
    "§8 Timing and cost",
    "§9 Webhooks",
    "§10 Unknowns and how the client copes",
    "§11 The sandbox gateway's choices",
)
# ``docs/pixazo-contract.md §3``, docs/media-notes.md §2 (backticks between the name and the section allowed).
_CITATION = re.compile(r"docs/([\w.-]+\.md)`*\s*§(\d+)")
# The notes the docs were written from live outside the repository; the code must not point there.
_OUTSIDE = re.compile(r"(?<![\w-])shared/|pixazo-api\.md|video-notes\.md")


def _sections(doc: Path) -> set[str]:
    return set(re.findall(r"^## §(\d+) ", doc.read_text(), flags=re.MULTILINE))


def _package_texts() -> dict[str, str]:
    files = (p for p in (ROOT / "kling_mcp").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return {str(p.relative_to(ROOT)): p.read_text(errors="replace") for p in files}


def test_the_contract_keeps_the_section_headings_the_code_cites() -> None:
    text = (ROOT / "docs" / "pixazo-contract.md").read_text()
    assert re.findall(r"^## (.*)$", text, flags=re.MULTILINE) == list(CONTRACT_SECTIONS)


def test_the_code_cites_only_existing_sections_of_the_repository_docs() -> None:
    broken, outside, cited = [], [], 0
    for name, text in _package_texts().items():
        outside += [f"{name}: {m.group(0)}" for m in _OUTSIDE.finditer(text)]
        for doc, section in _CITATION.findall(text):
            cited += 1
            path = ROOT / "docs" / doc
            if not path.is_file() or section not in _sections(path):
                broken.append(f"{name}: docs/{doc} §{section}")
    assert outside == [], "cite docs/pixazo-contract.md or docs/media-notes.md instead"
    assert broken == [], "no such doc or section heading"
    assert cited >= 5, "the citation pattern no longer matches how the code cites the docs"
