"""The docs stay true to the code: the configuration reference is what the config's fields
generate, the Sphinx build has no warning, the CLI reference names every subcommand and flag,
the README stays a door (250 lines at most), and no relative link points nowhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from markdown_it import MarkdownIt

from declora.cli import build_parser
from declora.config.reference import COMMAND, config_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def test_config_reference_is_generated_from_the_fields():
    page = DOCS / "reference" / "config.md"
    assert page.read_text() == config_reference(), (
        f"docs/reference/config.md is out of date with the config's fields; run: {COMMAND}"
    )


def test_docs_build_without_warnings(tmp_path):
    # the same build as `make docs` (the source directory is the repository root)
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    cmd += ["-c", str(DOCS), "-d", str(tmp_path / "doctrees"), str(ROOT), str(tmp_path / "html")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "html" / "docs" / "reference" / "config.html").is_file()


def test_cli_reference_names_every_subcommand_and_flag():
    page = (DOCS / "reference" / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = []
    for name, parser in sub.choices.items():
        if f"declora {name}" not in page and f"declora.cli {name}" not in page:
            missing.append(name)
        for action in parser._actions:
            missing += [f"{name} {o}" for o in action.option_strings if o not in page]
    missing = [m for m in missing if not m.endswith(("-h", "--help"))]
    assert not missing, f"docs/reference/cli.md does not mention: {missing}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def _pages() -> list[Path]:
    docs = [p for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts]
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "results" / "README.md", *docs]


def _links(text: str) -> list[str]:
    """Every link and image target of a Markdown text (not those inside code)."""
    md = MarkdownIt("commonmark").enable("table")
    found = []
    for token in md.parse(text):
        for child in token.children or []:
            if child.type == "link_open":
                found.append(child.attrGet("href"))
            elif child.type == "image":
                found.append(child.attrGet("src"))
    return found


def test_relative_links_point_to_files_that_exist():
    broken = []
    for page in _pages():
        for target in _links(page.read_text()):
            if ":" in target.split("/")[0] or target.startswith("#"):
                continue  # a URL (https:, mailto:) or an anchor on the same page
            path = target.split("#")[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
