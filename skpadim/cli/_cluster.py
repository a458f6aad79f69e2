"""``--scheduler ADDRESS``: the commands' runs on a Dask cluster.

Imported only when ``--scheduler`` is given, so ``skpadim --help`` and the
local commands never import Dask. A missing ``dask`` extra is an ImportError
and an unreachable address a ConnectionError, both one line (the command
line prints them as such). The work itself is :mod:`skpadim.distributed`'s
public functions.
"""

import contextlib


@contextlib.contextmanager
def cluster(address):
    """A client of the scheduler at ``address``, closed at the end."""
    from ..distributed import connect, require_dask

    require_dask()
    client = connect(address, set_as_default=False)
    try:
        yield client
    finally:
        client.close()


def describe(client):
    threads = client.nthreads()
    return f"{len(threads)} worker(s), {sum(threads.values())} thread(s)"
