"""Could the held-out calibration reuse the precisions' factorization? Cost and effect.

At the end of a fit the precisions need one Cholesky factor per position of
``A = S / (n - 1) + epsilon I``. The held-out calibration then scores k
images under the Gaussians of the other ``m = n - k`` images: the library
downdates the sums, factors ``S_m / (m - 1) + epsilon I`` again and solves
(``GaussianStats.distances_of(..., held_out=True)``).

Removing k images changes the scatter by a matrix of rank k, so Woodbury's
identity gives distances from the factor of ``A`` with one triangular solve
of k + 1 columns and (k + 1) x (k + 1) algebra, but only for covariances of
the form ``c (A - V V^T)``, that is for one of two changed definitions of
the held-out Gaussians:

* ``ridge``: the others' sample covariance with the ridge scaled by ``(n -
  1) / (m - 1)`` (the same ridge on the scatter matrix as the full fit);
* ``scatter``: the others' scatter divided by ``n - 1`` (not ``m - 1``),
  ridge ``epsilon``.

The exact one (the library's) needs the second factorization.

Part 1 times, on one thread, the library's held-out distances (downdate,
factorization, solve) against the shortcut given the factor the precisions
already computed, in ms per position, on random statistics with n = 761
images and k = 64 held out.

Part 2 fits detectors (resnet18 with random weights, generated images) on n
normal images, scores fresh normal images, and for each definition reports
the fraction of fresh normal images flagged at ``contamination`` 0.1, 0.2
and 0.3 (the rate the threshold promises), averaged over seeds, and how the
calibration scores move against the exact ones.

Usage::

    python benchmarks/calibration_shortcut.py            # d = 100 and 550; 320 images, 3 seeds
    python benchmarks/calibration_shortcut.py --quick    # small and fast, for the tests
"""

import argparse
import time
import warnings

import numpy as np
import torch

from skpadim import PadimDetector
from skpadim._engine.gaussian import GaussianStats, _covariance
from skpadim.datasets import make_anomaly_images

from _common import Report, environment, machine_header, median

CONTAMINATIONS = (0.1, 0.2, 0.3)
DEFINITIONS = ("exact", "ridge", "scatter")


def shortcut(U, y, total, n, definition):
    """Squared distances (p, k) of the k left-out images ``y`` (p, d, k; minus the
    shift) under the other images' Gaussians, from the upper factors ``U`` of ``S / (n -
    1) + epsilon I`` (``total``: sums of all n images minus the shift)."""
    p, d, k = y.shape
    m = n - k
    mean_k, mean_m = y.mean(-1), (total - y.sum(-1)) / m
    beta = (m * k / n) ** 0.5
    # S - S_m = W W^T with W = [y_i - mean_k, beta (mean_m - mean_k)]; V = W / sqrt(n - 1)
    V = torch.cat([y - mean_k[:, :, None], (beta * (mean_m - mean_k))[:, :, None]], -1) / (n - 1) ** 0.5
    Z = torch.linalg.solve_triangular(U.mT, V, upper=False)
    G = Z.mT @ Z
    L = torch.linalg.cholesky(torch.eye(k + 1, dtype=G.dtype) - G)
    # r_i = y_i - mean_m = sqrt(n - 1) V c_i with c_i = e_i - e_k / beta: no solve of its own
    Gc = G[:, :, :k] - G[:, :, k:] / beta
    own = Gc[:, :k, :].diagonal(dim1=-2, dim2=-1) - Gc[:, k, :] / beta
    w = torch.linalg.solve_triangular(L, Gc, upper=False)
    sq = (own + w.square().sum(1)) * (n - 1)  # r^T (A - V V^T)^-1 r
    return sq * (m - 1) / (n - 1) if definition == "ridge" else sq


def held_out_distances(stats, emb, epsilon, definition):
    """(P, k) distances of the left-out ``emb`` (P, d, k) under each definition."""
    if definition == "exact":
        return stats.distances_of(emb.clone(), epsilon, held_out=True)
    cov = _covariance(stats.outer.double(), stats.total, stats.n, epsilon)
    U = torch.linalg.cholesky(cov.mT, upper=False).mT  # upper factor from the upper triangle
    y = emb.double() - stats.shift[:, :, None].double()
    return shortcut(U, y, stats.total, stats.n, definition).sqrt()


