"""Synthetic industrial-texture images with localized defects.

The generator first renders a clean woven texture for every image, then
paints one defect into each anomalous image.  The defect is pasted only
inside its region, so an anomalous image differs from its clean texture
exactly on the pixels of its mask (see ``_generate``, used by the tests).
"""

import numbers

import numpy as np
from sklearn.utils import check_random_state

DEFECT_TYPES = ("scratch", "spot", "missing")

# The clean texture is clipped to this range in every channel, and every
# defect paints values at least ``_MARGIN`` away from it, so a defect always
# changes every pixel of its region (also after conversion to grayscale).
_TEXTURE_LO, _TEXTURE_HI = 0.30, 0.85
# Base colour of the material (a greyish beige, like a coated fabric).
_TINT = np.array([1.04, 1.0, 0.90], dtype=np.float32)
# Luminance weights of ITU-R 601 (the ones PIL uses for mode "L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Allowed mask area, as a fraction of the image area.
_MIN_AREA, _MAX_AREA = 0.003, 0.10
_MAX_TRIES = 50


def _check_params(n_normal, n_anomalous, image_size, defects):
    """Validate the arguments; return ``(height, width), defects``."""
    for name, value in (("n_normal", n_normal), ("n_anomalous", n_anomalous)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(
                f"{name} must be a non-negative integer, got {value!r}."
            )
        if value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value}.")
    if n_normal + n_anomalous == 0:
        raise ValueError(
            "n_normal + n_anomalous must be at least 1, got n_normal=0 and "
            "n_anomalous=0."
        )
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    else:
        try:
            size = tuple(int(s) for s in image_size)
            ok = len(size) == 2 and all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool)
                for s in image_size
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                "image_size must be an int or a (height, width) pair of ints, "
                f"got {image_size!r}."
            )
    if min(size) < 32:
        raise ValueError(
            f"image_size must be at least 32 pixels on each side, got {image_size!r}."
        )
    if isinstance(defects, str):
        defects = (defects,)
    defects = tuple(defects)
    if len(defects) == 0:
        raise ValueError(
            f"defects must name at least one defect type among {DEFECT_TYPES}, got ()."
        )
    for d in defects:
        if d not in DEFECT_TYPES:
            raise ValueError(
                f"Unknown defect type {d!r} in defects; valid types are "
                f"{', '.join(map(repr, DEFECT_TYPES))}."
            )
    return size, defects


def _check_defect_size(defect_size, height, width):
    """``(low, high)`` defect sizes in pixels from a valid ``defect_size`` (None: None)."""
    if defect_size is None:
        return None
    real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)  # noqa: E731
    if real(defect_size):
        low = high = float(defect_size)
    elif (isinstance(defect_size, (tuple, list)) and len(defect_size) == 2
          and all(real(v) for v in defect_size)):
        low, high = (float(v) for v in defect_size)
    else:
        raise ValueError(
            "defect_size must be None, a number of pixels or a (low, high) pair of them, "
            f"got {defect_size!r}."
        )
    if not 1 <= low <= high <= min(height, width) / 4:
        raise ValueError(
            f"defect_size must be between 1 and a quarter of the smaller image side "
            f"({min(height, width) / 4:g} pixels), with low <= high; got {defect_size!r}."
        )
    return low, high


def _texture(n, height, width, rng):
    """Render ``n`` clean woven textures, float32 of shape (n, H, W, 3)."""
    scale = np.sqrt(height * width)
    period = max(5.0, scale / 14.0)
    f32 = np.float32
    # Per-image jitter: orientation, period, phase, illumination, tint.
    theta = np.deg2rad(rng.uniform(-4.0, 4.0, n)).astype(f32)
    p = (period * rng.uniform(0.97, 1.03, n)).astype(f32)
    phase_u = rng.uniform(0.0, 2.0, n).astype(f32)
    phase_v = rng.uniform(0.0, 2.0, n).astype(f32)
    gain = rng.uniform(0.94, 1.06, n).astype(f32)
    grad_angle = rng.uniform(0.0, 2 * np.pi, n)
    grad_amp = rng.uniform(0.0, 0.06, n)
    tint = (_TINT + rng.uniform(-0.02, 0.02, (n, 3))).astype(f32)

    yy, xx = np.meshgrid(
        np.arange(height, dtype=f32), np.arange(width, dtype=f32), indexing="ij"
    )
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    pp = p[:, None, None]
    u = (xx * c + yy * s) / pp + phase_u[:, None, None]
    v = (yy * c - xx * s) / pp + phase_v[:, None, None]
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    # Plain weave: in each cell either the warp (along u) or the weft
    # (along v) thread is on top; a thread is rounded across its width and
    # shaded along its length where it dips under the crossing thread.
    warp = np.sqrt(np.sin(np.pi * fv)) * (0.55 + 0.45 * np.sin(np.pi * fu))
    weft = np.sqrt(np.sin(np.pi * fu)) * (0.55 + 0.45 * np.sin(np.pi * fv))
    warp += 0.06 * np.sin(2 * np.pi * 5 * fv)  # fibres within the thread
    weft += 0.06 * np.sin(2 * np.pi * 5 * fu)
    on_top = (iu + iv).astype(np.int64) % 2 == 0
    g = np.where(on_top, warp, weft)
    # Brushed streaks: a random intensity per fibre line along each thread.
    n_lines = int(np.ceil(2 * scale)) + 8
    streaks = rng.normal(0.0, 0.035, (n, n_lines)).astype(f32)
    line = np.floor(np.where(on_top, v, u) * pp * 0.5).astype(np.int64) % n_lines
    g += streaks[np.arange(n)[:, None, None], line]
    g = 0.40 + 0.30 * g
    # Illumination: global gain and a linear gradient in a random direction.
    gx = (grad_amp * np.cos(grad_angle) / width).astype(f32)[:, None, None]
    gy = (grad_amp * np.sin(grad_angle) / height).astype(f32)[:, None, None]
    g *= gain[:, None, None] * (1.0 + gx * (xx - width / 2) + gy * (yy - height / 2))
    rgb = g[..., None] * tint[:, None, None, :]
    rgb += rng.normal(0.0, 0.015, rgb.shape).astype(f32)
    return np.clip(rgb, _TEXTURE_LO, _TEXTURE_HI)


