"""Chunks of patch positions shared out to worker threads.

The per-position work (factorizations, the streaming update, Mahalanobis
distances) is a loop over independent chunks of positions. On the CPU the
chunks go to one single-threaded torch worker per intra-op thread: torch
calls LAPACK once per small matrix, and one matrix per core beats several
cores on one matrix (benchmarks/precision_kernels.py).
"""

import concurrent.futures
import contextlib
import threading

import torch


def for_chunks(n_positions, chunk, device, fn):
    """Call ``fn(a, b)`` on consecutive chunks (at most ``chunk`` positions) of ``0:n_positions``.

    On the CPU the chunks are shared out to as many Python threads as torch
    has intra-op threads, each running torch single-threaded: torch calls
    LAPACK once per small matrix, and one matrix per core beats several
    cores on one matrix; batched GEMMs gain too (benchmarks/precision_kernels.py).
    Exceptions propagate; the threads are joined before returning.
    """
    if torch.device(device).type != "cpu":
        for a in range(0, n_positions, chunk):
            fn(a, min(a + chunk, n_positions))
        return
    # Grad and inference modes are per thread: carry the caller's into the workers.
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(ab):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            fn(*ab)

    with _single_threaded_torch() as threads:
        chunk = max(1, min(chunk, -(-n_positions // threads)))  # at least one chunk per thread
        bounds = [(a, min(a + chunk, n_positions)) for a in range(0, n_positions, chunk)]
        workers = max(1, min(threads, len(bounds)))
        if workers == 1:
            for ab in bounds:
                fn(*ab)
            return
        pool = concurrent.futures.ThreadPoolExecutor(
            workers, initializer=torch.set_num_threads, initargs=(1,)
        )
        try:
            # list() re-raises the first exception of a chunk, in order.
            list(pool.map(run, bounds))
        finally:
            # On an error or an interrupt, drop the chunks not started yet.
            pool.shutdown(wait=True, cancel_futures=True)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def _single_threaded_torch():
    """Set torch to one intra-op thread; yield the caller's thread count.

    torch's setting is process-wide, so concurrent callers (detectors used
    from several threads) share one save / restore: the first in saves the
    count, the last out restores it.
    """
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
        threads = _threads_saved
    try:
        yield threads
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)
