"""Overlays: an image, its anomaly map as a heat map, and region outlines."""

import numbers
import os

import numpy as np

from ._axes import get_axes

#: Outline colours: ground truth, and the predicted defect regions (or the map at or above
#: the threshold).
MASK_COLOR = "lime"
REGION_COLOR = "red"
#: Colour map of the anomaly heat map (blue = normal, red = anomalous).
HEAT_CMAP = "jet"


def _read_image(path):
    from PIL import Image

    with Image.open(path) as im:
        mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
        return np.asarray(im.convert(mode))


def _check_image(image):
    """Return ``(image for imshow, (H, W), imshow keywords)``."""
    if isinstance(image, (str, os.PathLike)):
        image = _read_image(image)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(
            f"image must have shape (H, W) or (H, W, C) with C in {{1, 3, 4}}, got "
            f"shape {image.shape}. Pass one image, e.g. X[i], not a batch."
        )
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise ValueError(
            f"image must hold uint8 in [0, 255] or floats in [0, 1], got dtype "
            f"{image.dtype}."
        )
    if image.dtype.kind == "f":
        if not np.all(np.isfinite(image)):
            raise ValueError("image contains NaN or infinite pixel values.")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"image has float pixel values in [{lo:g}, {hi:g}]; expected floats "
                "in [0, 1] (or uint8 in [0, 255])."
            )
        vmax = 1.0
    elif image.dtype != np.uint8:
        raise ValueError(
            f"image must hold uint8 in [0, 255] or floats in [0, 1], got dtype "
            f"{image.dtype}; convert 8-bit values with image.astype(np.uint8)."
        )
    else:
        vmax = 255
    kwargs = {"cmap": "gray", "vmin": 0, "vmax": vmax} if image.ndim == 2 else {}
    return image, image.shape[:2], kwargs


def _check_map(anomaly_map, image_shape):
    amap = np.asarray(anomaly_map)
    if amap.ndim == 3 and amap.shape[0] == 1:
        hint = " Pass one map, e.g. maps[i] (or maps[0]), not a batch."
    else:
        hint = ""
    if amap.ndim != 2 or amap.shape != tuple(image_shape):
        raise ValueError(
            f"anomaly_map has shape {amap.shape} but image has shape "
            f"{tuple(image_shape)} (height, width); the map must have the image's "
            f"height and width.{hint}"
        )
    if amap.dtype == bool or amap.dtype.kind not in "uif":
        raise ValueError(f"anomaly_map must hold real numbers, got dtype {amap.dtype}.")
    if not np.all(np.isfinite(amap)):
        raise ValueError("anomaly_map contains NaN or infinite values.")
    return amap.astype(np.float64, copy=False)


def _check_mask(mask, image_shape, name="mask"):
    if isinstance(mask, (str, os.PathLike)):
        mask = _read_image(mask)
        mask = (mask if mask.ndim == 2 else mask.mean(axis=-1)) > 127
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != tuple(image_shape):
        raise ValueError(
            f"{name} has shape {mask.shape} but image has shape {tuple(image_shape)} "
            f"(height, width); the {name} must have the image's height and width."
        )
    if mask.dtype != bool:
        if mask.dtype.kind not in "uif" or np.any((mask != 0) & (mask != 1)):
            raise ValueError(
                f"{name} must be boolean or hold only 0 (normal) and 1 (anomalous)."
            )
        mask = mask == 1
    return mask


def _check_real(value, name):
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _outline(ax, region, color, linestyle="solid"):
    """Contour of a boolean region, closed along the image border."""
    if not region.any():
        return None
    h, w = region.shape
    padded = np.pad(region, 1).astype(np.float32)
    xs, ys = np.arange(-1, w + 1), np.arange(-1, h + 1)
    return ax.contour(
        xs, ys, padded, levels=[0.5], colors=[color], linewidths=1.5,
        linestyles=linestyle,
    )


