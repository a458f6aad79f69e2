"""Predicted defect masks against ground-truth masks: pixel F1 and IoU, regions found and false.

Every function takes the true ``masks`` and either predicted masks
(``threshold=None``: boolean or {0, 1}, e.g. ``detector.anomaly_mask(X)``)
or anomaly maps with a ``threshold`` (a pixel is predicted anomalous when
``map >= threshold``, the convention of every metric here). Images are read
one at a time, never concatenated; pixels are pooled over all images.
Regions are 8-connected components, as in :func:`~skpadim.metrics.aupro`
and :meth:`skpadim.PadimDetector.defect_regions`.
"""

import numbers
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ._pixel_passes import REGION_STRUCTURE, _as_image_sequence


class MaskCounts(NamedTuple):
    """Pooled counts of predicted against true masks."""

    tp: int  # anomalous pixels predicted anomalous
    fp: int  # normal pixels predicted anomalous
    fn: int  # anomalous pixels predicted normal
    true_regions: int  # regions of the true masks
    found_regions: int  # ... that a predicted pixel overlaps
    false_regions: np.ndarray  # per image: predicted regions that overlap no anomalous pixel
    normal: np.ndarray  # per image: the true mask is empty


def _check_threshold(threshold):
    if threshold is None:
        return None
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real) \
            or np.isnan(threshold):
        raise ValueError(f"threshold must be None (predicted masks) or a real number (anomaly-map "
                         f"units), got {threshold!r}.")
    return float(threshold)


def _true_mask(masks, i):
    """Image ``i`` of the true ``masks`` as a boolean array, checked as every pixel metric does."""
    mask = np.asarray(masks[i])
    if mask.ndim != 2:
        raise ValueError(f"masks[{i}] must be a 2-D array, got shape {mask.shape}.")
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "iuf":
        raise ValueError(f"masks[{i}] must be boolean or hold 0 and 1, got dtype {mask.dtype}.")
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        raise ValueError(f"masks[{i}] must be boolean or hold only 0 (normal) and 1 (anomalous), "
                         f"found the value {mask[bad][0].item()!r}.")
    return mask == 1


def _predicted(predicted, i, threshold, shape):
    """Image ``i`` of ``predicted`` as a boolean mask of ``shape``."""
    arr = np.asarray(predicted[i])
    if arr.shape != shape:
        raise ValueError(f"predicted[{i}] has shape {arr.shape} but masks[{i}] has shape {shape}; "
                         "each prediction must have the shape of its mask.")
    if threshold is not None:
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"predicted[{i}] must hold anomaly scores when a threshold is given, "
                             f"got dtype {arr.dtype}.")
        return arr >= threshold
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or ((arr != 0) & (arr != 1)).any():
        raise ValueError(
            f"predicted[{i}] must be a boolean mask (or hold only 0 and 1); to score anomaly "
            "maps, pass threshold=t (pixels with map >= t are predicted anomalous)."
        )
    return arr == 1


def mask_counts(masks, predicted, threshold=None):
    """One pass over the images: the :class:`MaskCounts` of ``predicted`` against ``masks``."""
    threshold = _check_threshold(threshold)
    masks = _as_image_sequence(masks, "masks")
    predicted = _as_image_sequence(predicted, "predicted")
    if len(masks) != len(predicted):
        raise ValueError(f"masks and predicted must hold the same number of images, got "
                         f"{len(masks)} masks and {len(predicted)} predictions.")
    if len(masks) == 0:
        raise ValueError("masks and predicted are empty; at least one image is needed.")
    tp = fp = fn = true_regions = found = 0
    false_regions = np.zeros(len(masks), np.int64)
    normal = np.zeros(len(masks), bool)
    for i in range(len(masks)):
        mask = _true_mask(masks, i)
        pred = _predicted(predicted, i, threshold, mask.shape)
        hit = pred & mask
        n_hit = int(np.count_nonzero(hit))
        tp += n_hit
        fp += int(np.count_nonzero(pred)) - n_hit
        fn += int(np.count_nonzero(mask)) - n_hit
        normal[i] = not mask.any()
        if not normal[i]:
            labels, n = ndimage.label(mask, structure=REGION_STRUCTURE)
            true_regions += n
            found += len(np.unique(labels[hit]))
        if pred.any():
            labels, n = ndimage.label(pred, structure=REGION_STRUCTURE)
            false_regions[i] = n - len(np.unique(labels[hit]))
    return MaskCounts(tp, fp, fn, true_regions, found, false_regions, normal)


def _require_defects(counts, caller):
    if counts.tp + counts.fn == 0:
        raise ValueError(f"{caller} needs anomalous pixels in the true masks, but they hold none "
                         "(only normal images).")


