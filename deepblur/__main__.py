"""``python -m deepblur``: the ``deepblur`` command (see :mod:`deepblur.cli`)."""

import sys

from deepblur.cli import main

if __name__ == "__main__":
    sys.exit(main())
