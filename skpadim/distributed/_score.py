"""Distributed scoring: the fitted detector goes to every worker once."""

import contextlib
import uuid

import numpy as np
from distributed import Future

from ._client import get_client, image_paths, partition_bounds


def scatter(detector, client=None):
    """Send a fitted detector to every worker once; reuse it across scoring calls.

    It travels as arrays (its pickle holds no torch module); each worker
    rebuilds it once, on its own device (``device="auto"``). Workers copy it
    from one another, so the client uploads it once.

    Parameters
    ----------
    detector : PadimDetector
        A fitted detector.
    client : distributed.Client, default=None
        ``None`` uses ``distributed.default_client()``.

    Returns
    -------
    model : distributed.Future
        Pass it instead of the detector to :func:`score_samples`;
        ``model.release()`` frees the workers' copies.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(detector)
    client = get_client(client)
    [future] = client.scatter([detector], broadcast=True, hash=False)
    return future


@contextlib.contextmanager
def scattered(detector, client):
    """A scattered detector for the duration of a call: ``detector`` itself if it is a
    Future already, else a copy sent to every worker and released at the end."""
    if isinstance(detector, Future):
        yield detector
        return
    future = scatter(detector, client)
    try:
        yield future
    finally:
        future.release()


def score_partition(detector, paths):
    return detector.score_samples(list(paths))


def score_samples(detector, X, *, client=None, partition_size=None):
    """``detector.score_samples(X)``, computed on the workers of a Dask cluster.

    Only the scores come back to the client (no maps).

    Parameters
    ----------
    detector : PadimDetector or distributed.Future
        A fitted detector, or the result of :func:`scatter` (to send a large
        model once for many calls).
    X : list of str or os.PathLike, or dask.bag.Bag of them
        Image paths that every worker can read.
    client : distributed.Client, default=None
        ``None`` uses ``distributed.default_client()``.
    partition_size : int, default=None
        Images per task; ``None``: about two tasks per worker thread, at
        least 64 images each.

    Returns
    -------
    scores : ndarray of shape (N,), float64
        In the order of ``X``; lower = more abnormal. A file that cannot be
        read raises :class:`~skpadim.exceptions.UnreadableImageError` naming it.
    """
    return np.concatenate(_on_partitions(score_partition, detector, X, client, partition_size, "score"))


def regions_partition(detector, paths):
    return detector.defect_regions(list(paths))


def defect_regions(detector, X, *, client=None, partition_size=None):
    """``detector.defect_regions(X)``, computed on the workers of a Dask cluster.

    Each worker computes the maps of its images and their regions; only the
    regions come back to the client (a few numbers per region).

    Parameters
    ----------
    detector : PadimDetector or distributed.Future
        A fitted detector, or the result of :func:`scatter`.
    X : list of str or os.PathLike, or dask.bag.Bag of them
        Image paths that every worker can read.
    client : distributed.Client, default=None
        ``None`` uses ``distributed.default_client()``.
    partition_size : int, default=None
        Images per task; ``None``: about two tasks per worker thread, at
        least 64 images each.

    Returns
    -------
    regions : list of N lists of skpadim.Region
        In the order of ``X``; per image, largest first (none for an image
        ``predict`` calls normal, at least one for an image it flags). A file
        that cannot be read raises
        :class:`~skpadim.exceptions.UnreadableImageError` naming it
        (:func:`score_files` with ``with_regions=True`` goes on instead).
    """
    parts = _on_partitions(regions_partition, detector, X, client, partition_size, "regions")
    return [regions for part in parts for regions in part]


def _on_partitions(fn, detector, X, client, partition_size, what):
    """``[fn(detector, paths) for each partition of X]``, computed on the workers, in order."""
    client = get_client(client)
    paths = image_paths(X)
    parts = partition_bounds(len(paths), partition_size, client)
    name = f"skpadim-{what}-{uuid.uuid4().hex[:12]}"
    with scattered(detector, client) as model:
        futures = []
        try:
            futures = [client.submit(fn, model, paths[a:b], key=(name, k)) for k, (a, b) in enumerate(parts)]
            return client.gather(futures)
        finally:
            for fut in futures:
                fut.release()
