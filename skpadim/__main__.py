"""``python -m skpadim``: the ``skpadim`` command line (see :mod:`skpadim.cli`)."""

from .cli import console

if __name__ == "__main__":
    console()
