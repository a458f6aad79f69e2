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
    """Uniform sample (algorithm R) of per-image embeddings (P, d)."""

    def __init__(self, items=None):
        self.items = list(items or [])

    def copy(self):
        return Reservoir(self.items)

    def offer(self, emb, seen, rng):
        """Consider the images of batch ``emb`` (P, d, B); ``seen`` came before."""
        for j in range(emb.shape[-1]):
            t = seen + j
            if t < CAPACITY:
                self.items.append(emb[:, :, j].clone())
            else:
                r = rng.randint(0, t + 1)
                if r < CAPACITY:
                    self.items[r] = emb[:, :, j].clone()

    def held_out(self, n_total):
        """Return ``(emb (P, d, k), held_out)`` for calibrating ``n_total`` images.

        ``held_out`` is False when there are too few images to hold any out
        (a single image): its in-sample score is used then.
        """
        if not self.items:
            return None, False
        if n_total < 2:
            return torch.stack(self.items, dim=-1), False
        k = max(1, min(len(self.items), n_total // 5))
        return torch.stack(self.items[:k], dim=-1), True


def offset_from_scores(scores, contamination):
    """``offset_`` from calibration scores (score_samples convention, lower = worse)."""
    if isinstance(contamination, str):  # "auto"
        anomaly = -np.asarray(scores)
        q1, q3 = np.percentile(anomaly, [25, 75])
        return float(-(q3 + _FENCE * (q3 - q1)))
    return float(np.percentile(scores, 100.0 * contamination))
