"""Scorers for scikit-learn's model selection, and threshold calibration.

Both take a fitted detector rather than scores, and do the sign flip of
scikit-learn's outlier convention themselves (``score_samples``: lower = more
abnormal; anomaly scores: higher = more anomalous).
"""

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.utils.validation import check_is_fitted

from .._labels import anomaly_labels
from ._image import (
    f1_max,
    image_auroc,
    image_average_precision,
    n_anomalous_and_normal,
    optimal_threshold,
    require_both_classes,
)


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
        n_pos, n_neg = n_anomalous_and_normal(is_anomaly)
        if n_pos == 0 or n_neg == 0:
            warnings.warn(
                f"{self.name} is undefined on a split with {n_pos} anomalous and "
                f"{n_neg} normal images; returning nan. Split with "
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
    require_both_classes(is_anomaly, "calibrate_threshold", "y")
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


def _localization_input(detector, X, masks):
    """``(settings, maps, scores, masks)``: the detector's mask settings, and the maps and
    scores of the validation images, every mask checked against its map."""
    from .. import _regions

    if hasattr(detector, "fit"):
        check_is_fitted(detector)
    for name in ("offset_", "pixel_threshold_", "pixel_anchor_", "min_region_area"):
        if not hasattr(detector, name):
            raise TypeError(f"calibrate_pixel_threshold needs a fitted detector with {name} (a "
                            f"PadimDetector or an exported one), got {type(detector).__name__}.")
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"masks must be a 3-D array (n_images, height, width) or a list of 2-D "
                             f"arrays, got an array of shape {masks.shape}.")
    elif not isinstance(masks, (list, tuple)):
        raise TypeError(f"masks must be a 3-D array or a list of 2-D arrays (one per image of X), got "
                        f"{type(masks).__name__}.")
    settings = _regions.settings_of(detector)
    maps, scores = detector.anomaly_map(X, return_scores=True)
    if len(masks) != len(maps):
        raise ValueError(f"masks holds {len(masks)} masks but X holds {len(maps)} images; pass one "
                         "mask per image, at the image's size.")
    checked = []
    for i, (mask, amap) in enumerate(zip(masks, maps)):
        mask = np.asarray(mask)
        if mask.shape != amap.shape:
            raise ValueError(f"masks[{i}] has shape {mask.shape} but image {i} of X is "
                             f"{amap.shape[0]} x {amap.shape[1]} pixels; each mask must have its "
                             "image's height and width.")
        if mask.dtype != bool:
            if mask.dtype.kind not in "iuf" or ((mask != 0) & (mask != 1)).any():
                raise ValueError(f"masks[{i}] must be boolean or hold only 0 (normal) and 1 "
                                 "(anomalous).")
            mask = mask == 1
        checked.append(mask)
    if not any(m.any() for m in checked):
        raise ValueError("calibrate_pixel_threshold needs defects in the masks, but every mask is "
                         "empty: pass validation images with their defect masks.")
    return settings, maps, np.asarray(scores, dtype=np.float64), checked


