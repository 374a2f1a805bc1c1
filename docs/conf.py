"""Sphinx configuration for trio_sendmail."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

project = "trio_sendmail"
author = "trio_sendmail developers"
copyright = "2026, trio_sendmail developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    "state_table",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_type_aliases = {"Mail": "trio_sendmail._message.Mail"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
# No intersphinx: the docs build offline, and talks to no network host.
html_theme = "alabaster"
# No links to the theme's and Sphinx's sites: every external link in the built
# pages goes to an allow-listed documentation host (checked by tests/docs/test_docs.py).
html_theme_options = {"show_powered_by": False}
exclude_patterns = ["_build"]
