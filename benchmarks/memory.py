"""Peak memory of PadimDetector.fit versus the number of training images,
and the size / load time of a fitted detector saved with joblib.

Every case runs in a fresh Python subprocess; its peak resident set size is
the ``ru_maxrss`` of that child, read with ``os.wait4`` when it exits (the
per-child form of ``getrusage(RUSAGE_CHILDREN)``; the cumulative
RUSAGE_CHILDREN value goes to stderr too), and by the child itself right
after ``fit``; the child also records its RSS after every batch of the
streaming loop. To keep the *input* memory constant,
the training images are written once as PNG files and the detector gets a
list of paths, which it decodes batch by batch; with ``--array`` one extra
case feeds the same 800 images as an in-memory uint8 array for comparison.

Usage::

    python benchmarks/memory.py                   # 100 vs 800 images, resnet18 joblib
    python benchmarks/memory.py --wide --diagnose # + wide_resnet50_2 fit/joblib, reservoir diagnostic
    python benchmarks/memory.py --array           # + the large set as an in-memory uint8 array
    python benchmarks/memory.py --quick           # smoke test: 16 vs 48 images, 64 px
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _common import emit, load_average, machine_header, table

HERE = os.path.dirname(os.path.abspath(__file__))


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
    elif case in ("fit-paths", "fit-array", "fit-dump", "fit-paths-no-replace"):
        X = paths[: args.n]
        if case == "fit-array":
            from PIL import Image

            X = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in X])
            out["input_mb"] = X.nbytes / 2**20
        if case == "fit-paths-no-replace":
            _no_reservoir_replacement()
        trace = []
        embeddings = PadimDetector._embeddings

        def traced_embeddings(self, *a, **k):
            """Record the resident set size after each batch of the streaming loop."""
            for item in embeddings(self, *a, **k):
                yield item
                trace.append(_rss_mb())

        PadimDetector._embeddings = traced_embeddings  # this child process only
        det = PadimDetector(backbone=args.backbone, n_features=args.n_features, **kw)
        t0 = time.perf_counter()
        det.fit(X)
        out["fit_s"] = time.perf_counter() - t0
        out["rss_trace"] = trace
        PadimDetector._embeddings = embeddings
        out["n_samples_seen"] = det.n_samples_seen_
        out["maxrss_fit_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
        out["maxrss_load_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["scores"] = det.score_samples(paths[:8]).tolist()
    else:
        raise SystemExit(f"unknown case {case}")
    out["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out), flush=True)


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _no_reservoir_replacement():
    """Diagnostic: fill the calibration reservoir, then never replace its items."""
    from skpadim._engine.calibration import CAPACITY, Reservoir

    offer = Reservoir.offer

    def offer_without_replacement(self, n_images, seen, rng, take):
        if seen < CAPACITY:
            offer(self, min(n_images, CAPACITY - seen), seen, rng, take)

    Reservoir.offer = offer_without_replacement


def _run_child(case, image_dir, image_size, backbone="resnet18", n_features=100, n=0, dump=""):
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", case, "--image-dir", image_dir,
        "--image-size", str(image_size), "--backbone", backbone, "--n-features", str(n_features),
        "--n", str(n), "--dump", dump,
    ]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    result["children_max_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["wall_s"] = wall
    print(f"  {case} {backbone} n={n}: peak RSS {result['peak_rss_mb']:.0f} MiB "
          f"(RUSAGE_CHILDREN so far {result['children_max_mb']:.0f} MiB), {wall:.1f} s; "
          f"load {load_average()}", file=sys.stderr, flush=True)
    return result


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
    p.add_argument("--diagnose", action="store_true",
                   help="also fit the large set with the calibration reservoir never replacing its items "
                        "(checks whether the growth of RSS with N comes from reservoir replacements)")
    p.add_argument("--array", action="store_true",
                   help="also fit the large set as one in-memory uint8 array, for comparison")
    p.add_argument("--n-wide", type=int, default=16, help="training images for the wide_resnet50_2 case")
    p.add_argument("--workdir", default=None, help="where the PNGs and joblib files go (default: a temp dir)")
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
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="skpadim-mem-") as tmp:
        image_dir = os.path.join(tmp, "images")
        os.makedirs(image_dir)
        t0 = time.perf_counter()
        _write_pngs(image_dir, args.large, args.image_size)
        t_png = time.perf_counter() - t0
        size = args.image_size
        grid = (size // 4) * (size // 4)
        emit(["## memory", ""])
        emit(machine_header([
            f"images: {args.large} PNG files of make_anomaly_images(..., image_size={size}) written to a "
            f"temp dir ({t_png:.0f} s); fit gets a list of paths; resnet18, n_features=100, "
            "weights=None, random_state=0, batch_size=32, device='cpu'",
            "peak RSS: ru_maxrss of each fresh child process, read by the child right after fit "
            "(getrusage(RUSAGE_SELF)) and by the parent when the child exits (os.wait4, the per-child "
            "RUSAGE_CHILDREN)",
        ]))

        res = {}
        res["import"] = _run_child("import", image_dir, size)
        dump_small = os.path.join(tmp, "resnet18.joblib")
        res["small"] = _run_child("fit-dump", image_dir, size, n=args.small, dump=dump_small)
        res["large"] = _run_child("fit-paths", image_dir, size, n=args.large)
        if args.array:
            res["array"] = _run_child("fit-array", image_dir, size, n=args.large)
        if args.diagnose:
            res["noreplace"] = _run_child("fit-paths-no-replace", image_dir, size, n=args.large)

        def mb(x):
            return f"{x:,.0f}"

        store_all = lambda n: n * 100 * grid * 4 / 2**20  # noqa: E731
        rows = [["import torch + skpadim only", "-", "-", "-", mb(res["import"]["peak_rss_mb"]), "-", "-"]]
        cases = [("small", f"fit, {args.small} paths"), ("large", f"fit, {args.large} paths")]
        if args.array:
            cases.append(("array", f"fit, {args.large} images as one uint8 array "
                                   f"({res['array']['input_mb']:.0f} MiB)"))
        if args.diagnose:
            cases.append(("noreplace", f"fit, {args.large} paths, diagnostic: calibration reservoir "
                                       "filled but never replaced"))
        for key, label in cases:
            r = res[key]
            rows.append([label, r["n_samples_seen"], mb(r["rss_trace"][-1]), mb(r["maxrss_fit_mb"]),
                         mb(r["peak_rss_mb"]), f"{r['fit_s']:.1f}", mb(store_all(r["n_samples_seen"]))])
        lines = ["", f"### fit peak RSS, resnet18 / n_features=100, {size} px ({grid} patch positions)", ""]
        lines += table(["case", "N", "RSS after last batch MiB", "peak RSS at end of fit MiB",
                        "peak RSS of child MiB (wait4)", "fit s", "store-all embeddings MiB (N*100*P*4)"], rows)
        diff = res["large"]["maxrss_fit_mb"] - res["small"]["maxrss_fit_mb"]
        lines += [
            "",
            f"Peak RSS difference {args.large} - {args.small} paths: {diff:+,.0f} MiB "
            f"({100 * diff / res['small']['maxrss_fit_mb']:+.1f}%); a store-everything implementation "
            f"would hold {mb(store_all(args.large))} MiB of embeddings for {args.large} images "
            f"({mb(store_all(args.large) - store_all(args.small))} MiB more than for {args.small}). "
            f"Fitted arrays (mean_ + precision_): {res['small']['fitted_arrays_mb']:,.0f} MiB; "
            f"running sums of outer products: {grid * 100 * 100 * 4 / 2**20:,.0f} MiB. "
            "(The fit-{0} child also dumps the detector afterwards; its peak RSS is read before the dump.)".format(args.small),
            "",
            "RSS (MiB) after every 4th batch of the streaming loop:",
            "",
        ]
        for key, label in cases:
            tr = res[key]["rss_trace"]
            lines.append(f"- {label}: " + ", ".join(f"{x:,.0f}" for x in tr[::4]) + f" (last: {tr[-1]:,.0f})")
        emit(lines)

        # joblib size and load time
        rows = []

        def joblib_row(backbone, nf, n, fit, load):
            same = "yes" if fit["scores"] == load["scores"] else "NO"
            rows.append([
                f"{backbone} / {nf}", n, f"{fit['file_mb']:,.0f}", f"{fit['fitted_arrays_mb']:,.0f}",
                f"{fit['dump_s']:.1f}", f"{load['load_s']:.1f}", mb(load["peak_rss_mb"]), same,
            ])

        load = _run_child("load", image_dir, size, dump=dump_small)
        joblib_row("resnet18", 100, args.small, res["small"], load)
        os.remove(dump_small)
        if args.wide:
            dump = os.path.join(tmp, "wide_resnet50_2.joblib")
            fit = _run_child("fit-dump", image_dir, size, backbone="wide_resnet50_2", n_features=550,
                             n=args.n_wide, dump=dump)
            load = _run_child("load", image_dir, size, backbone="wide_resnet50_2", n_features=550, dump=dump)
            joblib_row("wide_resnet50_2", 550, args.n_wide, fit, load)
            wide_fit = fit
            os.remove(dump)
        lines = ["", "### joblib.dump / joblib.load of a fitted detector", ""]
        lines += table(
            ["backbone / n_features", "N fitted", "file MiB", "mean_+precision_ in memory MiB",
             "dump s", "load s", "peak RSS of load process MiB", "identical scores after load"],
            rows,
        )
        if args.wide:
            lines += ["", f"Fitting the wide_resnet50_2 / 550 detector ({args.n_wide} paths, {wide_fit['fit_s']:.0f} s) "
                      f"peaked at {wide_fit['maxrss_fit_mb']:,.0f} MiB RSS (end of fit; running sums "
                      f"{grid * 550 * 550 * 4 / 2**20:,.0f} MiB, precision_ as much again); "
                      "load recomputes precision_ from the saved running sums."]
        emit(lines)
    emit(["", f"load average at end: {load_average()}; total wall time {time.perf_counter() - t_start:.0f} s"])


if __name__ == "__main__":
    main()
