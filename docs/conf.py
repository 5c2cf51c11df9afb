"""Sphinx configuration of the adam_jax documentation.

Why Sphinx with MyST, and not MkDocs with mkdocstrings: this is the JAX ecosystem's toolchain
(optax, flax, chex and equinox's neighbours build with it), so a reader finds the API pages laid
out as in optax's; the docstrings are already reStructuredText (``:func:`` roles), which autodoc
reads as they are; myst-nb renders the two notebooks from their committed outputs; and
``sphinx-build -W`` turns every broken reference, unknown directive and malformed docstring into
an error. The pages are MyST Markdown, so they read on GitHub too.

Why furo: a maintained theme from PyPI with a readable sidebar, search and a dark mode, and no
assets fetched at build or view time (everything it shows ships in its wheel).

Nothing is downloaded at build time: no intersphinx, and the notebooks are not executed here
(``tests/test_notebooks.py`` executes them). The measured tables are generated from ``results/``
by ``_ext/results_tables.py``.

Build: ``pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # this checkout's adam_jax, whatever is installed

import adam_jax  # noqa: E402

project = "adam_jax"
author = "adam_jax developers"
copyright = "2026, adam_jax developers"
release = version = adam_jax.__version__

extensions = [
    "myst_nb",  # MyST Markdown pages and the notebooks (it includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "results_tables",
]

root_doc = "index"
exclude_patterns = ["_build", "README.md", "**/.ipynb_checkpoints", "**/__pycache__"]
suppress_warnings = ["myst.header"]  # the notebooks' own heading levels are theirs to choose

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3  # {#slug} anchors on headings, so [text](page.md#heading) links work
nb_execution_mode = "off"  # render the committed outputs; tests/test_notebooks.py executes them

autodoc_default_options = {"members": False, "show-inheritance": False}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# Signatures name the aliases the code uses, not their expansions (a union of a dozen types each).
_ALIASES = (
    "ArrayLike",
    "DTypeLike",
    "PyTree",
    "optax.Params",
    "optax.Updates",
    "optax.OptState",
    "optax.ScalarOrSchedule",
    "optax.Schedule",
)
autodoc_type_aliases = {name: name for name in _ALIASES}
autodoc_member_order = "bysource"
add_module_names = True

html_theme = "furo"
html_title = f"adam_jax {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


def _plain_aliases(app, what, name, obj, options, signature, return_annotation):
    """An alias inside a union (``DTypeLike | None``) is printed as ``TypeAliasForwardRef('...')``
    by autodoc: print its name."""

    def plain(text):
        return re.sub(r"TypeAliasForwardRef\('([^']+)'\)", r"\1", text) if text else text

    return plain(signature), plain(return_annotation)


def setup(app):
    app.connect("autodoc-process-signature", _plain_aliases)
