"""Memory-bounded passes over ground-truth masks and anomaly maps.

Pixel metrics never concatenate the maps of a large data set.  A first pass
validates every (mask, map) pair and records the pixel counts and the global
score range; a second pass builds a :class:`~skpadim.metrics._curves.Tally`:

* exact (one group per distinct score) when the data set holds at most
  :data:`EXACT_MAX_PIXELS` pixels and the caller asked for ``n_bins=None``;
* otherwise binned: the global range is cut into ``n_bins`` equal-width bins
  and each image adds its per-bin counts (``np.bincount``) to running totals,
  so memory is ``O(n_bins + one image)`` whatever the number of images.

Bin ``k`` holds the scores ``x`` with ``edges[k] <= x < edges[k + 1]`` (the
maximum goes to the last bin).  The index is computed arithmetically, then
corrected against the edges themselves, so that "bin >= k" is exactly
"x >= edges[k]" and a threshold read from the edges flags exactly the pixels
that were counted.
"""

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ._curves import Tally, drop_empty, exact_tally

#: Largest number of pixels for which ``n_bins=None`` computes exact curves
#: (4 maps of 1024x1024, 64 of 256x256); the exact path needs ~60 bytes/pixel.
EXACT_MAX_PIXELS = 2**22
#: Number of bins used when ``n_bins=None`` and the data set is larger.
DEFAULT_N_BINS = 2**18
#: 8-connectivity: pixels touching by a side or a corner share a region.
REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


class Scan(NamedTuple):
    n_pixels: int
    n_pos: int
    n_neg: int
    lo: float
    hi: float


def check_n_bins(n_bins):
    """Validate the ``n_bins`` parameter (None or an integer >= 2)."""
    if n_bins is None:
        return None
    if isinstance(n_bins, (bool, np.bool_)) or not isinstance(
        n_bins, (int, np.integer)
    ):
        raise TypeError(
            "n_bins must be None (exact when small) or an integer >= 2, "
            f"got {n_bins!r}."
        )
    if n_bins < 2:
        raise ValueError(
            f"n_bins must be None (exact when small) or an integer >= 2, got {n_bins}."
        )
    return int(n_bins)


def _as_image_sequence(images, name):
    """Arrays become 3-D ndarrays; lists and lazy sequences are kept as is."""
    if isinstance(images, (list, tuple)):
        return images
    if hasattr(images, "ndim") and hasattr(images, "shape"):
        if not isinstance(images, np.ndarray):
            images = np.asarray(images)
        if images.ndim != 3:
            raise ValueError(
                f"{name} must be a 3-D array of shape (n_images, height, width) or a "
                f"list of 2-D arrays, got an array of shape {images.shape}."
            )
        return images
    if hasattr(images, "__len__") and hasattr(images, "__getitem__"):
        if not isinstance(images, (str, bytes, dict)):
            return images  # e.g. a lazy sequence loading one map at a time
    raise TypeError(
        f"{name} must be a 3-D array of shape (n_images, height, width) or a list "
        f"of 2-D arrays, got {type(images).__name__}. Two passes are made over the "
        "data: pass a list rather than a generator."
    )


def check_pairs(masks, maps):
    """Return ``masks`` and ``maps`` as indexable sequences of equal length."""
    masks = _as_image_sequence(masks, "masks")
    maps = _as_image_sequence(maps, "maps")
    if len(masks) != len(maps):
        raise ValueError(
            f"masks and maps must hold the same number of images, got "
            f"{len(masks)} masks and {len(maps)} maps."
        )
    if len(maps) == 0:
        raise ValueError("masks and maps are empty; at least one image is needed.")
    return masks, maps


def load_pair(masks, maps, i, *, check=True):
    """Return image ``i`` as (boolean mask, float64 map), both 2-D."""
    mask = np.asarray(masks[i])
    amap = np.asarray(maps[i])
    if amap.ndim != 2:
        raise ValueError(f"maps[{i}] must be a 2-D array, got shape {amap.shape}.")
    if mask.shape != amap.shape:
        raise ValueError(
            f"masks[{i}] has shape {mask.shape} but maps[{i}] has shape "
            f"{amap.shape}; each mask must have the shape of its map."
        )
    if check:
        if mask.dtype != bool:
            if mask.dtype.kind not in "iuf":
                raise ValueError(
                    f"masks[{i}] must be boolean or hold 0 and 1, got dtype "
                    f"{mask.dtype}."
                )
            bad = (mask != 0) & (mask != 1)
            if bad.any():
                raise ValueError(
                    f"masks[{i}] must be boolean or hold only 0 (normal) and 1 "
                    f"(anomalous), found the value {mask[bad][0].item()!r}."
                )
        if amap.dtype.kind not in "iuf":
            raise ValueError(
                f"maps[{i}] must hold real anomaly scores, got dtype {amap.dtype}."
            )
    if mask.dtype != bool:
        mask = mask == 1
    amap = amap.astype(np.float64, copy=False)
    if check:
        n_bad = amap.size - np.count_nonzero(np.isfinite(amap))
        if n_bad:
            raise ValueError(
                f"maps[{i}] contains {n_bad} NaN or infinite values; anomaly maps "
                "must be finite."
            )
    return mask, amap


