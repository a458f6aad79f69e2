"""Clients and input partitions."""

import asyncio
import math
import numbers
import os

import numpy as np
from distributed import Client, default_client

# Partitions hold at least this many images by default: merging a partition's
# running sums costs about as much as streaming a few dozen images.
MIN_PARTITION = 64


def get_client(client):
    """``client``, or the current default client with a clear error when there is none."""
    if client is None:
        try:
            return default_client()
        except ValueError:
            raise ValueError(
                "No Dask client: pass client=distributed.Client(address), or create one "
                "first (it becomes the default), e.g. skpadim.distributed.connect(address)."
            ) from None
    if not isinstance(client, Client):
        raise ValueError(
            f"The 'client' parameter must be a distributed.Client or None, got "
            f"{type(client).__name__}."
        )
    return client


def connect(address, *, timeout=10, **client_kwargs):
    """Connect to the Dask scheduler at ``address``.

    Parameters
    ----------
    address : str
        The scheduler's address, as ``dask scheduler`` prints it at start,
        e.g. ``"tcp://10.0.0.5:8786"`` (``"10.0.0.5:8786"`` means tcp).
    timeout : float, default=10
        Seconds to wait for the scheduler.
    **client_kwargs
        Passed to :class:`distributed.Client` (e.g. ``security`` for TLS).

    Returns
    -------
    client : distributed.Client
        It becomes Dask's default client (unless ``set_as_default=False``).
        Use it as a context manager, or call ``client.close()`` when done.

    Raises
    ------
    ConnectionError
        With a one-line message, when the address is malformed or nothing
        answers there within ``timeout`` seconds.

    Examples
    --------
    >>> from skpadim.distributed import connect
    >>> connect("tcp://127.0.0.1:1", timeout=0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ConnectionError: Could not connect to the Dask scheduler at 'tcp://127.0.0.1:1' (...
    """
    if not isinstance(address, str) or not address.strip():
        raise ConnectionError(
            f"The Dask scheduler address must be a string such as 'tcp://10.0.0.5:8786', "
            f"got {address!r}."
        )
    if not (isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) and timeout > 0):
        raise ValueError(f"The 'timeout' parameter must be a number of seconds > 0, got {timeout!r}.")
    _check_scheme(address)  # before a Client exists: a refused one hangs at exit closing itself
    try:
        _probe(address, timeout)
        return Client(address, timeout=timeout, **client_kwargs)
    except (OSError, ValueError, asyncio.TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConnectionError(
            f"Could not connect to the Dask scheduler at {address!r} ({reason}). Check the "
            "address that 'dask scheduler' printed (e.g. tcp://10.0.0.5:8786), that the "
            "scheduler is running, and that this machine can reach it."
        ) from None


def _check_scheme(address):
    """A ConnectionError, one line, for an address whose scheme Dask does not speak."""
    from distributed.comm.registry import backends

    scheme, sep, rest = address.strip().partition("://")
    if not sep or scheme in backends:
        return
    host = rest.split("/")[0].rsplit(":", 1)[0] or "HOST"
    dashboard = (" An http(s) address is a dashboard's (a web page), not the scheduler's."
                 if scheme in ("http", "https") else "")
    raise ConnectionError(
        f"Could not connect to the Dask scheduler at {address!r}: Dask does not speak {scheme!r} "
        f"(it speaks {', '.join(sorted(backends))}).{dashboard} Pass the address that 'dask "
        f"scheduler' printed, e.g. tcp://{host}:8786."
    )


def _probe(address, timeout):
    """Open and close one connection to a tcp address (fails fast, and quietly)."""
    from distributed.comm import connect as open_comm
    from distributed.comm.addressing import normalize_address, parse_address

    address = normalize_address(address)  # ValueError for a malformed address
    if parse_address(address)[0] != "tcp":  # tls needs the client's security settings
        return

    async def probe():
        comm = await open_comm(address, timeout=timeout)
        await comm.close()

    asyncio.run(probe())


def image_paths(X):
    """``X`` as a list of path strings (a dask.bag of paths is gathered first)."""
    try:
        import dask.bag as db
    except ImportError:  # pragma: no cover - dask.bag comes with distributed
        db = None
    if db is not None and isinstance(X, db.Bag):
        X = X.compute()
    if isinstance(X, np.ndarray) and X.ndim == 1 and X.dtype.kind == "U":
        X = X.tolist()
    if not isinstance(X, (list, tuple)):
        raise ValueError(
            f"X must be a list of image file paths that the workers can read (or a dask.bag "
            f"of them), got {type(X).__name__}."
        )
    if not X:
        raise ValueError("X is empty: expected at least one image path.")
    for i, item in enumerate(X):
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(
                f"X[{i}] must be an image file path (str or os.PathLike) that the workers can "
                f"read, got {type(item).__name__}."
            )
    return [os.fspath(p) for p in X]


def check_partition_size(value):
    if value is not None and not (
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
    ):
        raise ValueError(f"The 'partition_size' parameter must be None or an int >= 1, got {value!r}.")


def partition_bounds(n_images, partition_size, client):
    """``[(start, stop)]``: consecutive partitions of ``n_images`` images.

    ``partition_size=None``: about two partitions per worker thread, at
    least ``MIN_PARTITION`` images each.
    """
    check_partition_size(partition_size)
    if partition_size is None:
        threads = sum(client.nthreads().values()) or 1
        partition_size = max(MIN_PARTITION, math.ceil(n_images / (2 * threads)))
    return [(i, min(i + partition_size, n_images)) for i in range(0, n_images, partition_size)]
