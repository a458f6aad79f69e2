"""Cost of the end of fit: per-position kernels and the library's own calls.

At the end of a fit, ``GaussianStats.precision`` forms each position's
covariance in float64 from the running sums, factors it (Cholesky, upper
triangle) and inverts it; the threshold calibration
(``GaussianStats.distances_of(..., held_out=True)``) downdates the sums by the
held-out images, factors again and solves for their distances. Both loop
over small chunks of positions (about 4 MB of float64 each) shared out to one
Python thread per core, each running torch single-threaded.

Part 1 times the steps on one thread, in CPU ms per position (the calling
thread's CPU time, which other jobs on a shared machine barely change), on random SPD
matrices of the PaDiM sizes (d = 100 for resnet18, d = 550 for
wide_resnet50_2), both at the library's chunk size and at 128 positions per
chunk, with the alternatives that were considered:

* covariance formation: one ``baddbmm`` on the float32 -> float64 copy
  (library) against symmetrizing with ``triu`` and a mirrored copy first;
* inverse: ``cholesky_inverse`` (library) against ``cholesky_solve(I)`` and
  ``solve_triangular(U, I)`` followed by a product;
* the calibration's rank-64 downdate and its 64-column triangular solve;
* the float32 route (Cholesky, inverse and solve in float32, which would
  need a float64 check of each result, also timed, and a float64 redo where
  the check fails): on an AVX2 CPU the float32 LAPACK kernels save less
  than the check costs, so the library stays in float64 (docs/benchmarks.md);
* the same Cholesky factorization and inverse through scipy's LAPACK (the
  OpenBLAS of scipy's wheels), one matrix per call: what another LAPACK
  would give (docs/benchmarks.md says why the library does not call it).

Part 2 times the library calls on statistics of random embeddings
(``--positions`` positions, scaled to the 3136 positions of a 224 px image),
with torch's default number of threads (chunks on all cores), after
``torch.set_num_threads(1)`` (one worker), and through scipy's OpenBLAS run on
one thread per worker, as the ``skpadim`` program runs them
(``skpadim._engine.lapack``), alternating.

Part 3 times the streaming update per image, for batches of 32 and 64
images: subtracting the shift, summing in float64 and one ``baddbmm`` of the
full product with torch's threads (the previous implementation), against
``GaussianStats.update`` (float32 sums within the batch, blocks on and above
the diagonal for large d, chunks of positions shared out to one
single-threaded worker per core).

Usage::

    python benchmarks/precision_kernels.py            # d = 100 and 550, 3 rounds
    python benchmarks/precision_kernels.py --quick    # d = 100 only, 1 round
    python benchmarks/precision_kernels.py --json out.json   # also write the tables as JSON
"""

import argparse
import time

import numpy as np
import scipy.linalg  # noqa: F401 - loads scipy's BLAS, named in the tables
import threadpoolctl
import torch

from skpadim._engine import gaussian as _gaussian
from skpadim._engine.gaussian import GaussianStats

from _common import Report, environment, machine_header, median

P_224 = 3136
#: The BLAS behind scipy.linalg.lapack (OpenBLAS in scipy's wheels; torch uses MKL on x86).
_SCIPY_BLAS = next((i["internal_api"] for i in threadpoolctl.threadpool_info()
                    if "scipy" in i["filepath"] and i["user_api"] == "blas"), "unknown")
HELD = 64  # calibration images (the reservoir's capacity)


