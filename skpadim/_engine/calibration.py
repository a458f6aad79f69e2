"""Threshold calibration on held-out training images, without a second pass.

While the images stream by, every image gets a random key, uniform in
[0, 1), drawn in input order from the detector's own generator, and the
:class:`CalibrationSample` keeps the ``CAPACITY`` images with the smallest
keys (a bottom-k sample). At the end of a fit the ``k`` images with the
smallest keys of all are held out: a uniformly random subset of every image
seen, whatever the input order, and the same whether the images came in one
``fit`` or in several ``partial_fit`` calls. They are scored by the
Gaussians fitted on every *other* image (their sufficient statistics are
subtracted), which gives out-of-sample scores for the cost of one extra
Cholesky factorization, not of a second backbone pass.

Two samples merge exactly: the bottom-k of a union is the bottom-k of the
two bottom-k's, so statistics fitted on separate partitions of the images
(with independent keys) combine into the sample one pass would have kept.
"""

import os
import sys
import warnings

import numpy as np

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CAPACITY = 64
# Tukey's "far out" fence: Q3 + 3 * IQR of the held-out anomaly scores.
_FENCE = 3.0


def n_held_out(n_images):
    """Images held out for calibration after ``n_images`` were fitted (0: none)."""
    return 0 if n_images < 2 else max(1, min(CAPACITY, n_images // 5))


class CalibrationSample:
    """The ``CAPACITY`` images with the smallest random keys, sorted by key.

    ``keys`` (float64), ``ids`` (int64: the image's position in the stream of
    fitted images) and ``items`` (whatever ``take(j)`` returned for the
    image: the detector stores its kept channels at each layer's own
    resolution) are parallel. Items are never modified in place, so copies
    share them.
    """

    def __init__(self, keys=(), ids=(), items=()):
        self.keys = np.asarray(keys, dtype=np.float64).reshape(-1)
        self.ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        self.items = list(items)
        if not (len(self.keys) == len(self.ids) == len(self.items) <= CAPACITY):
            raise ValueError("inconsistent calibration sample")
        if np.any(np.diff(self.keys) < 0) or np.any((self.keys < 0) | (self.keys >= 1)):
            raise ValueError("calibration keys must be sorted and in [0, 1)")

    def __len__(self):
        return len(self.keys)

    def copy(self):
        return CalibrationSample(self.keys.copy(), self.ids.copy(), self.items)

    def _keep(self, keys, ids, items):
        order = np.argsort(keys, kind="stable")[:CAPACITY]
        self.keys, self.ids = keys[order], ids[order]
        self.items = [items[i] for i in order]

    def offer(self, keys, first_id, take):
        """Consider a batch of images with random ``keys``; ``take(j)`` copies image ``j``."""
        keys = np.asarray(keys, dtype=np.float64)
        bound = self.keys[-1] if len(self) == CAPACITY else np.inf
        new = np.flatnonzero(keys < bound)
        new = new[np.argsort(keys[new], kind="stable")[:CAPACITY]]
        if len(new) == 0:
            return
        self._keep(
            np.concatenate([self.keys, keys[new]]),
            np.concatenate([self.ids, first_id + new]),
            self.items + [take(int(j)) for j in new],
        )

    def merged(self, other, id_offset):
        """The sample of both streams; ``other``'s ids are shifted by ``id_offset``."""
        out = self.copy()
        out._keep(
            np.concatenate([self.keys, other.keys]),
            np.concatenate([self.ids, other.ids + id_offset]),
            self.items + other.items,
        )
        return out

    def held_out(self, n_images):
        """``(items, ids)`` of the images held out after ``n_images`` were fitted."""
        k = n_held_out(n_images)
        return self.items[:k], self.ids[:k]


def offset_for(scores, contamination):
    """``offset_`` from held-out calibration scores (score_samples convention).

    ``contamination`` is the fraction of new normal images to flag. A new
    normal image is exchangeable with the k calibration images, so the
    threshold at the j-th lowest of their scores flags it with probability
    j / (k + 1): the offset is the quantile at position ``contamination * (k
    + 1)`` (numpy's "weibull" method), interpolated between order
    statistics. Below position 1 it is the lowest score, which flags about 1
    / (k + 1), and a warning says so. ``'auto'`` is Tukey's far-out fence.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if isinstance(contamination, str):  # "auto"
        anomaly = -scores
        q1, q3 = np.percentile(anomaly, [25, 75])
        return float(-(q3 + _FENCE * (q3 - q1)))
    k = len(scores)
    if contamination * (k + 1) < 1:
        warnings.warn(
            f"contamination={contamination:g} asks to flag fewer new normal images than "
            f"the {k} held-out calibration image(s) can resolve: the threshold is their "
            f"lowest score, which flags about 1 in {k + 1} ({1 / (k + 1):.1%}). Fit more "
            f"images (up to {CAPACITY} are held out, one in five of those fitted), or set "
            "the threshold on a larger set of normal images yourself.",
            UserWarning,
            stacklevel=_caller_level(),
        )
    return float(np.percentile(scores, 100.0 * contamination, method="weibull"))


def flagged_fraction(scores, offset):
    """Fraction of ``scores`` that ``offset`` flags (``score < offset``, as ``predict``)."""
    return float(np.mean(np.asarray(scores) < offset))


def _caller_level():
    """``stacklevel`` of the first frame outside skpadim (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
