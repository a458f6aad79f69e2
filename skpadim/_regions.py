"""Defect masks and regions from anomaly maps (numpy only: the estimator, the runtime, the CLI).

A pixel is anomalous when its map value is above the pixel threshold
(``pixel_threshold_``, in anomaly-map units; strictly above, as an image is
flagged when its score is strictly above the image threshold). A region is
an 8-connected component of the mask. Masks and regions follow ``predict``:

* an image ``predict`` calls normal has an empty mask and no region;
* an image it flags has at least one region: if no pixel of its map is
  above the pixel threshold, its mask is the pixels at its map's maximum
  (the pixel that made it anomalous), so a flagged image never comes back
  without a place;
* ``min_region_area`` drops regions smaller than that many pixels, but
  never the largest region of a flagged image.

:func:`label` is the one connected-component labelling of skpadim: a
two-pass labelling over runs of pixels with a union-find, in numpy and
Python (no scipy at the inspection station); tests check it against
``scipy.ndimage.label``.

Examples
--------
>>> import numpy as np
>>> from skpadim._regions import defect_regions, label
>>> mask = np.array([[1, 1, 0, 0],
...                  [0, 0, 0, 1],
...                  [0, 0, 1, 1]], dtype=bool)
>>> labels, n = label(mask)
>>> n
2
>>> amap = np.where(mask, 5.0, 1.0).astype(np.float32)
>>> [(r.box, r.area) for r in defect_regions(amap, mask)]
[((2, 1, 4, 3), 3), ((0, 0, 2, 1), 2)]
"""

from typing import NamedTuple, Tuple

import numpy as np

__all__ = ["Region", "anomaly_mask", "defect_regions", "label"]


class Region(NamedTuple):
    """One defect region of an image (an 8-connected component of its mask).

    ``box`` is ``(x0, y0, x1, y1)`` in the image's pixels, the end excluded
    (``image[y0:y1, x0:x1]`` holds the region, as Python slices and Pillow's
    ``crop`` take boxes); ``area`` counts its pixels; ``centroid`` is ``(x, y)``,
    the mean of its pixels' coordinates; ``peak`` and ``mean`` are the largest
    and the mean map value over its pixels.
    """

    box: Tuple[int, int, int, int]
    area: int
    centroid: Tuple[float, float]
    peak: float
    mean: float

    def to_dict(self):
        """JSON-representable: ``{"box": [...], "area": ..., "centroid": [...], "peak": ..., "mean": ...}``."""
        return {"box": list(self.box), "area": self.area, "centroid": list(self.centroid),
                "peak": self.peak, "mean": self.mean}


def _runs(row):
    """(starts, ends) of the runs of True in a 1-D boolean array, ends excluded."""
    padded = np.concatenate(([False], row, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges[0::2], edges[1::2]


def label(mask):
    """8-connected components of a 2-D boolean ``mask``.

    Returns
    -------
    labels : ndarray of int32, the shape of ``mask``
        0 outside the mask, 1..n inside, numbered in raster order of each
        component's first pixel (as ``scipy.ndimage.label`` numbers them).
    n : int
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}.")
    parent = []

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs = []  # (row, start, end, run id)
    prev = []  # runs of the previous row: (start, end, id)
    for y in range(mask.shape[0]):
        starts, ends = _runs(mask[y])
        cur = []
        j = 0
        for a, b in zip(starts.tolist(), ends.tolist()):
            rid = len(parent)
            parent.append(rid)
            # 8-connectivity: a run of the row above touches [a - 1, b] (b excluded: b + 1).
            while j < len(prev) and prev[j][1] < a:  # ends before a - 1 + 1: cannot touch
                j += 1
            k = j
            while k < len(prev) and prev[k][0] <= b:
                ra, rb = find(rid), find(prev[k][2])
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
                k += 1
            cur.append((a, b, rid))
            runs.append((y, a, b, rid))
        prev = cur
    labels = np.zeros(mask.shape, np.int32)
    numbers = {}
    for y, a, b, rid in runs:  # raster order: numbered by first pixel
        root = find(rid)
        number = numbers.get(root)
        if number is None:
            number = numbers[root] = len(numbers) + 1
        labels[y, a:b] = number
    return labels, len(numbers)


def anomaly_mask(amap, flagged, pixel_threshold):
    """The boolean mask of one map (see the module docstring): empty unless ``flagged``."""
    amap = np.asarray(amap)
    if not flagged:
        return np.zeros(amap.shape, bool)
    mask = amap > pixel_threshold
    if not mask.any():  # flagged, yet nothing above the pixel threshold: its peak
        mask = amap >= amap.max()
    return mask


def defect_regions(amap, mask, min_region_area=0):
    """The regions of ``mask`` over ``amap``, largest first (ties: higher peak first).

    Regions smaller than ``min_region_area`` pixels are dropped, but for the
    largest one (a non-empty mask keeps at least one region).
    """
    amap = np.asarray(amap)
    labels, n = label(mask)
    if n == 0:
        return []
    flat = labels.ravel()
    inside = flat > 0
    ids = flat[inside] - 1
    values = amap.ravel()[inside].astype(np.float64)
    ys, xs = np.divmod(np.flatnonzero(inside), amap.shape[1])
    area = np.bincount(ids, minlength=n)
    total = np.bincount(ids, weights=values, minlength=n)
    cy = np.bincount(ids, weights=ys, minlength=n) / area
    cx = np.bincount(ids, weights=xs, minlength=n) / area
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, ids, values)
    x0 = np.full(n, np.iinfo(np.int64).max)
    y0 = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(x0, ids, xs)
    np.minimum.at(y0, ids, ys)
    x1 = np.zeros(n, np.int64)
    y1 = np.zeros(n, np.int64)
    np.maximum.at(x1, ids, xs + 1)
    np.maximum.at(y1, ids, ys + 1)
    order = sorted(range(n), key=lambda k: (-area[k], -peak[k], y0[k], x0[k]))
    out = []
    for rank, k in enumerate(order):
        if rank and area[k] < min_region_area:
            continue
        out.append(Region((int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])), int(area[k]),
                          (float(cx[k]), float(cy[k])), float(peak[k]), float(total[k] / area[k])))
    return out


def fit_pixel_threshold(maps, calibration_scores, offset):
    """The label-free pixel threshold, from the held-out normal images' maps (k, H, W) at
    ``image_size``, their ``score_samples`` and the fitted ``offset_``."""
    return -float(offset)


def masks(maps, scores, offset, pixel_threshold):
    """Boolean masks of ``maps`` (each image's own size), flagged as ``predict`` flags:
    ``scores`` are ``score_samples``, an image is flagged when its score is below ``offset``."""
    return [anomaly_mask(m, s < offset, pixel_threshold) for m, s in zip(maps, scores)]
