"""Image-level metrics: one anomaly score per image, exact curves.

The scores are grouped by distinct value (:func:`~._curves.exact_tally`), so
every metric here equals its scikit-learn counterpart on ``y_true == anomalous``
(ties counted as scikit-learn does); see :mod:`skpadim.metrics` for the
conventions.
"""

import numpy as np

from .._labels import anomaly_labels
from ._curves import average_precision, exact_tally, f1_scores, roc_auc


def n_anomalous_and_normal(is_anomaly):
    """Numbers of anomalous and of normal images in a boolean label vector."""
    n_pos = int(np.count_nonzero(is_anomaly))
    return n_pos, is_anomaly.size - n_pos


def require_both_classes(is_anomaly, caller, name):
    """Raise when the labels ``name`` hold no anomalous or no normal image."""
    n_pos, n_neg = n_anomalous_and_normal(is_anomaly)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{caller} needs both anomalous and normal images, but {name} holds "
            f"{n_pos} anomalous and {n_neg} normal images."
        )


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
    require_both_classes(is_anomaly, caller, "y_true")
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

