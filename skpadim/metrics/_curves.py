"""Ranking curves (ROC, precision-recall, F1, per-region overlap) from tallies.

Every threshold metric in :mod:`skpadim.metrics` is computed from a *tally*:
groups of samples sorted by decreasing threshold, with, for each group, the
number of anomalous samples (``pos``), of normal samples (``neg``) and, for the
per-region overlap, the sum over its anomalous pixels of ``1 / size of the
pixel's region`` (``overlap``).  Predicting "anomalous" for ``score >= t_k``
flags exactly the groups ``0..k``, so cumulative sums give every point of the
curves.

* An *exact* tally has one group per distinct score (:func:`exact_tally`):
  the curves are then the exact ones, ties counted as scikit-learn does.
* A *binned* tally has one group per histogram bin, ``t_k`` being the bin's
  lower edge (built in :mod:`skpadim.metrics._pixel_passes`): the curves are evaluated at
  the bin edges only.
"""

from typing import NamedTuple, Optional

import numpy as np


class Tally(NamedTuple):
    """Per-threshold counts, thresholds in decreasing order, no empty group."""

    thresholds: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    overlap: Optional[np.ndarray] = None


def exact_tally(scores, is_anomaly, overlap_weights=None):
    """Group 1-D ``scores`` by distinct value, highest first.

    ``overlap_weights`` (optional) has one weight per sample (0 for normal
    ones).
    """
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    new_group = np.empty(scores.size, dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_group[1:])
    del sorted_scores
    starts = np.flatnonzero(new_group)
    del new_group
    thresholds = scores[order[starts]]
    pos = np.add.reduceat(is_anomaly[order], starts, dtype=np.int64).astype(np.float64)
    overlap = None
    if overlap_weights is not None:
        overlap = np.add.reduceat(overlap_weights[order], starts)
    del order
    neg = np.diff(starts, append=scores.size) - pos
    return Tally(thresholds, pos, neg, overlap)


def drop_empty(tally):
    """Remove the groups holding no sample (empty histogram bins)."""
    keep = (tally.pos + tally.neg) > 0
    overlap = None if tally.overlap is None else tally.overlap[keep]
    return Tally(tally.thresholds[keep], tally.pos[keep], tally.neg[keep], overlap)


def roc_auc(tally):
    """Area under the ROC curve (trapezoidal rule, ties count one half)."""
    n_pos = tally.pos.sum()
    n_neg = tally.neg.sum()
    pos_above = np.cumsum(tally.pos) - tally.pos
    return float(np.sum(tally.neg * (pos_above + 0.5 * tally.pos)) / (n_pos * n_neg))


def average_precision(tally):
    """Average precision: sum over thresholds of recall step times precision."""
    tp = np.cumsum(tally.pos)
    fp = np.cumsum(tally.neg)
    precision = tp / (tp + fp)
    return float(np.sum(tally.pos * precision) / tp[-1])


def f1_scores(tally):
    """F1 of the prediction ``score >= t_k`` for every threshold of the tally."""
    tp = np.cumsum(tally.pos)
    fp = np.cumsum(tally.neg)
    return 2.0 * tp / (tp + fp + tp[-1])


def pro_curve(tally, n_regions):
    """False-positive rates and per-region overlaps, starting at ``(0, 0)``."""
    fpr = np.concatenate([[0.0], np.cumsum(tally.neg) / tally.neg.sum()])
    pro = np.concatenate([[0.0], np.cumsum(tally.overlap) / n_regions])
    # Cumulative sums of non-negative terms can end a hair above 1.
    return np.minimum(fpr, 1.0), np.minimum(pro, 1.0)
