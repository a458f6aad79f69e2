"""Defect masks and regions from anomaly maps (numpy only: the estimator, the runtime, the CLI).

The rule that cuts one image's map ``M`` (with ``t = -offset_``, the image
threshold, and two levels fitted without labels, in map units):

* an image ``predict`` calls normal (``score_samples >= offset_``) has an
  empty mask and no region;
* a flagged image's mask is the 8-connected regions of ``M > level`` that
  hold a pixel above ``t`` (or the map's maximum, for a map resized below
  ``t``), with ``level = max(pixel_threshold_, median(M) + 0.75 * (max(M) -
  pixel_anchor_))``; if no pixel is above the level, the pixels at the
  map's maximum (the place that made it anomalous), so that a flagged
  image never comes back without a place and masks only grow as
  ``pixel_threshold_`` falls;
* ``min_region_area`` then drops regions smaller than that many pixels
  from the regions and from the mask, but never the largest.

``pixel_threshold_`` (:func:`fit_pixel_threshold`) is the median peak of the
held-out normal maps that set ``offset_``; ``pixel_anchor_`` is the image
threshold of contamination='auto' of the same images, fixed by the fit. The
relative part outlines a strong defect tightly whatever its peak; the floor
decides for the images flagged by a small margin; the regions must reach
``t`` so that the broad, raised parts of a normal-looking map stay out.
A region is an 8-connected component of the mask (:class:`Region`).

Everything here works on one map as :meth:`~skpadim.PadimDetector.anomaly_map`
returns it (at the image's own size) and the image's ``score_samples``, with
the detector's public ``offset_``, ``pixel_threshold_``, ``pixel_anchor_``
and ``min_region_area`` (:func:`settings_of`): the estimator, the runtime, the
cluster's workers and the command line compute the same masks from the same
maps.

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

import numbers
from typing import NamedTuple, Tuple

import numpy as np

__all__ = ["Region", "Settings", "anomaly_mask", "check_min_region_area", "defect_regions", "label",
           "localize", "outline", "save_mask", "settings_of", "summary"]


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


class Settings(NamedTuple):
    """What turns a map and its image's score into a mask: a detector's fitted thresholds.

    ``offset``: ``offset_`` (an image is flagged when its ``score_samples`` is
    below it, and its regions must reach ``t = -offset``); ``pixel_threshold``:
    ``pixel_threshold_``, the floor of the level (map units); ``anchor``:
    ``pixel_anchor_``, the level the relative part of the level is measured
    from; ``min_region_area``: regions smaller than this are dropped.
    """

    offset: float
    pixel_threshold: float
    anchor: float
    min_region_area: int = 0


def settings_of(detector):
    """The :class:`Settings` of a fitted detector (a PadimDetector or an exported one),
    read from its public attributes once, so that a batch uses one set of values."""
    return Settings(float(detector.offset_), float(detector.pixel_threshold_), float(detector.pixel_anchor_),
                    check_min_region_area(detector.min_region_area, type(detector).__name__))


def check_min_region_area(value, owner):
    """``value`` as an int if it is a valid ``min_region_area``, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"The 'min_region_area' parameter of {owner} must be an int in the range "
                         f"[0, inf) (pixels). Got {value!r} instead.")
    return int(value)


def check_pixel_threshold(value):
    """``value`` as a float if it is a valid ``pixel_threshold_``, else a ValueError."""
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and np.isfinite(value)):
        raise ValueError(f"pixel_threshold_ must be a finite float (anomaly-map units), got {value!r}.")
    return float(value)


# ---------------------------------------------------------------- labelling


class _Runs(NamedTuple):
    """The runs of True of a 2-D mask in raster order (ends excluded), and the
    8-connected component of each, numbered 0..n-1 in raster order of the
    components' first pixels."""

    y: np.ndarray
    start: np.ndarray
    end: np.ndarray
    comp: np.ndarray
    n: int
    width: int

    def pixels(self):
        """``(flat indices of every run's pixels in raster order, start of each run in them)``."""
        lengths = self.end - self.start
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        first = self.y * self.width + self.start
        return np.repeat(first - offsets, lengths) + np.arange(int(lengths.sum())), offsets

    def subset(self, keep_comp):
        """The runs of the components where ``keep_comp`` (a boolean per component) holds,
        renumbered in the same order."""
        keep = keep_comp[self.comp]
        number = np.cumsum(keep_comp) - 1
        return _Runs(self.y[keep], self.start[keep], self.end[keep], number[self.comp[keep]],
                     int(keep_comp.sum()), self.width)

    def mask(self, shape):
        out = np.zeros(shape, bool)
        out.ravel()[self.pixels()[0]] = True
        return out


