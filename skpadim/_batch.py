"""Image files decoded and scored one bad file at a time (the command line and the cluster).

A run over thousands of files must not stop at the first unreadable one.
Every function here takes *items*: image paths, or :class:`ImageFailure`
records for inputs already known to be bad (a folder that cannot be
listed), and reports each image, in input order, as scored or failed.
Files are decoded with :func:`skpadim._images.read_image`, the decoder of
:class:`~skpadim.PadimDetector` itself, so the decoded images are exactly
what the detector reads from a path; they are then passed to the
detector's public methods as arrays, so a bad file costs nothing but its
own row. The functions hold no state between calls, and their results are
plain tuples: :mod:`skpadim.distributed` calls :func:`score_images` on each
chunk of paths on the workers and gathers the results. Torch-free: the
detector passed in may be a :class:`~skpadim.PadimDetector` or an exported
one of :mod:`skpadim.runtime`.
"""

import collections
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

import numpy as np

from . import _regions

__all__ = ["ImageFailure", "ImageResult", "check_files", "decode", "first_readable", "score_images",
           "strict_error"]

# Images per detector call in score_images: several batches, within a memory budget.
CHUNK_BATCHES = 4
CHUNK_BYTES = 256 * 2**20


class ImageFailure(NamedTuple):
    """An input that could not be used (unreadable, or a size the model cannot take): the
    path and why, in a few words."""

    path: str
    reason: str


class ImageResult(NamedTuple):
    """The outcome for one image: a score (and map), or the reason it failed."""

    index: int
    path: str
    score: Optional[float] = None  # anomaly score, higher = more anomalous
    map: Optional[np.ndarray] = None  # at the image's own size, with with_maps=True
    error: Optional[str] = None  # why the image could not be read; None when scored
    regions: Optional[list] = None  # its defect regions (skpadim.Region), with with_regions=True
    mask: Optional[np.ndarray] = None  # its defect mask at its own size, with with_masks=True


def _decoder(gray):
    from ._images import read_image

    def decode_one(path):
        image = read_image(path)  # (H, W, 3) uint8
        if gray:  # the model was fitted on one-channel arrays
            if not (np.array_equal(image[..., 0], image[..., 1])
                    and np.array_equal(image[..., 0], image[..., 2])):
                raise ValueError("a color image, but the model was fitted on grayscale images")
            image = image[..., 0]
        return image

    return decode_one


def _unreadable(path, exc):
    from .exceptions import UnreadableImageError

    reason = exc.reason if isinstance(exc, UnreadableImageError) else str(exc)
    return ImageFailure(os.fspath(path), reason or type(exc).__name__)


def decode(items, *, n_threads=2, ahead=64, gray=False, size_rule=None):
    """Yield ``(index, path, image or ImageFailure)`` for every item, in order.

    Files are decoded in ``n_threads`` background threads, at most
    ``ahead`` images ahead of the consumer (which bounds the memory held).
    A file that cannot be decoded yields an :class:`ImageFailure`; nothing
    is raised for it. ``gray=True`` returns (H, W) images (for a model
    fitted on one-channel arrays) and refuses color ones. ``size_rule((h,
    w))``, when given, says why an image of that size cannot be used (a
    reason, or None): such an image is an :class:`ImageFailure` too.
    """
    items = list(items)
    decode_one = _decoder(gray)

    def job(item):
        if isinstance(item, ImageFailure):
            return item
        try:
            image = decode_one(item)
        except (ValueError, OSError) as exc:  # UnreadableImageError is a ValueError
            return _unreadable(item, exc)
        problem = None if size_rule is None else size_rule(image.shape[:2])
        return image if problem is None else ImageFailure(os.fspath(item), problem)

    pool = ThreadPoolExecutor(max_workers=max(1, n_threads))
    queue = collections.deque()
    try:
        submitted = 0
        for i, item in enumerate(items):
            while submitted < len(items) and submitted <= i + ahead:
                queue.append(pool.submit(job, items[submitted]))
                submitted += 1
            got = queue.popleft().result()
            path = item.path if isinstance(item, ImageFailure) else os.fspath(item)
            yield i, path, got
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_files(items, *, strict=False, on_failure=None, on_image=None, n_threads=None,
                size_rule=None):
    """Decode every file once; return ``(usable paths, failures)``.

    The check ``skpadim fit`` runs before its first forward pass, in
    ``n_threads`` threads (default: every core): a fit that starts will
    not stop at a bad file. ``size_rule``: see :func:`decode` (the sizes a
    fit at the native size takes). ``on_failure(failure)`` is called for each
    failure as found, ``on_image()`` after each item. With ``strict=True``
    the first failure raises :class:`~skpadim.exceptions.UnreadableImageError`.
    """
    n_threads = n_threads or _cores()
    ok, failures = [], []
    for _, path, got in decode(items, n_threads=n_threads, ahead=4 * n_threads, size_rule=size_rule):
        if isinstance(got, ImageFailure):
            if strict:
                raise strict_error(got)
            failures.append(got)
            if on_failure is not None:
                on_failure(got)
        else:
            ok.append(path)
        if on_image is not None:
            on_image()
    return ok, failures


