"""How should contamination='auto' set offset_? Compare candidate thresholds.

For detectors fitted on n normal generated images, print the false positive
rate (new normal images flagged) and true positive rate (defective images
flagged) of thresholds taken from: in-sample training scores (a second pass
over the training images), the held-out calibration scores (max, Tukey fences).

Usage: python benchmarks/threshold_calibration.py [--image-size 96]
"""

import argparse

import numpy as np

from skpadim import PadimDetector
from skpadim.datasets import make_anomaly_images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    size = args.image_size
    X_train, _, _ = make_anomaly_images(100, 0, image_size=size, random_state=0)
    X_test, y_test, _ = make_anomaly_images(100, 50, image_size=size, random_state=1)
    print(f"resnet18 (random weights), {size} px, 100 new normal + 50 defective test images")
    print(f"{'n_train':>7} {'threshold from':<28} {'level':>7} {'FPR':>5} {'TPR':>5}")
    for n in (20, 100):
        det = PadimDetector(weights=None, image_size=size, random_state=0).fit(X_train[:n])
        test = -det.score_samples(X_test)
        cal = -det.calibration_scores_
        q1, q3 = np.percentile(cal, [25, 75])
        rows = [
            ("in-sample max (2nd pass)", (-det.score_samples(X_train[:n])).max()),
            ("held-out max", cal.max()),
            ("held-out Q3 + 1.5 IQR", q3 + 1.5 * (q3 - q1)),
            ("held-out Q3 + 3 IQR (auto)", -det.offset_),
        ]
        for name, level in rows:
            flag = test >= level
            print(f"{n:>7} {name:<28} {level:7.2f} {flag[y_test == 0].mean():5.2f} {flag[y_test == 1].mean():5.2f}")


if __name__ == "__main__":
    main()
