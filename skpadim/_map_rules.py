"""How patch distances become maps, as rules both the estimator and the runtime follow (numpy).

The estimator computes its maps with torch (:mod:`skpadim._engine.maps`,
:mod:`skpadim._engine.tiles`) and the deployment runtime with numpy
(:mod:`skpadim.runtime`); both take these rules from here, so they compute
the same maps:

* the Gaussian smoothing: its taps (:func:`gaussian_taps`, ``2 * int(4 *
  sigma + 0.5) + 1`` of them) and its border mode (:func:`pad_mode`: mirror,
  unless the map is too small for it);
* the bilinear upsampling of a distance grid (:func:`bilinear_matrix`, the
  ``align_corners=False`` rule of ``torch.nn.functional.interpolate``);
* tiles: where they start (:func:`tile_starts`: every ``stride`` pixels, the
  last one moved back to end at the border) and how overlapping tiles are
  blended (:func:`window`, a raised cosine, positive everywhere);
* image scores: how many of the highest pixels ``image_score=f`` averages
  (:func:`top_count`).

Examples
--------
>>> from skpadim._map_rules import tile_starts, top_count
>>> tile_starts(40, 32, 16)
[0, 8]
>>> top_count(0.01, 224 * 224)
502
"""

import math

import numpy as np

__all__ = ["bilinear_matrix", "gaussian_taps", "kernel_radius", "pad_mode", "tile_starts",
           "top_count", "window"]


def kernel_radius(sigma):
    """Taps on each side of the centre of :func:`gaussian_taps`."""
    return int(4.0 * sigma + 0.5)


def gaussian_taps(sigma):
    """Normalized 1-D Gaussian taps (float64), ``2 * kernel_radius(sigma) + 1`` of them."""
    size = 2 * kernel_radius(sigma) + 1
    x = np.arange(size, dtype=np.float64) - size // 2
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def pad_mode(radius, size):
    """The smoothing's border mode for maps of ``size``: ``"reflect"`` (mirror, without
    repeating the border pixel) unless a side is too short for it, then ``"replicate"``."""
    return "reflect" if radius < size[0] and radius < size[1] else "replicate"


def bilinear_matrix(n_in, n_out):
    """The (n_out, n_in) float64 matrix of a bilinear resize along one axis
    (``align_corners=False``, no antialiasing: torch's ``interpolate`` for upsampling)."""
    out = np.zeros((n_out, n_in))
    if n_in == n_out:
        np.fill_diagonal(out, 1.0)
        return out
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    rows = np.arange(n_out)
    np.add.at(out, (rows, i0), 1.0 - lam)
    np.add.at(out, (rows, i1), lam)
    return out


def tile_starts(n, tile, stride):
    """Start offsets of tiles of length ``tile`` every ``stride`` along ``n`` pixels, the last
    one ending at ``n``."""
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return starts


def window(length):
    """Raised-cosine weights (float64) of ``length`` taps, positive everywhere (largest at the
    centre): the weight of a tile's pixels where tiles overlap."""
    i = np.arange(length, dtype=np.float64)
    return np.sin(math.pi * (i + 0.5) / length) ** 2


def top_count(fraction, n_pixels):
    """Pixels averaged by ``image_score=fraction``: ``ceil(fraction * n_pixels)``, at least 1."""
    return max(1, min(n_pixels, math.ceil(fraction * n_pixels - 1e-9)))
