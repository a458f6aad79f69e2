"""Pixel-level metrics: anomaly maps against ground-truth masks.

Every function makes two passes over ``masks`` and ``maps`` (see
:mod:`._pixel_passes`): exact curves up to
:data:`~._pixel_passes.EXACT_MAX_PIXELS` pixels, binned ones beyond (the
error bounds are in the docstring of :mod:`skpadim.metrics`).
"""

import numpy as np

from . import _pixel_passes
from .._trapezoid import area, cut
from ._curves import average_precision, f1_scores, roc_auc
from ._curves import pro_curve as _pro_curve


def _pixel_tally(masks, maps, n_bins, caller, *, regions=False):
    n_bins = _pixel_passes.check_n_bins(n_bins)
    masks, maps = _pixel_passes.check_pairs(masks, maps)
    scan = _pixel_passes.scan(masks, maps)
    _pixel_passes.require_both_classes(scan, caller)
    tally, n_regions = _pixel_passes.pixel_tally(masks, maps, scan, n_bins, regions=regions)
    return masks, maps, tally, n_regions


def pixel_auroc(masks, maps, *, n_bins=None):
    """Area under the ROC curve over all pixels of all images.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    maps : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Finite anomaly maps, higher = more anomalous; ``maps[i]`` has the
        shape of ``masks[i]``.
    n_bins : int >= 2 or None, default=None
        None: exact up to 2**22 pixels, else 2**18 bins; an integer
        always bins (see :mod:`skpadim.metrics` for the error).

    Returns
    -------
    auroc : float
        Pixel-level AUROC (anomalous pixels positive), exact or binned.

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> maps = 0.5 * masks + np.random.default_rng(0).random(masks.shape)
    >>> round(pixel_auroc(masks, maps), 3)
    0.705
    >>> round(pixel_auroc(masks, maps, n_bins=64), 3)  # binned: approximate
    0.71
    """
    _, _, tally, _ = _pixel_tally(masks, maps, n_bins, "pixel_auroc")
    return roc_auc(tally)


def pixel_average_precision(masks, maps, *, n_bins=None):
    """Average precision over all pixels of all images.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    maps : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Finite anomaly maps, higher = more anomalous; ``maps[i]`` has the
        shape of ``masks[i]``.
    n_bins : int >= 2 or None, default=None
        None: exact up to 2**22 pixels, else 2**18 bins; an integer
        always bins (see :mod:`skpadim.metrics` for the error).

    Returns
    -------
    ap : float
        Pixel-level average precision (anomalous pixels positive).

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> maps = 0.5 * masks + np.random.default_rng(0).random(masks.shape)
    >>> round(pixel_average_precision(masks, maps), 3)
    0.587
    """
    _, _, tally, _ = _pixel_tally(masks, maps, n_bins, "pixel_average_precision")
    return average_precision(tally)


def pixel_f1_max(masks, maps, *, n_bins=None):
    """Best pixel-level F1 score over thresholds on the anomaly maps.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    maps : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Finite anomaly maps, higher = more anomalous; ``maps[i]`` has the
        shape of ``masks[i]``.
    n_bins : int >= 2 or None, default=None
        None: exact up to 2**22 pixels, else 2**18 bins; an integer
        always bins (see :mod:`skpadim.metrics` for the error).

    Returns
    -------
    f1 : float
        ``max_t F1(masks, maps >= t)`` over the exact or binned thresholds.

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> maps = 0.5 * masks + np.random.default_rng(0).random(masks.shape)
    >>> round(pixel_f1_max(masks, maps), 3)
    0.667
    """
    _, _, tally, _ = _pixel_tally(masks, maps, n_bins, "pixel_f1_max")
    return float(np.max(f1_scores(tally)))


def pixel_optimal_threshold(masks, maps, *, n_bins=None):
    """Threshold on anomaly maps that maximizes the pixel-level F1.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    maps : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Finite anomaly maps, higher = more anomalous; ``maps[i]`` has the
        shape of ``masks[i]``.
    n_bins : int >= 2 or None, default=None
        None: exact up to 2**22 pixels, else 2**18 bins; an integer
        always bins (see :mod:`skpadim.metrics` for the error).

    Returns
    -------
    threshold : float
        A pixel value such that ``maps >= threshold`` reaches
        :func:`pixel_f1_max` (the highest one on ties).  When binned, the
        smallest pixel value in the best bin or above it, so that the pixels
        flagged are exactly the ones counted.

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> maps = 0.5 * masks + np.random.default_rng(0).random(masks.shape)
    >>> round(pixel_optimal_threshold(masks, maps), 3)
    1.041
    """
    masks, maps, tally, _ = _pixel_tally(masks, maps, n_bins, "pixel_optimal_threshold")
    edge = float(tally.thresholds[np.argmax(f1_scores(tally))])
    return _pixel_passes.smallest_at_least(masks, maps, edge)


