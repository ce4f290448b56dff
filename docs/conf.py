"""Sphinx configuration of the pyro_sbi documentation.

Build: ``sphinx-build -W docs docs/_build`` (warnings are errors). Cross-references to
torch, Pyro, zuko and ArviZ use intersphinx when their inventories can be fetched;
offline builds set ``PYRO_SBI_DOCS_OFFLINE=1`` and keep those names as plain text.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro_sbi  # noqa: E402

project = "pyro_sbi"
author = "the pyro_sbi developers"
copyright = "2026, the pyro_sbi developers"  # noqa: A001
release = version = pyro_sbi.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = f"pyro_sbi {version}"
html_static_path = ["_static"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

intersphinx_mapping = {}
if not os.environ.get("PYRO_SBI_DOCS_OFFLINE"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "torch": ("https://pytorch.org/docs/stable", None),
        "pyro": ("https://docs.pyro.ai/en/stable", None),
        "zuko": ("https://zuko.readthedocs.io/stable", None),
        "arviz": ("https://python.arviz.org/en/stable", None),
    }
# names from other projects stay plain text when their inventory is not loaded
nitpicky = False
