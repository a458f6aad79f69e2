"""One short check on a GPU: skpadim against its own backbone and anomalib there, and CPU/GPU parity.

Meant to be the single command run on a GPU machine. It needs no data
set: the images are generated (``make_anomaly_images``, normal and
defective, with masks); the larger sets of the throughput runs are those
images, their mirror images and their half-turns, repeated (the work per
image does not depend on what the image shows). Random weights seeded by
``random_state=0``, layers 1-3, wired to anomalib as
``benchmarks/compare_anomalib.py`` does it (same tensors, weights and
channels, through ``benchmarks/anomalib_adapter.py``). Four parts:

1. **400 training and 200 test images** (resnet18, 100 channels): fit and
   ``anomaly_map`` of ``PadimDetector(device=DEVICE)`` and of anomalib's
   ``PadimModel`` on the same device, alternating which goes first, medians
   of ``--repeats`` rounds; the same detector fitted on the CPU (the largest
   differences of scores and maps between the device and the CPU, and every
   metric on both); ``backbone_dtype`` float16 and bfloat16 where the device
   runs them natively (on a CPU, bfloat16 even where torch emulates it, so
   that the CPU twin runs this path too): speed and metrics against float32.
   On a GPU machine its own CPU runs the detector in bfloat16 too, where that
   CPU has native bfloat16 (AMX, AVX512-BF16), and anomalib.
2. **Throughput against the bare backbone**, on the 400/200 images and on
   ``--large`` images (2,000): per dtype, the detector's own backbone alone
   (its weights, folded batch normalizations, memory layout and dtype, the
   same batches; a uint8 host array in, copied batch by batch, converted and
   normalized on the device; and, for reference, with the images already
   on the device), then the detector's ``fit``, ``score_samples``,
   ``anomaly_map`` and ``predict``, and anomalib's fit and predict; images/s
   and the ratios to the bare backbone and to anomalib; then the bare
   backbone, fit and maps at the ``--sweep`` batch sizes.
3. **wide_resnet50_2, 550 channels** (``--wide``: 1,000 training and 500
   test images): fit and maps of both, and the device memory peak of each
   (``torch.cuda.max_memory_allocated``).
4. **A ``--huge`` fit** (20,000 images, wide_resnet50_2/550): time and
   memory peak; anomalib keeps every image's embedding, and the size of
   those alone is set against the device's memory.

Both implementations return numpy arrays (anomalib's fit is synchronized),
and every other timing ends with ``torch.cuda.synchronize``, so every clock
reading follows the device's work. ``batch_size`` is the detector's default
(``"auto"``, resolved on this device) unless ``--batch-size`` says
otherwise; the bare backbone and anomalib get the same batches. The tables
print with the machine (CPU model and flags, GPU name) and go to ``--json``.
Without anomalib installed its rows say so and the rest runs.

Usage::

    python benchmarks/gpu_check.py --json gpu.json           # on cuda; refuses without a GPU
    python benchmarks/gpu_check.py --quick --device cpu      # the CPU twin the test suite runs
"""

import argparse
import time
import warnings

import numpy as np
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from skpadim import PadimDetector
from skpadim._engine.dtypes import autocast, native, precast
from skpadim._engine.embedder import CHANNELS_LAST, PRECAST
from skpadim._engine.fold import fold_batchnorm
from skpadim.datasets import make_anomaly_images

import anomalib_adapter
from _common import Report, environment, machine_header, median
from compare_anomalib import BACKBONES, detector_params, metrics, parity

#: The detector and anomalib wiring of compare_anomalib.py's resnet18 runs.
CONFIG = BACKBONES["resnet18-random"]
#: What the detector's throughput should reach, as a fraction of the bare backbone's.
GOALS = {"fit": 0.7, "score_samples": 0.9, "anomaly_map": 0.8, "predict": 0.8}
GIB = 2**30


def _data(n_train, n_test, size):
    X, _, _ = make_anomaly_images(n_train, 0, image_size=size, random_state=0)
    half = n_test // 2
    X_test, y_test, masks = make_anomaly_images(n_test - half, half, image_size=size, random_state=1)
    return X, X_test, np.asarray(y_test), np.asarray(masks)


