"""Image- and pixel-level metrics for anomaly detection and localization.

Conventions
-----------
Labels
    Image labels ``y_true`` follow :func:`skpadim._labels.anomaly_labels`:
    either ``{0, 1}`` (1 = anomalous) or ``{-1, +1}`` (-1 = outlier, the
    scikit-learn convention); ground-truth masks are boolean or ``{0, 1}``
    (1 = anomalous pixel).  The anomalous class is the positive class.
Scores
    Every metric function takes *anomaly scores*: **higher = more
    anomalous**, e.g. ``-detector.score_samples(X)`` for images or the
    detector's anomaly maps for pixels.  The scorers and
    :func:`calibrate_threshold` take a fitted detector instead and do the
    sign flip themselves (scikit-learn's ``score_samples``: lower = more
    abnormal).  A prediction at threshold ``t`` is ``score >= t``.

Defect masks
------------
:func:`pixel_f1_score`, :func:`pixel_iou`, :func:`region_recall` and
:func:`false_regions_per_image` score *predicted masks*
(``detector.anomaly_mask(X)``) against the true masks, or anomaly maps at
one ``threshold`` (``map >= threshold``); regions are 8-connected
components. :func:`calibrate_pixel_threshold` sets a detector's
``pixel_threshold_`` to the level whose masks reach the best pixel F1 on
labelled masks, as :func:`calibrate_threshold` sets ``offset_``.

Pixel metrics: exact or binned
------------------------------
``masks`` and ``maps`` are a 3-D array ``(n_images, height, width)``, lists of
2-D arrays (one shape per image, each mask of its map's shape) or any
sequence that loads one image per ``__getitem__``.  They are read image by
image in two passes and never concatenated when large, so thousands of
1024x1024 maps fit in memory.  With ``n_bins=None`` (default), data sets of
at most 2**22 (4.2 million) pixels get the exact curves (one threshold per
distinct score, ~60 bytes of memory per pixel); larger ones are binned: the
global score range is cut into 2**18 equal-width bins and only per-bin
counts are kept (a few MB, plus one image at a time).  An integer ``n_bins``
always bins.  Binning evaluates the curves at the bin edges only, as if the
scores in one bin were tied:

* pixel AUROC: the error is at most half the fraction of (anomalous, normal)
  pixel pairs whose scores share a bin, ``sum_k pos_k neg_k / (2 P N)``;
* AUPRO: at most the largest fraction of normal pixels in one bin divided by
  ``fpr_limit`` (the PRO curve is monotone, so between two bin edges the
  exact curve stays in the box spanned by the binned one);
* pixel AP and F1: only recall steps inside one bin are misplaced; the binned
  maximum F1 is the exact F1 of the returned threshold.

These errors are ~1e-5 or less for maps whose scores spread over the range;
they grow when a few extreme pixels stretch the range so that most pixels
fall into a handful of bins; pass a larger ``n_bins`` then.
"""

from ._image import f1_max, image_auroc, image_average_precision, optimal_threshold
from ._masks import false_regions_per_image, pixel_f1_score, pixel_iou, region_recall
from ._pixel import (
    aupro,
    pixel_auroc,
    pixel_average_precision,
    pixel_f1_max,
    pixel_optimal_threshold,
    pro_curve,
)
from ._scorers import (
    calibrate_pixel_threshold,
    calibrate_threshold,
    f1_max_scorer,
    get_scorer,
    image_auroc_scorer,
    image_average_precision_scorer,
)

__all__ = [
    "aupro",
    "calibrate_pixel_threshold",
    "calibrate_threshold",
    "f1_max",
    "f1_max_scorer",
    "false_regions_per_image",
    "get_scorer",
    "image_auroc",
    "image_auroc_scorer",
    "image_average_precision",
    "image_average_precision_scorer",
    "optimal_threshold",
    "pixel_auroc",
    "pixel_average_precision",
    "pixel_f1_max",
    "pixel_f1_score",
    "pixel_iou",
    "pixel_optimal_threshold",
    "pro_curve",
    "region_recall",
]
