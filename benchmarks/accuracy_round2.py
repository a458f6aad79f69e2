#!/usr/bin/env python
"""Accuracy options beyond the paper's recipe, measured from cached features.

Candidates (each evaluated against the paper's recipe, the baseline):

* ``nbr3`` / ``nbr5``: every layer's kept channels averaged over a 3x3 / 5x5
  neighbourhood (stride 1, borders averaged over the pixels inside) before
  the embedding, for fit and predict;
* ``oas``: the covariance of each position shrunk by OAS (Chen et al. 2010)
  instead of the sample covariance + ``epsilon * I``;
* ``align``: the distance of a patch is the smallest Mahalanobis distance to
  the Gaussians of the 3x3 neighbouring positions (misalignment tolerance);
* ``flip-h`` / ``flip-v`` / ``flip-hv``: the distance grids of the
  horizontally / vertically flipped test image (flipped back) averaged with
  the unflipped one;
* image scores: ``max`` (the paper), ``top0.1%`` / ``top1%`` (mean of the
  highest 0.1 % / 1 % of the map's pixels), ``smax8`` / ``smax16`` (maximum
  of the map smoothed with sigma 8 / 16 instead of 4; the pixel map is
  unchanged).

The backbone runs once per image (and once more per flip on the test
images); the kept channels of every layer are cached as .npy under
``--cache`` and every variant is computed from them with skpadim's own
building blocks (``PatchEmbedding``, ``GaussianStats``, ``mahalanobis``,
``anomaly_maps``), so the baseline reproduces ``PadimDetector``.

Protocol: the test set is split in two halves by index (odd: selection,
even: report). The setting of every family is chosen on the selection half
(largest image AUROC + pixel AUROC + AUPRO); all rows are reported on the
report half with paired bootstrap 95 % intervals (1,000 resamples of the
report half's images, the same resamples for both variants) of the
difference to the baseline. Pixel AUROC and AUPRO of the bootstrap come from
per-image histograms over 8,192 quantile bins of the variant's map values
(pooled over the half); the point estimates are computed the same way (the
script prints the exact skpadim.metrics values of the baseline on the whole
test set as a check).

Usage::

    python benchmarks/accuracy_round2.py                 # Magnetic Tile + shifted parts (~25 min)
    python benchmarks/accuracy_round2.py --data shifted  # generated data only
    python benchmarks/accuracy_round2.py --quick         # smoke run on small generated data

Results: ``--json`` (default ``benchmarks/results/accuracy_round2/{quick,full}.json``)
and a markdown table on stdout.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import environment, machine_header, table, write_json  # noqa: E402

REPO = HERE.parent
DEFAULT_ROOT = os.environ.get(
    "SKPADIM_MAGNETIC_TILE", str(REPO.parent / "shared" / "data" / "magnetic-tile")
)
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
BACKBONES = {
    "resnet18-random": dict(layers=["layer1", "layer2", "layer3"], n_features=100, normalize="imagenet"),
    "effnet-lite0": dict(layers=["_blocks.2", "_blocks.4", "_blocks.10"], n_features=None, normalize=HALF),
}
SCORES = ("max", "top0.1%", "top1%", "smax8", "smax16")
FLIPS = {"flip-h": (-1,), "flip-v": (-2,), "flip-hv": (-1, -2)}
N_BINS, N_BOOT, SEED = 8192, 1000, 0
EPSILON, SIGMA, BATCH = 0.01, 4.0, 32


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def magnetic_tile(root, cache, quick):
    from _magnetic_tile import prepare_data

    size = (64, 64) if quick else (224, 224)
    d = cache / ("mt-quick" if quick else "mt")
    prepare_data(root, size, quick, d)
    return dict(train=np.load(d / "train.npy"), test=np.load(d / "test.npy"),
                masks=np.load(d / "masks.npy"), labels=np.load(d / "labels.npy"))


def shifted_parts(quick):
    """Generated images of a part: nearly registered for training (shifts up to 1 % of
    the side, rotations up to 0.5 degrees), less so when tested (4 %, 3 degrees)."""
    from skpadim.datasets import make_anomaly_images

    size, (n_train, n_good, n_bad) = (64, (40, 20, 20)) if quick else (128, (300, 100, 100))
    kw = dict(image_size=size, grayscale=True)
    X, _, _ = make_anomaly_images(n_train, 0, random_state=1, misalignment=(0.01, 0.5), **kw)
    T, y, m = make_anomaly_images(n_good, n_bad, random_state=2, misalignment=(0.04, 3.0), **kw)
    return dict(train=X.astype(np.float32) / 255, test=T.astype(np.float32) / 255, masks=m, labels=y)


# --------------------------------------------------------------------------
# Features (cached)
# --------------------------------------------------------------------------
def build(name, size):
    from skpadim import PadimDetector

    cfg = BACKBONES[name]
    if name.startswith("effnet"):
        sys.path.insert(0, str(HERE))
        from compare_anomalib import build_effnet

        params = dict(backbone=build_effnet())
    else:
        params = dict(backbone="resnet18", weights=None)
    det = PadimDetector(layers=cfg["layers"], n_features=cfg["n_features"], image_size=size,
                        normalize=cfg["normalize"], device="cpu", random_state=SEED, **params)
    return det


def extract(det, X, flip, path):
    """Kept channels of every layer, (N, n, h, w) float32 each, cached under ``path``."""
    import torch

    files = [path.with_name(f"{path.name}.L{i}.npy") for i in range(3)]
    if all(f.exists() for f in files):
        return [np.load(f, mmap_mode="r") for f in files], None
    state = det._state
    emb = state.embedder
    out = [np.empty((len(X), n, h, w), np.float32) for n, h, w in emb.patches.kept_shapes]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, len(X), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(X[a:a + BATCH]))[:, None].expand(-1, 3, -1, -1)
            if flip:
                x = x.flip(flip)
            x = (x - emb._norm[0]) / emb._norm[1]
            feats = emb.patches._layer_feats(emb.taps(x))
            for o, f, (idx, *_) in zip(out, feats, emb.patches._plan):
                o[a:a + len(x)] = (f if idx is None else f.index_select(1, idx)).numpy()
    seconds = time.perf_counter() - t0
    for f, o in zip(files, out):
        tmp = f.with_suffix(".tmp.npy")
        np.save(tmp, o)
        os.replace(tmp, f)
    return out, seconds


def embed(feats, a, b, pool):
    import torch
    import torch.nn.functional as F

    from skpadim._engine.embedding import PatchEmbedding

    layers = [torch.from_numpy(np.ascontiguousarray(f[a:b])) for f in feats]
    if pool > 1:
        layers = [F.avg_pool2d(t, pool, 1, pool // 2, count_include_pad=False) for t in layers]
    shapes = [tuple(t.shape[1:]) for t in layers]
    pe = PatchEmbedding(shapes, np.arange(sum(s[0] for s in shapes)), torch.device("cpu"))
    return pe(layers).clone(), pe.grid


# --------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------
def oas_precision(stats):
    """Precision of the OAS-shrunk (1/n) covariance of every position (float32)."""
    import torch

    from skpadim._engine.gaussian import _covariance

    P, d = stats.shape
    n = stats.n
    out = torch.empty(P, d, d)
    alphas = []
    for a in range(0, P, 64):
        cov = _covariance(stats.outer[a:a + 64].double(), stats.total[a:a + 64], n, 0.0)
        cov = cov.triu() + cov.triu(1).mT
        S = cov * ((n - 1) / n)
        mu = S.diagonal(dim1=-2, dim2=-1).mean(-1)
        alpha = S.square().mean((-2, -1))
        den = (n + 1) * (alpha - mu**2 / d)
        s = torch.where(den == 0, torch.ones_like(den), ((alpha + mu**2) / den).clamp(max=1.0))
        alphas.append(s)
        shrunk = (1 - s)[:, None, None] * S
        shrunk.diagonal(dim1=-2, dim2=-1).add_((s * mu)[:, None])
        out[a:a + 64] = torch.cholesky_inverse(torch.linalg.cholesky(shrunk)).float()
    return out, torch.cat(alphas)


def run_backbone(name, data, cache, timings):
    """Distance grids (N_test, h, w) of every map variant, and the times."""
    import torch

    from skpadim._engine.distances import mahalanobis, mahalanobis_min
    from skpadim._engine.gaussian import GaussianStats

    size = tuple(data["test"].shape[1:])
    det = build(name, size)
    det.fit(np.repeat(data["train"][:2, :, :, None], 3, axis=-1))
    base = cache / name
    base.parent.mkdir(parents=True, exist_ok=True)
    tr, s_tr = extract(det, data["train"], None, base.with_name(f"{name}.train"))
    te, s_te = extract(det, data["test"], None, base.with_name(f"{name}.test"))
    flips = {k: extract(det, data["test"], f, base.with_name(f"{name}.test.{k}"))[0] for k, f in FLIPS.items()}
    if s_te:
        timings["backbone_s_per_image"] = s_te / len(data["test"])
    N = len(data["test"])
    dists = {}
    for fit_kind in ("base", "nbr3", "nbr5", "oas"):
        pool = {"nbr3": 3, "nbr5": 5}.get(fit_kind, 1)
        modes = {"base": ["plain", "align", *FLIPS], "nbr3": ["plain", "align"]}.get(fit_kind, ["plain"])
        keys = [fit_kind if m == "plain" else f"{fit_kind}+{m}" for m in modes]
        if all(base.with_name(f"{name}.dist.{k}.npy").exists() for k in keys):
            mean = precision = grid = None  # every map of this fit is cached
            for k in keys:
                dists[k] = torch.from_numpy(np.load(base.with_name(f"{name}.dist.{k}.npy")))
                timings.update(json.loads(base.with_name(f"{name}.dist.{k}.json").read_text()))
            continue
        t0 = time.perf_counter()
        stats = None
        for a in range(0, len(data["train"]), 64):
            emb, grid = embed(tr, a, a + 64, pool)
            if stats is None:
                stats = GaussianStats.empty(emb.shape[0], emb.shape[1], torch.device("cpu"))
            stats.update(emb)
        mean = stats.mean().float()
        if fit_kind == "oas":
            precision, shrink = oas_precision(stats)
            timings["oas_shrinkage_median_min_max"] = [float(shrink.median()), float(shrink.min()), float(shrink.max())]
        else:
            precision = stats.precision(EPSILON)
        timings[f"fit_head_s/{fit_kind}"] = time.perf_counter() - t0
        del stats
        modes = {"base": ["plain", "align", *FLIPS], "nbr3": ["plain", "align"]}.get(fit_kind, ["plain"])
        for mode in modes:
            key = fit_kind if mode == "plain" else f"{fit_kind}+{mode}"
            saved = base.with_name(f"{name}.dist.{key}.npy")
            if saved.exists():  # computed by an earlier, interrupted run
                dists[key] = torch.from_numpy(np.load(saved))
                timings.update(json.loads(saved.with_suffix(".json").read_text()))
                continue
            out = torch.empty(N, *grid)
            t0 = time.perf_counter()
            for a in range(0, N, BATCH):
                emb, _ = embed(flips.get(mode, te), a, a + BATCH, pool)
                if mode == "align":  # skpadim's shift_tolerance=1
                    out[a:a + BATCH] = mahalanobis_min(emb, mean, precision, grid, 1).reshape(-1, *grid)
                else:
                    dist = mahalanobis(emb, mean, precision).reshape(-1, *grid)
                    if mode in FLIPS:  # (B, h, w): the same last two axes as the image
                        dist = 0.5 * (dist.flip(FLIPS[mode]) + dists[fit_kind][a:a + BATCH])
                    out[a:a + BATCH] = dist
            timings[f"predict_head_s/{key}"] = time.perf_counter() - t0
            if mode in FLIPS:  # the unflipped pass is shared: count it too
                timings[f"predict_head_s/{key}"] += timings[f"predict_head_s/{fit_kind}"]
            dists[key] = out
            np.save(saved, out.numpy())
            saved.with_suffix(".json").write_text(json.dumps(
                {k: v for k, v in timings.items() if k.endswith((f"/{key}", f"/{fit_kind}")) or k.startswith(fit_kind)}))
            print(f"  {name} {key}: {timings[f'predict_head_s/{key}']:.1f} s", flush=True)
    return dists


# --------------------------------------------------------------------------
# Metrics and the paired bootstrap
# --------------------------------------------------------------------------
def maps_and_scores(dist, size):
    from skpadim._engine.maps import anomaly_maps

    maps = anomaly_maps(dist, size, SIGMA)
    flat = maps.flatten(1)
    HW = flat.shape[1]
    scores = {"max": flat.amax(1)}
    for frac, key in ((0.001, "top0.1%"), (0.01, "top1%")):
        scores[key] = flat.topk(max(1, math.ceil(frac * HW)), dim=1).values.mean(1)
    for s in (8, 16):
        scores[f"smax{s}"] = anomaly_maps(dist, size, float(s)).flatten(1).amax(1)
    return maps.numpy(), {k: v.double().numpy() for k, v in scores.items()}


class PixelHist:
    """Per-image histograms of one variant's maps on a subset of images."""

    def __init__(self, maps, masks):
        from skpadim.metrics._pixel_passes import _region_weights

        sample = maps[:, ::4, ::4].ravel()
        edges = np.unique(np.quantile(sample, np.linspace(0, 1, N_BINS + 1)[1:-1]))
        nb = len(edges) + 1
        n = len(maps)
        self.neg = np.zeros((n, nb))
        self.pos = np.zeros((n, nb))
        self.ovl = np.zeros((n, nb))
        self.nreg = np.zeros(n)
        for i in range(n):
            b = np.searchsorted(edges, maps[i].ravel(), side="right")
            m = masks[i].ravel()
            self.neg[i] = np.bincount(b[~m], minlength=nb)
            self.pos[i] = np.bincount(b[m], minlength=nb)
            if m.any():
                k, w = _region_weights(masks[i])
                self.nreg[i] = k
                self.ovl[i] = np.bincount(b[m], weights=w, minlength=nb)

    def metrics(self, W):
        """Pixel AUROC and AUPRO (0.3) under image weights ``W`` (R, n)."""
        pos, neg, ovl = (W @ self.pos)[:, ::-1], (W @ self.neg)[:, ::-1], (W @ self.ovl)[:, ::-1]
        above = np.cumsum(pos, 1) - pos
        auroc = (neg * (above + 0.5 * pos)).sum(1) / (pos.sum(1) * neg.sum(1))
        fpr = np.concatenate([np.zeros((len(W), 1)), np.cumsum(neg, 1) / neg.sum(1, keepdims=True)], 1)
        pro = np.concatenate([np.zeros((len(W), 1)), np.cumsum(ovl, 1) / (W @ self.nreg)[:, None]], 1)
        aupro = np.empty(len(W))
        for r in range(len(W)):
            f, p = np.minimum(fpr[r], 1), np.minimum(pro[r], 1)
            k = np.searchsorted(f, 0.3, side="right")
            fk = np.r_[f[:k], 0.3]
            pk = np.r_[p[:k], np.interp(0.3, f, p)]
            aupro[r] = np.trapezoid(pk, fk) / 0.3
        return auroc, aupro


