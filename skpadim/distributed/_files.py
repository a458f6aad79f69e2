"""Image files checked and scored on the workers, one bad file at a time.

What ``skpadim fit --scheduler`` and ``skpadim predict --scheduler`` run on
the cluster, public for programs of their own: a file that cannot be read is
one record, never the end of the run (:mod:`skpadim._batch`, the code that
checks and scores files in one process, runs on each partition).
"""

import uuid

from .._batch import ImageFailure, ImageResult, check_files as _check_here, score_images, strict_error
from .._engine.calibration import CAPACITY
from ._client import get_client, image_paths, partition_bounds
from ._score import scattered


def _check_partition(paths, size_rule=None):
    return _check_here(paths, n_threads=1, size_rule=size_rule)


def check_files(X, *, client=None, strict=False, on_failure=None, on_image=None, size_rule=None):
    """Decode every image file once on the workers; return the usable ones and the failures.

    Parameters
    ----------
    X : list of str or os.PathLike, or dask.bag.Bag of them
        Image paths that every worker can read.
    client : distributed.Client, default=None
        ``None`` uses ``distributed.default_client()``.
    strict : bool, default=False
        Raise :class:`~skpadim.exceptions.UnreadableImageError` for the first
        file (in input order) that cannot be read.
    on_failure : callable, default=None
        Called on the client with each :class:`~skpadim._batch.ImageFailure`
        (``path``, ``reason``), in input order.
    on_image : callable, default=None
        Called on the client once per file checked (a progress bar).
    size_rule : callable, default=None
        Runs on the workers: ``size_rule((height, width))`` says why an image
        of that size cannot be used (a reason string, or None); such a file
        is a failure too (e.g. another size than the first training image's,
        for a fit at the native size).

    Returns
    -------
    paths : list of str
        The readable files, in input order.
    failures : list of ImageFailure
    """
    client = get_client(client)
    paths = image_paths(X)
    chunks = [paths[a:b] for a, b in partition_bounds(len(paths), CAPACITY, client)]
    futures = client.map(_check_partition, chunks, size_rule=size_rule, pure=False)
    ok, failures = [], []
    try:
        for fut, chunk in zip(futures, chunks):
            good, bad = fut.result()
            fut.release()
            for failure in bad:
                if strict:
                    raise strict_error(failure)
                failures.append(failure)
                if on_failure is not None:
                    on_failure(failure)
            ok += good
            if on_image is not None:
                for _ in chunk:
                    on_image()
    finally:
        for fut in futures:
            fut.cancel()
    return ok, failures


def _score_partition(detector, paths, start, with_maps, with_regions, with_masks, on_result):
    rows = []
    for r in score_images(detector, paths, with_maps=with_maps or on_result is not None,
                          with_regions=with_regions, with_masks=with_masks):
        r = r._replace(index=start + r.index)
        if r.error is None and on_result is not None:
            on_result(r)
        rows.append(r._replace(map=r.map if with_maps else None))
    return rows


def score_files(detector, X, *, client=None, with_maps=False, with_regions=False, with_masks=False,
                on_result=None, strict=False, partition_size=None):
    """Yield an :class:`~skpadim._batch.ImageResult` per image file, in input order, scored
    on the workers; a file that cannot be read is a record with ``error`` set.

    Parameters
    ----------
    detector : PadimDetector or distributed.Future
        A fitted detector, or the result of :func:`scatter`.
    X : list of str or os.PathLike, or dask.bag.Bag of them
        Image paths that every worker can read.
    client : distributed.Client, default=None
        ``None`` uses ``distributed.default_client()``.
    with_maps : bool, default=False
        Bring each image's anomaly map back to the client (in ``map``).
    with_regions : bool, default=False
        Compute each image's defect regions on the worker, where its map
        is (in ``regions``: a list of :class:`skpadim.Region`, as
        ``detector.defect_regions`` gives them).
    with_masks : bool, default=False
        Compute each image's defect mask on the worker (in ``mask``: a
        boolean array at the image's size, as ``detector.anomaly_mask``).
    on_result : callable, default=None
        Called **on the worker** with each scored :class:`ImageResult`, its
        map included (and its regions and mask when asked), e.g. to write a
        picture next to the images (it must be picklable: a module-level
        function or a ``functools.partial`` of one).
        Its return value is ignored.
    strict : bool, default=False
        Raise :class:`~skpadim.exceptions.UnreadableImageError` for the first
        unreadable file, once the results before it are yielded.
    partition_size : int, default=None
        Images per task; ``None``: about two tasks per worker thread.

    Yields
    ------
    result : ImageResult
        ``index`` (position in ``X``), ``path``, ``score`` (higher = more
        anomalous), ``map`` (with ``with_maps``), ``error``, ``regions``
        (with ``with_regions``), ``mask`` (with ``with_masks``).
    """
    client = get_client(client)
    paths = image_paths(X)
    parts = partition_bounds(len(paths), partition_size, client)
    with scattered(detector, client) as model:
        name = f"skpadim-files-{uuid.uuid4().hex[:12]}"
        futures = []
        try:
            futures = [client.submit(_score_partition, model, paths[a:b], a, with_maps, with_regions, with_masks,
                                     on_result,
                                     key=(name, k)) for k, (a, b) in enumerate(parts)]
            for fut in futures:
                for r in fut.result():
                    if r.error is not None and strict:
                        raise strict_error(ImageFailure(r.path, r.error))
                    yield r
                fut.release()
        finally:
            for fut in futures:
                fut.cancel()


__all__ = ["ImageFailure", "ImageResult", "check_files", "score_files"]
