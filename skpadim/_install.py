"""The install commands that messages recommend, each written once (torch-free).

skpadim's base dependencies do not include torch, so that an inspection
machine runs exported models (:mod:`skpadim.runtime`, ``skpadim predict``
on an ``.onnx`` file) from one install that pip resolves without errors:
:data:`RUNTIME`. The estimator needs the ``torch`` extra, which every extra
that uses it (``export``, ``dask``, ``efficientnet``, ``test``) includes.
Every message of the package and every page of docs/ that recommends an
install gives one of these strings.

Examples
--------
>>> from skpadim._install import RUNTIME, TORCH, extra
>>> RUNTIME
'pip install "skpadim[runtime]"'
>>> extra("plot")
'pip install "skpadim[plot]"'
>>> print(missing("torch", "skpadim fit"))
skpadim fit needs torch, which is not installed here: pip install "skpadim[torch]" (exported models run without it: see docs/deploy.md)
"""

import importlib.util

__all__ = ["RUNTIME", "TORCH", "extra", "has_torch", "missing"]


def extra(name, *, upgrade=False):
    """The command that installs (``upgrade=True``: upgrades) skpadim with the extra ``name``."""
    return f'pip install {"-U " if upgrade else ""}"skpadim[{name}]"'


#: The inspection machine: exported models, the command line, no torch.
RUNTIME = extra("runtime")
#: PadimDetector, ``skpadim fit`` and ``skpadim export``.
TORCH = extra("torch")


def has_torch():
    """Whether torch and torchvision can be imported here (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))


def missing(module, what):
    """One line: ``what`` needs ``module`` (torch or torchvision), and how to get it."""
    return (f"{what} needs {module}, which is not installed here: {TORCH} (exported models run "
            "without it: see docs/deploy.md)")
