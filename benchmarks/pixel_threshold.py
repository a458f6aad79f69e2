"""Defect masks without labels: the fitted pixel threshold against a calibrated one and the oracle.

For each configuration (data set, backbone, training-set size) the detector
is fitted once and the maps of its labelled test images are cached
(``_pixel_maps.py``). The library's own code then cuts them into masks
(``skpadim._regions``, what ``anomaly_mask`` runs), as ``predict`` gates
them: no mask on the images it calls normal. Rows:

- ``label-free``: ``pixel_threshold_`` as ``fit`` sets it, no labels;
- ``calibrated (other half)``: ``calibrate_pixel_threshold``'s level on the
  masks of one half of the test images, scored on the other half, both
  ways (the F1 is the mean of the two halves, and the oracle it is compared
  with the mean of the two halves' own oracles);
- ``best pixel_threshold_``: the level ``calibrate_pixel_threshold`` finds
  on all the test images (the best the masks can reach under the gate);
- ``oracle``: the best single level on all maps of all test images, no
  gate (what ``pixel_f1_max`` gives: the reference of the goals);
- baselines of the issue that asked for this: ``image threshold``
  (``map > t`` on the flagged images) and ``0.75 of own peak`` (``map >
  median + 0.75 (peak - median)`` on the flagged images).

Three image thresholds gate the masks: contamination 'auto' (the default),
0.05, and the F1-optimal one on the test labels (``calibrate_threshold``'s).
Metrics, pooled over the test images (``skpadim.metrics``): pixel F1 and
IoU, the fraction of true defect regions that a predicted region overlaps,
false regions (overlapping no defect) per good and per defective image.
The cost table times masks and regions (``_regions.localize``) per flagged
image against ``anomaly_map`` per image.

Usage::

    python benchmarks/pixel_threshold.py --quick          # generated images, well under a minute
    SKPADIM_MAGNETIC_TILE=/path/to/magnetic-tile python benchmarks/pixel_threshold.py

``--cache DIR`` keeps the maps (default ``benchmarks/results/pixel_threshold``);
a later run reads them and only cuts and scores masks.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import REPO, Report, environment, machine_header  # noqa: E402
from _pixel_maps import CONFIGS, compute  # noqa: E402

FULL = ["mt-effnet-400", "mt-effnet-100", "mt-resnet18r-400", "mt-effnet-600",
        "gen-effnet-128-s0", "gen-effnet-224-s1", "gen-resnet18r-128-s2", "gen-effnet-160-s3",
        "gen-resnet18r-224-s4"]
QUICK = ["quick-gen-128"]
GATES = {"auto": "contamination 'auto' (the default)", "0.05": "contamination 0.05",
         "labels": "the F1-optimal image threshold on the test labels (calibrate_threshold)"}


def offsets(data):
    """``offset_`` for each gate: the library's for 'auto' and 0.05, and calibrate_threshold's."""
    from skpadim._engine.calibration import offset_for
    from skpadim.metrics import optimal_threshold

    cal = -np.asarray(data["calibration"])  # score_samples of the held-out images
    peaks = data["test"].reshape(len(data["test"]), -1).max(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few held-out images for 'auto' in the quick mode
        out = {"auto": offset_for(cal, "auto"), "0.05": offset_for(cal, 0.05)}
    t = optimal_threshold(data["labels"], peaks)
    out["labels"] = float(np.nextafter(np.float64(-t), np.inf))  # as calibrate_threshold sets it
    return out


def fitted_settings(data, offset):
    """The mask settings of the fitted detector, its ``offset_`` set to ``offset``: ``pixel_threshold_``
    as fit set it (caches written before it: the rule, recomputed) and ``pixel_anchor_``."""
    from skpadim import _regions
    from skpadim._engine.calibration import offset_for

    peaks = np.asarray(data["calibration"])  # image_score='max': the held-out maps' maxima
    fitted = float(data["pixel_threshold"]) if "pixel_threshold" in data else _regions.fit_pixel_threshold(peaks)
    return _regions.Settings(offset, fitted, -offset_for(-peaks, "auto"))


def library_masks(maps, scores, settings, pixel_threshold=None):
    from skpadim import _regions

    if pixel_threshold is not None:
        settings = settings._replace(pixel_threshold=pixel_threshold)
    return np.stack([_regions.localize(m, s, settings)[0] for m, s in zip(maps, scores)])


def gated(maps, scores, offset, level_of):
    """Masks ``map > level_of(map)`` on the flagged images only."""
    return np.stack([(m > level_of(m)) if s < offset else np.zeros(m.shape, bool) for m, s in zip(maps, scores)])


def measure(pred, masks, labels, threshold=None):
    """Pooled metrics of predicted masks (or maps with ``threshold``) against the true masks."""
    from skpadim.metrics import false_regions_per_image, pixel_f1_score, pixel_iou, region_recall

    def false_regions(which):
        return false_regions_per_image(masks[which], pred[which], threshold=threshold) if which.any() else np.nan

    return dict(f1=pixel_f1_score(masks, pred, threshold=threshold), iou=pixel_iou(masks, pred, threshold=threshold),
                found=region_recall(masks, pred, threshold=threshold), fr_good=false_regions(labels == 0),
                fr_bad=false_regions(labels == 1))


def halves(n, seed=0):
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def study(name, data, gate):
    from skpadim.metrics import pixel_f1_max, pixel_optimal_threshold
    from skpadim.metrics._scorers import best_pixel_threshold

    maps, masks, labels = data["test"], data["masks"], data["labels"]
    scores = -maps.reshape(len(maps), -1).max(1).astype(np.float64)  # score_samples (image_score='max')
    offset = offsets(data)[gate]
    flagged = scores < offset
    settings = fitted_settings(data, offset)
    fitted = settings.pixel_threshold
    oracle_level = pixel_optimal_threshold(masks, maps)
    rows = {"oracle": measure(maps, masks, labels, threshold=oracle_level)}
    best = (best_pixel_threshold(maps, scores, masks, settings)[0] if flagged.any() else None) or fitted
    rows["best pixel_threshold_"] = dict(measure(library_masks(maps, scores, settings, best), masks, labels),
                                         level=best)
    rows["label-free"] = dict(measure(library_masks(maps, scores, settings), masks, labels), level=fitted)
    calibrated, half_oracles = [], []
    for fit_on, score_on in [halves(len(maps)), halves(len(maps))[::-1]]:
        level = fitted
        if flagged[fit_on].any() and masks[fit_on].any():
            level = best_pixel_threshold(maps[fit_on], scores[fit_on], masks[fit_on], settings)[0] or fitted
        pred = library_masks(maps[score_on], scores[score_on], settings, level)
        calibrated.append(measure(pred, masks[score_on], labels[score_on]))
        half_oracles.append(pixel_f1_max(masks[score_on], maps[score_on]))
    rows["calibrated (other half)"] = {k: float(np.mean([c[k] for c in calibrated])) for k in calibrated[0]}
    rows["image threshold"] = measure(gated(maps, scores, offset, lambda m: -offset), masks, labels)
    rows["0.75 of own peak"] = measure(gated(maps, scores, offset, lambda m: np.median(m) + 0.75 * (
        m.max() - np.median(m))), masks, labels)
    return dict(name=name, gate=gate, t=-offset, oracle=rows["oracle"]["f1"],
                half_oracle=float(np.mean(half_oracles)), calibrated_halves=[c["f1"] for c in calibrated],
                flagged_good=float(flagged[labels == 0].mean()), flagged_bad=float(flagged[labels == 1].mean()),
                pixel_threshold=fitted, rows=rows)


def cost(data, repeats=3):
    """Seconds per flagged image of a mask and its regions (``localize``), and anomaly_map's per image."""
    from skpadim import _regions

    maps = data["test"]
    scores = -maps.reshape(len(maps), -1).max(1).astype(np.float64)
    offset = offsets(data)["0.05"]
    keep = np.flatnonzero(scores < offset)[:64]
    if keep.size == 0:
        return np.nan, float(data["map_s_per_image"])
    settings = fitted_settings(data, offset)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in keep:
            _regions.localize(maps[i], scores[i], settings)
        best = min(best, (time.perf_counter() - t0) / keep.size)
    return best, float(data["map_s_per_image"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="generated images only, small (well under a minute)")
    parser.add_argument("--configs", nargs="*", help=f"among {sorted(CONFIGS)}")
    parser.add_argument("--cache", default=os.path.join(REPO, "benchmarks", "results", "pixel_threshold"))
    parser.add_argument("--mt-root", default=os.environ.get(
        "SKPADIM_MAGNETIC_TILE", os.path.join(REPO, "..", "shared", "data", "magnetic-tile")))
    parser.add_argument("--json", help="also write the tables and raw results to this JSON file")
    args = parser.parse_args()
    names = args.configs or (QUICK if args.quick else FULL)
    t_start = time.perf_counter()

    env = environment(packages=("scipy",))
    report = Report(env)
    report.text(["# Defect masks: the label-free pixel threshold, a calibrated one, the oracle", "",
                 *machine_header(env), f"- CPU model: {env['cpu']}", ""])
    datasets = {name: compute(name, args.cache, args.mt_root, log=lambda s: print(f"<!-- {s} -->"))
                for name in names}
    for gate, title in GATES.items():
        results = [study(name, data, gate) for name, data in datasets.items()]
        report.record(f"gate {gate}", results)
        header = ["", *[r["name"] for r in results]]
        report.text(["", f"## Image threshold: {title}", ""])
        report.table(f"{gate}/data", header, [
            ["t / flagged good / flagged defective",
             *[f"{r['t']:.1f} / {r['flagged_good']:.2f} / {r['flagged_bad']:.2f}" for r in results]],
            ["pixel_threshold_ (label-free)", *[f"{r['pixel_threshold']:.1f}" for r in results]],
        ])
        rules = list(results[0]["rows"])
        report.text(["", "Pixel F1 (ratio to the oracle's); calibrated: F1 on the other half / the halves' "
                     "oracle F1:", ""])
        rows = []
        for rule in rules:
            cells = []
            for r in results:
                f1 = r["rows"][rule]["f1"]
                if rule.startswith("calibrated"):
                    cells.append(f"{f1:.3f} / {r['half_oracle']:.3f} ({f1 - r['half_oracle']:+.3f})")
                else:
                    cells.append(f"{f1:.3f} ({f1 / r['oracle']:.2f}x)")
            rows.append([rule, *cells])
        report.table(f"{gate}/f1", ["rule", *header[1:]], rows)
        report.text(["", "IoU / true regions found / false regions per good image / per defective image:", ""])
        report.table(f"{gate}/regions", ["rule", *header[1:]], [
            [rule, *[f"{r['rows'][rule]['iou']:.3f} / {r['rows'][rule]['found']:.2f} / "
                     f"{r['rows'][rule]['fr_good']:.2f} / {r['rows'][rule]['fr_bad']:.2f}" for r in results]]
            for rule in rules])
    rows, costs = [], {}
    for name, data in datasets.items():
        mask_s, map_s = cost(data)
        costs[name] = dict(mask_s=mask_s, map_s=map_s)
        rows.append([name, f"{data['test'].shape[1]}x{data['test'].shape[2]}", f"{1e3 * mask_s:.2f}",
                     f"{1e3 * map_s:.1f}", f"{mask_s / map_s:.1%}"])
    report.record("cost", costs)
    report.text(["", "## Cost: a mask and its regions per flagged image (contamination 0.05), against "
                 "anomaly_map", ""])
    report.table("cost", ["config", "map size", "masks + regions ms/flagged image", "anomaly_map ms/image",
                          "ratio"], rows)
    report.finish(t_start, args.json)


if __name__ == "__main__":
    main()