def image_auroc(scores, labels, W):
    pos, neg = scores[labels == 1], scores[labels == 0]
    C = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    Wp, Wn = W[:, labels == 1], W[:, labels == 0]
    return np.einsum("rp,pn,rn->r", Wp, C, Wn) / (Wp.sum(1) * Wn.sum(1))


def evaluate(dists, data, halves):
    """{variant: {half: {metric: (point, boot array)}}} with variant = map variant / score."""
    size = tuple(data["test"].shape[1:])
    labels, masks = data["labels"], data["masks"]
    rng = np.random.default_rng(SEED)
    weights = {}
    for h, idx in halves.items():
        n = len(idx)
        W = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1 / n), size=N_BOOT)])
        weights[h] = W  # row 0: the point estimate
    out = {}
    for key, dist in dists.items():
        maps, scores = maps_and_scores(dist, size)
        for h, idx in halves.items():
            ph = PixelHist(maps[idx], masks[idx])
            pa, pro = ph.metrics(weights[h])
            for s in SCORES:
                ia = image_auroc(scores[s][idx], labels[idx], weights[h])
                out.setdefault(f"{key}/{s}", {})[h] = dict(image_auroc=ia, pixel_auroc=pa, aupro=pro)
        del maps
    return out


def summarize(res, baseline="base/max"):
    """Point estimates per half, and paired differences with 95 % intervals on the report half."""
    rows = []
    for key, halves in res.items():
        row = dict(variant=key)
        for h, m in halves.items():
            for metric, v in m.items():
                row[f"{h}/{metric}"] = float(v[0])
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            diff = halves["report"][metric][1:] - res[baseline]["report"][metric][1:]
            point = float(halves["report"][metric][0] - res[baseline]["report"][metric][0])
            lo, hi = np.percentile(diff, [2.5, 97.5])
            row[f"delta/{metric}"] = [point, float(lo), float(hi)]
        row["select_sum"] = sum(row[f"select/{m}"] for m in ("image_auroc", "pixel_auroc", "aupro"))
        rows.append(row)
    return rows