def aupro(masks, maps, fpr_limit=0.3, *, n_bins=None):
    """Normalized area under the per-region-overlap curve (AUPRO).

    The PRO curve of the MVTec AD benchmark (Bergmann et al.): the regions
    are the connected components of every ground-truth mask, with
    **8-connectivity** (``scipy.ndimage.label`` with a 3x3 structure of ones:
    pixels touching by a corner belong to the same region).  At threshold
    ``t``, ``PRO(t)`` is the mean over all regions of all images of the
    fraction of the region's pixels with ``map >= t`` (each region weighs the
    same, whatever its size) and ``FPR(t)`` is the fraction of normal pixels
    (``mask == 0``, in all images, normal images included) with
    ``map >= t``.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    maps : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Finite anomaly maps, higher = more anomalous; ``maps[i]`` has the
        shape of ``masks[i]``.
    fpr_limit : float in (0, 1], default=0.3
        Upper integration limit on the false-positive rate.
    n_bins : int >= 2 or None, default=None
        None: exact up to 2**22 pixels, else 2**18 bins; an integer
        always bins (see :mod:`skpadim.metrics` for the error).

    Returns
    -------
    aupro : float
        Trapezoidal integral of PRO over FPR from 0 to ``fpr_limit``, starting
        at (0, 0) and linearly interpolated at ``fpr_limit``, divided by
        ``fpr_limit``: 1 for a perfect map, ``fpr_limit / 2`` for a constant
        one, 0 when every normal pixel outscores every anomalous one.

    References
    ----------
    P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger and C. Steger, "The
    MVTec Anomaly Detection Dataset", IJCV 129, 1038-1059 (2021).

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> round(aupro(masks, masks * 1.0), 3)
    1.0
    >>> round(aupro(masks, np.ones((2, 4, 4))), 3)
    0.15
    """
    if (
        isinstance(fpr_limit, (bool, np.bool_))
        or not isinstance(fpr_limit, (int, float, np.integer, np.floating))
        or not 0 < fpr_limit <= 1
    ):
        raise ValueError(
            f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}."
        )
    _, _, tally, n_regions = _pixel_tally(masks, maps, n_bins, "aupro", regions=True)
    fpr, pro = _pro_curve(tally, n_regions)
    return area(*cut(fpr, pro, float(fpr_limit))) / float(fpr_limit)


def pro_curve(masks, maps, *, n_bins=None):
    """Per-region-overlap (PRO) curve: PRO against pixel false-positive rate.

    The curve whose normalized area up to ``fpr_limit`` is :func:`aupro`
    (same regions, 8-connectivity, same exact or binned thresholds).

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    maps : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Finite anomaly maps, higher = more anomalous; ``maps[i]`` has the
        shape of ``masks[i]``.
    n_bins : int >= 2 or None, default=None
        None: exact up to 2**22 pixels, else 2**18 bins; an integer
        always bins (see :mod:`skpadim.metrics` for the error).

    Returns
    -------
    fpr : ndarray of shape (n_thresholds + 1,)
        Fraction of normal pixels with ``map >= thresholds[k]``,
        non-decreasing from 0 to 1.
    pro : ndarray of shape (n_thresholds + 1,)
        Mean over all regions of the fraction of the region's pixels with
        ``map >= thresholds[k]``, non-decreasing from 0 to 1.
    thresholds : ndarray of shape (n_thresholds + 1,)
        Decreasing; ``thresholds[0]`` is ``inf`` (nothing flagged, the point
        (0, 0)), then one per distinct pixel value (exact) or the lower edge
        of every non-empty bin (binned).

    See Also
    --------
    aupro : The normalized area under this curve up to ``fpr_limit``.

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((1, 2, 3), dtype=bool)
    >>> masks[0, 0, :2] = True
    >>> maps = np.array([[[0.9, 0.5, 0.3], [0.1, 0.2, 0.7]]])
    >>> fpr, pro, thresholds = pro_curve(masks, maps)
    >>> fpr.tolist()
    [0.0, 0.0, 0.25, 0.25, 0.5, 0.75, 1.0]
    >>> pro.tolist()
    [0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    >>> thresholds.tolist()
    [inf, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1]
    """
    _, _, tally, n_regions = _pixel_tally(
        masks, maps, n_bins, "pro_curve", regions=True
    )
    fpr, pro = _pro_curve(tally, n_regions)
    thresholds = np.concatenate([[np.inf], tally.thresholds.astype(np.float64)])
    return fpr, pro, thresholds

