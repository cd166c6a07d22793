"""Sphinx configuration of declora's documentation.

The source directory is the repository root, so that the docs, the recorded studies in
``results/`` and ``CHANGELOG.md`` link to each other by their real relative paths (the same
links work on a code host). Build with ``make docs``:

    sphinx-build -W --keep-going -b html -c docs . build/docs
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the package from this checkout, installed or not

project = "declora"
author = "the declora authors"
copyright = "the declora authors"

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "docs/index"
# only these are pages; the rest of the repository (README.md, src/, tests/, .venv/) is not
include_patterns = ["docs/**", "results/**", "CHANGELOG.md"]
# folders never walked for pages
exclude_patterns = [".git", ".venv", "build", "runs", "src", "tests", "benchmarks", "scripts"]

# MyST: ```{directive} blocks and ::: fences; anchors for headings so that pages link to
# sections (page.md#a-heading), and a link to a missing anchor is a warning
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# the API page reads the docstrings; defaults as written (echo=print, not <built-in ...>)
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_member_order = "bysource"
nitpicky = False

html_theme = "furo"
html_title = "declora"
# docs/_extra/index.html at the top of the output sends a reader on to docs/index.html
html_extra_path = ["_extra"]
