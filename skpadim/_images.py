"""Image input: validation and decoding, one batch at a time (numpy and Pillow, no torch).

Accepted forms of ``X`` (see :class:`skpadim.PadimDetector`):

* an array of shape (N, H, W) or (N, H, W, C), C in {1, 3, 4};
* a list of such images (arrays of shape (H, W) or (H, W, C)), sizes may differ;
* a list of image file paths (``str`` or :class:`os.PathLike`).

Pixels are uint8 in [0, 255] or finite floats in [0, 1]. Grayscale becomes
three equal channels; the alpha channel of RGBA images is dropped (like
Pillow's ``convert("RGB")``). Nothing is rescaled silently: other dtypes
(uint16, bool, int, ...) or values out of range are errors that say how to
convert. A 3-D array is read as N grayscale images (N, H, W) only when its
last axis is longer than 4: a last axis of 1 to 4 is what a single (H, W, C)
image looks like, so such an array is refused (pass ``X[None]`` for one
image, ``X[..., None]`` for grayscale images at most 4 pixels wide). Every
error is a ValueError naming ``X`` (or ``X[i]``, or the file), the value
found and what was expected; an image file that cannot be read raises
:class:`~skpadim.exceptions.UnreadableImageError` (a ValueError) naming the
file and the reason.

:func:`read_image` is the one decoder of image files: the estimator, the
command line and the deployment runtime all read files with it.
"""

import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .exceptions import UnreadableImageError

_FLOAT_KINDS = "f"
_READ_MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX", "La"}


def _dtype_hint(dtype):
    if dtype == np.uint16:
        return " For 16-bit images divide by 65535 and pass floats, e.g. (X / 65535).astype(np.float32)."
    if dtype.kind == "b":
        return " For binary images pass X.astype(np.uint8) * 255 (or X.astype(np.float32))."
    if dtype.kind in "iu":
        return " If the values are 8-bit, convert with X.astype(np.uint8)."
    return ""


def _first_bad(mask, batched):
    """' (first in image i)' for a boolean mask over a batch, else ''."""
    if not batched:
        return ""
    bad = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    return f" ({len(bad)} image(s), the first is image {bad[0]})"


def _check_range(img, where, batched):
    finite = np.isfinite(img)
    if not finite.all():
        n_nan = int(np.isnan(img).sum())
        raise ValueError(
            f"{where} contains {n_nan} NaN and {int((~finite).sum()) - n_nan} infinite pixel "
            f"value(s){_first_bad(~finite, batched)}; expected finite floats in [0, 1]."
        )
    lo, hi = float(img.min()), float(img.max())
    if lo >= 0.0 and hi <= 1.0:
        return
    if lo >= 0.0 and hi <= 255.0 and np.array_equal(img, np.round(img)):
        hint = (
            "These look like 8-bit values stored as floats: pass X.astype(np.uint8), "
            "or X / 255 for floats in [0, 1]."
        )
    elif lo < 0.0 and lo >= -3.0 and hi <= 3.0:
        hint = (
            "Negative values suggest already normalized images: pass the raw images in "
            "[0, 1]; normalization is the 'normalize' parameter's job."
        )
    else:
        hint = "Rescale them to [0, 1] (or pass uint8 in [0, 255])."
    raise ValueError(
        f"{where} has float pixel values in [{lo:g}, {hi:g}]; expected floats in "
        f"[0, 1] (or uint8 in [0, 255]). {hint}"
    )


def _check_array_image(img, *, where, batched):
    """Validate one array (a batch if ``batched``); return its channel count."""
    if img.dtype != np.uint8 and img.dtype.kind not in _FLOAT_KINDS:
        raise ValueError(
            f"{where} has dtype {img.dtype}; expected uint8 in [0, 255] or float "
            f"in [0, 1].{_dtype_hint(img.dtype)}"
        )
    lead = 1 if batched else 0
    if img.ndim not in (2 + lead, 3 + lead):
        shape = "(N, H, W) or (N, H, W, C)" if batched else "(H, W) or (H, W, C)"
        hint = ""
        if batched and img.ndim == 2:
            hint = " A single grayscale image must be passed as a batch of one, e.g. X[None]."
        raise ValueError(
            f"{where} must have shape {shape}, got an array of shape {img.shape}.{hint}"
        )
    if batched and img.ndim == 3 and img.shape[-1] <= 4:
        raise ValueError(
            f"{where} has shape {img.shape}, which looks like a single (H, W, C) image, "
            "not a batch of (N, H, W) grayscale images. Pass a single image as a batch "
            "of one, e.g. X[None] (shape (1, H, W, C)); grayscale images at most 4 "
            "pixels wide need an explicit channel axis, X[..., None]."
        )
    channels = 1 if img.ndim == 2 + lead else img.shape[-1]
    if channels not in (1, 3, 4):
        hint = ""
        if img.ndim == 3 + lead and img.shape[lead] in (1, 3, 4):
            axes = "(0, 2, 3, 1)" if batched else "(1, 2, 0)"
            hint = f" Channels-first (C, H, W) images need X.transpose{axes}."
        raise ValueError(
            f"{where} has {channels} channels (shape {img.shape}); expected 1 "
            "(grayscale), 3 (RGB) or 4 (RGBA, alpha is dropped) in the last axis." + hint
        )
    spatial = img.shape[lead : lead + 2]
    if min(spatial) < 1:
        raise ValueError(f"{where} has an empty image: shape {img.shape}; expected H, W >= 1.")
    if img.dtype.kind in _FLOAT_KINDS:
        _check_range(img, where, batched)
    return 1 if channels == 1 else 3


