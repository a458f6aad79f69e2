"""Draw docs/images/conventions.png, the picture of docs/conventions.md.

Left: the image scores of normal and defective test images on one number
line, in both units (anomaly score = -score_samples at the bottom,
score_samples at the top), with the detector's threshold -offset_ and what
predict and decision_function say on each side. Right: one defective image
with its anomaly map, its true defect (green) and the pixels at or above
the same threshold (red).

Runs offline in about a minute: generated images with thin scratches,
shrunk to 48 px for a ResNet-18 with random (seeded) weights, so that the
two groups overlap a little, as on real data. Usage:
``python docs/images/conventions.py``
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from skpadim import PadimDetector  # noqa: E402
from skpadim.datasets import make_anomaly_images  # noqa: E402
from skpadim.plot import plot_anomaly_overlay  # noqa: E402

OUT = Path(__file__).with_name("conventions.png")
SIZE = 96
DATA = dict(image_size=SIZE, defects="scratch")


def number_line(ax, scores, y, threshold):
    lo, hi = scores.min(), scores.max()
    pad = 0.08 * (hi - lo)
    ax.axvspan(lo - pad, threshold, color="tab:blue", alpha=0.08)
    ax.axvspan(threshold, hi + pad, color="tab:red", alpha=0.08)
    rng = np.random.default_rng(0)
    for label, name, color, row in ((0, "normal (y = 0)", "tab:blue", 0.3),
                                    (1, "defective (y = 1)", "tab:red", 0.7)):
        s = scores[y == label]
        ax.scatter(s, row + rng.uniform(-0.08, 0.08, s.size), s=14, color=color,
                   alpha=0.8, label=name)
    ax.axvline(threshold, color="k", lw=1.5)
    ax.text(threshold, 1.02, f"  threshold = -offset_ = {threshold:.2f}", ha="left", va="bottom",
            fontsize=8)
    ax.text(lo - 0.5 * pad, 0.96, "predict = +1\ndecision_function > 0", va="top",
            fontsize=8, color="tab:blue")
    ax.text(hi + 0.5 * pad, 0.96, "predict = -1\ndecision_function < 0", va="top",
            ha="right", fontsize=8, color="tab:red")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(0, 1.15)
    ax.set_yticks([])
    ax.set_xlabel("anomaly score = -score_samples = max of the anomaly map  (higher = more anomalous)")
    top = ax.secondary_xaxis("top", functions=(np.negative, np.negative))
    top.set_xlabel("score_samples  (lower = more abnormal)")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)


def main():
    X_train, _, _ = make_anomaly_images(60, 0, random_state=0, **DATA)
    X, y, masks = make_anomaly_images(30, 30, random_state=1, **DATA)
    detector = PadimDetector(weights=None, image_size=48, n_features=30, random_state=0)
    detector.fit(X_train)
    scores = -detector.score_samples(X)  # anomaly scores: higher = more anomalous
    threshold = -detector.offset_  # predict: -1 where score_samples < offset_
    maps = detector.anomaly_map(X)

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.3, 1]}
    )
    number_line(left, scores, y, threshold)
    i = int(np.flatnonzero(y == 1)[np.argsort(scores[y == 1])[len(scores[y == 1]) // 2]])
    plot_anomaly_overlay(X[i], maps[i], masks[i], threshold=threshold, ax=right,
                         vmin=float(maps.min()), vmax=float(maps.max()),
                         title=f"anomaly_map of a defective image\n(score {scores[i]:.1f})")
    fig.colorbar(right.images[-1], ax=right, fraction=0.046, pad=0.04,
                 label="anomaly_map (higher = more anomalous)")
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    print(f"Saved {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
