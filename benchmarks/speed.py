"""Throughput of PadimDetector.fit / score_samples against the bare backbone.

For each backbone, the same images (``make_anomaly_images``, uint8, computed
once) go through four variants, interleaved round by round so that
background load hits all of them alike (A, B, C, D, A, B, C, D, ...):

* ``backbone, plain``: the detector's own torch module run up to the last
  PaDiM layer (``LayerTaps`` on layer1..layer3, which stops after layer3),
  same batches and preprocessing (uint8 -> float / 255, ImageNet
  normalization), under ``torch.inference_mode()``: the forward work PaDiM
  cannot avoid.
* ``backbone, heap_reuse``: the same inside ``skpadim._engine.heap.heap_reuse()``,
  which the detector uses around its own loops.
* ``fit``: ``PadimDetector.fit``.
* ``score_samples``: on the same images.

Two fit modes:

* ``full`` (default for resnet18): every round runs the complete ``fit``;
  its phases are timed (build the backbone, streaming loop, mean + precision,
  calibration).
* ``stream`` (default for wide_resnet50_2, to keep the run short: its end
  of fit takes about 20 s per round on 2 cores): every round runs the real ``fit`` and stops it with an
  exception right after the streaming loop (the detector resets itself, as
  for any interrupted fit). The fixed end-of-fit cost is then measured once
  on a slice of K patch positions with the library's own code
  (``GaussianStats.precision``; ``GaussianStats.distances_of`` with
  ``held_out=True``, as ``_calibration_scores`` does) and scaled by P / K:
  that work is a loop over independent chunks of positions, linear in P.
  ``score_samples`` is timed on a detector whose end of fit was replaced by
  a stand-in of the same shapes (``precision_`` = identity), since its
  cost does not depend on the values. In ``full`` mode the same slice
  estimate is printed next to the measured phases, as a check of the method.

The fit and score_samples calls are timed through thin wrappers (a subclass
that records timestamps, and timing proxies around the backbone taps, the
patch embedding, the statistics update, the reservoir sample, the
Mahalanobis distances and the map smoothing), which add a few
``perf_counter`` calls per batch and nothing else. Medians over the rounds
are reported; ratios are throughputs divided by the bare backbone's
(heap_reuse variant; plain in brackets). The CPU columns come from
``getrusage(RUSAGE_SELF)`` (user + sys of all threads, and minor page
faults): on a machine shared with other jobs, wall time also counts the
time spent waiting for a core and CPU time mostly does not (OpenMP threads
that spin while their partner waits for a core still count), so the
CPU-time ratio (backbone CPU s / variant CPU s) is the less noisy of the two.

Usage::

    python benchmarks/speed.py --backbones resnet18          # ~1 min on 2 cores
    python benchmarks/speed.py --backbones wide_resnet50_2 --full-fit-wide --n-wide 256
                                                             # ~4 min on 2 cores
    python benchmarks/speed.py --quick                       # smoke test, < 1 minute
"""

import argparse
import contextlib
import gc
import resource
import sys
import time

import numpy as np
import torch

import skpadim._engine.calibration as _calibration_module
import skpadim._detector as _detector_module
from skpadim import PadimDetector
from skpadim._engine.gaussian import GaussianStats
from skpadim._engine.taps import LayerTaps
from skpadim._engine.heap import heap_reuse
from skpadim.datasets import make_anomaly_images

from _common import Clock, emit, load_average, machine_header, median, spread, table

TARGET = 0.75
CALIBRATION_CAPACITY = 64  # skpadim._engine.calibration.CAPACITY: at most 64 held-out images
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# The clock the instrumentation writes to (a fresh one for each measured call).
_CLOCK = Clock()


def _usage():
    """(CPU seconds user + sys, sys seconds, minor page faults) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt], dtype=float)


class _StopAfterLoop(Exception):
    """Raised at the end of fit's streaming loop in ``stream`` mode."""


