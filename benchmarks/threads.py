"""Throughput of one fitted detector called from 1, 2 and 4 threads at once.

A service that answers several cameras calls ``score_samples`` or
``anomaly_map`` on one shared detector from several threads. This script
fits one detector (random weights: the speed does not depend on them), then
times the same total number of images split over T threads, T = 1, 2, 4,
for both methods, interleaved round by round (1, 2, 4, 1, 2, 4, ...) so that
background load hits every variant alike. Each thread makes one call on its
share of the images; every result is checked against the same calls made
one after the other (bit for bit: a batch's floating-point results depend on
its size, so the reference splits the images the same way).
Reported: median wall seconds, images per second, the ratio to one thread,
and the CPU seconds of the process (``getrusage``: user + system, all
threads).

torch runs each call's backbone on the calling thread with its intra-op
threads (``torch.get_num_threads()``, per thread) and the per-position work
on a shared pool of single-threaded workers, so several calling threads
share the cores rather than multiply them: the interesting numbers are that
throughput does not collapse and results stay exact.

Usage::

    python benchmarks/threads.py                 # resnet18, 224 px, 96 images per variant
    python benchmarks/threads.py --quick         # smoke test: 64 px, 16 images, 1 round
"""

import argparse
import resource
import sys
import threading
import time

import numpy as np

from skpadim import PadimDetector
from skpadim.datasets import make_anomaly_images

from _common import environment, emit, load_average, machine_header, median, table

THREADS = (1, 2, 4)
METHODS = ("score_samples", "anomaly_map")


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_threads(det, method, parts):
    """Call ``det.<method>`` on each part from its own thread, started together."""
    barrier = threading.Barrier(len(parts) + 1)
    out, errors = [None] * len(parts), []

    def work(i):
        try:
            barrier.wait()
            out[i] = getattr(det, method)(parts[i])
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    if errors:
        raise errors[0]
    return wall, cpu, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 64 px, 16 images, 1 round")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--n-images", type=int, default=96, help="images per variant (split over the threads)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.n_images, args.batch_size, args.rounds = 64, 16, 8, 1
    n = args.n_images - args.n_images % 4  # the same images for every T
    X, _, _ = make_anomaly_images(n + 32, 0, image_size=args.image_size, random_state=0)
    train, X = X[:32], X[32:]
    det = PadimDetector(backbone=args.backbone, weights=None, image_size=args.image_size,
                        batch_size=args.batch_size, device="cpu", random_state=0).fit(train)
    # The same calls one after the other (also the warm-up).
    serial = {(m, t): [getattr(det, m)(part) for part in np.array_split(X, t)] for m in METHODS for t in THREADS}
    emit(["## threads", ""])
    emit(machine_header(environment(), [
        f"detector: {args.backbone} (weights=None), n_features={len(det.feature_index_)}, "
        f"image_size={args.image_size}, batch_size={args.batch_size}, device='cpu', fitted on 32 images",
        f"images: make_anomaly_images({n + 32}, 0, image_size={args.image_size}, random_state=0), "
        f"the last {n} split evenly over T threads, one call per thread",
        "variants interleaved per round; medians of wall and CPU seconds reported",
    ]))
    runs = {(m, t): [] for m in METHODS for t in THREADS}
    for r in range(args.rounds):
        for m in METHODS:
            for t in THREADS:
                parts = np.array_split(X, t)
                wall, cpu, out = run_threads(det, m, parts)
                if not all(np.array_equal(a, b) for a, b in zip(out, serial[(m, t)])):
                    raise SystemExit(f"{m} from {t} threads differs from the same calls made serially")
                runs[(m, t)].append((wall, cpu))
        print(f"  round {r + 1}/{args.rounds} done; load {load_average()}", file=sys.stderr, flush=True)
    rows = []
    for m in METHODS:
        base = median([w for w, _ in runs[(m, 1)]])
        for t in THREADS:
            wall = median([w for w, _ in runs[(m, t)]])
            cpu = median([c for _, c in runs[(m, t)]])
            rows.append([m, t, f"{wall:.2f}", f"{n / wall:.1f}", f"{base / wall:.2f}", f"{cpu:.1f}"])
    emit(["", f"{n} images per variant; in every run, results equal to the same calls made serially:", ""])
    emit(table(["method", "threads", "median s", "images/s", "throughput vs 1 thread", "CPU s"], rows))
    emit(["", f"load average at end: {load_average()}"])


if __name__ == "__main__":
    main()
