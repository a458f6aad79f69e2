"""Cost of the end-of-fit linear algebra per patch position, and cheaper equivalents.

``GaussianStats.precision`` factors each position's regularized covariance
(float64) with ``torch.linalg.cholesky_ex`` and inverts it with
``torch.cholesky_inverse``, in chunks of 128 positions. This script times,
on a batch of random SPD matrices of the PaDiM sizes (d = 100 for
resnet18, d = 550 for wide_resnet50_2), interleaved round by round:

* ``cholesky_ex``: the factorization (needed in any case);
* ``cholesky_inverse(L)``: what the library does now;
* ``solve_triangular(L, I)``, then ``Linv^T @ Linv``: the same precision matrix;
* ``solve_triangular(L, I)`` alone: enough if scoring used ``|Linv (x - mu)|^2``;
* ``cholesky_solve(I, L)``: for reference. (``torch.linalg.inv`` is left
  out: on this machine, batched float64 550 x 550 it printed "Intel oneMKL
  ERROR: Parameter 6 was incorrect on entry to DLASWP" and then spun for
  minutes inside MKL's threaded dgetrf nested in torch's parallel_for.)

It checks that the alternatives give the same precision (max relative
difference) and scales the per-position times to P = 3136 positions (224 px).
Every kernel runs with torch's default number of threads and with one.

Then the library's own end-of-fit calls are timed the same way (default
threads vs ``torch.set_num_threads(1)``) on statistics of random
embeddings: ``GaussianStats.precision`` and the calibration's
``GaussianStats.distances_of(..., remove=...)`` for 12 held-out images.

Usage::

    python benchmarks/precision_kernels.py            # d = 100 and 550, 3 rounds
    python benchmarks/precision_kernels.py --quick    # d = 100 only, 2 rounds
"""

import argparse
import time

import torch

from skpadim._gaussian import GaussianStats

from _common import emit, load_average, machine_header, median, table

P_224 = 3136


def _spd(batch, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, d, 2 * d, generator=g, dtype=torch.float64)
    return A @ A.mT / (2 * d) + 0.01 * torch.eye(d, dtype=torch.float64)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dims", type=int, nargs="+", default=[100, 550])
    p.add_argument("--chunk", type=int, default=64,
                   help="matrices per call (skpadim factors chunks of 128 positions)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--positions", type=int, default=256, help="positions of the library-call statistics")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.repeats, args.positions = [100], 2, 128
    t_start = time.perf_counter()
    emit(["## precision kernels", ""])
    emit(machine_header([f"float64, one chunk of {args.chunk} random SPD matrices per call; "
                         "variants interleaved per round, each with torch's default threads and with 1 thread; "
                         "median ms per position"]))
    for d in args.dims:
        C = _spd(args.chunk, d)
        L, _ = torch.linalg.cholesky_ex(C)
        eye = torch.eye(d, dtype=torch.float64).expand(args.chunk, d, d)

        def linv():
            return torch.linalg.solve_triangular(L, eye, upper=False)

        def linv_product():
            Li = linv()
            return Li.mT @ Li

        variants = {
            "cholesky_ex (factor)": lambda: torch.linalg.cholesky_ex(C),
            "cholesky_inverse(L)  [current]": lambda: torch.cholesky_inverse(L),
            "solve_triangular(L, I) + Linv^T Linv": linv_product,
            "solve_triangular(L, I) only": linv,
            "cholesky_solve(I, L)": lambda: torch.cholesky_solve(eye, L),
        }
        ref = torch.cholesky_inverse(L)
        err = {
            "solve_triangular(L, I) + Linv^T Linv": linv_product(),
            "cholesky_solve(I, L)": torch.cholesky_solve(eye, L),
        }
        err = {k: float(((v - ref).abs().max() / ref.abs().max())) for k, v in err.items()}
        threads = torch.get_num_threads()
        times = {(k, t): [] for k in variants for t in (threads, 1)}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                for t in (threads, 1):
                    torch.set_num_threads(t)
                    t0 = time.perf_counter()
                    fn()
                    times[name, t].append((time.perf_counter() - t0) / args.chunk)
            torch.set_num_threads(threads)
        cur = median(times["cholesky_inverse(L)  [current]", threads])
        rows = []
        for name in variants:
            ts, ts1 = times[name, threads], times[name, 1]
            m = median(ts)
            rows.append([
                name, f"{1000 * m:.2f}", f"{1000 * min(ts):.2f}", f"{1000 * median(ts1):.2f}",
                f"{m * P_224:.1f}",
                f"{cur / m:.2f}x" if "current" not in name and "factor" not in name else "",
                f"{err[name]:.1e}" if name in err else "",
            ])
        emit(["", f"### d = {d}", ""])
        emit(table(["kernel", f"median ms / position ({threads} threads)", "min ms",
                    "median ms, 1 thread", f"s for P={P_224} ({threads} threads)",
                    "speed-up vs cholesky_inverse", "max rel. diff vs current"], rows))
    emit(["", "### library calls (GaussianStats), default threads vs 1 thread", ""])
    rows = []
    for d, P in [(d, args.positions) for d in args.dims]:
        g = torch.Generator().manual_seed(0)
        stats = GaussianStats.empty(P, d, torch.device("cpu"))
        held = torch.randn(P, d, 12, generator=g)
        stats.update(torch.randn(P, d, 64, generator=g))
        stats.update(held.clone())  # the held-out images are part of the fitted ones
        remove = GaussianStats.empty(P, d, torch.device("cpu"))
        remove.update(held.clone())
        calls = {
            "precision(0.01)": lambda: stats.precision(0.01),
            "distances_of(12 held out, remove=...)": lambda: stats.distances_of(held.clone(), 0.01, remove=remove),
        }
        threads = torch.get_num_threads()
        times = {(k, t): [] for k in calls for t in (threads, 1)}
        for _ in range(args.repeats):
            for name, fn in calls.items():
                for t in (threads, 1):
                    torch.set_num_threads(t)
                    t0 = time.perf_counter()
                    fn()
                    times[name, t].append(time.perf_counter() - t0)
            torch.set_num_threads(threads)
        for name in calls:
            m, m1 = median(times[name, threads]), median(times[name, 1])
            rows.append([f"d={d}, {P} positions", name, f"{m:.2f}", f"{m1:.2f}", f"{m / m1:.1f}x",
                         f"{m * P_224 / P:.1f}", f"{m1 * P_224 / P:.1f}"])
    emit(table(["statistics", "call", f"s, {threads} threads", "s, 1 thread", "slow-down with threads",
                f"scaled to P={P_224}, {threads} threads", f"scaled to P={P_224}, 1 thread"], rows))
    emit(["", f"load average at end: {load_average()}; total wall time {time.perf_counter() - t_start:.0f} s"])


if __name__ == "__main__":
    main()