def first_readable(items):
    """``(path, (h, w))`` of the first item that decodes, in order; None if none does.

    What fixes the size of a fit at the native size (``image_size=None``):
    the first training image that can be read.
    """
    for _, path, got in decode(items, n_threads=1, ahead=0):
        if not isinstance(got, ImageFailure):
            return path, tuple(int(v) for v in got.shape[:2])
    return None


def score_images(detector, items, *, with_maps=False, with_regions=False, with_masks=False, strict=False,
                 chunk_size=None, n_threads=2, native="image_size=None"):
    """Yield an :class:`ImageResult` for every item, in order.

    Readable images are scored ``chunk_size`` at a time (default: four of
    the detector's batches, fewer for images so large that their decoded
    pixels pass 256 MB) with ``detector.anomaly_map(images,
    return_scores=True)`` (``with_maps=True``) or
    ``detector.score_samples(images)``: the scores are those of the
    detector on the same files. Calls span several batches because each
    call sets up its heap and returns it to the system at the end; one
    call per batch pays that every batch (benchmarks/cli_batch.py).
    ``with_regions`` and ``with_masks`` add each image's defect regions
    and mask, computed here from its map with the detector's ``offset_``,
    ``pixel_threshold_``, ``pixel_anchor_`` and ``min_region_area`` (those of
    ``detector.defect_regions`` and ``detector.anomaly_mask``), read once at
    the start. Unreadable images, and images of a size the model cannot take
    (:func:`skpadim._sizes.size_problem`: another size than the training
    images' for a model fitted at the native size), come back with ``error``
    set, in their place, and are never passed to the detector (``native``: how
    the reason names the native size's setting); with
    ``strict=True`` the first one raises
    :class:`~skpadim.exceptions.UnreadableImageError` instead, once the
    images before it have their results. Errors of
    the detector itself (out of memory, a bad model) propagate.
    """
    from ._sizes import size_problem

    batch = 32 if isinstance(detector.batch_size, str) else int(detector.batch_size)  # "auto": 32 on a CPU
    chunk_size = chunk_size or CHUNK_BATCHES * batch
    gray = getattr(detector, "n_channels_in_", None) == 1
    want = _Wanted(with_maps, with_regions, with_masks,
                   _regions.settings_of(detector) if with_regions or with_masks else None)
    size_rule = functools.partial(size_problem, detector.fitted_params_, native=native)
    pending, images, nbytes = [], [], 0
    for i, path, got in decode(items, n_threads=n_threads, ahead=batch, gray=gray, size_rule=size_rule):
        if isinstance(got, ImageFailure):
            if strict:  # the images before it still get their results
                yield from _score_batch(detector, pending, images, want)
                raise strict_error(got)
            pending.append(ImageResult(i, path, error=got.reason))
            continue
        pending.append(ImageResult(i, path))
        images.append(got)
        nbytes += got.nbytes
        if len(images) >= chunk_size or (nbytes >= CHUNK_BYTES and len(images) % batch == 0):
            yield from _score_batch(detector, pending, images, want)
            pending, images, nbytes = [], [], 0
    yield from _score_batch(detector, pending, images, want)


class _Wanted(NamedTuple):
    """What a scoring run returns besides the scores (the settings: masks or regions asked)."""

    maps: bool
    regions: bool
    masks: bool
    settings: Optional[_regions.Settings]


def _score_batch(detector, pending, images, want):
    maps = None
    if images and (want.maps or want.settings is not None):
        maps, scores = detector.anomaly_map(images, return_scores=True)
    elif images:
        scores = detector.score_samples(images)
    k = 0
    for r in pending:
        if r.error is None:
            amap = maps[k] if maps is not None else None
            mask = regions = None
            if want.settings is not None:
                mask, regions = _regions.localize(amap, scores[k], want.settings)
            r = r._replace(score=float(-scores[k]), map=amap if want.maps else None,  # score_samples: lower = worse
                           regions=regions if want.regions else None, mask=mask if want.masks else None)
            k += 1
        yield r


def strict_error(failure):
    """The :class:`~skpadim.exceptions.UnreadableImageError` that ``strict=True`` raises."""
    from .exceptions import UnreadableImageError

    return UnreadableImageError(
        f"cannot use image file '{failure.path}': {failure.reason}",
        path=failure.path, reason=failure.reason,
    )


def _cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
