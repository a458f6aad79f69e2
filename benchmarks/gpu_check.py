"""One short check on a GPU: skpadim against anomalib's PaDiM there, and CPU/GPU parity.

Meant to be the single command run on a lent GPU machine. It needs no data
set: the images are generated (``make_anomaly_images``, normal and
defective, with masks). resnet18 with random weights seeded by
``random_state=0``, layers 1-3, 100 channels, wired to anomalib as
``benchmarks/compare_anomalib.py`` does it (same tensors, weights and
channels, through ``benchmarks/anomalib_adapter.py``):

* fit and predict of ``PadimDetector(device=DEVICE)`` and of anomalib's
  ``PadimModel`` on the same device, alternating which goes first, medians
  of ``--repeats`` rounds; both return numpy arrays, and anomalib's fit is
  synchronized, so every clock reading follows the device's work;
* the same detector fitted on the CPU: the largest differences of scores and
  maps between the device and the CPU, and every metric on both;
* ``backbone_dtype`` float16 and bfloat16 where the device runs them
  natively (on a CPU, bfloat16 even where torch emulates it, so that the
  CPU twin runs this path too): speed and metrics against float32.

The tables print with the machine (CPU model and flags, GPU name) and go to
``--json``. Without anomalib installed its rows say so and the rest runs.

Usage::

    python benchmarks/gpu_check.py --json gpu.json           # on cuda; refuses without a GPU
    python benchmarks/gpu_check.py --quick --device cpu      # the CPU twin the test suite runs
"""

import argparse
import time
import warnings

import numpy as np
import torch

from skpadim import PadimDetector
from skpadim._engine.dtypes import native
from skpadim.datasets import make_anomaly_images

import anomalib_adapter
from _common import Report, environment, machine_header, median
from compare_anomalib import BACKBONES, detector_params, metrics, parity

#: The detector and anomalib wiring of compare_anomalib.py's resnet18 runs.
CONFIG = BACKBONES["resnet18-random"]


def _data(n_train, n_test, size):
    X, _, _ = make_anomaly_images(n_train, 0, image_size=size, random_state=0)
    half = n_test // 2
    X_test, y_test, masks = make_anomaly_images(n_test - half, half, image_size=size, random_state=1)
    return X, X_test, np.asarray(y_test), np.asarray(masks)


def _skpadim(X, X_test, size, device, dtype="float32"):
    """(fit s, predict s, maps, scores, detector)."""
    det = PadimDetector(**{**detector_params(CONFIG, (size, size)), "device": device, "backbone_dtype": dtype})
    t = time.perf_counter()
    det.fit(X)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    maps = det.anomaly_map(X_test)
    predict_s = time.perf_counter() - t
    return fit_s, predict_s, maps, maps.reshape(len(maps), -1).max(1), det


def _anomalib(X, X_test, size, device, reference):
    """The same as :func:`_skpadim` for anomalib's model, with ``reference``'s weights and channels."""
    model = anomalib_adapter.padim_model(CONFIG["layers"], reference.feature_index_,
                                         resnet18_state=reference.backbone_.state_dict())
    batches = lambda images: anomalib_adapter.image_batches(images, CONFIG["normalize"])  # noqa: E731
    t = time.perf_counter()
    anomalib_adapter.fit(model, batches(X), device)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    maps, scores = anomalib_adapter.predict(model, batches(X_test), len(X_test), (size, size), device)
    return fit_s, time.perf_counter() - t, maps, scores, None


def _anomalib_available():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from anomalib.models.image.padim.torch_model import PadimModel  # noqa: F401
        return True
    except ImportError:
        return False


def _speed_row(name, runs, n_train, n_test, against=None):
    fit, pred = median([r[0] for r in runs]), median([r[1] for r in runs])
    row = [name, f"{fit:.2f}", f"{n_train / fit:.1f}", f"{pred:.2f}", f"{n_test / pred:.1f}"]
    if against is None:
        return row + ["-", "-"]
    return row + [f"{median([r[0] for r in against]) / fit:.2f}x", f"{median([r[1] for r in against]) / pred:.2f}x"]


def _parity_row(name, ours, theirs):
    p = parity(ours[2], ours[3], theirs[2], theirs[3])
    return [name, f"{p['score_max_abs']:.3g}", f"{p['score_max_rel']:.3g}", f"{p['map_max_rel']:.3g}"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="16 training and 8 test images at 64 px, one round")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the environment and the tables to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA GPU here; --device cpu runs the CPU twin.")
    if args.quick:
        args.n_train, args.n_test, args.image_size, args.repeats = 16, 8, 64, 1
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*emulat")  # bfloat16 on a CPU without it: expected here
    warnings.filterwarnings("ignore", message="contamination=.* asks to flag fewer")  # quick runs
    report = Report(environment(packages=("anomalib",)))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU: the CPU twin"
    report.text(["## skpadim and anomalib on one device; device against CPU", ""])
    report.text(machine_header(report.env, [
        f"device: {device} ({gpu}); resnet18 (random weights), 100 channels, {args.image_size} px, "
        f"{args.n_train} training and {args.n_test} test images (generated); medians of {args.repeats}"]))
    size = args.image_size
    X, X_test, labels, masks = _data(args.n_train, args.n_test, size)
    have_anomalib = _anomalib_available()
    cpu = _skpadim(X, X_test, size, "cpu")
    ours, theirs = [], []
    for r in range(args.repeats):  # alternate which goes first
        order = ["skpadim", "anomalib"] if r % 2 == 0 else ["anomalib", "skpadim"]
        for impl in order:
            if impl == "skpadim":
                ours.append(_skpadim(X, X_test, size, device))
            elif have_anomalib:
                theirs.append(_anomalib(X, X_test, size, device, cpu[4]))
    reduced = []
    for dtype in ("float16", "bfloat16"):
        if native(dtype, device) or (device.type == "cpu" and dtype == "bfloat16"):
            reduced.append((dtype, _skpadim(X, X_test, size, device, dtype)))

    n, m = args.n_train, args.n_test
    rows = [_speed_row(f"skpadim on {device}", ours, n, m, theirs or None)]
    rows.append(_speed_row(f"anomalib on {device}", theirs, n, m) if theirs else
                [f"anomalib on {device}", "not installed", "-", "-", "-", "-", "-"])
    rows += [_speed_row(f"skpadim on {device}, backbone_dtype={d}", [run], n, m) for d, run in reduced]
    rows.append(_speed_row("skpadim on cpu (reference)", [cpu], n, m))
    report.text(["", "### Speed (ratios: anomalib's time over skpadim's)", ""])
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
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