# The registered part of ``misalignment``: four round holes and a bar, in the
# part's own frame (fractions of the image side, centred), painted with values
# inside the texture range (defects stay outside it).
_HOLES = ((-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25))
_HOLE_RADIUS, _HOLE_VALUE = 0.07, 0.33
_BAR_HALF, _BAR_VALUE = (0.04, 0.3), 0.82


def _check_misalignment(misalignment):
    """``None`` or a ``(max_shift, max_degrees)`` pair of floats."""
    if misalignment is None:
        return None
    try:
        shift, degrees = misalignment
        ok = all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)
            for v in (shift, degrees)
        ) and 0 <= shift <= 0.25 and 0 <= degrees <= 180
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "misalignment must be None or a (max_shift, max_degrees) pair with "
            "max_shift in [0, 0.25] (a fraction of the image side) and max_degrees "
            f"in [0, 180], got {misalignment!r}."
        )
    return float(shift), float(degrees)


def _paint_part(img, max_shift, max_degrees, rng):
    """Paint the part into ``img`` (H, W, 3), shifted and rotated at random, in place."""
    height, width = img.shape[:2]
    ty, tx = rng.uniform(-max_shift, max_shift, 2) * (height, width)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = yy - (height - 1) / 2 - ty, xx - (width - 1) / 2 - tx
    # The part's frame: the image frame rotated by ``angle`` about the shifted centre.
    u = (dy * np.cos(angle) - dx * np.sin(angle)) / height
    v = (dy * np.sin(angle) + dx * np.cos(angle)) / width
    for cu, cv in _HOLES:
        img[(u - cu) ** 2 + (v - cv) ** 2 <= _HOLE_RADIUS**2] = _HOLE_VALUE
    img[(np.abs(u) <= _BAR_HALF[0]) & (np.abs(v) <= _BAR_HALF[1])] = _BAR_VALUE


