"""Label conventions shared by the detector and the metrics.

Two conventions are accepted for "is this image anomalous":

* ``{0, 1}``: 1 = anomalous, 0 = normal (the anomaly-detection convention);
* ``{-1, +1}``: -1 = outlier, +1 = inlier (scikit-learn's outlier convention).

A label vector containing ``-1`` is read with the second convention; any other
vector must only contain 0 and 1 and is read with the first.
"""

import numpy as np


def anomaly_labels(y, *, name="y"):
    """Return a boolean array, True where ``y`` marks an anomaly.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels in the ``{0, 1}`` (1 = anomalous) or ``{-1, +1}``
        (-1 = outlier) convention; booleans are read as ``{0, 1}``.
    name : str, default="y"
        Parameter name used in error messages.

    Returns
    -------
    is_anomaly : ndarray of shape (n_samples,), dtype=bool

    Examples
    --------
    >>> anomaly_labels([0, 1, 1]).tolist()
    [False, True, True]
    >>> anomaly_labels([1, -1, 1]).tolist()
    [False, True, False]
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of labels, got an array of shape {arr.shape}."
        )
    if arr.dtype == bool:
        return arr.copy()
    if arr.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must hold numeric labels (1 = anomalous, 0 = normal, or "
            f"-1 = outlier, +1 = inlier), got dtype {arr.dtype}."
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite labels.")
    values = set(np.unique(arr).tolist())
    if -1 in values:
        if not values <= {-1, 1}:
            raise ValueError(
                f"{name} mixes label conventions: got values {sorted(values)}; "
                "expected {-1, +1} (-1 = outlier) or {0, 1} (1 = anomalous)."
            )
        return arr == -1
    if not values <= {0, 1}:
        raise ValueError(
            f"{name} has unknown labels {sorted(values - {0, 1})}; expected "
            "{0, 1} (1 = anomalous) or {-1, +1} (-1 = outlier)."
        )
    return arr == 1