def pixel_f1_score(masks, predicted, *, threshold=None):
    """Pixel-level F1 score of predicted defect masks, pooled over all images.

    ``2 TP / (2 TP + FP + FN)`` over the pixels of all images (anomalous
    pixels positive): the F1 that :func:`pixel_f1_max` maximizes over
    thresholds, here at one prediction.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    predicted : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Predicted masks (boolean or {0, 1}; e.g. ``detector.anomaly_mask(X)``),
        or anomaly maps when ``threshold`` is given; ``predicted[i]`` has the
        shape of ``masks[i]``.
    threshold : float, default=None
        Score anomaly maps: pixels with ``map >= threshold`` are predicted
        anomalous. None: ``predicted`` holds masks.

    Returns
    -------
    f1 : float

    See Also
    --------
    pixel_iou, pixel_f1_max, calibrate_pixel_threshold

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> predicted = np.zeros((2, 4, 4), dtype=bool)
    >>> predicted[1, :2, :3] = True   # 4 right, 2 too many
    >>> round(pixel_f1_score(masks, predicted), 3)
    0.8
    >>> round(pixel_f1_score(masks, 2.0 * masks, threshold=1.0), 3)
    1.0
    """
    counts = mask_counts(masks, predicted, threshold)
    _require_defects(counts, "pixel_f1_score")
    return 2 * counts.tp / (2 * counts.tp + counts.fp + counts.fn)


def pixel_iou(masks, predicted, *, threshold=None):
    """Intersection over union of predicted and true defect pixels, pooled over all images.

    ``TP / (TP + FP + FN)``: the pixels both call anomalous over the pixels
    either calls anomalous. It is ``F1 / (2 - F1)`` of the same prediction.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    predicted : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Predicted masks, or anomaly maps with ``threshold`` (see
        :func:`pixel_f1_score`).
    threshold : float, default=None
        Pixels with ``map >= threshold`` are predicted anomalous; None:
        ``predicted`` holds masks.

    Returns
    -------
    iou : float

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> predicted = np.zeros((2, 4, 4), dtype=bool)
    >>> predicted[1, :2, :3] = True
    >>> round(pixel_iou(masks, predicted), 3)
    0.667
    """
    counts = mask_counts(masks, predicted, threshold)
    _require_defects(counts, "pixel_iou")
    return counts.tp / (counts.tp + counts.fp + counts.fn)


def region_recall(masks, predicted, *, threshold=None):
    """Fraction of the true defect regions that a predicted pixel overlaps.

    The regions are the 8-connected components of every true mask, over all
    images; each counts once, whatever its size: a region is found when at
    least one of its pixels is predicted anomalous.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    predicted : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Predicted masks, or anomaly maps with ``threshold`` (see
        :func:`pixel_f1_score`).
    threshold : float, default=None
        Pixels with ``map >= threshold`` are predicted anomalous; None:
        ``predicted`` holds masks.

    Returns
    -------
    recall : float
        Found regions over true regions, in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((1, 5, 5), dtype=bool)
    >>> masks[0, 0, 0] = masks[0, 4, 4] = True   # two defects
    >>> predicted = np.zeros((1, 5, 5), dtype=bool)
    >>> predicted[0, :2, :2] = True               # finds the first
    >>> region_recall(masks, predicted)
    0.5
    """
    counts = mask_counts(masks, predicted, threshold)
    if counts.true_regions == 0:
        raise ValueError("region_recall needs defect regions in the true masks, but they hold none "
                         "(only normal images).")
    return counts.found_regions / counts.true_regions


def false_regions_per_image(masks, predicted, *, threshold=None, normal_only=False):
    """Mean number of false regions per image: predicted regions that miss every defect.

    A predicted region (an 8-connected component of a predicted mask) is
    false when none of its pixels is anomalous in the true mask. On a
    normal image (empty true mask) every predicted region is false.

    Parameters
    ----------
    masks : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Ground truth, boolean or {0, 1} (1 = anomalous pixel).
    predicted : ndarray of shape (n_images, H, W) or list of 2-D arrays
        Predicted masks, or anomaly maps with ``threshold`` (see
        :func:`pixel_f1_score`).
    threshold : float, default=None
        Pixels with ``map >= threshold`` are predicted anomalous; None:
        ``predicted`` holds masks.
    normal_only : bool, default=False
        Average over the normal images only (those whose true mask is
        empty): the false alarms a good part gets.

    Returns
    -------
    rate : float
        False regions per image (>= 0).

    Examples
    --------
    >>> import numpy as np
    >>> masks = np.zeros((2, 5, 5), dtype=bool)
    >>> masks[1, :2, :2] = True
    >>> predicted = np.zeros((2, 5, 5), dtype=bool)
    >>> predicted[0, 4, 4] = True                      # a false alarm on the good image
    >>> predicted[1, :2, :2] = predicted[1, 4, 4] = True  # the defect, and one false region
    >>> false_regions_per_image(masks, predicted)
    1.0
    >>> false_regions_per_image(masks, predicted, normal_only=True)
    1.0
    """
    if not isinstance(normal_only, (bool, np.bool_)):
        raise ValueError(f"normal_only must be True or False, got {normal_only!r}.")
    counts = mask_counts(masks, predicted, threshold)
    false = counts.false_regions[counts.normal] if normal_only else counts.false_regions
    if false.size == 0:
        raise ValueError("false_regions_per_image(normal_only=True) needs normal images (empty "
                         "true masks), but every mask holds a defect.")
    return float(false.mean())