def part_speed(dims, positions, repeats, n=761, k=64):
    rows = []
    for d in dims:
        g = torch.Generator().manual_seed(d)
        x = torch.randn(positions, d, n, generator=g) * torch.linspace(0.05, 2, d)[None, :, None] + 1
        stats = GaussianStats.empty(positions, d, "cpu")
        stats.update(x.clone())
        emb = x[..., :k].clone()
        cov = _covariance(stats.outer.double(), stats.total, n, 0.01)
        U = torch.linalg.cholesky(cov.mT, upper=False).mT
        y = emb.double() - stats.shift[:, :, None].double()
        runs = {"library": [], "shortcut": []}
        for _ in range(repeats):  # interleaved
            t = time.thread_time()
            stats.distances_of(emb.clone(), 0.01, held_out=True)
            runs["library"].append((time.thread_time() - t) / positions * 1e3)
            t = time.thread_time()
            shortcut(U, y, stats.total, n, "ridge")
            runs["shortcut"].append((time.thread_time() - t) / positions * 1e3)
        lib, short = median(runs["library"]), median(runs["shortcut"])
        rows.append([d, n, k, f"{lib:.3f}", f"{short:.3f}", f"{lib / short:.2f}x"])
    return rows


def part_calibration(n_train, n_fresh, size, seeds):
    flagged = {name: [] for name in DEFINITIONS}
    moved = {name: [] for name in DEFINITIONS}
    for seed in seeds:
        X, _, _ = make_anomaly_images(n_train, 0, image_size=size, random_state=seed)
        fresh_images, _, _ = make_anomaly_images(n_fresh, 0, image_size=size, random_state=1000 + seed)
        det = PadimDetector(weights=None, image_size=size, random_state=seed).fit(X)
        fresh = det.score_samples(fresh_images)
        state = det._state
        emb = state.layout.embed_kept(state.sample.held_out(state.n)[0])
        exact = None
        for name in DEFINITIONS:
            with torch.inference_mode():
                dist = held_out_distances(state.stats, emb, state.epsilon, name)
                state.calibrate(state.sigma, 0.1, dist=dist)
            scores = state.calibration.copy()
            exact = scores if exact is None else exact
            flagged[name].append([np.mean(fresh < state.offset_for(c)) for c in CONTAMINATIONS])
            moved[name].append(np.median(scores / exact - 1))
    rows = []
    for name in DEFINITIONS:
        rates = np.mean(flagged[name], 0)
        rows.append([name, *(f"{r:.3f}" for r in rates), f"{np.mean(moved[name]):+.4f}"])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dims", type=int, nargs="+", default=[100, 550])
    p.add_argument("--positions", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-train", type=int, default=320, help="training images (k = min(64, n // 5) held out)")
    p.add_argument("--n-fresh", type=int, default=400)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", help="also write the environment and the tables to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.positions, args.repeats = [100], 4, 1
        args.n_train, args.n_fresh, args.image_size, args.seeds = 30, 20, 32, 1
    t_start = time.perf_counter()
    # Small quick runs hold out too few images for contamination=0.1; the rates still print.
    warnings.filterwarnings("ignore", message="contamination=.* asks to flag fewer")
    torch.set_num_threads(1)
    report = Report(environment())
    report.text(["## Held-out calibration from the precisions' factors (Woodbury)", ""])
    report.text(machine_header(report.env, [f"one thread; medians of {args.repeats} rounds, interleaved"]))
    report.text(["", "### Held-out distances, CPU ms per position (the shortcut given the precisions' factor)", ""])
    report.table("speed", ["d", "n", "k", "library: downdate + Cholesky + solve", "shortcut (Woodbury)",
                           "speed-up"], part_speed(args.dims, args.positions, args.repeats))
    k = min(64, args.n_train // 5)
    report.text(["", f"### Fresh normal images flagged, resnet18 (random weights), {args.image_size} px, "
                 f"{args.n_train} training images ({k} held out), {args.n_fresh} fresh, "
                 f"mean of {args.seeds} seed(s)", ""])
    report.table("calibration", ["held-out Gaussians", *(f"flagged at c={c}" for c in CONTAMINATIONS),
                                 "median score change vs exact"],
                 part_calibration(args.n_train, args.n_fresh, args.image_size, range(args.seeds)))
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
