"""Give sphinx-gallery examples a ``__file__`` (sphinx-gallery defines none).

The examples compute their default output folder from ``__file__``
(``Path(__file__).parent / "output"``), which sphinx-gallery's execution
namespace lacks on purpose. Name lookups that miss a module's globals fall back
to :mod:`builtins`, so this reset hook sets ``builtins.__file__`` to the
example's path before it runs and removes it afterwards. The value is only a
default: ``docs/conf.py`` sets ``DEEPBLUR_OUTPUT``, which the examples use.

Referenced from ``sphinx_gallery_conf["reset_modules"]`` by its qualified name
so that Sphinx can pickle the configuration.
"""

import builtins
from pathlib import Path

GALLERY_SRC = Path(__file__).resolve().parents[1] / "_gallery_src"


def set_example_file(gallery_conf, fname, when):
    """Set ``builtins.__file__`` before an example runs, remove it after."""
    if when == "before" and fname is not None:
        builtins.__file__ = str(GALLERY_SRC / Path(fname).name)
    elif hasattr(builtins, "__file__"):
        del builtins.__file__
