"""Where and how big: defect masks and regions, with a pixel threshold fitted without labels.

Fits a detector on generated good images, then, for each test image, lists
its defect regions (bounding box, area, peak score): none for the images
``predict`` calls normal, at least one for those it flags. The pixel
threshold that cuts the masks (``pixel_threshold_``) comes from ``fit``,
without labels; the script prints the pixel F1 and IoU of the masks, the
share of true defects found and the false regions per good image, then
calibrates the pixel threshold on the masks of half of the test images
(``calibrate_pixel_threshold``) and scores the other half. It saves a
picture of the defective test images with the boxes of their label-free
regions (red) and the true defects (green outline) to ``--out``
(``defect_regions.png``).

The backbone is a ResNet-18 with random (seeded) weights, which needs no
download; pretrained weights (``weights="DEFAULT"``) find real defects far
better. About half a minute on a laptop CPU.

Usage: ``python examples/defect_regions.py [--size 128] [--out defect_regions.png]``
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - a script that writes files, no window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from skpadim import PadimDetector
from skpadim.datasets import make_anomaly_images
from skpadim.metrics import (
    calibrate_pixel_threshold,
    false_regions_per_image,
    pixel_f1_score,
    pixel_iou,
    region_recall,
)


def report(name, masks, predicted):
    print(f"{name}: pixel F1 {pixel_f1_score(masks, predicted):.3f}, IoU {pixel_iou(masks, predicted):.3f}, "
          f"defects found {region_recall(masks, predicted):.0%}, false regions per good image "
          f"{false_regions_per_image(masks, predicted, normal_only=True):.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument("--n-train", type=int, default=80, help="good training images (default: 80)")
    p.add_argument("--n-test", type=int, default=12, help="good and defective test images, each (default: 12)")
    p.add_argument("--out", default="defect_regions.png", help="picture to write")
    args = p.parse_args(argv)

    X_train, _, _ = make_anomaly_images(args.n_train, 0, image_size=args.size, random_state=0)
    X_test, y_test, masks = make_anomaly_images(args.n_test, args.n_test, image_size=args.size, random_state=1)
    detector = PadimDetector(weights=None, image_size=args.size, random_state=0, min_region_area=4)
    detector.fit(X_train)
    print(f"Fitted {detector.n_samples_seen_} good images; image threshold {-detector.offset_:.3g}, "
          f"pixel threshold {detector.pixel_threshold_:.3g} (anomaly-map units, no labels used)")

    labels = detector.predict(X_test)
    regions = detector.defect_regions(X_test)
    for i in np.flatnonzero(y_test == 1)[:4].tolist() + np.flatnonzero(y_test == 0)[:2].tolist():
        kind = "defective" if y_test[i] else "good"
        found = "; ".join(f"box {r.box}, {r.area} px, peak {r.peak:.3g}" for r in regions[i]) or "no region"
        print(f"  test image {i:2d} ({kind}, predict {labels[i]:+d}): {found}")

    report("Label-free pixel threshold", masks, detector.anomaly_mask(X_test))
    # Calibrated on the masks of the first half of the images, scored on the other half.
    half = np.arange(len(X_test)) % 2 == 0
    calibrate_pixel_threshold(detector, X_test[half], masks[half])
    print(f"Calibrated pixel threshold: {detector.pixel_threshold_:.3g}")
    report("Calibrated, on the other half", masks[~half], detector.anomaly_mask(X_test[~half]))

    # The picture: the regions of the label-free threshold, found before the calibration.
    shown = np.flatnonzero(y_test == 1)[:6]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.6), squeeze=False)
    for ax, i in zip(axes[0], shown):
        found = regions[i]
        ax.imshow(X_test[i])
        ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=1)
        for r in found:
            x0, y0, x1, y1 = r.box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red", lw=1.5))
        ax.set_title(f"{len(found)} region{'s' * (len(found) != 1)}", fontsize="small")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"Saved {args.out}")


if __name__ == "__main__":
    main()
