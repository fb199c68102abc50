"""Sphinx configuration (numpydoc API pages, sphinx-gallery examples).

The build needs no network: no intersphinx, no remote images. The gallery runs
every ``examples/plot_*.py`` in its fast mode (``DEEPBLUR_FAST=1``) and writes
the figures the examples save to ``_build/example_output``; sphinx-gallery's
matplotlib scraper captures the open figures for the pages.
"""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The examples read these at import time: set them before sphinx-gallery runs.
os.environ["DEEPBLUR_FAST"] = "1"
os.environ.setdefault("DEEPBLUR_OUTPUT", str(HERE / "_build" / "example_output"))
os.environ.setdefault("MPLBACKEND", "Agg")

import shutil  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(HERE / "sphinxext"))

import deepblur  # noqa: E402

# sphinx-gallery needs a gallery header next to the examples; examples/ holds
# only the scripts, so the gallery is built from a staging copy made here
# (docs/_gallery_src, ignored by git): the header below plus every
# examples/plot_*.py, copied only when changed (sphinx-gallery reruns an
# example when its content changes).
GALLERY_SRC = HERE / "_gallery_src"
GALLERY_SRC.mkdir(exist_ok=True)
for stale in GALLERY_SRC.glob("*.py"):
    if not (HERE.parent / "examples" / stale.name).exists():
        stale.unlink()
for script in sorted((HERE.parent / "examples").glob("plot_*.py")):
    target = GALLERY_SRC / script.name
    if not target.exists() or target.read_bytes() != script.read_bytes():
        shutil.copy2(script, target)
shutil.copy2(HERE / "sphinxext" / "gallery_header.rst",
             GALLERY_SRC / "GALLERY_HEADER.rst")


def _write_cli_help(target=HERE / "generated" / "cli"):
    """Write ``deepblur [COMMAND] --help`` to ``target/*.txt`` for cli.rst.

    Generated at every build from :func:`deepblur.cli.build_parser`, so that
    the command-line page always shows the current options. Skipped when the
    package has no command line.
    """
    try:
        from deepblur.cli import build_parser
    except ImportError:
        return
    import argparse

    os.environ["COLUMNS"] = "80"        # argparse wraps to the terminal width
    parser = build_parser()
    target.mkdir(parents=True, exist_ok=True)
    helps = {"deepblur": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                helps[name] = sub.format_help()
    for name, text in helps.items():
        path = target / f"{name}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


_write_cli_help()

project = "deepblur"
author = "deepblur developers"
copyright = "deepblur developers"
release = deepblur.__version__
version = release
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_gallery_src", "sphinxext", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.md5",
                    "auto_examples/*.json", "**/*.codeobj.json"]

# -- API pages -----------------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- Markdown (benchmarks/README.md is included as is) --------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

# -- Gallery -------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "_gallery_src",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"plot_",
    "ignore_pattern": r"train_default_model\.py",
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib", "gallery_file.set_example_file"),
    "reset_modules_order": "both",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "plot_gallery": "True",
}

html_theme = "alabaster"
html_static_path = []
html_theme_options = {"description": "Blind identification of space-varying blur"}