def _more(X, n):
    """``n`` images made of ``X``: the images, their mirror images and half-turns, repeated."""
    views = np.concatenate([X, X[:, :, ::-1], X[:, ::-1], X[:, ::-1, ::-1]])
    return np.ascontiguousarray(np.concatenate([views] * -(-n // len(views)))[:n])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, fn):
    """``(seconds, result)`` of ``fn()``, the device's work included."""
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def _params(model, size, device, dtype, batch):
    """PadimDetector parameters: compare_anomalib.py's resnet18 wiring, ``model`` = (backbone,
    n_features) in its place."""
    params = {**detector_params(CONFIG, (size, size)), "device": device, "backbone_dtype": dtype}
    params.update(backbone=model[0], n_features=model[1], batch_size=batch)
    return params


def _skpadim(X, X_test, size, device, dtype="float32", batch="auto", model=("resnet18", 100)):
    """(fit s, predict s, maps, scores, detector): fit, then ``anomaly_map(return_scores=True)``."""
    device = torch.device(device)
    det = PadimDetector(**_params(model, size, device, dtype, batch))
    fit_s, _ = _timed(device, lambda: det.fit(X))
    predict_s, (maps, scores) = _timed(device, lambda: det.anomaly_map(X_test, return_scores=True))
    return fit_s, predict_s, maps, -scores, det


def _anomalib_model(reference):
    """anomalib's model with ``reference``'s (a fitted detector) weights and channels."""
    if reference.backbone == "resnet18":
        return anomalib_adapter.padim_model(CONFIG["layers"], reference.feature_index_,
                                            resnet18_state=reference.backbone_.state_dict())
    module = _full_model(reference)
    return anomalib_adapter.padim_model(CONFIG["layers"], reference.feature_index_, module=module)


def _anomalib(X, X_test, size, device, reference, batch=32):
    """The same as :func:`_skpadim` for anomalib's model, with ``reference``'s weights and channels."""
    model = _anomalib_model(reference)
    batches = lambda images: anomalib_adapter.image_batches(images, CONFIG["normalize"], batch)  # noqa: E731
    fit_s, _ = _timed(device, lambda: anomalib_adapter.fit(model, batches(X), device))
    predict_s, (maps, scores) = _timed(device, lambda: anomalib_adapter.predict(
        model, batches(X_test), len(X_test), (size, size), device))
    return fit_s, predict_s, maps, scores, None


def _anomalib_available():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from anomalib.models.image.padim.torch_model import PadimModel  # noqa: F401
        return True
    except ImportError:
        return False


# ------------------------------------------------------------------ the bare backbone


def _full_model(det):
    """The detector's torchvision model, whole (layers after its last one left empty)."""
    with torch.device("meta"):
        full = torchvision.models.get_model(det.backbone, weights=None)
    full = full.to_empty(device="cpu")
    full.load_state_dict({k: v.cpu() for k, v in det.backbone_.state_dict().items()}, strict=False)
    return full.eval()


def bare_extractor(det, device):
    """The detector's backbone as the detector runs it, alone: its weights up to its last
    layer, batch normalizations folded, in its memory layout and (on a GPU) its dtype."""
    layers = list(det.layers_)
    folded, _ = fold_batchnorm(_full_model(det), keep=layers)
    ext = create_feature_extractor(folded, return_nodes=layers).eval().to(device)
    fmt = torch.channels_last if device.type in CHANNELS_LAST else torch.contiguous_format
    ext = ext.to(memory_format=fmt)
    if device.type in PRECAST:
        precast(ext, det.backbone_dtype)
    return ext, fmt


def bare_backbone(ext, fmt, X, batch, device, dtype, on_device=None):
    """Images/s-worth of work: ``X`` (uint8, (N, H, W, 3)) through ``ext`` in batches of
    ``batch``, copied batch by batch from the host, converted and normalized on the device
    (``on_device``: the same images already there, as a uint8 tensor)."""
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in anomalib_adapter.IMAGENET)
    with torch.inference_mode(), autocast(dtype, device):
        for start in range(0, len(X), batch):
            if on_device is None:
                x = torch.from_numpy(X[start : start + batch]).to(device)
            else:
                x = on_device[start : start + batch]
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            ext(((x - mean) / std).contiguous(memory_format=fmt))


# ------------------------------------------------------------------ tables


def _speed_row(name, runs, n_train, n_test, against=None):
    fit, pred = median([r[0] for r in runs]), median([r[1] for r in runs])
    row = [name, f"{fit:.2f}", f"{n_train / fit:.1f}", f"{pred:.2f}", f"{n_test / pred:.1f}"]
    if against is None:
        return row + ["-", "-"]
    return row + [f"{median([r[0] for r in against]) / fit:.2f}x", f"{median([r[1] for r in against]) / pred:.2f}x"]


def _parity_row(name, ours, theirs):
    p = parity(ours[2], ours[3], theirs[2], theirs[3])
    return [name, f"{p['score_max_abs']:.3g}", f"{p['score_max_rel']:.3g}", f"{p['map_max_rel']:.3g}"]


def throughput(report, key, X_fit, X_pred, size, device, dtypes, args, have_anomalib, model=("resnet18", 100)):
    """Part 2: per dtype, the bare backbone and the detector's calls, interleaved round by
    round; anomalib at float32. A table of images/s and ratios; the raw seconds recorded."""
    runs = {}
    detectors = {}
    for dtype in dtypes:
        det = PadimDetector(**_params(model, size, device, dtype, args.batch_size))
        det.fit(X_fit[: max(8, len(X_fit) // 8)])  # warm-up: weights, kernels, buffers
        det.predict(X_pred[:8])
        batch = det.batch_size_
        ext, fmt = bare_extractor(det, device)
        on_device = torch.from_numpy(X_fit).to(device)
        bare_backbone(ext, fmt, X_fit[: 2 * batch], batch, device, dtype)
        detectors[dtype] = (det, batch, ext, fmt, on_device)
    theirs = {"fit": [], "predict": []}
    for _ in range(args.repeats):
        for dtype, (det, batch, ext, fmt, on_device) in detectors.items():
            r = runs.setdefault(dtype, {k: [] for k in ("bare", "bare_on_device", *GOALS)})
            r["bare"].append(_timed(device, lambda: bare_backbone(ext, fmt, X_fit, batch, device, dtype))[0])
            r["bare_on_device"].append(_timed(device, lambda: bare_backbone(
                ext, fmt, X_fit, batch, device, dtype, on_device))[0])
            r["fit"].append(_timed(device, lambda: det.fit(X_fit))[0])
            for call in ("score_samples", "anomaly_map", "predict"):
                r[call].append(_timed(device, lambda: getattr(det, call)(X_pred))[0])
        if have_anomalib:
            det, batch = detectors["float32"][:2]
            fit_s, pred_s, *_ = _anomalib(X_fit, X_pred, size, device, det, batch)
            theirs["fit"].append(fit_s)
            theirs["predict"].append(pred_s)
    n_fit, n_pred = len(X_fit), len(X_pred)
    rate = lambda n, secs: n / median(secs)  # noqa: E731
    rows = []
    for dtype, r in runs.items():
        batch = detectors[dtype][1]
        bare = rate(n_fit, r["bare"])
        rows.append([dtype, "bare backbone (uint8 host array in)", batch, f"{bare:,.0f}", "1.00", "-", "-"])
        rows.append([dtype, "bare backbone (images already on the device)", batch,
                     f"{rate(n_fit, r['bare_on_device']):,.0f}", f"{rate(n_fit, r['bare_on_device']) / bare:.2f}",
                     "-", "-"])
        for call, goal in GOALS.items():
            ips = rate(n_fit if call == "fit" else n_pred, r[call])
            vs = "-"
            if theirs["fit"] and dtype == "float32":
                their = rate(n_fit, theirs["fit"]) if call == "fit" else rate(n_pred, theirs["predict"])
                vs = f"{ips / their:.2f}x"
            met = "met" if ips / bare >= goal else "NOT met"
            rows.append([dtype, f"skpadim {call}", batch, f"{ips:,.0f}", f"{ips / bare:.2f}", f"{goal} ({met})", vs])
    if theirs["fit"]:
        batch = detectors["float32"][1]
        bare = rate(n_fit, runs["float32"]["bare"])
        for call, n in (("fit", n_fit), ("predict", n_pred)):
            ips = rate(n, theirs[call])
            rows.append(["float32", f"anomalib {call}", batch, f"{ips:,.0f}", f"{ips / bare:.2f}", "-", "1.00x"])
    else:
        rows.append(["float32", "anomalib", "-", "not installed", "-", "-", "-"])
    report.text(["", f"### Throughput: {n_fit} images to fit, {n_pred} to predict, {size} px, "
                 f"{model[0]}/{model[1]}, medians of {args.repeats} (images/s; ratios to the bare "
                 "backbone at the same dtype and batch, and to anomalib's fit, and its predict (maps and "
                 "scores), at float32)", ""])
    report.table(key, ["dtype", "run", "batch", "images/s", "vs bare backbone", "goal", "vs anomalib"], rows)
    report.record(key, {"n_fit": n_fit, "n_predict": n_pred, "runs": runs, "anomalib": theirs,
                        "batches": {d: v[1] for d, v in detectors.items()}})


def sweep(report, X, size, device, batches, args):
    """The bare backbone, fit and anomaly_map at several batch sizes (float32, resnet18/100),
    interleaved: what ``batch_size="auto"`` chooses from."""
    model = ("resnet18", 100)
    setups = {}
    for b in batches:
        det = PadimDetector(**_params(model, size, device, "float32", b))
        det.fit(X[: 2 * b]).anomaly_map(X[:b])  # warm-up
        setups[b] = (det, *bare_extractor(det, device))
    runs = {b: {"bare": [], "fit": [], "anomaly_map": []} for b in batches}
    for _ in range(min(args.repeats, 2)):
        for b, (det, ext, fmt) in setups.items():
            runs[b]["bare"].append(_timed(device, lambda: bare_backbone(ext, fmt, X, b, device, "float32"))[0])
            runs[b]["fit"].append(_timed(device, lambda: det.fit(X))[0])
            runs[b]["anomaly_map"].append(_timed(device, lambda: det.anomaly_map(X))[0])
    rows = [[str(b)] + [f"{len(X) / median(runs[b][k]):,.0f}" for k in ("bare", "fit", "anomaly_map")]
            for b in batches]
    report.text(["", f"### Batch size: {len(X)} images, {size} px, resnet18/100, float32 (images/s)", ""])
    report.table("batch sizes", ["batch", "bare backbone (uint8 host array in)", "fit", "anomaly_map"], rows)
    report.record("batch sizes", runs)


def wide(report, X, X_test, size, device, args, have_anomalib):
    """Part 3: a large embedding, fit and maps of both, and their device memory peaks."""
    model = args.wide_model
    ours, theirs, peaks = [], [], {"skpadim": [], "anomalib": []}
    bare = []
    for r in range(args.wide_repeats):
        _peak_reset(device)
        ours.append(_skpadim(X, X_test, size, device, batch=args.batch_size, model=model))
        peaks["skpadim"].append(_peak_gib(device))
        det = ours[-1][4]
        batch = det.batch_size_
        if r == 0:
            ext, fmt = bare_extractor(det, device)
            bare_backbone(ext, fmt, X[: 2 * batch], batch, device, "float32")
        bare.append(_timed(device, lambda: bare_backbone(ext, fmt, X, batch, device, "float32"))[0])
        if have_anomalib:
            _peak_reset(device)
            theirs.append(_anomalib(X, X_test, size, device, det, batch))
            peaks["anomalib"].append(_peak_gib(device))
        ours[-1] = ours[-1][:2]  # the maps are not kept
        if theirs:
            theirs[-1] = theirs[-1][:2]
    n, m = len(X), len(X_test)
    fit, pred = median([o[0] for o in ours]), median([o[1] for o in ours])
    peak = max(peaks["skpadim"]) if peaks["skpadim"][0] is not None else None
    gib = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    bare_ips = n / median(bare)
    rows = [[f"skpadim (batch {batch})", f"{fit:.2f}", f"{n / fit:,.0f}", f"{n / fit / bare_ips:.2f}",
             f"{pred:.2f}", f"{m / pred:,.0f}", gib(peak)]]
    if theirs:
        t_fit, t_pred = median([t[0] for t in theirs]), median([t[1] for t in theirs])
        t_peak = max(peaks["anomalib"]) if peaks["anomalib"][0] is not None else None
        rows.append([f"anomalib (batch {batch})", f"{t_fit:.2f}", f"{n / t_fit:,.0f}", f"{n / t_fit / bare_ips:.2f}",
                     f"{t_pred:.2f}", f"{m / t_pred:,.0f}", gib(t_peak)])
        rows.append(["anomalib's over skpadim's", f"{t_fit / fit:.2f}x", "-", "-", f"{t_pred / pred:.2f}x", "-",
                     "-" if peak is None else f"{t_peak / peak:.2f}x"])
    else:
        rows.append(["anomalib", "not installed", "-", "-", "-", "-", "-"])
    report.text(["", f"### {model[0]}, {model[1]} channels: {n} training and {m} test images, {size} px, "
                 f"medians of {args.wide_repeats} (bare backbone, float32, uint8 host array in: "
                 f"{bare_ips:,.0f} images/s)", ""])
    report.table("wide", ["run", "fit s", "fit img/s", "fit vs bare backbone", "maps s", "maps img/s",
                          "device memory peak GiB"], rows)
    report.record("wide", {"skpadim": ours, "anomalib": theirs, "peaks_gib": peaks, "bare_s": bare,
                           "batch": batch})


def huge(report, X, size, device, args):
    """Part 4: one fit of many images; its time and memory peak, and what anomalib would hold."""
    model = args.wide_model
    det = PadimDetector(**_params(model, size, device, "float32", args.batch_size))
    _peak_reset(device)
    secs, _ = _timed(device, lambda: det.fit(X))
    peak = _peak_gib(device)
    P = det.feature_map_shape_[0] * det.feature_map_shape_[1]
    theirs = len(X) * P * model[1] * 4 / GIB  # anomalib's embeddings, kept until its fit
    total = torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else None
    rows = [[f"skpadim fit (batch {det.batch_size_})", f"{len(X):,}",
             f"{secs:.1f}", f"{len(X) / secs:,.0f}", "-" if peak is None else f"{peak:.1f}"],
            ["anomalib fit: its embeddings alone", f"{len(X):,}", "-", "-",
             f"{theirs:.1f}" + ("" if total is None else f" (> {total:.0f} on this device)" if theirs > total
                                else f" (of {total:.0f} on this device)")]]
    report.text(["", f"### One fit of {len(X):,} images: {model[0]}/{model[1]}, {size} px", ""])
    report.table("huge", ["run", "images", "s", "images/s", "device memory GiB"], rows)
    report.record("huge", {"n": len(X), "seconds": secs, "peak_gib": peak, "anomalib_embeddings_gib": theirs})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true",
                   help="small sizes at 64 px, one round (resnet18/100 in place of wide_resnet50_2/550)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--large", type=int, default=2000, help="images of the second throughput run (0: none)")
    p.add_argument("--wide", type=int, nargs=2, default=(1000, 500), metavar=("TRAIN", "TEST"),
                   help="images of the wide_resnet50_2/550 run (0 0: none)")
    p.add_argument("--huge", type=int, default=20000, help="images of the one large fit (0: none)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", default="auto", help="the detector's batch_size (an int, or 'auto')")
    p.add_argument("--sweep", type=int, nargs="*", default=[32, 64, 128, 256], metavar="B",
                   help="batch sizes timed on the --large images (none: no sweep)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the environment and the tables to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA GPU here; --device cpu runs the CPU twin.")
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    args.wide_model, args.wide_repeats = ("wide_resnet50_2", 550), 2
    if args.quick:
        args.n_train, args.n_test, args.image_size, args.repeats = 16, 8, 64, 1
        args.large, args.wide, args.huge, args.sweep = 32, (12, 6), 24, [4, 8]
        args.wide_model, args.wide_repeats = ("resnet18", 100), 1
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*emulat")  # bfloat16 on a CPU without it: expected here
    warnings.filterwarnings("ignore", message="contamination=.* asks to flag fewer")  # quick runs
    report = Report(environment(packages=("anomalib",)))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU: the CPU twin"
    report.text(["## skpadim, its bare backbone and anomalib on one device; device against CPU", ""])
    report.text(machine_header(report.env, [
        f"device: {device} ({gpu}); random weights; {args.image_size} px; generated images; "
        f"batch_size={args.batch_size!r}; medians of {args.repeats}"]))
    size = args.image_size
    X, X_test, labels, masks = _data(args.n_train, args.n_test, size)
    have_anomalib = _anomalib_available()
    cpu = _skpadim(X, X_test, size, "cpu", batch=args.batch_size)
    host = []  # the GPU machine's own CPU: bfloat16 where it is native, and anomalib there
    if device.type != "cpu":
        if native("bfloat16", "cpu"):
            host.append(("skpadim on cpu, backbone_dtype=bfloat16", _skpadim(X, X_test, size, "cpu", "bfloat16",
                                                                           args.batch_size)))
        if have_anomalib:
            host.append(("anomalib on cpu", _anomalib(X, X_test, size, torch.device("cpu"), cpu[4])))
    _skpadim(X[:8], X_test[:8], size, device, batch=args.batch_size)  # warm-up (device, kernels)
    ours, theirs = [], []
    for r in range(args.repeats):  # alternate which goes first
        order = ["skpadim", "anomalib"] if r % 2 == 0 else ["anomalib", "skpadim"]
        for impl in order:
            if impl == "skpadim":
                ours.append(_skpadim(X, X_test, size, device, batch=args.batch_size))
            elif have_anomalib:
                det = ours[-1][4] if ours else cpu[4]
                theirs.append(_anomalib(X, X_test, size, device, cpu[4],
                                        det.batch_size_))
    reduced = []
    for dtype in ("float16", "bfloat16"):
        if native(dtype, device) or (device.type == "cpu" and dtype == "bfloat16"):
            _skpadim(X[:8], X_test[:8], size, device, dtype, args.batch_size)  # warm-up
            reduced.append((dtype, _skpadim(X, X_test, size, device, dtype, args.batch_size)))

    n, m = args.n_train, args.n_test
    batch = ours[0][4].batch_size_
    rows = [_speed_row(f"skpadim on {device}", ours, n, m, theirs or None)]
    rows.append(_speed_row(f"anomalib on {device}", theirs, n, m) if theirs else
                [f"anomalib on {device}", "not installed", "-", "-", "-", "-", "-"])
    rows += [_speed_row(f"skpadim on {device}, backbone_dtype={d}", [run], n, m) for d, run in reduced]
    rows.append(_speed_row("skpadim on cpu (reference)", [cpu], n, m))
    rows += [_speed_row(name, [run], n, m) for name, run in host]
    report.text(["", f"### Speed, {n} training and {m} test images, resnet18/100, batch {batch} on {device} "
                 "(predict: anomaly_map with scores; ratios: anomalib's time over skpadim's)", ""])
    report.table("speed", ["run", "fit s", "fit img/s", "predict s", "predict img/s", "fit vs anomalib",
                           "predict vs anomalib"], rows)

    runs = [(f"skpadim on {device}", ours[0]), ("skpadim on cpu (reference)", cpu)]
    runs += [(f"anomalib on {device}", theirs[0])] if theirs else []
    runs += [(f"skpadim on {device}, backbone_dtype={d}", run) for d, run in reduced]
    rows = []
    for name, run in runs:
        got = metrics(labels, masks, run[2], run[3])
        rows.append([name, f"{got['image_auroc']:.4f}", f"{got['pixel_auroc']:.4f}", f"{got['aupro']:.4f}"])
    report.text(["", "### Metrics", ""])
    report.table("metrics", ["run", "image AUROC", "pixel AUROC", "AUPRO (30% FPR)"], rows)

    rows = [_parity_row(f"skpadim: {device} against cpu (reference)", ours[0], cpu)]
    rows += [_parity_row(f"{device}: skpadim against anomalib", ours[0], theirs[0])] if theirs else []
    rows += [_parity_row(f"{device}: backbone_dtype={d} against float32", run, ours[0]) for d, run in reduced]
    report.text(["", "### Parity", ""])
    report.table("parity", ["comparison", "max abs score diff", "max rel score diff", "max map diff / max map"],
                 rows)
    del ours, theirs, reduced, cpu, runs

    dtypes = ["float32"] + [d for d in ("float16", "bfloat16") if native(d, device)]
    throughput(report, "throughput", X, X_test, size, device, dtypes, args, have_anomalib)
    if args.large:
        big = _more(X, args.large)
        throughput(report, "throughput large", big, big, size, device, dtypes, args, have_anomalib)
        if args.sweep:
            sweep(report, big, size, device, args.sweep, args)
        del big
    if args.wide[0]:
        X_wide = _more(X, args.wide[0])
        wide(report, X_wide, _more(X_test, args.wide[1]), size, device, args, have_anomalib)
        del X_wide
    if args.huge:
        huge(report, _more(X, args.huge), size, device, args)
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
