"""Pictures of detections and of ranking curves, with matplotlib.

matplotlib is an optional dependency (``pip install "skpadim[plot]"``); it is
imported when a function of this module is called, not when the module is.

- :func:`plot_anomaly_overlay` draws an image, its anomaly map as a
  semi-transparent heat map, the ground-truth defect outline (green) and the
  outline of the region above a threshold (red).
- :func:`plot_detection` does the same for a fitted detector, at the map level
  where the detector flags an image (``-detector.offset_``).
- :func:`plot_roc` and :func:`plot_pro` draw the image ROC curve and the
  pixel per-region-overlap curve, with their areas in the legend.

Every function draws on ``ax`` (or on the current axes, ``plt.gca()``) and
returns it.  Scores and maps are *anomaly scores*, higher = more anomalous,
as in :mod:`skpadim.metrics`; see ``docs/conventions.md``.
"""

from ._curves import plot_pro, plot_roc
from ._overlay import (  # noqa: F401  (the colours are module constants, not in __all__)
    HEAT_CMAP,
    MASK_COLOR,
    REGION_COLOR,
    plot_anomaly_overlay,
    plot_detection,
)

__all__ = ["plot_anomaly_overlay", "plot_detection", "plot_pro", "plot_roc"]
