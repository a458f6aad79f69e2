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

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.utils.validation import check_is_fitted

from . import _pixels
from ._curves import (
    average_precision,
    exact_tally,
    f1_scores,
    pro_curve as _pro_curve,
    roc_auc,
    truncated_area,
)
from ._labels import anomaly_labels

__all__ = [
    "aupro",
    "calibrate_threshold",
    "f1_max",
    "f1_max_scorer",
    "get_scorer",
    "image_auroc",
    "image_auroc_scorer",
    "image_average_precision",
    "image_average_precision_scorer",
    "optimal_threshold",
    "pixel_auroc",
    "pixel_average_precision",
    "pixel_f1_max",
    "pixel_optimal_threshold",
    "pro_curve",
]


# --------------------------------------------------------------------------
# Image level
# --------------------------------------------------------------------------
def _image_tally(y_true, scores, caller):
    is_anomaly = anomaly_labels(y_true, name="y_true")
    scores = np.asarray(scores)
    if scores.dtype.kind not in "biuf":
        raise ValueError(
            f"scores must hold real anomaly scores, got dtype {scores.dtype}."
        )
    if scores.ndim != 1:
        raise ValueError(
            f"scores must be a 1-D array (one anomaly score per image), got "
            f"shape {scores.shape}."
        )
    if scores.shape[0] != is_anomaly.shape[0]:
        raise ValueError(
            f"y_true and scores must have the same length, got {is_anomaly.shape[0]} "
            f"labels and {scores.shape[0]} scores."
        )
    scores = scores.astype(np.float64)
    finite = np.isfinite(scores)
    if not finite.all():
        raise ValueError(
            f"scores contains {np.count_nonzero(~finite)} NaN or infinite values "
            f"(first at index {int(np.argmin(finite))}); anomaly scores must be finite."
        )
    n_pos = int(np.count_nonzero(is_anomaly))
    if n_pos == 0 or n_pos == is_anomaly.size:
        raise ValueError(
            f"{caller} needs both anomalous and normal images, but y_true holds "
            f"{n_pos} anomalous and {is_anomaly.size - n_pos} normal images."
        )
    return exact_tally(scores, is_anomaly)


def image_auroc(y_true, scores):
    """Area under the ROC curve of image anomaly scores.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or -1) = anomalous, 0 (or +1) = normal; both classes must occur.
    scores : array-like of shape (n_images,)
        Finite anomaly scores, higher = more anomalous.

    Returns
    -------
    auroc : float
        Probability that a random anomalous image scores above a random
        normal one (ties count one half); equals
        ``sklearn.metrics.roc_auc_score(y_true == 1, scores)``.

    Examples
    --------
    >>> round(image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 3)
    0.75
    """
    return roc_auc(_image_tally(y_true, scores, "image_auroc"))


def image_average_precision(y_true, scores):
    """Average precision of image anomaly scores (anomalous = positive).

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or -1) = anomalous, 0 (or +1) = normal; both classes must occur.
    scores : array-like of shape (n_images,)
        Finite anomaly scores, higher = more anomalous.

    Returns
    -------
    ap : float
        ``sum_n (R_n - R_{n-1}) P_n`` over decreasing thresholds, as
        ``sklearn.metrics.average_precision_score``.

    Examples
    --------
    >>> round(image_average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 3)
    0.833
    """
    return average_precision(_image_tally(y_true, scores, "image_average_precision"))


def f1_max(y_true, scores):
    """Best F1 score over all thresholds of image anomaly scores.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or -1) = anomalous, 0 (or +1) = normal; both classes must occur.
    scores : array-like of shape (n_images,)
        Finite anomaly scores, higher = more anomalous.

    Returns
    -------
    f1 : float
        ``max_t F1(y_true, scores >= t)``.

    See Also
    --------
    optimal_threshold : The threshold reaching this F1.

    Examples
    --------
    >>> round(f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 3)
    0.8
    """
    return float(np.max(f1_scores(_image_tally(y_true, scores, "f1_max"))))