def best_pixel_threshold(maps, scores, masks, settings):
    """``(pixel threshold, F1)``: the level whose masks (:func:`skpadim._regions.anomaly_mask`,
    before ``min_region_area``) reach the best pooled pixel F1 on ``masks``; the
    highest such level on ties (None if no level changes the masks). Exact: every
    level at which a mask changes is tried (:func:`skpadim._regions.levels`)."""
    from .. import _regions

    inside, outside, switches, fb_tp, fb_fp = [], [], [], [], []
    n_true = 0
    for amap, score, mask in zip(maps, scores, masks):
        n_true += int(np.count_nonzero(mask))
        lv = _regions.levels(amap, score, settings)
        if not lv.flagged:
            continue  # predict calls it normal: no mask at any pixel threshold
        inside.append(lv.levels[mask & np.isfinite(lv.levels)])
        outside.append(lv.levels[~mask & np.isfinite(lv.levels)])
        switches.append(lv.switch)
        fb_tp.append(np.count_nonzero(lv.fallback & mask))
        fb_fp.append(np.count_nonzero(lv.fallback & ~mask))
    if not switches:
        raise ValueError("predict calls every image of X normal, so no pixel threshold gives them "
                         "a mask: calibrate offset_ first (calibrate_threshold), or pass images with "
                         "defects that the detector flags.")
    inside = np.sort(np.concatenate(inside).astype(np.float64))
    outside = np.sort(np.concatenate(outside).astype(np.float64))
    order = np.argsort(switches)
    switches = np.asarray(switches, np.float64)[order]
    fb_tp = np.concatenate([[0], np.cumsum(np.asarray(fb_tp)[order])])
    fb_fp = np.concatenate([[0], np.cumsum(np.asarray(fb_fp)[order])])
    # Masks change only at these levels: each is the threshold of the interval it starts.
    candidates = np.concatenate([inside, outside, switches])
    candidates = np.unique(candidates[np.isfinite(candidates)])
    if candidates.size == 0:  # every flagged image has its fallback mask, whatever the level
        return None, float(2.0 * fb_tp[-1] / (fb_tp[-1] + fb_fp[-1] + n_true))
    below = np.nextafter(np.float32(candidates[0]), np.float32(-np.inf))  # every pixel in
    candidates = np.concatenate([[float(below)], candidates])
    k = np.searchsorted(switches, candidates, side="right")  # images in their fallback
    tp = inside.size - np.searchsorted(inside, candidates, side="right") + fb_tp[k]
    fp = outside.size - np.searchsorted(outside, candidates, side="right") + fb_fp[k]
    f1 = 2.0 * tp / (tp + fp + n_true)
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    return float(candidates[best]), float(f1[best])


def calibrate_pixel_threshold(detector, X, masks):
    """Set a fitted detector's ``pixel_threshold_`` to the F1-optimal level on labelled masks.

    The level is chosen for the masks the detector outputs
    (``detector.anomaly_mask``): only on the images ``predict`` flags, with
    their fallback to the map's peak, so that afterwards the pooled pixel
    F1 of ``detector.anomaly_mask(X)`` against ``masks`` is the best any
    ``pixel_threshold_`` reaches (counted before ``min_region_area``; the
    highest such level on ties). Exact: every level at which a mask
    changes is tried. ``offset_`` is not changed: calibrate it first with
    :func:`calibrate_threshold` if you calibrate both.

    Parameters
    ----------
    detector : PadimDetector or an exported detector of :mod:`skpadim.runtime`
        Fitted; has ``anomaly_map``, ``offset_`` and ``pixel_threshold_``.
    X : array-like
        Validation images, as ``detector.anomaly_map`` accepts them.
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Their defect masks (boolean or {0, 1}, 1 = defect), each at its
        image's own size; all-False for normal images. Some must hold
        defects.

    Returns
    -------
    detector : estimator
        The same detector, ``pixel_threshold_`` updated in place (and
        nothing changed if an argument is refused).

    See Also
    --------
    calibrate_threshold : The same for the image threshold ``offset_``.
    pixel_f1_score : The F1 of the masks.

    Examples
    --------
    >>> from skpadim import PadimDetector
    >>> from skpadim.datasets import make_anomaly_images
    >>> from skpadim.metrics import calibrate_pixel_threshold, pixel_f1_score
    >>> X, y, masks = make_anomaly_images(30, 6, image_size=64, random_state=0)
    >>> det = PadimDetector(weights=None, image_size=64, n_features=20, random_state=0)
    >>> det = det.fit(X[:24])
    >>> before = pixel_f1_score(masks[24:], det.anomaly_mask(X[24:]))
    >>> det = calibrate_pixel_threshold(det, X[24:], masks[24:])
    >>> pixel_f1_score(masks[24:], det.anomaly_mask(X[24:])) >= before
    True
    """
    settings, maps, scores, masks = _localization_input(detector, X, masks)
    threshold, _ = best_pixel_threshold(maps, scores, masks, settings)
    if threshold is not None:  # None: no level changes these masks
        detector.pixel_threshold_ = threshold
    return detector
