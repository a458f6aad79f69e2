"""What ``skpadim fit --scheduler`` and ``skpadim predict --scheduler`` call.

The command line imports this module only when ``--scheduler`` is given, so
``skpadim --help`` and the local commands never import Dask. A missing
``dask`` extra is an ImportError and an unreachable address a
ConnectionError, both one line (the command line prints them as such).
"""

import contextlib

from .._engine.calibration import CAPACITY


@contextlib.contextmanager
def cluster(address):
    """A client of the scheduler at ``address``, closed at the end."""
    from . import require_dask

    require_dask()
    from ._client import connect

    client = connect(address, set_as_default=False)
    try:
        yield client
    finally:
        client.close()


def describe(client):
    threads = client.nthreads()
    return f"{len(threads)} worker(s), {sum(threads.values())} thread(s)"


def _chunks(items, client, size=None):
    from ._client import partition_bounds

    return [(a, items[a:b]) for a, b in partition_bounds(len(items), size, client)]


def _check_chunk(items):
    from ..cli._batch import check_files

    return check_files(items, n_threads=1)


def check_files(client, items, *, strict=False, on_failure=None, on_image=None):
    """:func:`skpadim.cli._batch.check_files`, each file decoded on a worker.

    Returns ``(readable paths, failures)`` in input order; ``strict=True``
    raises :class:`~skpadim.exceptions.UnreadableImageError` for the first
    failure (in input order).
    """
    from ..cli._batch import _strict_error

    chunks = _chunks(items, client, CAPACITY)
    futures = client.map(_check_chunk, [c for _, c in chunks], pure=False)
    ok, failures = [], []
    try:
        for fut, (_, chunk) in zip(futures, chunks):
            good, bad = fut.result()
            fut.release()
            for failure in bad:
                if strict:
                    raise _strict_error(failure)
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


def score_images(client, detector, items, *, threshold, targets=None, strict=False):
    """Yield :class:`~skpadim.cli._batch.ImageResult` records (without maps) in input order.

    Scored on the workers with :func:`skpadim.cli._batch.score_images` (one
    bad file is one record with ``error`` set); the overlays, if
    ``targets``, are written by the workers. ``strict=True`` raises for the
    first unreadable file once the results before it are yielded.
    """
    from ..cli._batch import ImageFailure, ImageResult, _strict_error
    from ._score import iter_results

    for row in iter_results(detector, items, client=client, threshold=threshold, targets=targets):
        if row["error"] is not None and strict:
            raise _strict_error(ImageFailure(row["path"], row["error"]))
        yield ImageResult(row["index"], row["path"], score=row["score"], error=row["error"])