def _as_array(item, where):
    try:
        return np.asarray(item)
    except Exception as exc:  # e.g. CUDA tensors, tensors requiring grad
        raise ValueError(
            f"{where} ({type(item).__name__}) could not be converted to a numpy array "
            f"({exc}); pass numpy arrays of shape (H, W[, C]), e.g. tensor.cpu().numpy() "
            "with the channels last."
        ) from None


def _too_many_pixels(exc):
    """Why Pillow refuses an image past its decompression-bomb limit, with the numbers and how
    to raise the limit (Pillow's own words end in "DOS attack.", which helps no one)."""
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(found.group(1)) if found else None
    limit = None if Image.MAX_IMAGE_PIXELS is None else int(2 * Image.MAX_IMAGE_PIXELS)
    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    most = f" ({limit:,})" if limit is not None else ""
    raise_to = pixels if pixels is not None else "N"
    return (f"{size}, more than Pillow decodes{most}: a guard against decompression bombs, twice "
            "PIL.Image.MAX_IMAGE_PIXELS. For a file you trust, raise the limit: "
            f"--max-image-pixels {raise_to} on the command line, or PIL.Image.MAX_IMAGE_PIXELS "
            "set to half the image's pixels in Python")


def _reason(exc, path):
    """What is wrong with an image file, in a few words, from the exception of reading it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, Image.DecompressionBombError):
        return _too_many_pixels(exc)
    if isinstance(exc, UnidentifiedImageError):
        try:
            if os.path.getsize(path) == 0:
                return "empty file (0 bytes)"
        except OSError:
            pass
        return "not an image file (unknown or damaged format)"
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return _not_a_file(path).removeprefix("is ")  # "a broken symbolic link (...)"
    if isinstance(exc, OSError) and exc.strerror:  # permission, missing file, a folder...
        return exc.strerror
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__  # truncated, corrupt data


def _not_a_file(path):
    if os.path.isdir(path):
        return "is a folder, not an image file"
    if os.path.islink(path):
        return f"is a broken symbolic link (its target '{os.readlink(path)}' does not exist)"
    if os.path.exists(path):
        return "is not a regular file"
    return "does not exist"


def read_image(path):
    """Decode an image file as :class:`skpadim.PadimDetector` does.

    The one reader of image files of skpadim: the estimator, the command line
    and the deployment runtime decode with it, so their inputs are identical.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    image : ndarray of shape (H, W, 3), uint8
        Grayscale and palette images are converted to RGB, the alpha channel
        is dropped.

    Raises
    ------
    skpadim.exceptions.UnreadableImageError
        The file cannot be opened or decoded, or is not an 8-bit image; its
        ``reason`` says why in a few words.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from skpadim._images import read_image
    >>> from skpadim.exceptions import UnreadableImageError
    >>> path = os.path.join(tempfile.mkdtemp(), "gray.png")
    >>> Image.new("L", (4, 2), 128).save(path)
    >>> read_image(path).shape, read_image(path).dtype
    ((2, 4, 3), dtype('uint8'))
    >>> open(path, "wb").close()  # now an empty file
    >>> try:
    ...     read_image(path)
    ... except UnreadableImageError as exc:
    ...     print(exc.reason)
    empty file (0 bytes)
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in _READ_MODES:
                reason = (
                    f"mode {im.mode!r} (e.g. 16-bit or float); expected an 8-bit grayscale, "
                    "RGB or RGBA image"
                )
                raise UnreadableImageError(
                    f"image file '{path}' has {reason}. Convert it to 8 bits, or load it "
                    "yourself and pass a float array in [0, 1].",
                    path=path, reason=reason,
                )
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = _reason(exc, path)
        expected = ("" if isinstance(exc, Image.DecompressionBombError)
                    else " Expected a readable image file (PNG, JPEG, BMP, TIFF).")
        raise UnreadableImageError(
            f"could not read image file '{path}': {reason}.{expected}",
            path=path, reason=reason,
        ) from None


def _read_file(path, where):
    try:
        return read_image(path)
    except UnreadableImageError as exc:
        raise UnreadableImageError(f"{where}: {exc}", path=exc.path, reason=exc.reason) from None