def plot_anomaly_overlay(
    image,
    anomaly_map,
    mask=None,
    *,
    threshold=None,
    predicted_mask=None,
    ax=None,
    alpha=0.5,
    vmin=None,
    vmax=None,
    title=None,
):
    """Draw an image with its anomaly map, true defect outline and predicted defect regions.

    Parameters
    ----------
    image : ndarray of shape (H, W) or (H, W, C), or path
        uint8 in [0, 255] or floats in [0, 1]; grayscale, RGB or RGBA (the
        alpha channel is ignored).  A path is read with Pillow.
    anomaly_map : ndarray of shape (H, W)
        Anomaly scores of the pixels (higher = more anomalous), e.g.
        ``detector.anomaly_map(X)[i]``; same height and width as ``image``.
    mask : ndarray of shape (H, W) or path, default=None
        Ground truth, boolean or {0, 1} (1 = defect); drawn as a green
        outline.  A path is read as a mask image (pixel > 127 = defect).
    threshold : float, default=None
        Map level; the pixels with ``anomaly_map >= threshold`` are outlined
        in red.  ``-detector.offset_`` is the level at which the detector
        flags an image.
    predicted_mask : ndarray of shape (H, W), default=None
        The detector's defect mask, boolean or {0, 1}, e.g.
        ``detector.anomaly_mask(X)[i]``: its regions are outlined in red
        (instead of the pixels above ``threshold``; pass one of the two).
    ax : matplotlib Axes, default=None
        Where to draw; the current axes when None.
    alpha : float in [0, 1], default=0.5
        Opacity of the heat map.
    vmin, vmax : float, default=None
        Map values drawn in the coldest and hottest colours; by default the
        map's own range.  Pass the same values to compare several images.
    title : str, default=None
        Axes title.

    Returns
    -------
    ax : matplotlib Axes
        With two images (the picture, then the heat map: ``ax.images[-1]``,
        e.g. for ``plt.colorbar(ax.images[-1], ax=ax)``), one contour set per
        non-empty outline and, when ``mask``, ``threshold`` or
        ``predicted_mask`` is given, a legend naming the outline colours,
        below the picture.

    Notes
    -----
    The detector's anomaly maps are computed at its ``image_size`` and then
    resized to each image's own size; resizing can lower the map's peak a
    little, so an image whose score is just above the threshold may show no
    red region.  The detector's decision is :meth:`predict`'s, on the score.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> import matplotlib.pyplot as plt
    >>> from skpadim.plot import plot_anomaly_overlay
    >>> image = np.full((32, 32), 0.5)
    >>> amap = np.zeros((32, 32))
    >>> amap[8:16, 8:16] = 5.0
    >>> fig, ax = plt.subplots()
    >>> ax = plot_anomaly_overlay(image, amap, amap > 0, threshold=2.0, ax=ax)
    >>> len(ax.images), [t.get_text() for t in ax.get_legend().get_texts()]
    (2, ['defect (ground truth)', 'map ≥ 2 (flagged)'])
    >>> ax.clear()
    >>> ax = plot_anomaly_overlay(image, amap, amap > 0, predicted_mask=amap > 4, ax=ax)
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['defect (ground truth)', 'defect regions (predicted)']
    >>> plt.close(fig)
    """
    image, shape, image_kwargs = _check_image(image)
    amap = _check_map(anomaly_map, shape)
    if mask is not None:
        mask = _check_mask(mask, shape)
    if threshold is not None:
        threshold = _check_real(threshold, "threshold")
    if predicted_mask is not None:
        if threshold is not None:
            raise ValueError("pass threshold (outline the map above a level) or predicted_mask "
                             "(outline a detector's defect regions), not both.")
        predicted_mask = _check_mask(predicted_mask, shape, "predicted_mask")
    alpha = _check_real(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    ax = get_axes(ax)
    ax.imshow(image, **image_kwargs)
    ax.imshow(amap, cmap=HEAT_CMAP, alpha=alpha, vmin=vmin, vmax=vmax)
    handles = []
    if mask is not None:
        from matplotlib.lines import Line2D

        _outline(ax, mask, MASK_COLOR)
        handles.append(Line2D([], [], color=MASK_COLOR, lw=1.5, label="defect (ground truth)"))
    if threshold is not None:
        from matplotlib.lines import Line2D

        _outline(ax, amap >= threshold, REGION_COLOR)
        handles.append(
            Line2D([], [], color=REGION_COLOR, lw=1.5, label=f"map ≥ {threshold:.3g} (flagged)")
        )
    if predicted_mask is not None:
        from matplotlib.lines import Line2D

        _outline(ax, predicted_mask, REGION_COLOR)
        handles.append(Line2D([], [], color=REGION_COLOR, lw=1.5, label="defect regions (predicted)"))
    if handles:
        # Below the picture, so that it hides no part of it.
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=len(handles), fontsize="x-small", frameon=False,
                  handlelength=1.5, columnspacing=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return ax


def plot_detection(detector, image, mask=None, ax=None, *, alpha=0.5, vmin=None, vmax=None):
    """Overlay a fitted detector's anomaly map, decision and defect regions on one image.

    Computes ``detector.anomaly_map`` and ``detector.score_samples`` of the
    image: ``predict`` flags an image when ``score_samples < offset_``,
    i.e. when the maximum of its anomaly map exceeds ``-offset_``.  The
    title gives the decision, the score and the threshold ``-offset_``.
    The detector's defect regions (``detector.anomaly_mask``; none for an
    image it calls normal) are outlined in red; a detector without
    ``anomaly_mask`` gets the pixels of ``anomaly_map >= -offset_``
    outlined instead.

    Parameters
    ----------
    detector : fitted PadimDetector
        Or an exported detector of :mod:`skpadim.runtime`, or any detector
        with ``anomaly_map``, ``score_samples`` and ``offset_`` (and
        ``anomaly_mask``) in the same conventions.
    image : ndarray of shape (H, W) or (H, W, C), or path
        One image, as accepted by the detector.
    mask : ndarray of shape (H, W) or path, default=None
        Ground truth (1 = defect), drawn as a green outline.
    ax : matplotlib Axes, default=None
        Where to draw; the current axes when None.
    alpha, vmin, vmax : see :func:`plot_anomaly_overlay`.

    Returns
    -------
    ax : matplotlib Axes
    """
    if not hasattr(detector, "offset_"):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(
            f"This {type(detector).__name__} instance is not fitted yet (it has no "
            "offset_); call fit before plot_detection."
        )
    if isinstance(image, (str, os.PathLike)):
        batch, shown = [image], _read_image(image)
    else:
        shown = np.asarray(image)
        batch = shown[None]
    amap = np.asarray(detector.anomaly_map(batch)[0])
    score = -float(detector.score_samples(batch)[0])
    threshold = -float(detector.offset_)
    flagged = score > threshold  # predict: score_samples < offset_
    verdict = "anomalous" if flagged else "normal"
    sign = ">" if flagged else "≤"
    title = f"{verdict}: score {score:.3g} {sign} threshold {threshold:.3g}"
    outline = {"threshold": threshold}
    if hasattr(detector, "anomaly_mask"):
        outline = {"predicted_mask": np.asarray(detector.anomaly_mask(batch)[0])}
    return plot_anomaly_overlay(
        shown, amap, mask, ax=ax, alpha=alpha, vmin=vmin, vmax=vmax, title=title, **outline,
    )
