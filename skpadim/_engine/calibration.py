"""Threshold calibration on held-out training images, without a second pass.

A reservoir keeps a uniform random sample of up to ``CAPACITY`` training
embeddings while the images stream by. At the end of a fit, the first ``k``
of them are scored by the Gaussians fitted on every *other* image (their
sufficient statistics are subtracted), which gives out-of-sample scores for
the cost of one extra Cholesky factorization, not of a second backbone pass.
"""

import numpy as np
import torch

CAPACITY = 64
# Tukey's "far out" fence: Q3 + 3 * IQR of the held-out anomaly scores.
_FENCE = 3.0


class Reservoir:
    """Uniform sample (algorithm R) of per-image items.

    An item is whatever ``take(j)`` returns for image ``j`` of a batch: the
    detector stores each image's kept channels at the layers' own resolution
    (contiguous per image: a few times smaller and cheaper to copy than the
    image's column of the (P, d, B) embedding) and embeds the held-out ones
    at the end of the fit.
    """

    def __init__(self, items=None):
        self.items = list(items or [])

    def copy(self):
        return Reservoir(self.items)

    def offer(self, n_images, seen, rng, take):
        """Consider the ``n_images`` images of a batch; ``seen`` came before."""
        for j in range(n_images):
            t = seen + j
            if t < CAPACITY:
                self.items.append(take(j))
            else:
                r = rng.randint(0, t + 1)
                if r < CAPACITY:
                    self.items[r] = take(j)

    def held_out(self, n_total, embed):
        """Return ``(embed(items), held_out)`` for calibrating ``n_total`` images.

        ``embed`` turns a list of k items into (P, d, k) embeddings.
        ``held_out`` is False when there are too few images to hold any out
        (a single image): its in-sample score is used then.
        """
        if not self.items:
            return None, False
        if n_total < 2:
            return embed(self.items), False
        k = max(1, min(len(self.items), n_total // 5))
        return embed(self.items[:k]), True


def offset_from_scores(scores, contamination):
    """``offset_`` from calibration scores (score_samples convention, lower = worse)."""
    if isinstance(contamination, str):  # "auto"
        anomaly = -np.asarray(scores)
        q1, q3 = np.percentile(anomaly, [25, 75])
        return float(-(q3 + _FENCE * (q3 - q1)))
    return float(np.percentile(scores, 100.0 * contamination))