class ImageSet:
    """Validated images, decoded and resized one batch at a time.

    Use :func:`check_images` to build one.
    """

    def __init__(self, array=None, items=None, n_channels=None):
        self._array = array
        self._items = items
        self.n_channels = n_channels

    def __len__(self):
        return len(self._array) if self._array is not None else len(self._items)

    def subset(self, index):
        """The images at positions ``index`` (an int array)."""
        if self._array is not None:
            return ImageSet(array=self._array[index], n_channels=self.n_channels)
        return ImageSet(items=[self._items[i] for i in index], n_channels=self.n_channels)

    @property
    def reads_files(self):
        return self._items is not None and any(not isinstance(x, np.ndarray) for x in self._items)

    def _item(self, i):
        item = self._items[i]
        if isinstance(item, np.ndarray):
            return item
        return _read_file(item, f"X[{i}]")

    def arrays(self, batch_size):
        """Yield lists of at most ``batch_size`` decoded images.

        Each item is a numpy array (H, W, C) or (H, W) of the input's dtype
        (uint8, or floats in [0, 1]); files are decoded to (H, W, 3) uint8 in
        two background threads, one batch ahead. An array ``X`` yields its
        slices (views, no copy).
        """
        n = len(self)
        if self._array is not None:
            for start in range(0, n, batch_size):
                yield list(self._array[start : start + batch_size])
            return
        pool = ThreadPoolExecutor(max_workers=2) if self.reads_files else None
        try:
            pending = None
            for start in range(0, n, batch_size):
                idx = range(start, min(start + batch_size, n))
                if pool is None:
                    yield [self._item(i) for i in idx]
                    continue
                # Decode this batch (and the next one, in the background).
                cur = pending if pending is not None else [pool.submit(self._item, i) for i in idx]
                nxt = start + batch_size
                pending = [pool.submit(self._item, i) for i in range(nxt, min(nxt + batch_size, n))] if nxt < n else None
                yield [f.result() for f in cur]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def host_batches(self, batch_size):
        """Yield ``(images, sizes)`` for batches of at most ``batch_size`` images, in order.

        ``images`` is a (B, H, W, C) array (an array ``X``: a view of its
        slice, grayscale with a channel axis of 1) or a list of (H, W, C)
        arrays (a list ``X``, files decoded by :meth:`arrays`); ``sizes``
        holds each image's (H, W). The estimator turns these into tensors
        and the deployment runtime into float arrays, so both see the very
        same pixels in the same batches.
        """
        if self._array is not None:
            array = self._array if self._array.ndim == 4 else self._array[..., None]
            for start in range(0, len(array), batch_size):
                chunk = array[start : start + batch_size]
                yield chunk, [tuple(chunk.shape[1:3])] * len(chunk)
            return
        for imgs in self.arrays(batch_size):
            imgs = [im if im.ndim == 3 else im[..., None] for im in imgs]
            yield imgs, [tuple(im.shape[:2]) for im in imgs]


def check_images(X, *, name="X"):
    """Validate ``X`` and return an :class:`ImageSet`.

    Arrays are checked completely here (dtype, shape, NaN, range); file paths
    are checked for existence here and decoded later, batch by batch. Every
    problem raises a ValueError.
    """
    if isinstance(X, (str, bytes, os.PathLike)):
        raise ValueError(
            f"{name} must be a list of images or image paths, got the single path "
            f"{X!r}; wrap it in a list: [{X!r}]."
        )
    if not isinstance(X, (np.ndarray, list, tuple)) and (
        hasattr(X, "__array__") or hasattr(X, "__array_interface__")
    ):
        X = _as_array(X, name)
    if isinstance(X, np.ndarray):
        if X.ndim == 0:
            raise ValueError(
                f"{name} must be an array of images of shape (N, H, W) or (N, H, W, C), "
                f"got a 0-d array ({X.dtype}): {X!r}."
            )
        if len(X) == 0:
            raise ValueError(f"{name} is empty: expected at least one image, got shape {X.shape}.")
        if X.dtype == object or (X.ndim == 1 and X.dtype.kind == "U"):
            return check_images(list(X), name=name)
        channels = _check_array_image(X, where=name, batched=True)
        return ImageSet(array=X, n_channels=channels)
    try:
        items = list(X)
    except TypeError:
        raise ValueError(
            f"{name} must be an array of images, a list of images or a list of image "
            f"paths, got {type(X).__name__}."
        ) from None
    if not items:
        raise ValueError(f"{name} is empty: expected at least one image, got an empty {type(X).__name__}.")
    channels = set()
    out = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if not os.path.isfile(path):
                reason = _not_a_file(path)
                raise UnreadableImageError(f"{where}: image file '{path}' {reason}.", path=path, reason=reason)
            out.append(path)
        elif isinstance(item, np.ndarray) or hasattr(item, "__array__") or hasattr(item, "__array_interface__"):
            arr = _as_array(item, where)
            channels.add(_check_array_image(arr, where=where, batched=False))
            out.append(arr)
        else:
            raise ValueError(
                f"{where} must be an image array or a file path, got {type(item).__name__}."
            )
    if len(channels) > 1:
        raise ValueError(
            f"{name} mixes grayscale and color images; convert them to one channel "
            "count first (e.g. np.repeat(img[..., None], 3, axis=-1) for grayscale)."
        )
    n_channels = channels.pop() if channels and len(out) == sum(isinstance(o, np.ndarray) for o in out) else None
    return ImageSet(items=out, n_channels=n_channels)
