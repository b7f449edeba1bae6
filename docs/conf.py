"""Sphinx configuration of the process_comms documentation (``sphinx-build -W docs docs/_build/html``).

Sphinx, MyST and furo, as the field's kiwipy, plumpy and aiida-core do (Read the Docs builds them the same way);
the pages are Markdown (MyST), the API reference comes from the docstrings (autodoc). Nothing is fetched at build
time: no intersphinx, no remote fonts (furo uses the system's), so the build works offline.
"""

from __future__ import annotations

import importlib.metadata

project = "process_comms"
author = "process_comms contributors"
copyright = "process_comms contributors"  # the name Sphinx reads
release = importlib.metadata.version("process_comms")
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links, as GitHub makes them
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"process_comms {release}"
