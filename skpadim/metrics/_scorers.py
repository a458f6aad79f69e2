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
