"""Ranking curves: the image ROC curve and the pixel per-region-overlap curve."""

import numbers

import numpy as np

from .. import metrics
from .._labels import anomaly_labels
from .._trapezoid import area, cut
from ._axes import get_axes

# Curves are drawn through at most about this many points.
_MAX_CURVE_POINTS = 2000


def _thin(x):
    """Indices of at most ~_MAX_CURVE_POINTS points of a curve, first and last kept."""
    n = x.size
    if n <= _MAX_CURVE_POINTS:
        return np.arange(n)
    grid = np.linspace(x[0], x[-1], _MAX_CURVE_POINTS)
    idx = np.searchsorted(x, grid, side="right") - 1
    return np.unique(np.concatenate([[0], idx, [n - 1]]))


def _legend_label(label, metric_text):
    return metric_text if label is None else f"{label} ({metric_text})"


def plot_roc(y_true, scores, *, ax=None, label=None):
    """Draw the ROC curve of image anomaly scores, AUROC in the legend.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or -1) = anomalous, 0 (or +1) = normal; both classes must occur.
    scores : array-like of shape (n_images,)
        Anomaly scores, higher = more anomalous, e.g.
        ``-detector.score_samples(X)``.
    ax : matplotlib Axes, default=None
        Where to draw; the current axes when None.  Call again on the same
        axes to compare detectors.
    label : str, default=None
        Curve name; the legend reads ``"label (AUROC = 0.975)"``.

    Returns
    -------
    ax : matplotlib Axes
        Limits [0, 1] x [0, 1]; the curve is ``ax.lines[-1]``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from skpadim.plot import plot_roc
    >>> fig, ax = plt.subplots()
    >>> ax = plot_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], ax=ax, label="toy")
    >>> ax.get_legend().get_texts()[0].get_text()
    'toy (AUROC = 0.750)'
    >>> plt.close(fig)
    """
    from sklearn.metrics import roc_curve

    auroc = metrics.image_auroc(y_true, scores)  # validates y_true and scores
    is_anomaly = anomaly_labels(y_true, name="y_true")
    fpr, tpr, _ = roc_curve(is_anomaly, np.asarray(scores, dtype=np.float64))
    ax = get_axes(ax)
    if not any(line.get_gid() == "chance" for line in ax.lines):
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="_chance", gid="chance")
    ax.plot(fpr, tpr, lw=2, clip_on=False,
            label=_legend_label(label, f"AUROC = {auroc:.3f}"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (normal images flagged)")
    ax.set_ylabel("True positive rate (defective images flagged)")
    ax.set_title("Image-level ROC")
    ax.legend(loc="lower right")
    return ax


def plot_pro(masks, maps, *, fpr_limit=0.3, ax=None, label=None, n_bins=None):
    """Draw the per-region-overlap curve up to ``fpr_limit``, AUPRO in the legend.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    maps : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Anomaly maps, higher = more anomalous; ``maps[i]`` has the shape of
        ``masks[i]``.
    fpr_limit : float in (0, 1], default=0.3
        Right end of the x axis and upper integration limit of the AUPRO.
    ax : matplotlib Axes, default=None
        Where to draw; the current axes when None.
    label : str, default=None
        Curve name; the legend reads ``"label (AUPRO@0.3 = 0.912)"``.
    n_bins : int >= 2 or None, default=None
        As in :func:`skpadim.metrics.pro_curve`.

    Returns
    -------
    ax : matplotlib Axes
        Limits [0, fpr_limit] x [0, 1]; the curve is ``ax.lines[-1]``.  The
        AUPRO is :func:`skpadim.metrics.aupro` (computed from the same curve).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> import matplotlib.pyplot as plt
    >>> from skpadim.plot import plot_pro
    >>> masks = np.zeros((2, 8, 8), dtype=bool)
    >>> masks[1, 2:5, 2:5] = True
    >>> maps = masks + 0.001 * np.arange(64).reshape(8, 8)  # defects score highest
    >>> fig, ax = plt.subplots()
    >>> ax = plot_pro(masks, maps, ax=ax)
    >>> ax.get_legend().get_texts()[0].get_text()
    'AUPRO@0.3 = 1.000'
    >>> plt.close(fig)
    """
    if (
        isinstance(fpr_limit, (bool, np.bool_))
        or not isinstance(fpr_limit, numbers.Real)
        or not 0 < fpr_limit <= 1
    ):
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}.")
    fpr_limit = float(fpr_limit)
    fpr, pro, _ = metrics.pro_curve(masks, maps, n_bins=n_bins)
    x, y = cut(fpr, pro, fpr_limit)
    value = area(x, y) / fpr_limit  # aupro, from the same points
    keep = _thin(x)
    x, y = x[keep], y[keep]
    ax = get_axes(ax)
    ax.plot(x, y, lw=2, clip_on=False,
            label=_legend_label(label, f"AUPRO@{fpr_limit:g} = {value:.3f}"))
    ax.set_xlim(0, fpr_limit)
    ax.set_ylim(0, 1)
    ax.set_xlabel("False positive rate (normal pixels flagged)")
    ax.set_ylabel("Per-region overlap (mean fraction of each defect flagged)")
    ax.set_title("Pixel-level PRO curve")
    ax.legend(loc="lower right")
    return ax
