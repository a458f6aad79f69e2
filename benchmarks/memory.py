"""Peak memory of PadimDetector.fit versus the number of training images,
and the size / load time of a fitted detector saved with joblib.

Every case runs in a fresh Python subprocess, which reports its own peak
resident set size (``VmHWM``, read right after ``fit``) and samples its
resident size every ``--sample-ms`` milliseconds while ``fit`` runs (a
background thread reading /proc/self/status: nothing in the library is
replaced); the parent also reads the child's ``ru_maxrss`` with ``os.wait4``
when it exits. To keep the *input* memory constant, the training images are
written once as PNG files and the detector gets a list of paths, which it
decodes batch by batch; with ``--array`` one extra case feeds the same 800
images as an in-memory uint8 array for comparison.

Usage::

    python benchmarks/memory.py                   # 100 vs 800 images, resnet18 joblib
    python benchmarks/memory.py --wide            # + wide_resnet50_2 fit/joblib
    python benchmarks/memory.py --array           # + the large set as an in-memory uint8 array
    python benchmarks/memory.py --quick --json memory.json   # smoke test: 16 vs 48 images, 64 px
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

from _common import Report, environment, load_average, machine_header, peak_rss_mib, rss_mib, run_child


# ---------------------------------------------------------------- children


def _child(args):
    """Run one case in this (fresh) process; print one JSON line."""
    import glob

    import numpy as np

    out = {}
    t0 = time.perf_counter()
    import joblib
    import torch

    from skpadim import PadimDetector

    out["import_s"] = time.perf_counter() - t0
    paths = sorted(glob.glob(os.path.join(args.image_dir, "*.png")))
    kw = dict(weights=None, image_size=args.image_size, batch_size=32, device="cpu", random_state=0)
    case = args.child
    if case == "import":
        pass
    elif case in ("fit-paths", "fit-array", "fit-dump"):
        X = paths[: args.n]
        if case == "fit-array":
            from PIL import Image

            X = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in X])
            out["input_mb"] = X.nbytes / 2**20
        det = PadimDetector(backbone=args.backbone, n_features=args.n_features, **kw)
        t0 = time.perf_counter()
        with RssSampler(args.sample_ms / 1000) as sampler:
            det.fit(X)
        out["fit_s"] = time.perf_counter() - t0
        out["rss_trace"] = sampler.samples
        out["rss_end_of_fit_mb"] = rss_mib()
        out["n_samples_seen"] = det.n_samples_seen_
        out["maxrss_fit_mb"] = peak_rss_mib()
        out["fitted_arrays_mb"] = (det.mean_.nbytes + det.precision_.nbytes) / 2**20
        if case == "fit-dump":
            t0 = time.perf_counter()
            joblib.dump(det, args.dump)
            out["dump_s"] = time.perf_counter() - t0
            out["file_mb"] = os.path.getsize(args.dump) / 2**20
            out["scores"] = det.score_samples(paths[:8]).tolist()
    elif case == "load":
        t0 = time.perf_counter()
        det = joblib.load(args.dump)
        out["load_s"] = time.perf_counter() - t0
        out["maxrss_load_mb"] = peak_rss_mib()
        out["scores"] = det.score_samples(paths[:8]).tolist()
    else:
        raise SystemExit(f"unknown case {case}")
    out["threads"] = torch.get_num_threads()
    out["peak_rss_self_mb"] = peak_rss_mib()
    print("RESULT " + json.dumps(out), flush=True)


class RssSampler:
    """Context manager: this process's resident size every ``interval`` s, as
    ``samples``, a list of (seconds since start, MiB)."""

    def __init__(self, interval):
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.perf_counter()
        while True:
            self.samples.append((time.perf_counter() - t0, rss_mib()))
            if self._stop.wait(self.interval):
                break

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _run_child(case, image_dir, image_size, backbone="resnet18", n_features=100, n=0, dump="", sample_ms=20):
    child = run_child([
        os.path.abspath(__file__), "--child", case, "--image-dir", image_dir,
        "--image-size", str(image_size), "--backbone", backbone, "--n-features", str(n_features),
        "--n", str(n), "--dump", dump, "--sample-ms", str(sample_ms),
    ])
    if child["returncode"] != 0:
        raise RuntimeError(f"case {case} failed ({child['returncode']}):\n{child['stderr'][-3000:]}")
    result = json.loads([ln for ln in child["stdout"].splitlines() if ln.startswith("RESULT ")][-1][7:])
    result["peak_rss_mb"] = result["peak_rss_self_mb"]
    result["wait4_maxrss_mb"] = child["ru_maxrss_mib"]
    result["wall_s"] = child["wall_s"]
    print(f"  {case} {backbone} n={n}: peak RSS {result['peak_rss_mb']:.0f} MiB (wait4 "
          f"{result['wait4_maxrss_mb']:.0f} MiB), {child['wall_s']:.1f} s; load {load_average()}",
          file=sys.stderr, flush=True)
    return result


def _trace_at_tenths(trace):
    """The sampled resident sizes at 0%, 10%, ..., 100% of the fit's duration."""
    times = [t for t, _ in trace]
    out = []
    for k in range(11):
        target = times[-1] * k / 10
        i = min(range(len(times)), key=lambda j: abs(times[j] - target))
        out.append(trace[i][1])
    return out


