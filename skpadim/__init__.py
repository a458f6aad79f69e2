"""skpadim: PaDiM anomaly detection and localization as a scikit-learn estimator.

The main entry point is :class:`PadimDetector`; :mod:`skpadim.metrics`,
:mod:`skpadim.datasets` and :mod:`skpadim.plot` hold the tools around it.
Submodules are imported on first use, so ``import skpadim`` (and the
command line's ``--help``) does not pay for importing torch. torch is an
extra (``pip install "skpadim[torch]"``): without it, the command line and
:mod:`skpadim.runtime` run exported models (docs/deploy.md).
"""

import importlib

__version__ = "0.1.0"

__all__ = ["PadimDetector", "Region", "datasets", "exceptions", "metrics", "__version__"]

_SUBMODULES = {"datasets", "distributed", "exceptions", "metrics", "plot", "cli"}


def __getattr__(name):
    if name == "PadimDetector":
        try:
            from ._detector import PadimDetector
        except ModuleNotFoundError as exc:
            if exc.name not in ("torch", "torchvision"):
                raise
            from ._install import missing

            raise ModuleNotFoundError(missing(exc.name, "skpadim.PadimDetector"), name=exc.name) from None
        return PadimDetector
    if name == "Region":
        from ._regions import Region

        return Region
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'skpadim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
