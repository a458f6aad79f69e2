"""skpadim: PaDiM anomaly detection and localization as a scikit-learn estimator.

The main entry point is :class:`PadimDetector`.
"""

from . import datasets, metrics
from ._detector import PadimDetector

__version__ = "0.1.0"

__all__ = ["PadimDetector", "datasets", "metrics", "__version__"]