def choose(rows):
    """Best setting of every family on the selection half."""
    by = {r["variant"]: r for r in rows}
    fams = {
        "image score": [f"base/{s}" for s in SCORES],
        "neighbourhood": ["base/max", "nbr3/max", "nbr5/max"],
        "misalignment": ["base/max", "base+align/max"],
        "flips": ["base/max"] + [f"base+{f}/max" for f in FLIPS],
        "covariance": ["base/max", "oas/max"],
    }
    return {f: max(keys, key=lambda k: by[k]["select_sum"]) for f, keys in fams.items() if all(k in by for k in keys)}


def fmt_delta(d):
    return f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"


HEADER = ["variant", "select: image / pixel / AUPRO", "report: image AUROC", "pixel AUROC", "AUPRO",
          "d image AUROC [95% CI]", "d pixel AUROC [95% CI]", "d AUPRO [95% CI]", "head predict s"]


def table_rows(rows, timings):
    out = []
    for r in rows:
        key = r["variant"].split("/")[0]
        t = timings.get(f"predict_head_s/{key}", float("nan"))
        sel = " / ".join(f"{r[f'select/{m}']:.4f}" for m in ("image_auroc", "pixel_auroc", "aupro"))
        out.append([r["variant"], sel, f"{r['report/image_auroc']:.4f}", f"{r['report/pixel_auroc']:.4f}",
                    f"{r['report/aupro']:.4f}", fmt_delta(r["delta/image_auroc"]),
                    fmt_delta(r["delta/pixel_auroc"]), fmt_delta(r["delta/aupro"]), f"{t:.1f}"])
    return out