def scan(masks, maps):
    """First pass: validate every pair, count pixels, find the score range."""
    n_pixels = n_pos = 0
    lo, hi = np.inf, -np.inf
    for i in range(len(maps)):
        mask, amap = load_pair(masks, maps, i)
        n_pixels += amap.size
        n_pos += int(np.count_nonzero(mask))
        if amap.size:
            lo = min(lo, float(amap.min()))
            hi = max(hi, float(amap.max()))
    return Scan(n_pixels, n_pos, n_pixels - n_pos, lo, hi)


def require_both_classes(scan_, caller):
    """Raise when the masks hold no anomalous or no normal pixel."""
    if scan_.n_pos == 0 or scan_.n_neg == 0:
        raise ValueError(
            f"{caller} needs both anomalous and normal pixels, but the masks hold "
            f"{scan_.n_pos} anomalous and {scan_.n_neg} normal pixels."
        )


def _region_weights(mask):
    """Number of regions, and ``1 / size of its region`` per anomalous pixel.

    Regions are the 8-connected components of the mask; the weights follow
    the raster order of ``mask``'s anomalous pixels.
    """
    labels, n_regions = ndimage.label(mask, structure=REGION_STRUCTURE)
    sizes = np.bincount(labels.ravel())
    return n_regions, 1.0 / sizes[labels[mask]]


def bin_edges(lo, hi, n_bins):
    """``n_bins + 1`` edges from ``lo`` to ``hi``, the last one replaced by +inf."""
    step = hi / n_bins - lo / n_bins  # no overflow for huge ranges
    edges = lo + step * np.arange(n_bins + 1, dtype=np.float64)
    edges[0] = lo
    edges[-1] = np.inf
    return edges


def bin_index(x, edges):
    """Bin of each value of ``x``: ``edges[k] <= x < edges[k + 1]``."""
    n_bins = edges.size - 1
    lo = edges[0]
    step = edges[1] - lo if n_bins > 1 else 1.0
    pos = (x - lo) / step if step > 0 else np.zeros_like(x)
    idx = np.clip(pos, 0, n_bins - 1).astype(np.intp)
    for _ in range(8):  # arithmetic is off by at most one bin in practice
        up = x >= edges[idx + 1]
        down = x < edges[idx]
        if not (up.any() or down.any()):
            return idx
        idx += up
        idx -= down
    return np.searchsorted(edges[1:-1], x, side="right")


def pixel_tally(masks, maps, scan_, n_bins, *, regions=False):
    """Second pass: exact or binned tally of all pixels (see module docstring).

    Returns the tally and the number of anomalous regions (0 unless
    ``regions``, which also fills the tally's per-region ``overlap``).
    """
    if n_bins is None and scan_.n_pixels <= EXACT_MAX_PIXELS:
        return _exact_pixel_tally(masks, maps, scan_.n_pixels, regions)
    n_bins = DEFAULT_N_BINS if n_bins is None else n_bins
    if scan_.hi <= scan_.lo:
        n_bins = 1
    edges = bin_edges(scan_.lo, scan_.hi, n_bins)
    counts = np.zeros(2 * n_bins, dtype=np.int64)
    overlap = np.zeros(n_bins) if regions else None
    n_regions = 0
    for i in range(len(maps)):
        mask, amap = load_pair(masks, maps, i, check=False)
        flat_mask = mask.ravel()
        idx = bin_index(amap.ravel(), edges)
        counts += np.bincount(2 * idx + flat_mask, minlength=2 * n_bins)
        if regions and flat_mask.any():
            n, weights = _region_weights(mask)
            n_regions += n
            overlap += np.bincount(idx[flat_mask], weights=weights, minlength=n_bins)
    tally = Tally(
        thresholds=edges[n_bins - 1 :: -1],
        pos=counts[1::2][::-1].astype(np.float64),
        neg=counts[0::2][::-1].astype(np.float64),
        overlap=None if overlap is None else overlap[::-1],
    )
    return drop_empty(tally), n_regions


def _exact_pixel_tally(masks, maps, n_pixels, regions):
    scores = np.empty(n_pixels)
    labels = np.empty(n_pixels, dtype=bool)
    weights = np.zeros(n_pixels) if regions else None
    n_regions = start = 0
    for i in range(len(maps)):
        mask, amap = load_pair(masks, maps, i, check=False)
        stop = start + amap.size
        scores[start:stop] = amap.ravel()
        labels[start:stop] = mask.ravel()
        if regions:
            n, image_weights = _region_weights(mask)
            n_regions += n
            weights[start:stop][mask.ravel()] = image_weights
        start = stop
    return exact_tally(scores, labels, weights), n_regions


def smallest_at_least(masks, maps, threshold):
    """Smallest map value ``>= threshold`` over all images."""
    best = np.inf
    for i in range(len(maps)):
        _, amap = load_pair(masks, maps, i, check=False)
        above = amap[amap >= threshold]
        if above.size:
            best = min(best, float(above.min()))
    return best