def optimal_threshold(y_true, scores):
    """Threshold on image anomaly scores that maximizes F1.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or -1) = anomalous, 0 (or +1) = normal; both classes must occur.
    scores : array-like of shape (n_images,)
        Finite anomaly scores, higher = more anomalous.

    Returns
    -------
    threshold : float
        One of the scores: predicting ``scores >= threshold`` as anomalous
        reaches :func:`f1_max`.  When several thresholds tie, the highest.

    Examples
    --------
    >>> optimal_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.35
    """
    tally = _image_tally(y_true, scores, "optimal_threshold")
    return float(tally.thresholds[np.argmax(f1_scores(tally))])


# --------------------------------------------------------------------------
# Pixel level
# --------------------------------------------------------------------------
def _pixel_tally(masks, maps, n_bins, caller, *, regions=False):
    n_bins = _pixels.check_n_bins(n_bins)
    masks, maps = _pixels.check_pairs(masks, maps)
    scan = _pixels.scan(masks, maps)
    _pixels.require_both_classes(scan, caller)
    tally, n_regions = _pixels.pixel_tally(masks, maps, scan, n_bins, regions=regions)
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
        always bins (see the module docstring for the error).

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
        always bins (see the module docstring for the error).

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
        always bins (see the module docstring for the error).

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
        always bins (see the module docstring for the error).

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
    return _pixels.smallest_at_least(masks, maps, edge)


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
        always bins (see the module docstring for the error).

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
    return truncated_area(fpr, pro, float(fpr_limit)) / float(fpr_limit)


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
        always bins (see the module docstring for the error).

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


# --------------------------------------------------------------------------
# Scorers and threshold calibration
# --------------------------------------------------------------------------
class _AnomalyScorer:
    """Scorer ``scorer(estimator, X, y)`` for an outlier detector.

    Anomaly scores are ``-estimator.score_samples(X)``; labels go through
    :func:`~skpadim._labels.anomaly_labels`.  On a split holding a single
    class the metric is undefined: an ``UndefinedMetricWarning`` is issued
    and ``nan`` returned.
    """

    def __init__(self, name, metric):
        self.name = name
        self._metric = metric

    def __call__(self, estimator, X, y):
        if y is None:
            raise ValueError(
                f"The {self.name} scorer needs labels y (1 or -1 = anomalous), "
                "got None."
            )
        is_anomaly = anomaly_labels(y, name="y")
        n_pos = int(np.count_nonzero(is_anomaly))
        if n_pos == 0 or n_pos == is_anomaly.size:
            warnings.warn(
                f"{self.name} is undefined on a split with {n_pos} anomalous and "
                f"{is_anomaly.size - n_pos} normal images; returning nan. Split with "
                "cv=StratifiedKFold(n_splits=k), k <= the number of anomalous "
                "images, so that every test fold holds both classes.",
                UndefinedMetricWarning,
                stacklevel=2,
            )
            return np.nan
        scores = -np.asarray(estimator.score_samples(X), dtype=np.float64)
        return self._metric(is_anomaly, scores)

    def __repr__(self):
        return f"get_scorer({self.name!r})"


image_auroc_scorer = _AnomalyScorer("image_auroc", image_auroc)
image_average_precision_scorer = _AnomalyScorer(
    "image_average_precision", image_average_precision
)
f1_max_scorer = _AnomalyScorer("f1_max", f1_max)

_SCORERS = {
    scorer.name: scorer
    for scorer in (image_auroc_scorer, image_average_precision_scorer, f1_max_scorer)
}