def _inputs(c, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(c, d, 3 * d, generator=g)
    outer = X @ X.mT  # float32 sums of outer products
    total = torch.randn(c, d, dtype=torch.float64, generator=g)
    held = torch.randn(c, d, HELD, dtype=torch.float64, generator=g)
    return outer, total, 3 * d, held


def _steps(c, d):
    """Name -> callable, for one chunk of c positions."""
    outer, total, n, held = _inputs(c, d)

    def form_library():
        return _gaussian._covariance(outer.double(), total, n, 0.01)

    def form_mirrored():
        up = outer.double().triu()
        cov = up + up.triu(1).mT
        cov -= total[:, :, None] * total[:, None, :] / n
        cov /= n - 1
        cov.diagonal(dim1=-2, dim2=-1).add_(0.01)
        return cov

    cov = form_library()
    U = torch.linalg.cholesky_ex(cov, upper=True)[0]
    eye = torch.eye(d, dtype=torch.float64).expand(c, d, d)

    def tri_product():
        Ui = torch.linalg.solve_triangular(U, eye, upper=True)
        return Ui @ Ui.mT

    cov32, U32, held32 = cov.float(), U.float(), held.float()
    lower = torch.ones(d, d, dtype=torch.bool).tril(-1)
    probes = torch.randn(d, 2, dtype=torch.float64)
    inv32 = torch.cholesky_inverse(U32, upper=True)

    def check():  # the float64 error estimate a float32 inverse needs: X (v - A X v)
        A = torch.where(lower, cov.mT, cov)
        w = (inv32 @ probes.float()).double()
        return inv32 @ (probes - A @ w).float()

    from scipy.linalg import lapack

    covs = [np.ascontiguousarray(m) for m in cov.numpy()]  # C order: LAPACK sees the transpose

    def sp_cholesky():
        return [lapack.dpotrf(m, lower=1, clean=0) for m in covs]

    factors = [f for f, _ in sp_cholesky()]

    def sp_inverse():
        return [lapack.dpotri(f, lower=1) for f in factors]

    return {
        "covariance: baddbmm on the float64 copy [library]": form_library,
        "covariance: triu + mirrored copy": form_mirrored,
        "Cholesky (upper)": lambda: torch.linalg.cholesky_ex(cov, upper=True),
        "inverse: cholesky_inverse [library]": lambda: torch.cholesky_inverse(U, upper=True),
        "inverse: cholesky_solve(I)": lambda: torch.cholesky_solve(eye, U, upper=True),
        "inverse: solve_triangular(U, I) + product": tri_product,
        f"calibration: rank-{HELD} downdate": lambda: cov.clone().baddbmm_(held, held.mT, alpha=-1e-3),
        f"calibration: triangular solve, {HELD} columns": lambda: torch.linalg.solve_triangular(
            U.mT, held, upper=False),
        "float32: Cholesky (upper)": lambda: torch.linalg.cholesky_ex(cov32, upper=True),
        "float32: inverse, cholesky_inverse": lambda: torch.cholesky_inverse(U32, upper=True),
        f"float32: triangular solve, {HELD} columns": lambda: torch.linalg.solve_triangular(
            U32.mT, held32, upper=False),
        "float32: float64 check of one result (2 probes)": check,
        f"scipy's LAPACK ({_SCIPY_BLAS}): Cholesky, dpotrf": sp_cholesky,
        f"scipy's LAPACK ({_SCIPY_BLAS}): inverse from it, dpotri": sp_inverse,
    }


def part_steps(dims, repeats):
    threads = torch.get_num_threads()
    # OpenBLAS (scipy's) on one thread too (process-wide, for this benchmark only): the CPU time
    # below is the calling thread's, which a multi-threaded BLAS would hide.
    limits = threadpoolctl.ThreadpoolController().select(internal_api="openblas").limit(limits=1)
    torch.set_num_threads(1)
    rows = []
    try:
        for d in dims:
            chunks = [_gaussian._chunk_size(d, "cpu"), 128]
            fns = {c: _steps(c, d) for c in chunks}
            times = {(c, k): [] for c in chunks for k in fns[c]}
            for _ in range(repeats):
                for c in chunks:
                    for k, fn in fns[c].items():
                        fn()  # warm
                        t0 = time.thread_time()  # CPU time: robust to other jobs on the machine
                        fn()
                        times[c, k].append(1000 * (time.thread_time() - t0) / c)
            for k in fns[chunks[0]]:
                a, b = median(times[chunks[0], k]), median(times[chunks[1], k])
                rows.append([str(d), k, f"{a:.3f}", f"{b:.3f}", f"{a * P_224 / 1000:.2f}"])
    finally:
        limits.restore_original_limits()
        torch.set_num_threads(threads)
    return chunks, rows


def part_calls(dims, positions, repeats):
    """The library calls with torch's LAPACK on all threads and on one, and (where scipy's
    LAPACK is OpenBLAS) through it on one OpenBLAS thread, as the ``skpadim`` program runs
    them (``skpadim._engine.lapack``); interleaved."""
    from skpadim._engine import lapack

    threads = torch.get_num_threads()
    openblas = threadpoolctl.ThreadpoolController().select(internal_api="openblas")
    variants = [("torch", threads), ("torch", 1)] + ([("openblas", threads)] if lapack._routines() else [])
    rows = []
    for d in dims:
        P = positions
        g = torch.Generator().manual_seed(0)
        stats = GaussianStats.empty(P, d, "cpu")
        held = torch.randn(P, d, HELD, generator=g) * 3 + 1
        stats.update(torch.randn(P, d, 128, generator=g) * 3 + 1)
        stats.update(held.clone())  # the held-out images are among the fitted ones
        calls = {
            "precision(0.01)": lambda: stats.precision(0.01),
            f"distances_of({HELD} images, held_out=True)": lambda: stats.distances_of(held, 0.01, held_out=True),
        }
        times = {(k, v): [] for k in calls for v in variants}

        def run(name, fn, variant):
            lib, t = variant
            torch.set_num_threads(t)
            limits = openblas.limit(limits=1) if lib == "openblas" else None
            lapack.ALLOWED = lib == "openblas"
            try:
                assert lapack.enabled("cpu") == (lib == "openblas") or lapack._intel_cpu()
                t0 = time.perf_counter()
                fn()
                times[name, variant].append(time.perf_counter() - t0)
            finally:
                lapack.ALLOWED = True
                if limits is not None:
                    limits.restore_original_limits()
                torch.set_num_threads(threads)

        with torch.inference_mode():
            for name, fn in calls.items():
                fn()  # warm
            for _ in range(repeats):
                for name, fn in calls.items():
                    for v in variants:
                        run(name, fn, v)
        for name in calls:
            m, m1 = median(times[name, variants[0]]), median(times[name, variants[1]])
            row = [f"d={d}, {P} positions", name, f"{m * P_224 / P:.2f}", f"{m1 * P_224 / P:.2f}",
                   f"{m1 / m:.2f}x"]
            if len(variants) > 2:
                mo = median(times[name, variants[2]])
                row += [f"{mo * P_224 / P:.2f}", f"{m / mo:.2f}x"]
            else:
                row += ["-", "-"]
            rows.append(row)
    return threads, rows


def part_update(dims, positions, repeats):
    threads = torch.get_num_threads()
    rows = []
    for d in dims:
        P = P_224 if d <= 200 else positions  # small d: the real size (cheap)
        for B in (32, 64):
            g = torch.Generator().manual_seed(0)
            emb = torch.randn(P, d, B, generator=g)
            stats = GaussianStats.empty(P, d, "cpu")
            stats.update(emb.clone())
            shift, total, outer = stats.shift, stats.total.clone(), stats.outer.clone()
            n_blocks = max(1, round(d / _gaussian._BLOCK))

            def previous():  # one pass per step, torch's threads, float64 sum, full product
                y = copy.sub_(shift[..., None])
                total.add_(y.sum(-1, dtype=torch.float64))
                outer.baddbmm_(y, y.mT)

            def library():
                stats.update(copy)

            times = {"previous": [], "library": []}
            for _ in range(repeats + 1):
                for k, fn in (("previous", previous), ("library", library)):
                    copy = emb.clone()  # both overwrite their input
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(1000 * (time.perf_counter() - t0) / B * P_224 / P)
            f, b = median(times["previous"][1:]), median(times["library"][1:])
            rows.append([str(d), str(P), str(B), str(n_blocks), f"{f:.2f}", f"{b:.2f}", f"{f / b:.2f}x"])
    return threads, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dims", type=int, nargs="+", default=[100, 550])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--positions", type=int, default=392,
                   help="positions of the library-call and update measurements (scaled to 3136)")
    p.add_argument("--json", help="also write the environment and the tables to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.repeats, args.positions = [100], 1, 64
    t_start = time.perf_counter()
    report = Report(environment())
    report.text(["## End-of-fit kernels", ""])
    report.text(machine_header(report.env, [f"float64 unless stated; medians of {args.repeats} rounds"]))
    chunks, rows = part_steps(args.dims, args.repeats)
    report.text(["", "### Steps, one thread, CPU ms per position", ""])
    report.table("steps", ["d", "step", "ms, library chunk (4 MB)", "ms, chunk of 128",
                           f"s for P={P_224}, library chunk"], rows)
    threads, rows = part_calls(args.dims, args.positions, args.repeats)
    report.text(["", f"### Library calls, seconds scaled to P={P_224}", ""])
    report.table("calls", ["statistics", "call", f"s, {threads} threads (chunks on all cores)", "s, 1 thread",
                           "speed-up", f"s, scipy's OpenBLAS, {threads} threads", "OpenBLAS gain"], rows)
    threads, rows = part_update(args.dims, args.positions, args.repeats)
    report.text(["", f"### Streaming update of the sums of outer products (float32, {threads} threads), "
                 f"ms per image for P={P_224}", ""])
    report.table("update", ["d", "positions", "images per update", "column blocks",
                            f"sub + float64 sum + full baddbmm, torch's {threads} threads",
                            "GaussianStats.update: float32 sum, upper blocks, chunks on all cores", "speed-up"], rows)
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
