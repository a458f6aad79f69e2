"""``python -m skpadim``: the ``skpadim`` command line (see :mod:`skpadim.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