# ------------------------------------------------------------------ parent


def _write_pngs(directory, n, image_size):
    """Write n generated images as PNG files, 100 at a time (bounded memory)."""
    from PIL import Image

    from skpadim.datasets import make_anomaly_images

    for start in range(0, n, 100):
        k = min(100, n - start)
        X, _, _ = make_anomaly_images(k, 0, image_size=image_size, random_state=1000 + start)
        for i, img in enumerate(X):
            Image.fromarray(img).save(os.path.join(directory, f"{start + i:05d}.png"), compress_level=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=800)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--wide", action="store_true",
                   help="also fit, save and load a wide_resnet50_2 / 550 detector (fit and load each factor "
                        "3136 matrices of 550 x 550: about 20 s each on 2 cores)")
    p.add_argument("--array", action="store_true",
                   help="also fit the large set as one in-memory uint8 array, for comparison")
    p.add_argument("--n-wide", type=int, default=16, help="training images for the wide_resnet50_2 case")
    p.add_argument("--sample-ms", type=float, default=20, help="resident-size sampling period during fit")
    p.add_argument("--workdir", default=None, help="where the PNGs and joblib files go (default: a temp dir)")
    p.add_argument("--json", help="also write the environment, the tables and every case to this JSON file")
    # internal: run one case
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--image-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--backbone", default="resnet18", help=argparse.SUPPRESS)
    p.add_argument("--n-features", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dump", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    if args.quick:
        args.small, args.large, args.image_size, args.wide = 16, 48, 64, False

    t_start = time.perf_counter()
    report = Report(environment())
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="skpadim-mem-") as tmp:
        image_dir = os.path.join(tmp, "images")
        os.makedirs(image_dir)
        t0 = time.perf_counter()
        _write_pngs(image_dir, args.large, args.image_size)
        t_png = time.perf_counter() - t0
        size = args.image_size
        grid = (size // 4) * (size // 4)
        report.text(["## memory", ""])
        report.text(machine_header(report.env, [
            f"images: {args.large} PNG files of make_anomaly_images(..., image_size={size}) written to a "
            f"temp dir ({t_png:.0f} s); fit gets a list of paths; resnet18, n_features=100, "
            "weights=None, random_state=0, batch_size=32, device='cpu'",
            "peak RSS: each fresh child process's own high-water mark (VmHWM), read right after fit; "
            f"its resident size is sampled every {args.sample_ms:g} ms during fit (ru_maxrss from "
            "os.wait4 is in the JSON only: Linux counts the parent's size into it)",
        ]))
        run = lambda case, **kw: _run_child(case, image_dir, size, sample_ms=args.sample_ms, **kw)  # noqa: E731
        res = {"import": run("import")}
        dump_small = os.path.join(tmp, "resnet18.joblib")
        res["small"] = run("fit-dump", n=args.small, dump=dump_small)
        res["large"] = run("fit-paths", n=args.large)
        if args.array:
            res["array"] = run("fit-array", n=args.large)

        def mb(x):
            return f"{x:,.0f}"

        store_all = lambda n: n * 100 * grid * 4 / 2**20  # noqa: E731
        rows = [["import torch + skpadim only", "-", "-", mb(res["import"]["peak_rss_mb"]), "-", "-"]]
        cases = [("small", f"fit, {args.small} paths"), ("large", f"fit, {args.large} paths")]
        if args.array:
            cases.append(("array", f"fit, {args.large} images as one uint8 array "
                                   f"({res['array']['input_mb']:.0f} MiB)"))
        for key, label in cases:
            r = res[key]
            rows.append([label, r["n_samples_seen"], mb(r["rss_end_of_fit_mb"]), mb(r["maxrss_fit_mb"]),
                         f"{r['fit_s']:.1f}", mb(store_all(r["n_samples_seen"]))])
        report.text(["", f"### fit peak RSS, resnet18 / n_features=100, {size} px ({grid} patch positions)", ""])
        report.table("fit", ["case", "N", "RSS at end of fit MiB", "peak RSS of fit MiB (VmHWM)", "fit s",
                             "store-all embeddings MiB (N*100*P*4)"], rows)
        diff = res["large"]["maxrss_fit_mb"] - res["small"]["maxrss_fit_mb"]
        lines = [
            "",
            f"Peak RSS difference {args.large} - {args.small} paths: {diff:+,.0f} MiB "
            f"({100 * diff / res['small']['maxrss_fit_mb']:+.1f}%); a store-everything implementation "
            f"would hold {mb(store_all(args.large))} MiB of embeddings for {args.large} images "
            f"({mb(store_all(args.large) - store_all(args.small))} MiB more than for {args.small}). "
            f"Fitted arrays (mean_ + precision_): {res['small']['fitted_arrays_mb']:,.0f} MiB; "
            f"running sums of outer products: {grid * 100 * 100 * 4 / 2**20:,.0f} MiB. "
            f"(The fit-{args.small} child also dumps the detector afterwards; its peak RSS is read before the dump.)",
            "",
            "RSS (MiB) sampled during fit, at 0%, 10%, ..., 100% of its duration:",
            "",
        ]
        for key, label in cases:
            lines.append(f"- {label}: " + ", ".join(mb(x) for x in _trace_at_tenths(res[key]["rss_trace"])))
        report.text(lines)

        # joblib size and load time
        rows = []

        def joblib_row(backbone, nf, n, fit, load):
            same = "yes" if fit["scores"] == load["scores"] else "NO"
            rows.append([
                f"{backbone} / {nf}", n, f"{fit['file_mb']:,.0f}", f"{fit['fitted_arrays_mb']:,.0f}",
                f"{fit['dump_s']:.1f}", f"{load['load_s']:.1f}", mb(load["peak_rss_mb"]), same,
            ])

        res["load"] = run("load", dump=dump_small)
        joblib_row("resnet18", 100, args.small, res["small"], res["load"])
        os.remove(dump_small)
        if args.wide:
            dump = os.path.join(tmp, "wide_resnet50_2.joblib")
            wide = dict(backbone="wide_resnet50_2", n_features=550)
            res["wide_fit"] = run("fit-dump", n=args.n_wide, dump=dump, **wide)
            res["wide_load"] = run("load", dump=dump, **wide)
            joblib_row("wide_resnet50_2", 550, args.n_wide, res["wide_fit"], res["wide_load"])
            os.remove(dump)
        report.text(["", "### joblib.dump / joblib.load of a fitted detector", ""])
        report.table("joblib", ["backbone / n_features", "N fitted", "file MiB", "mean_+precision_ in memory MiB",
                                "dump s", "load s", "peak RSS of load process MiB", "identical scores after load"],
                     rows)
        if args.wide:
            wide_fit = res["wide_fit"]
            report.text(["", f"Fitting the wide_resnet50_2 / 550 detector ({args.n_wide} paths, "
                         f"{wide_fit['fit_s']:.0f} s) peaked at {wide_fit['maxrss_fit_mb']:,.0f} MiB RSS (end of "
                         f"fit; running sums {grid * 550 * 550 * 4 / 2**20:,.0f} MiB, precision_ as much again); "
                         "load recomputes precision_ from the saved running sums."])
    report.record("cases", res)
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