def predict_times(data, name, n_train, n_test, rounds):
    """End-to-end ``score_samples`` seconds of PadimDetector with each option, interleaved."""
    size = tuple(data["test"].shape[1:])
    X = np.repeat(data["train"][:n_train, :, :, None], 3, axis=-1)
    T = np.repeat(data["test"][:n_test, :, :, None], 3, axis=-1)
    base = build(name, size).fit(X)
    nbr = build(name, size).set_params(neighbourhood=3).fit(X)
    score = build(name, size).set_params(image_score=0.01).fit(X)
    shift = build(name, size).set_params(shift_tolerance=1).fit(X)
    dets = {"paper": base, "neighbourhood=3": nbr, "image_score=0.01": score, "shift_tolerance=1": shift}
    times = {k: [] for k in dets}
    for _ in range(rounds):
        for k, det in dets.items():
            t0 = time.perf_counter()
            det.score_samples(T)
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {k: dict(seconds=v, median_s=med[k], ratio=med[k] / med["paper"]) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", choices=["all", "mt", "shifted"], default="all")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--cache", default=None,
                   help="feature cache (default: /tmp/skpadim-accuracy2; --quick: a temporary folder)")
    p.add_argument("--json", default=None)
    p.add_argument("--timing", action="store_true",
                   help="only time PadimDetector.score_samples with each option (Magnetic Tile cache)")
    args = p.parse_args(argv)
    import torch

    if args.cache is None and args.quick:
        tmp = tempfile.TemporaryDirectory(prefix="skpadim-accuracy2-")
        args.cache = tmp.name
    if args.quick:  # a smoke run: fewer resamples and bins
        global N_BOOT, N_BINS
        N_BOOT, N_BINS = 200, 1024
    cache = Path(args.cache or "/tmp/skpadim-accuracy2") / ("quick" if args.quick else "full")
    out = Path(args.json) if args.json else HERE / "results" / "accuracy_round2" / (
        ("quick" if args.quick else "full") + ("-timing" if args.timing else "") + ".json")
    env = environment(["torch", "torchvision", "scikit-learn"])
    report = dict(environment=env, quick=args.quick, tables={}, results=[])
    print("\n".join(machine_header(env)), f"torch threads: {torch.get_num_threads()}", sep="\n")
    if args.timing:
        data = magnetic_tile(Path(args.root), cache.parent, args.quick)
        n = (8, 8, 1) if args.quick else (100, 96, 3)
        rows = []
        for name in args.backbones:
            res = predict_times(data, name, *n)
            report["results"].append(dict(backbone=name, timing=res, n_train=n[0], n_test=n[1], rounds=n[2]))
            rows += [[name, k, f"{v['median_s']:.2f}", f"{v['ratio']:.2f}"] for k, v in res.items()]
        head = ["backbone", "option", f"score_samples s ({n[1]} images, median of {n[2]})", "ratio to the paper"]
        report["tables"]["predict time"] = dict(header=head, rows=rows)
        print(*table(head, rows), sep="\n")
        write_json(out, report)
        return
    sets = []
    if args.data in ("all", "shifted"):
        sets.append(("shifted parts (generated)", lambda: shifted_parts(args.quick)))
    if args.data in ("all", "mt") and not args.quick:
        sets.append(("Magnetic Tile", lambda: magnetic_tile(Path(args.root), cache.parent, False)))
    for dataset, load in sets:
        data = load()
        n = len(data["test"])
        halves = {"select": np.arange(1, n, 2), "report": np.arange(0, n, 2)}
        for name in (["resnet18-random"] if args.quick else args.backbones):
            print(f"{dataset} / {name}", flush=True)
            timings = {}
            tag = "shifted" if dataset.startswith("shifted") else "mt"
            dists = run_backbone(name, data, cache / tag, timings)
            if dataset == "Magnetic Tile":  # reproduction check against skpadim.metrics (whole test set)
                from skpadim import metrics as m

                maps, scores = maps_and_scores(dists["base"], tuple(data["test"].shape[1:]))
                timings["check_whole_test_set"] = dict(
                    image_auroc=float(m.image_auroc(data["labels"], scores["max"])),
                    pixel_auroc=float(m.pixel_auroc(data["masks"], maps)),
                    aupro=float(m.aupro(data["masks"], maps)))
                print("  whole test set, baseline:", timings["check_whole_test_set"], flush=True)
                del maps
            rows = summarize(evaluate(dists, data, halves))
            chosen = choose(rows)
            # Shown: every image score on the paper's maps, the other maps with the
            # maximum and with the image score chosen on the selection half.
            score = chosen["image score"].split("/")[1]
            rows = [r for r in rows if r["variant"].startswith("base/")
                    or r["variant"].endswith(("/max", f"/{score}"))]
            cells = table_rows(rows, timings)
            report["tables"][f"{dataset} / {name}"] = dict(header=HEADER, rows=cells)
            print(f"\n### {dataset}, {name}\n", *table(HEADER, cells),
                  "\nChosen on the selection half: " + ", ".join(f"{f}: {k}" for f, k in chosen.items()),
                  sep="\n", flush=True)
            report["results"].append(dict(dataset=dataset, backbone=name, rows=rows, chosen=chosen,
                                          timings=timings, n_test=n))
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, report)
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