def _components(mask):
    """The :class:`_Runs` of ``mask``: runs found for the whole image at once, joined by a
    union-find over runs (each run meets the runs of the row above that touch it)."""
    width = mask.shape[1]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return _Runs(empty, empty, empty, empty, 0, width)
    y0, x0 = rows[0], cols[0]
    box = mask[y0:rows[-1] + 1, x0:cols[-1] + 1]  # the mask's bounding box: small for small defects
    padded = np.zeros((box.shape[0], box.shape[1] + 2), bool)
    padded[:, 1:-1] = box
    ys, xs = np.nonzero(padded[:, 1:] != padded[:, :-1])  # raster order: start, end, start...
    y, start, end = ys[0::2] + y0, xs[0::2] + x0, xs[1::2] + x0
    ylist, alist, blist = y.tolist(), start.tolist(), end.tolist()
    parent = list(range(len(ylist)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row = -2
    lo = hi = j = first = 0  # the previous row's runs are [lo, hi)
    for i, (yi, a, b) in enumerate(zip(ylist, alist, blist)):
        if yi != row:
            lo, hi = (first, i) if yi == row + 1 else (i, i)
            j, first, row = lo, i, yi
        # 8-connectivity: a run above touches this one when it covers a column of [a - 1, b].
        while j < hi and blist[j] < a:
            j += 1
        k = j
        while k < hi and alist[k] <= b:
            ra, rb = find(i), find(k)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the root is the component's first run
            k += 1
    roots = np.array([find(i) for i in range(len(parent))], np.int64)
    _, comp = np.unique(roots, return_inverse=True)  # roots in raster order of first runs
    return _Runs(y, start, end, comp.reshape(-1), int(comp.max()) + 1, width)


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
    runs = _components(mask)
    labels = np.zeros(mask.shape, np.int32)
    idx, _ = runs.pixels()
    labels.ravel()[idx] = np.repeat(runs.comp + 1, runs.end - runs.start)
    return labels, runs.n


# ---------------------------------------------------------------- the rule

#: The relative part of a flagged image's level: its map's median plus this share of
#: its peak's excess over ``pixel_anchor_``.
PEAK_FRACTION = 0.75


def fit_pixel_threshold(peaks):
    """The label-free ``pixel_threshold_``: the median of the maxima ``peaks`` (k,) of the
    maps of the held-out normal images that set ``offset_``, in map units. (The rule's
    other fitted level, ``pixel_anchor_``, is the image threshold of
    contamination='auto' of the same images: the detectors read it from their
    calibration.)"""
    return float(np.median(np.asarray(peaks, dtype=np.float64)))


def _seeds(amap, offset):
    """The pixels a region must reach: above the image threshold ``t = -offset``, or (a
    map resized below it) the map's maximum."""
    seeds = amap > amap.dtype.type(-float(offset))
    return seeds if seeds.any() else amap >= amap.max()


def level_of(amap, settings, pixel_threshold):
    """The level of one flagged image's mask, ``max(pixel_threshold, median + f (peak - anchor))``,
    in the map's dtype (the comparisons with it are exact)."""
    relative = float(np.median(amap)) + PEAK_FRACTION * (float(amap.max()) - float(settings.anchor))
    return amap.dtype.type(max(float(pixel_threshold), relative))


def anomaly_mask(amap, score, settings):
    """The mask of one map before ``min_region_area`` (see the module docstring).

    ``score`` is the image's ``score_samples``: empty unless ``score < settings.offset``.
    """
    amap = np.asarray(amap)
    runs = _cut(amap, score, settings)
    return np.zeros(amap.shape, bool) if runs is None else runs.mask(amap.shape)


def _cut(amap, score, settings):
    """The :class:`_Runs` of the mask of :func:`anomaly_mask`; None for an image not flagged."""
    if not score < settings.offset:
        return None
    above = amap > level_of(amap, settings, settings.pixel_threshold)
    if not above.any():  # nothing above the level: the map's maximum
        return _components(amap >= amap.max())
    runs = _components(above)
    idx, offsets = runs.pixels()
    reaches = np.logical_or.reduceat(_seeds(amap, settings.offset).ravel()[idx], offsets)
    return runs.subset(np.bincount(runs.comp, weights=reaches, minlength=runs.n) > 0)


class Levels(NamedTuple):
    """How one image's mask moves with the pixel threshold ``p`` (for calibration).

    ``anomaly_mask(amap, score, settings._replace(pixel_threshold=p))`` is
    ``levels > p`` while ``p < switch``, and ``fallback`` from ``switch`` on;
    nothing at all unless ``flagged``.
    """

    flagged: bool
    levels: np.ndarray  # the map's shape and dtype; -inf where a pixel is never part of it
    switch: float
    fallback: np.ndarray  # bool, the map's shape


def levels(amap, score, settings):
    """The :class:`Levels` of one image under the rule of :func:`anomaly_mask`.

    A pixel is in the mask at ``p`` when it is above ``max(p, L)`` (``L`` the
    image's relative level) and joined to a seed through pixels above it: when
    the highest path from it to a seed has its lowest pixel above ``max(p, L)``.
    That lowest value, for every pixel above ``L`` at once, is the fixed point
    of ``v = min(map, max of v over the 3 x 3 neighbourhood)`` from the seeds
    (a grey-level reconstruction by dilation), iterated in the box of the
    pixels above ``L``.
    """
    amap = np.asarray(amap)
    out = np.full(amap.shape, -np.inf, amap.dtype)
    if not score < settings.offset:
        return Levels(False, out, -np.inf, np.zeros(amap.shape, bool))
    low = level_of(amap, settings, -np.inf)  # L: the level while p is below it
    peak = float(amap.max())
    fallback = amap >= amap.max()
    if not peak > low:  # from L >= peak on, the fallback at any p
        return Levels(True, out, -np.inf, fallback)
    inside = amap > low
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    values, inside = amap[box], inside[box]
    floor = np.array(-np.inf, amap.dtype)
    reach = np.where(inside & _seeds(amap, settings.offset)[box], values, floor)
    h, w = reach.shape
    padded = np.full((h + 2, w + 2), floor)
    while True:
        padded[1:-1, 1:-1] = reach
        best = reach.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.maximum(best, padded[dy:dy + h, dx:dx + w], out=best)
        new = np.where(inside, np.minimum(values, best), floor)
        if np.array_equal(new, reach):
            break
        reach = new
    out[box] = reach
    return Levels(True, out, peak, fallback)


# ---------------------------------------------------------------- regions


def defect_regions(amap, mask, min_region_area=0):
    """The regions of ``mask`` over ``amap``, largest first (ties: higher peak first).

    Regions smaller than ``min_region_area`` pixels are dropped, but for the
    largest one (a non-empty mask keeps at least one region).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}.")
    return _regions(np.asarray(amap), _components(mask), min_region_area)[0]


def _regions(amap, runs, min_region_area):
    """``(regions, kept)``: the regions of the components of ``runs`` over ``amap``, and
    a boolean per component (False for those ``min_region_area`` drops)."""
    n = runs.n
    if n == 0:
        return [], np.zeros(0, bool)
    idx, offsets = runs.pixels()
    values = amap.ravel()[idx].astype(np.float64)
    lengths = runs.end - runs.start
    comp = runs.comp
    area = np.bincount(comp, weights=lengths, minlength=n).astype(np.int64)
    total = np.bincount(comp, weights=np.add.reduceat(values, offsets), minlength=n)
    cy = np.bincount(comp, weights=runs.y * lengths, minlength=n) / area
    cx = np.bincount(comp, weights=(runs.start + runs.end - 1) * lengths / 2, minlength=n) / area
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, comp, np.maximum.reduceat(values, offsets))
    big = np.iinfo(np.int64).max
    x0, y0, x1, y1 = np.full(n, big), np.full(n, big), np.zeros(n, np.int64), np.zeros(n, np.int64)
    np.minimum.at(x0, comp, runs.start)
    np.minimum.at(y0, comp, runs.y)
    np.maximum.at(x1, comp, runs.end)
    np.maximum.at(y1, comp, runs.y + 1)
    order = sorted(range(n), key=lambda k: (-area[k], -peak[k], y0[k], x0[k]))
    out, kept = [], np.zeros(n, bool)
    for rank, k in enumerate(order):
        if rank and area[k] < min_region_area:
            continue
        kept[k] = True
        out.append(Region((int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])), int(area[k]),
                          (float(cx[k]), float(cy[k])), float(peak[k]), float(total[k] / area[k])))
    return out, kept


def localize(amap, score, settings):
    """``(mask, regions)`` of one image: its map at its own size, its ``score_samples``,
    a :class:`Settings`. The mask is the union of the regions (``min_region_area``
    applied to both)."""
    amap = np.asarray(amap)
    runs = _cut(amap, score, settings)
    if runs is None:
        return np.zeros(amap.shape, bool), []
    regions, kept = _regions(amap, runs, settings.min_region_area)
    return (runs if kept.all() else runs.subset(kept)).mask(amap.shape), regions


# ---------------------------------------------------------------- for pictures and files


def summary(regions):
    """``{"n_regions", "largest_area", "largest_box"}`` of an image's regions (largest first):
    the columns a table of images gives them; 0, 0 and None for an image without region."""
    if not regions:
        return {"n_regions": 0, "largest_area": 0, "largest_box": None}
    return {"n_regions": len(regions), "largest_area": regions[0].area, "largest_box": regions[0].box}


def outline(mask):
    """The pixels of ``mask`` that touch a pixel outside it (8-neighbourhood) or the border:
    the regions' outlines, one pixel wide, to draw over an image."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    inner = np.ones_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= padded[dy:dy + h, dx:dx + w]
    return mask & ~inner


def save_mask(path, mask):
    """Write ``mask`` as a grayscale PNG (255 = defect, 0 = normal), atomically: the file is
    complete or absent. :func:`skpadim.datasets.read_masks` reads it back (``pixel > 127``)."""
    import io

    from PIL import Image

    from ._atomic import write_bytes

    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"mask must be a 2-D boolean array, got {mask.dtype} of shape {mask.shape}.")
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