def get_scorer(name):
    """Scorer for ``GridSearchCV`` / ``cross_val_score`` from its name.

    A scorer is called as ``scorer(estimator, X, y)`` and returns a float,
    greater is better.  It scores ``-estimator.score_samples(X)`` (the
    detector follows scikit-learn's outlier convention: lower
    ``score_samples`` = more abnormal) against ``y`` (1 or -1 = anomalous).
    The same objects are available as :data:`image_auroc_scorer`,
    :data:`image_average_precision_scorer` and :data:`f1_max_scorer`.

    Parameters
    ----------
    name : {"image_auroc", "image_average_precision", "f1_max"}
        Metric computed on the test split.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``.

    Notes
    -----
    The metrics need anomalous and normal images in every test split.  Pass
    ``cv=StratifiedKFold(n_splits=k)`` with ``k`` at most the number of
    anomalous images: with ``cv=k`` (an integer) scikit-learn uses plain,
    unshuffled ``KFold`` for an outlier detector, and a data set sorted by
    label then yields single-class folds.  On such a fold the scorer warns
    (``UndefinedMetricWarning``) and returns ``nan``; ``GridSearchCV`` then
    warns about non-finite test scores and ranks ``nan`` means last.  Each
    training split may hold anomalous images too: what the detector does
    with them is up to its ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> class Detector:  # lower score_samples = more abnormal
    ...     def score_samples(self, X):
    ...         return -np.asarray(X).sum(axis=1)
    >>> X = np.array([[0.0], [0.2], [0.9], [1.1]])
    >>> get_scorer("image_auroc")(Detector(), X, [0, 0, 1, 1])
    1.0
    """
    try:
        return _SCORERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown scorer name {name!r}; expected one of {sorted(_SCORERS)}."
        ) from None


def calibrate_threshold(detector, X, y, *, metric="f1"):
    """Set a fitted detector's ``offset_`` to the F1-optimal threshold.

    The detector follows scikit-learn's outlier convention: ``predict``
    returns -1 (anomalous) where ``score_samples(X) < offset_`` and +1
    otherwise.  With anomaly scores ``a = -detector.score_samples(X)`` and
    ``t = optimal_threshold(y, a)``, ``offset_`` becomes the float just above
    ``-t`` (``np.nextafter``, in the dtype of the scores), so that afterwards
    ``detector.predict(X)`` equals ``np.where(a >= t, -1, 1)``: images scoring
    exactly ``t`` are flagged.

    Parameters
    ----------
    detector : fitted estimator
        Has ``score_samples`` and a ``predict`` / ``decision_function`` that
        read ``offset_``.
    X : array-like
        Labelled validation images, as accepted by ``detector.score_samples``.
    y : array-like of shape (n_images,)
        1 (or -1) = anomalous, 0 (or +1) = normal; both classes must occur.
    metric : {"f1"}, default="f1"
        Criterion maximized by the threshold.

    Returns
    -------
    detector : estimator
        The same detector, ``offset_`` updated in place.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import BaseEstimator, OutlierMixin
    >>> class Detector(OutlierMixin, BaseEstimator):
    ...     def fit(self, X, y=None):
    ...         self.mean_, self.offset_ = 0.0, -10.0
    ...         return self
    ...     def score_samples(self, X):  # lower = more abnormal
    ...         return -np.asarray(X, dtype=float)
    ...     def predict(self, X):
    ...         return np.where(self.score_samples(X) < self.offset_, -1, 1)
    >>> X, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    >>> detector = calibrate_threshold(Detector().fit(X), X, y)
    >>> detector.predict(X).tolist()
    [1, -1, -1, -1]
    """
    if metric != "f1":
        raise ValueError(f"metric must be 'f1', got {metric!r}.")
    check_is_fitted(detector)
    is_anomaly = anomaly_labels(y, name="y")
    n_pos = int(np.count_nonzero(is_anomaly))
    if n_pos == 0 or n_pos == is_anomaly.size:
        raise ValueError(
            f"calibrate_threshold needs both anomalous and normal images in y, got "
            f"{n_pos} anomalous and {is_anomaly.size - n_pos} normal images."
        )
    raw = np.asarray(detector.score_samples(X))
    if raw.shape != is_anomaly.shape:
        raise ValueError(
            f"detector.score_samples(X) returned shape {raw.shape} but y holds "
            f"{is_anomaly.size} labels; X and y must describe the same images."
        )
    dtype = raw.dtype if raw.dtype.kind == "f" else np.dtype(np.float64)
    raw = raw.astype(dtype, copy=False)
    threshold = optimal_threshold(is_anomaly, -raw)
    neg_threshold = dtype.type(-threshold)  # exact: -threshold is a raw score
    detector.offset_ = float(np.nextafter(neg_threshold, dtype.type(np.inf)))
    return detector
