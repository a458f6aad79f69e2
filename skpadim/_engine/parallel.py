"""Chunks of patch positions shared out to worker threads.

The per-position work (factorizations, the streaming update, Mahalanobis
distances) is a loop over independent chunks of positions. On the CPU the
chunks go to worker threads that each run torch single-threaded: torch calls
LAPACK once per small matrix, and one matrix per core beats several cores on
one matrix (the precision_kernels record of docs/benchmarks.md).

The workers form one pool per process, started at the first use and shared
by every detector and every calling thread. torch's thread count is a
per-thread setting, plus a process-wide default that threads read when they
first use torch: each worker sets its own count to 1 once, when it starts,
and puts the default back at once. Calls never change the calling thread's
torch settings, nor anything another thread sees.
"""

import concurrent.futures
import os
import threading

import torch

_lock = threading.Lock()
_pool = None


def _thread_default():
    """The torch thread count that a thread starting now would get."""
    out = []
    probe = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    return out[0]


def _start_worker(default):
    torch.set_num_threads(1)  # this thread's count, and (alas) the process default ...
    # ... which a throwaway thread puts back: its own count dies with it.
    restore = threading.Thread(target=torch.set_num_threads, args=(default,))
    restore.start()
    restore.join()


def _workers(n):
    """The shared pool, with at least ``n`` workers."""
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < n:
            old = _pool
            size = max(n, os.cpu_count() or 1)
            _pool = concurrent.futures.ThreadPoolExecutor(
                size, thread_name_prefix="skpadim-worker",
                initializer=_start_worker, initargs=(_thread_default(),),
            )
            if old is not None:
                old.shutdown(wait=False)  # its running chunks finish; their callers wait for them
        return _pool


def for_chunks(n_positions, chunk, device, fn):
    """Call ``fn(a, b)`` on consecutive chunks (at most ``chunk`` positions) of ``0:n_positions``.

    On the CPU the chunks are shared out to as many workers as the calling
    thread has torch threads (``torch.set_num_threads`` limits them), each
    running torch single-threaded. Exceptions propagate (that of the first
    failing chunk, in order); on an error or an interrupt no further chunk
    starts, and the call returns only once no chunk of it is running.
    """
    if torch.device(device).type != "cpu":
        for a in range(0, n_positions, chunk):
            fn(a, min(a + chunk, n_positions))
        return
    threads = torch.get_num_threads()
    chunk = max(1, min(chunk, -(-n_positions // threads)))  # at least one chunk per thread
    bounds = [(a, min(a + chunk, n_positions)) for a in range(0, n_positions, chunk)]
    if threads == 1 or len(bounds) == 1:
        for ab in bounds:
            fn(*ab)
        return
    # Grad and inference modes are per thread: carry the caller's into the workers.
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    todo = iter(enumerate(bounds))
    take = threading.Lock()
    stop = threading.Event()
    errors = []

    def work():
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            while not stop.is_set():
                with take:
                    i, ab = next(todo, (None, None))
                if ab is None:
                    return
                try:
                    fn(*ab)
                except BaseException as exc:  # handed to the caller below
                    errors.append((i, exc))
                    stop.set()

    pool = _workers(threads)
    tasks = [pool.submit(work) for _ in range(min(threads, len(bounds)))]
    try:
        concurrent.futures.wait(tasks)
    except BaseException:  # an interrupt while waiting
        stop.set()
        concurrent.futures.wait(tasks)
        raise
    if errors:
        raise min(errors, key=lambda e: e[0])[1]
