"""Fit and score on a Dask cluster.

:func:`fit` fits a :class:`~skpadim.PadimDetector` as ``fit`` does in one
process, with the images spread over the workers of a Dask cluster; the
statistics are merged on the workers by a tree reduction, by blocks of patch
positions, and the client receives the final arrays only.
:func:`score_samples` scores on the workers and :func:`defect_regions` finds the
defect regions there; :func:`scatter` sends a fitted
detector to every worker once; :func:`connect` connects to a running
scheduler; :func:`check_files` and :func:`score_files` check and score image
files on the workers one bad file at a time (what ``skpadim fit`` and
``skpadim predict`` run with ``--scheduler``). Needs the ``dask`` extra: ``pip install "skpadim[dask]"`` (on the
workers too). See docs/distributed.md.

The functions are imported on first use: ``import skpadim`` and the command
line do not import Dask.
"""

import importlib

__all__ = ["check_files", "connect", "defect_regions", "fit", "scatter", "score_files", "score_samples"]

_MODULES = {"connect": "._client", "fit": "._fit", "scatter": "._score", "score_samples": "._score",
            "defect_regions": "._score", "check_files": "._files", "score_files": "._files"}


def require_dask():
    """Raise an ImportError saying how to install Dask when it is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "skpadim.distributed needs Dask's distributed scheduler: "
            'pip install "skpadim[dask]" (on the workers too).'
        ) from exc


def __getattr__(name):
    if name in _MODULES:
        require_dask()
        return getattr(importlib.import_module(_MODULES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