def _scratch_region(height, width, rng, size=None):
    scale = np.sqrt(height * width)
    if size is None:
        half_w = max(1.0, scale / 128.0 * rng.uniform(0.9, 1.6))
    else:
        half_w = size / 2
    margin = half_w + 2
    p0 = rng.uniform([margin, margin], [height - margin, width - margin])
    angle = rng.uniform(0.0, np.pi)
    length = scale * rng.uniform(0.25, 0.6) if size is None else size * rng.uniform(3.0, 8.0)
    p1 = p0 + length * np.array([np.sin(angle), np.cos(angle)])
    p1 = np.clip(p1, margin, [height - margin, width - margin])
    yy, xx = np.mgrid[0:height, 0:width]
    d = p1 - p0
    t = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(d @ d, 1e-9)
    t = np.clip(t, 0.0, 1.0)
    dist2 = (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2
    return dist2 <= half_w**2


def _spot_region(height, width, rng, size=None):
    scale = np.sqrt(height * width)
    r0 = scale * rng.uniform(0.05, 0.11) if size is None else size / 2
    aspect = rng.uniform(0.7, 1.0)
    extent = 1.4 * r0
    cy = rng.uniform(extent, max(extent, height - extent))
    cx = rng.uniform(extent, max(extent, width - extent))
    a1, a2 = rng.uniform(0.0, 2 * np.pi, 2)
    rot = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    dy, dx = yy - cy, xx - cx
    ry = dy * np.cos(rot) - dx * np.sin(rot)
    rx = dy * np.sin(rot) + dx * np.cos(rot)
    phi = np.arctan2(ry, rx)
    # Irregular outline: an ellipse with a wobbly radius.
    radius = r0 * (1 + 0.15 * np.cos(3 * phi + a1) + 0.08 * np.cos(5 * phi + a2))
    return (rx**2 + (ry / aspect) ** 2) <= radius**2


def _missing_region(height, width, rng, size=None):
    scale = np.sqrt(height * width)
    a, b = (scale * rng.uniform(0.12, 0.28, 2) if size is None else size * rng.uniform(1.0, 2.0, 2)) / 2
    extent = np.hypot(a, b) + 1
    cy = rng.uniform(extent, max(extent, height - extent))
    cx = rng.uniform(extent, max(extent, width - extent))
    rot = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    dy, dx = yy - cy, xx - cx
    along = dy * np.cos(rot) + dx * np.sin(rot)
    across = -dy * np.sin(rot) + dx * np.cos(rot)
    return (np.abs(along) <= a) & (np.abs(across) <= b)


_REGIONS = {
    "scratch": _scratch_region,
    "spot": _spot_region,
    "missing": _missing_region,
}


def _paint(img, region, kind, rng):
    """Paint defect ``kind`` into ``img`` (H, W, 3) inside ``region``, in place."""
    n_pix = int(region.sum())
    if kind == "scratch":
        # A bright (polished) or dark (burnt) line, far outside the texture range.
        if rng.uniform() < 0.5:
            value = rng.uniform(0.94, 1.0, 3)
        else:
            value = rng.uniform(0.0, 0.08, 3)
        img[region] = value
    elif kind == "spot":
        # A stain: a dark brownish or a bright whitish blob that keeps a faint
        # trace of the texture underneath.
        if rng.uniform() < 0.6:
            colour = np.array([0.16, 0.10, 0.05]) * rng.uniform(0.7, 1.0)
        else:
            colour = np.array([0.97, 0.96, 0.93])
        trace = 0.12 * (img[region] - img[region].mean(axis=0))
        img[region] = np.clip(colour + trace, 0.0, 1.0)
    else:  # "missing": the weave is absent; a flat, dark substrate shows.
        colour = np.array([0.10, 0.09, 0.08]) * rng.uniform(0.8, 1.3)
        img[region] = colour + rng.normal(0.0, 0.01, (n_pix, 3))
    np.clip(img, 0.0, 1.0, out=img)


def _to_uint8(x):
    return np.round(x * 255.0).astype(np.uint8)


def _generate(
    n_normal=40,
    n_anomalous=20,
    *,
    image_size=(128, 128),
    defects=DEFECT_TYPES,
    grayscale=False,
    random_state=None,
    defect_size=None,
    misalignment=None,
):
    """Return ``X, y, masks, X_clean, kinds``; see ``make_anomaly_images``.

    ``X_clean`` is the texture before any defect was painted (same dtype and
    shape as ``X``) and ``kinds`` the defect type of each image ("good" for
    normal images).
    """
    (height, width), defects = _check_params(n_normal, n_anomalous, image_size, defects)
    sizes = _check_defect_size(defect_size, height, width)
    misalignment = _check_misalignment(misalignment)
    rng = check_random_state(random_state)
    n = n_normal + n_anomalous
    clean = _texture(n, height, width, rng)
    if misalignment is not None:  # (no draw otherwise: the images stay as they were)
        for img in clean:
            _paint_part(img, *misalignment, rng)
    dirty = clean.copy()
    masks = np.zeros((n, height, width), dtype=bool)
    kinds = np.array(["good"] * n, dtype=object)
    area = height * width
    lo, hi = (_MIN_AREA * area, _MAX_AREA * area) if sizes is None else (1, area)
    for i in range(n_normal, n):
        kind = defects[rng.randint(len(defects))]
        for _ in range(_MAX_TRIES):
            if sizes is None:
                region = _REGIONS[kind](height, width, rng)
            else:
                region = _REGIONS[kind](height, width, rng, rng.uniform(*sizes))
            if lo <= region.sum() <= hi:
                break
        else:  # pragma: no cover - the shapes are sized to always fit
            raise RuntimeError(
                f"Could not place a {kind!r} defect of 0.3%-10% of the image "
                f"area in a {height}x{width} image."
            )
        _paint(dirty[i], region, kind, rng)
        masks[i] = region
        kinds[i] = kind
    if grayscale:
        clean = clean @ _LUMA
        dirty = dirty @ _LUMA
    y = np.r_[np.zeros(n_normal, dtype=np.int64), np.ones(n_anomalous, dtype=np.int64)]
    return _to_uint8(dirty), y, masks, _to_uint8(clean), kinds.astype(str)


def make_anomaly_images(
    n_normal=40,
    n_anomalous=20,
    *,
    image_size=(128, 128),
    defects=DEFECT_TYPES,
    grayscale=False,
    random_state=None,
    defect_size=None,
    misalignment=None,
):
    """Generate images of a woven industrial texture, some with defects.

    Every image shows the same kind of material: a plain-weave texture with
    brushed fibre streaks, mild sensor noise and illumination variation.
    Each image gets its own random weave phase, a small orientation jitter
    (within +/- 4 degrees), a small period and tint jitter, and a random
    illumination gradient, so all normal images come from one distribution
    without being identical.  Each anomalous image is a normal image with one
    defect, chosen uniformly at random among ``defects``:

    - ``"scratch"``: a thin straight line, either bright or dark, at a random
      angle and of random length;
    - ``"spot"``: an irregular blob of dark brown or whitish stain;
    - ``"missing"``: a rotated rectangle where the weave is absent and a
      flat, dark substrate shows.

    Defects paint values well outside the range of the clean texture, so
    they are high-contrast and every pixel of a defect differs from the
    clean texture.

    Parameters
    ----------
    n_normal : int, default=40
        Number of normal (defect-free) images.
    n_anomalous : int, default=20
        Number of anomalous images, each with one defect.
    image_size : int or tuple of (int, int), default=(128, 128)
        Image size as ``(height, width)``; an int gives square images.
        Both sides must be at least 32.
    defects : sequence of str, default=("scratch", "spot", "missing")
        Defect types to draw from; a single str is accepted too.
    grayscale : bool, default=False
        If True, return single-channel images of shape (n, H, W) (the
        luminance of the colour images).
    random_state : int, RandomState instance or None, default=None
        Seed of the generator; an int gives bit-identical output across
        calls.
    defect_size : float, (float, float) or None, default=None
        Size of the defects in pixels, whatever the image size: the
        diameter of a spot, the width of a scratch (3 to 8 times as long),
        the shorter side of a missing patch (the sides are 1 to 2 times
        it). A ``(low, high)`` pair draws each defect's size uniformly in
        it. Between 1 and a quarter of the smaller image side. ``None``:
        defects in proportion to the image, 0.3% to 10% of its area.
        Small defects in large images make high-resolution test cases.
    misalignment : (float, float) or None, default=None
        ``(max_shift, max_degrees)``: every image also shows a registered
        part (four round holes and a bar, in grey levels of the texture's
        range, defects being painted over it), placed with its own random
        shift of up to ``max_shift`` of the image side (in [0, 0.25]) along
        each axis and rotation of up to ``max_degrees`` (in [0, 180]) about
        the image centre, uniformly: parts that are not perfectly aligned.
        ``(0, 0)`` aligns them all. ``None``: no part (the images are those
        of earlier versions).

    Returns
    -------
    X : ndarray of shape (n, H, W, 3) or (n, H, W), dtype=uint8
        The images, ``n = n_normal + n_anomalous``.  They are not shuffled:
        the ``n_normal`` normal images come first, then the anomalous ones.
    y : ndarray of shape (n,), dtype=int64
        1 for anomalous images, 0 for normal images.
    masks : ndarray of shape (n, H, W), dtype=bool
        True exactly on the pixels changed by the defect; all False for
        normal images.  A defect covers between 0.3% and 10% of the image
        (with ``defect_size=None``).

    See Also
    --------
    load_folder : Load a folder of images with the same ``y`` convention.

    Examples
    --------
    >>> from skpadim.datasets import make_anomaly_images
    >>> X, y, masks = make_anomaly_images(6, 3, image_size=64, random_state=0)
    >>> X.shape, X.dtype, y.tolist()
    ((9, 64, 64, 3), dtype('uint8'), [0, 0, 0, 0, 0, 0, 1, 1, 1])
    >>> masks.shape, bool(masks[:6].any()), bool(masks[6:].any(axis=(1, 2)).all())
    ((9, 64, 64), False, True)
    >>> X, y, masks = make_anomaly_images(2, 2, image_size=(48, 64), grayscale=True)
    >>> X.shape
    (4, 48, 64)
    >>> X, y, masks = make_anomaly_images(0, 3, image_size=256, defect_size=(4, 8), random_state=0)
    >>> bool(masks.sum(axis=(1, 2)).max() < 0.01 * 256 * 256)
    True
    >>> X, y, masks = make_anomaly_images(4, 0, image_size=64, misalignment=(0.05, 5.0))
    >>> X.shape
    (4, 64, 64, 3)
    """
    X, y, masks, _, _ = _generate(
        n_normal,
        n_anomalous,
        image_size=image_size,
        defects=defects,
        grayscale=grayscale,
        random_state=random_state,
        defect_size=defect_size,
        misalignment=misalignment,
    )
    return X, y, masks
