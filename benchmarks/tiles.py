"""High-resolution images: resized to 224 px against native resolution in tiles.

Synthetic woven textures of 1024 x 1024 and 2048 x 2048 pixels with 4-8 px
defects (``make_anomaly_images(..., defect_size=(4, 8))``), and the Magnetic
Tile Defect images (when found) near their native size against the usual
224 px squash. For every case and variant one fresh child process fits and
predicts and reports image AUROC, pixel AUROC, AUPRO (30% FPR), fit and
predict times and its peak resident memory (``VmHWM``) after the fit and at
the end. The variants:

* ``resize 224``: ``image_size=224`` (every image squashed to 224 x 224);
* ``tiles, shared``: ``image_size=None, tile_size=256, tile_sharing="shared"``;
* ``tiles, position``: the same with ``tile_sharing="position"``.

The backbone is resnet18 with random weights (``weights=None``, seeded):
no pretrained weights are needed. The generated images are cached as .npy
files under ``--workdir`` (default: a folder in the temp directory), written
a few images at a time.

Usage::

    python benchmarks/tiles.py                    # 1024 and 2048 px, Magnetic Tile if found
    python benchmarks/tiles.py --sizes 1024       # one size
    python benchmarks/tiles.py --quick --json tiles.json   # smoke test: 128 px, 64 px tiles
"""

import argparse
import json
import os
import sys
import tempfile
import time

from _common import Report, environment, load_average, machine_header, peak_rss_mib, run_child

VARIANTS = {
    "resize 224": dict(image_size=224),
    "tiles, shared": dict(image_size=None, tile_sharing="shared"),
    "tiles, position": dict(image_size=None, tile_sharing="position"),
}


# ---------------------------------------------------------------- children


def _child(args):
    """Fit and predict one variant in this (fresh) process; print one JSON line."""
    from skpadim import PadimDetector
    from skpadim.metrics import aupro, image_auroc, pixel_auroc

    case = json.loads(args.child)
    data = _load_case(case)
    params = dict(VARIANTS[case["variant"]])
    if params.get("image_size", 0) is None and case.get("native_size"):
        params["image_size"] = case["native_size"]
    if "tile_sharing" in params:
        params.update(tile_size=case["tile"], tile_stride=case["stride"])
    else:
        params["image_size"] = case["squash"]
    det = PadimDetector(weights=None, n_features=case["n_features"], batch_size=case["batch_size"],
                        device="cpu", random_state=0, **params)
    out = {"params": {k: v for k, v in params.items()}, "rss_before_fit_mb": peak_rss_mib()}
    t0 = time.perf_counter()
    try:
        det.fit(data["train"])
    except MemoryError as exc:  # the check before any image: report it
        out["refused"] = str(exc)
        print("RESULT " + json.dumps(out), flush=True)
        return
    out["fit_s"] = time.perf_counter() - t0
    out["peak_fit_mb"] = peak_rss_mib()
    out["fit_mb"] = out["peak_fit_mb"] - out["rss_before_fit_mb"]
    out["state_mb"] = (det.precision_.nbytes + det.mean_.nbytes) / 2**20
    t0 = time.perf_counter()
    maps, scores = det.anomaly_map(data["test"], return_scores=True)
    out["predict_s"] = time.perf_counter() - t0
    out["peak_mb"] = peak_rss_mib()
    y, masks = data["y"], data["masks"]
    out["n_train"], out["n_test"] = len(data["train"]), len(y)
    out["image_auroc"] = float(image_auroc(y, -scores))
    out["pixel_auroc"] = float(pixel_auroc(masks, maps))
    out["aupro"] = float(aupro(masks, maps))
    print("RESULT " + json.dumps(out), flush=True)


def _load_case(case):
    import numpy as np

    if case["kind"] == "synthetic":
        folder = case["folder"]
        load = lambda name: np.load(os.path.join(folder, name + ".npy"), mmap_mode="r")  # noqa: E731
        return {"train": load("train"), "test": load("test"), "y": np.load(os.path.join(folder, "y.npy")),
                "masks": load("masks")}
    from skpadim.datasets import load_magnetic_tile, read_masks

    train = load_magnetic_tile(case["root"], split="train")
    test = load_magnetic_tile(case["root"], split="test")
    keep = np.arange(0, len(test.images), case["test_step"])
    images = [test.images[i] for i in keep]
    from PIL import Image

    shapes = []
    for p in images:
        with Image.open(p) as im:
            shapes.append((im.height, im.width))
    masks = read_masks([test.masks[i] for i in keep], shapes=shapes)
    return {"train": list(train.images[: case["n_train"]]), "test": images, "y": test.labels[keep],
            "masks": masks}


# ------------------------------------------------------------------ parent


def _generate(folder, size, n_train, n_test_each, chunk=4):
    """Write train.npy, test.npy, y.npy and masks.npy for ``size`` px images, ``chunk`` at a time."""
    import numpy as np

    from skpadim.datasets import make_anomaly_images

    if os.path.exists(os.path.join(folder, "masks.npy")):
        return
    os.makedirs(folder, exist_ok=True)
    n_test = 2 * n_test_each
    mm = lambda name, shape, dtype: np.lib.format.open_memmap(  # noqa: E731
        os.path.join(folder, name + ".tmp.npy"), mode="w+", dtype=dtype, shape=shape)
    train = mm("train", (n_train, size, size, 3), np.uint8)
    test = mm("test", (n_test, size, size, 3), np.uint8)
    masks = mm("masks", (n_test, size, size), bool)
    for start in range(0, n_train, chunk):
        k = min(chunk, n_train - start)
        X, _, _ = make_anomaly_images(k, 0, image_size=size, random_state=10_000 + start)
        train[start : start + k] = X
    y = np.r_[np.zeros(n_test_each, np.int64), np.ones(n_test_each, np.int64)]
    for start in range(0, n_test, chunk):
        k = min(chunk, n_test - start)
        n_good = int((y[start : start + k] == 0).sum())
        X, _, m = make_anomaly_images(n_good, k - n_good, image_size=size, defect_size=(4, 8),
                                      random_state=20_000 + start)
        test[start : start + k], masks[start : start + k] = X, m
    for a in (train, test, masks):
        a.flush()
    del train, test, masks
    np.save(os.path.join(folder, "y.npy"), y)
    for name in ("train", "test", "masks"):  # masks last: it marks a complete cache
        os.replace(os.path.join(folder, name + ".tmp.npy"), os.path.join(folder, name + ".npy"))