class _TimedCall:
    """Proxy for a callable object: times __call__, delegates everything else."""

    def __init__(self, obj, name):
        self._obj = obj
        self._name = name

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._obj(*args, **kwargs)
        finally:
            _CLOCK.add(self._name, time.perf_counter() - t0)

    def __getattr__(self, item):
        return getattr(self._obj, item)


def _timed_function(fn, name):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _CLOCK.add(name, time.perf_counter() - t0)

    return wrapper


# Time the module-level helpers the detector calls when predicting. Only the
# names inside skpadim._detector are rebound, in this process only.
_detector_module.mahalanobis = _timed_function(_detector_module.mahalanobis, "mahalanobis")
_detector_module.anomaly_maps = _timed_function(_detector_module.anomaly_maps, "maps")
# And the reservoir sample of calibration images taken during fit's loop.
_calibration_module.Reservoir.offer = _timed_function(_calibration_module.Reservoir.offer, "reservoir")


class TimedDetector(PadimDetector):
    """PadimDetector that records when each phase of fit / score_samples ends.

    ``_bench_stop_after_loop``: raise :class:`_StopAfterLoop` when fit's
    streaming loop is done (when it asks for the precision).
    ``_bench_stub_end``: replace the end of fit by a stand-in (identity
    precision, no calibration), to get a detector to time ``score_samples``
    with. ``_bench_keep``: keep the running
    statistics and ``_bench_held`` images' embeddings for the slice estimate.
    """

    _bench_stop_after_loop = False
    _bench_stub_end = False
    _bench_held = 12

    def _initialize(self, *args, **kwargs):
        t0 = time.perf_counter()
        super()._initialize(*args, **kwargs)
        _CLOCK.add("init", time.perf_counter() - t0)
        self._bench_model = self.backbone_
        self._taps = _TimedCall(self._taps, "backbone")
        self._embedding = _TimedCall(self._embedding, "embedding")
        update, calls = self._stats.update, []

        def timed_update(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return update(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                _CLOCK.add("stats update", dt)
                if not calls:  # the first batch also touches the freshly allocated sums
                    _CLOCK.add("stats update first", dt)
                calls.append(dt)

        self._stats.update = timed_update
        stats = self._stats
        precision = stats.precision
        if self._bench_stub_end:

            def precision(epsilon, dtype=torch.float32):
                P, d = stats.shape
                return torch.eye(d, dtype=dtype).expand(P, d, d).contiguous()

        def loop_end_then_precision(*args, **kwargs):
            # The streaming loop ends when fit asks for the precision (after the last
            # buffered update of the sums).
            t = _CLOCK.t
            if "loop start" in t:
                t["loop end"] = time.perf_counter()
                t["loop"] = t["loop end"] - t["loop start"]
                t["loop usage"] = _usage() - t["loop start usage"]
            if self._bench_stop_after_loop:
                self._bench_stats = stats
                raise _StopAfterLoop
            return precision(*args, **kwargs)

        stats.precision = loop_end_then_precision

    def _embeddings(self, *args, **kwargs):
        fit = kwargs.get("desc", args[1] if len(args) > 1 else None) == "fit"
        if fit:
            _CLOCK.t["loop start"] = time.perf_counter()
            _CLOCK.t["loop start usage"] = _usage()
        first = True
        for emb, sizes, feats in super()._embeddings(*args, **kwargs):
            if first and fit:
                # Embeddings of held-out-like images for the end-of-fit estimate
                # (a clone of at most 64 images' embeddings, ~1% of the loop time).
                self._bench_held_emb = emb[..., : self._bench_held].clone()
            first = False
            yield emb, sizes, feats

    def _calibration_scores(self, *args, **kwargs):
        t0 = time.perf_counter()
        _CLOCK.t["calibration start"] = t0
        if self._bench_stub_end:
            return np.zeros(1)
        # anomaly_maps is timed too; keep the calibration's share out of "maps".
        before = _CLOCK.t.get("maps", 0.0)
        try:
            return super()._calibration_scores(*args, **kwargs)
        finally:
            _CLOCK.t["maps"] = before
            _CLOCK.add("calibration", time.perf_counter() - t0)


def _bare_backbone(taps, X, batch_size, reuse):
    """The detector's preprocessing + forward pass up to the last tapped layer."""
    mean = torch.tensor(_IMAGENET[0]).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET[1]).view(1, 3, 1, 1)
    ctx = heap_reuse() if reuse else contextlib.nullcontext()
    t0 = time.perf_counter()
    u0 = _usage()
    with ctx, torch.inference_mode():
        for start in range(0, len(X), batch_size):
            chunk = X[start : start + batch_size]
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(torch.float32).div_(255.0)
            x = x.movedim(-1, -3).contiguous()  # what resize() does at the target size
            x = (x - mean) / std
            taps(x)
    return time.perf_counter() - t0, _usage() - u0


def _measure(fn):
    global _CLOCK
    _CLOCK = Clock()
    gc.collect()
    t0 = time.perf_counter()
    u0 = _usage()
    try:
        fn()
    except _StopAfterLoop:
        pass
    total = time.perf_counter() - t0
    t = dict(_CLOCK.t)
    t["total"] = total
    t["usage"] = _usage() - u0
    t["end"] = time.perf_counter()
    return t


def end_of_fit_estimate(stats, held, epsilon, k_positions):
    """Seconds for mean + precision and for calibration, from K positions, scaled to P.

    Mirrors the library: ``stats.mean()``, ``stats.precision(epsilon)`` and
    ``stats.distances_of(held, epsilon, held_out=True)`` (the held-out images
    are among the fitted ones), whose costs are linear in P.
    """
    P, d = stats.shape
    K = min(k_positions, P)
    scale = P / K
    with heap_reuse(), torch.inference_mode():
        sub = stats.slice(0, K)
        t0 = time.perf_counter()
        sub.mean()
        sub.precision(epsilon)
        t_prec = (time.perf_counter() - t0) * scale
        t0 = time.perf_counter()
        sub.distances_of(held[:K].clone(), epsilon, held_out=True)
        t_dist = (time.perf_counter() - t0) * scale
    return {"precision": t_prec, "calibration": t_dist, "K": K, "P": P}


def run_backbone(name, n_features, X, args, repeats, mode):
    kw = dict(
        backbone=name,
        weights=None,
        n_features=n_features,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device="cpu",
        random_state=0,
    )
    N = len(X)
    held = max(1, min(CALIBRATION_CAPACITY, N // 5))  # what fit holds out for calibration
    det = TimedDetector(**kw)
    det._bench_held = held
    det_score = det
    if mode == "stream":
        det._bench_stop_after_loop = True
        det_score = TimedDetector(**kw)
        det_score._bench_stub_end = True
        det_score.fit(X[: args.batch_size])  # shapes as after a real fit
    # Warm-up (oneDNN primitives, allocator) on one batch, not measured; stopped
    # after the loop so that it does not pay the end of fit.
    det._bench_stop_after_loop = True
    _measure(lambda: det.fit(X[: args.batch_size]))
    det._bench_stop_after_loop = mode == "stream"
    if det_score is not det:
        det_score.score_samples(X[: args.batch_size])
    taps = LayerTaps(det._bench_model, ("layer1", "layer2", "layer3"))  # same module and weights
    _bare_backbone(taps, X[: args.batch_size], args.batch_size, reuse=True)
    print(f"  [{name}] warm-up done; load {load_average()}", file=sys.stderr, flush=True)

    runs = {"plain": [], "reuse": [], "plain usage": [], "reuse usage": [], "fit": [], "score": []}
    for r in range(repeats):
        for key, reuse in (("plain", False), ("reuse", True)):
            wall, usage = _bare_backbone(taps, X, args.batch_size, reuse=reuse)
            runs[key].append(wall)
            runs[key + " usage"].append(usage)
        det._bench_stats = None
        fit = _measure(lambda: det.fit(X))
        if mode == "full":
            calib_start = fit.get("calibration start", fit["end"])
            fit["precision"] = calib_start - fit["loop end"]
            fit["finalize"] = fit["end"] - calib_start - fit.get("calibration", 0.0)
        runs["fit"].append(fit)
        runs["score"].append(_measure(lambda: det_score.score_samples(X)))
        print(
            f"  [{name}] round {r + 1}/{repeats}: backbone plain {runs['plain'][-1]:.2f}s, "
            f"heap_reuse {runs['reuse'][-1]:.2f}s, fit {fit['total']:.2f}s "
            f"(loop {fit['loop']:.2f}s), score {runs['score'][-1]['total']:.2f}s; "
            f"load {load_average()}",
            file=sys.stderr,
            flush=True,
        )
    stats = det._stats if mode == "full" else det._bench_stats
    del det_score
    gc.collect()
    estimate = end_of_fit_estimate(stats, det._bench_held_emb, float(det.epsilon), args.k_positions)
    print(f"  [{name}] end-of-fit estimate from {estimate['K']} positions: {estimate}", file=sys.stderr)
    del det, stats
    gc.collect()
    return N, runs, estimate


def _stage(runs, key):
    return median([r.get(key, 0.0) for r in runs])


def report(name, n_features, N, runs, estimate, args, mode):
    plain = median(runs["plain"])
    reuse = median(runs["reuse"])
    fits, scores = runs["fit"], runs["score"]
    fit_loop = _stage(fits, "loop")
    score_total = _stage(scores, "total")
    ips = lambda s: N / s  # noqa: E731
    b, bp = ips(reuse), ips(plain)
    est_fixed = _stage(fits, "init") + estimate["precision"] + estimate["calibration"]
    if mode == "full":
        fit_total = _stage(fits, "total")
        fixed_runs = [f["total"] - f["loop"] for f in fits]
        fixed = median(fixed_runs)
    else:
        fixed_runs = None
        fixed = est_fixed
        fit_total = fit_loop + fixed

    def usage(values):
        """Median (CPU s, sys s, minor faults) of a list of usage vectors."""
        return np.median(np.stack(values), axis=0)

    b_cpu = usage(runs["reuse usage"])[0]

    def row(label, secs, seconds_list, use=None):
        tput = ips(secs)
        rng = spread(seconds_list) if seconds_list else "(estimate)"
        if use is None:
            cols = ["-"] * 3
        else:
            cols = [f"{use[0]:.1f} ({use[1]:.1f})", f"{use[2] / N:,.0f}", f"{b_cpu / use[0]:.2f}"]
        return [label, f"{secs:.2f}", rng, f"{tput:.2f}", f"{tput / b:.2f} ({tput / bp:.2f})"] + cols

    head = (
        f"### {name}, n_features={n_features}, N={N} images, {args.image_size} px, "
        f"batch {args.batch_size}, {len(fits)} rounds, fit mode '{mode}'"
    )
    lines = ["", head, ""]
    fit_label = "fit, end to end" if mode == "full" else "fit, end to end (loop + estimated fixed cost)"
    lines += table(
        ["variant", "median s", "min-max s", "images/s", "ratio vs backbone (vs plain)",
         "CPU s (of which sys)", "page faults / image", "CPU-time ratio"],
        [
            row("backbone, plain", plain, runs["plain"], usage(runs["plain usage"])),
            row("backbone, heap_reuse", reuse, runs["reuse"], usage(runs["reuse usage"])),
            row(fit_label, fit_total, [f["total"] for f in fits] if mode == "full" else None,
                usage([f["usage"] for f in fits]) if mode == "full" else None),
            row("fit, streaming loop only", fit_loop, [f["loop"] for f in fits],
                usage([f["loop usage"] for f in fits])),
            row("score_samples", score_total, [s["total"] for s in scores], usage([s["usage"] for s in scores])),
        ],
    )
    lines.append("")
    what = "measured" if mode == "full" else f"estimated from {estimate['K']} of {estimate['P']} positions"
    lines.append(
        f"Plain / heap_reuse backbone time: {plain / reuse:.2f}x. "
        f"Fixed cost of fit (build backbone + mean/precision + calibration), {what}: {fixed:.1f} s"
        + (f" (range {spread(fixed_runs)})" if fixed_runs else "")
        + ", independent of N."
    )
    if mode == "full":
        lines.append(
            f"Check of the slice estimate ({estimate['K']} of {estimate['P']} positions, scaled): "
            f"precision {estimate['precision']:.1f} s (measured {_stage(fits, 'precision'):.1f} s), "
            f"calibration {estimate['calibration']:.1f} s (measured {_stage(fits, 'calibration'):.1f} s)."
        )
    stream_rate = ips(fit_loop)
    if stream_rate > TARGET * b:
        n_even = fixed / (1.0 / (TARGET * b) - 1.0 / stream_rate)
        lines.append(
            f"End-to-end fit reaches {TARGET:.2f}x the backbone's throughput from about "
            f"N = {n_even:,.0f} images (fixed cost amortized)."
        )
    else:
        lines.append(
            f"The streaming loop alone is below {TARGET:.2f}x the backbone, so end-to-end fit "
            "cannot reach the target at any N."
        )

    # Stage breakdowns (medians of each stage; they need not add up exactly).
    loop_other = [
        f["loop"] - sum(f.get(k, 0.0) for k in ("backbone", "embedding", "stats update", "reservoir"))
        for f in fits
    ]
    fit_rows = []

    def add(label, secs, note=""):
        fit_rows.append([label, f"{secs:.2f}", f"{100 * secs / fit_total:.0f}%", note])

    add("init: build backbone (random init), probe shapes", _stage(fits, "init"))
    add("loop: backbone forward", _stage(fits, "backbone"))
    add("loop: embedding (select + upsample)", _stage(fits, "embedding"))
    n_batches = -(-N // args.batch_size)
    add("loop: stats update (baddbmm)", _stage(fits, "stats update"),
        f"first of {n_batches} batches: {_stage(fits, 'stats update first'):.2f} s")
    add("loop: reservoir (copy of calibration images' kept channels)", _stage(fits, "reservoir"),
        f"first {CALIBRATION_CAPACITY} images always copied, later ones with probability {CALIBRATION_CAPACITY}/t")
    add("loop: other (input to float, normalize; loop overhead)", median(loop_other))
    if mode == "full":
        add("end: mean + precision (Cholesky, inverse)", _stage(fits, "precision"))
        add("end: calibration (held-out Cholesky + maps)", _stage(fits, "calibration"))
        add("end: to numpy, offset", _stage(fits, "finalize"))
        add("total (measured)", fit_total)
    else:
        note = f"estimate: {estimate['K']} positions x {estimate['P'] / estimate['K']:.1f}"
        add("end: mean + precision (Cholesky, inverse)", estimate["precision"], note)
        add("end: calibration (held-out Cholesky)", estimate["calibration"], note)
        add("total (loop measured + estimated end)", fit_total)
    lines += ["", "fit stages (median seconds):", ""]
    lines += table(["stage", "s", "% of fit", "note"], fit_rows)

    score_other = [
        s["total"] - sum(s.get(k, 0.0) for k in ("backbone", "embedding", "mahalanobis", "maps"))
        for s in scores
    ]
    score_rows = []
    for label, k in [
        ("backbone forward", "backbone"),
        ("embedding (select + upsample)", "embedding"),
        ("Mahalanobis (bmm with precision)", "mahalanobis"),
        ("maps (bilinear upsample + Gaussian smoothing)", "maps"),
    ]:
        score_rows.append([label, f"{_stage(scores, k):.2f}", f"{100 * _stage(scores, k) / score_total:.0f}%"])
    score_rows.append(
        ["other (input prep, max, to numpy)", f"{median(score_other):.2f}",
         f"{100 * median(score_other) / score_total:.0f}%"]
    )
    score_rows.append(["total", f"{score_total:.2f}", "100%"])
    lines += ["", "score_samples stages (median seconds):", ""]
    lines += table(["stage", "s", "% of score_samples"], score_rows)

    verdict = {
        "fit streaming loop": stream_rate / b,
        f"fit end to end (N={N})": ips(fit_total) / b,
        "score_samples": ips(score_total) / b,
    }
    lines.append("")
    lines.append(
        "Target >= %.2f x backbone (heap_reuse): " % TARGET
        + "; ".join(f"{k} {v:.2f} {'MET' if v >= TARGET else 'NOT MET'}" for k, v in verdict.items())
    )
    # Two load-robust views of the same ratios: paired per round, and the share of the
    # call spent in the backbone itself (both measured inside the same call).
    paired_loop = median([p / f["loop"] for p, f in zip(runs["reuse"], fits)])
    paired_score = median([p / sc["total"] for p, sc in zip(runs["reuse"], scores)])
    share_loop = median([f.get("backbone", 0.0) / f["loop"] for f in fits])
    share_score = median([sc.get("backbone", 0.0) / sc["total"] for sc in scores])
    lines.append(
        f"Median of per-round ratios: fit streaming loop {paired_loop:.2f}, score_samples {paired_score:.2f}. "
        f"Backbone share of the time inside the call (the ratio if the detector's backbone ran exactly as "
        f"fast as the bare one): fit streaming loop {share_loop:.2f}, score_samples {share_score:.2f}."
    )
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: resnet18 at 64 px, 16 images, 1 round, both fit modes")
    p.add_argument("--backbones", nargs="+", default=["resnet18", "wide_resnet50_2"],
                   choices=["resnet18", "wide_resnet50_2"])
    p.add_argument("--n-resnet18", type=int, default=256, help="training images for resnet18")
    p.add_argument("--n-wide", type=int, default=64, help="training images for wide_resnet50_2")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved rounds per backbone (default: 3 for resnet18, 2 for wide_resnet50_2)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--full-fit-wide", action="store_true",
                   help="run complete fits for wide_resnet50_2 too (end of fit: ~20 s per round on 2 cores)")
    p.add_argument("--k-positions", type=int, default=384,
                   help="patch positions used for the end-of-fit slice estimate")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = []
    if args.quick:
        args.n_resnet18, args.image_size, args.batch_size, args.repeats = 16, 64, 8, 1
        args.k_positions = 128
        plan = [("resnet18", 100, 16, "full"), ("resnet18", 100, 16, "stream")]
    else:
        for name in dict.fromkeys(args.backbones):
            if name == "resnet18":
                plan.append((name, 100, args.n_resnet18, "full"))
            else:
                plan.append((name, 550, args.n_wide, "full" if args.full_fit_wide else "stream"))

    t_start = time.perf_counter()
    n_max = max(n for _, _, n, _ in plan)
    X, _, _ = make_anomaly_images(n_max, 0, image_size=args.image_size, random_state=0)
    emit(["## speed", ""])
    emit(machine_header([
        f"images: make_anomaly_images({n_max}, 0, image_size={args.image_size}, random_state=0), uint8, "
        "precomputed; weights=None (random), random_state=0, device='cpu'",
        "variants interleaved per round (backbone plain, backbone heap_reuse, fit, score_samples); "
        "medians reported",
    ]))
    for name, n_features, N, mode in plan:
        repeats = args.repeats or (3 if name == "resnet18" else 2)
        N, runs, estimate = run_backbone(name, n_features, X[:N], args, repeats, mode)
        emit(report(name, n_features, N, runs, estimate, args, mode))
    emit(["", f"load average at end: {load_average()}; total wall time {time.perf_counter() - t_start:.0f} s"])


if __name__ == "__main__":
    main()