def _run(case, variant, in_process=False):
    child = run_child([os.path.abspath(__file__), "--child", json.dumps({**case, "variant": variant})],
                      in_process=in_process)
    if child["returncode"] != 0:
        raise RuntimeError(f"{case['name']} / {variant} failed ({child['returncode']}):\n{child['stderr'][-3000:]}")
    result = json.loads([ln for ln in child["stdout"].splitlines() if ln.startswith("RESULT ")][-1][7:])
    result["wall_s"] = child["wall_s"]
    print(f"  {case['name']} / {variant}: {child['wall_s']:.0f} s; load {load_average()}", file=sys.stderr, flush=True)
    return result


def _row(name, variant, r, megapixels):
    if "refused" in r:
        need = r["refused"].split("needs about ")[1].split(" GiB")[0] if "needs about" in r["refused"] else "?"
        return [name, variant, "refused by the memory check", f"(needs {need} GiB)", "", "", "", "", "", ""]
    return [name, variant, f"{r['image_auroc']:.3f}", f"{r['pixel_auroc']:.3f}", f"{r['aupro']:.3f}",
            f"{r['fit_s']:.1f}", f"{r['predict_s']:.1f}", f"{r['peak_fit_mb']:.0f}",
            f"{r['fit_mb']:.0f}", f"{r['fit_mb'] / megapixels:.0f}"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048], help="synthetic image sides (none: skip)")
    p.add_argument("--mt-train", type=int, default=120, help="Magnetic Tile training images")
    p.add_argument("--mt-test-step", type=int, default=3, help="every how many Magnetic Tile test images to score")
    p.add_argument("--n-train", type=int, nargs="+", default=[40, 16], help="training images per size")
    p.add_argument("--n-test", type=int, nargs="+", default=[15, 8],
                   help="good and defective test images (each) per size")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--n-features", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-magnetic-tile", action="store_true")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "skpadim-tiles"))
    p.add_argument("--json", help="also write the environment, the tables and every case to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    if args.quick:
        args.sizes, args.n_train, args.n_test, args.tile, args.n_features = [64], [8], [2], 32, 10
        args.no_magnetic_tile = True
        args.workdir = tempfile.mkdtemp(prefix="skpadim-tiles-quick-")

    t_start = time.perf_counter()
    report = Report(environment())
    report.text(["## tiles", ""] + machine_header(report.env) + [""])
    header = ["data", "variant", "image AUROC", "pixel AUROC", "AUPRO", "fit s", "predict s",
              "peak fit MiB", "fit MiB", "fit MiB per MP"]
    rows, results = [], {}
    for size, n_train, n_test in zip(args.sizes, args.n_train, args.n_test):
        folder = os.path.join(args.workdir, f"synthetic-{size}-{n_train}-{n_test}")
        t0 = time.perf_counter()
        _generate(folder, size, n_train, n_test)
        print(f"  data {size} px: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        case = {"kind": "synthetic", "name": f"{size} px", "folder": folder, "tile": args.tile,
                "stride": args.tile, "squash": 224, "n_features": args.n_features,
                "batch_size": args.batch_size}
        for variant in VARIANTS:  # one size's variants in a row: the same data, the same load
            r = results[f"{size}/{variant}"] = _run(case, variant, in_process=args.quick)
            rows.append(_row(f"{size} px ({n_train} train, {2 * n_test} test)", variant, r, size * size / 1e6))
    root = os.environ.get("SKPADIM_MAGNETIC_TILE", os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "..", "shared", "data", "magnetic-tile"))
    if not args.no_magnetic_tile and os.path.isdir(os.path.join(root, "MT_Free")):
        case = {"kind": "magnetic-tile", "name": "Magnetic Tile", "root": root, "n_train": args.mt_train,
                "test_step": args.mt_test_step, "native_size": [320, 320], "tile": 224, "stride": 96, "squash": 224,
                "n_features": args.n_features, "batch_size": args.batch_size}
        for variant in VARIANTS:
            r = results[f"magnetic-tile/{variant}"] = _run(case, variant, in_process=args.quick)
            rows.append(_row(f"Magnetic Tile ({args.mt_train} train, {r.get('n_test', '?')} test)", variant, r,
                             320 * 320 / 1e6))
    report.table("tiles", header, rows)
    report.text(["", "Tiles: 256 px, no overlap (Magnetic Tile: 320 x 320 px in 224 px tiles every 96 "
                 "px; its images are 222-632 px a side). resnet18, random weights, n_features="
                 f"{args.n_features}. peak fit MiB: the child's VmHWM after fit (torch, the "
                 "process and the touched pages of the memory-mapped images included); fit MiB: "
                 "that minus the VmHWM just before fit; per MP: per megapixel of one image."])
    report.record("cases", results)
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
