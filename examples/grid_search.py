"""Model selection with GridSearchCV, then threshold calibration.

PadimDetector is fitted on normal images only, but its hyper-parameters are
best chosen on labelled images, defects included. This example, on generated
data (:func:`skpadim.datasets.make_anomaly_images`), shows the three steps:

1. ``GridSearchCV`` over ``image_size`` and ``n_features`` with labelled data:
   ``fit(X, y)`` keeps only the normal images of each training fold (label 0),
   and the scorers (:data:`skpadim.metrics.image_auroc_scorer`, ``f1_max``)
   rank the test fold's images, defects included. ``StratifiedKFold`` puts
   defects into every test fold;
2. :func:`skpadim.metrics.calibrate_threshold` sets the refitted detector's
   ``offset_`` to the F1-optimal threshold on separate validation images;
3. ``predict`` on held-out test images, before and after calibration.

The defects are thin scratches on 96 px images: shrinking the images to a
small ``image_size`` blurs them away, which the search should notice. Runs
offline in a minute or two on two CPU cores, with a ResNet-18 with random
(seeded) weights, which is enough for these synthetic defects (use
pretrained weights on real images).

Usage: ``python examples/grid_search.py``
"""

import time

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skpadim import PadimDetector
from skpadim.datasets import make_anomaly_images
from skpadim.metrics import calibrate_threshold, get_scorer, image_auroc, image_auroc_scorer

SIZE = 96  # generated images; the detector's image_size is searched
DEFECTS = "scratch"


def print_results(search):
    res = search.cv_results_
    print(f"{'image_size':>10} {'n_features':>10} {'AUROC (mean +- std)':>21} "
          f"{'F1 max':>7} {'fit s':>6} {'rank':>5}")
    for i in np.argsort(res["rank_test_auroc"], kind="stable"):
        print(f"{res['param_image_size'][i]:>10} {res['param_n_features'][i]:>10} "
              f"{res['mean_test_auroc'][i]:>13.3f} +- {res['std_test_auroc'][i]:.3f} "
              f"{res['mean_test_f1_max'][i]:>7.3f} {res['mean_fit_time'][i]:>6.2f} "
              f"{res['rank_test_auroc'][i]:>5}")


def print_confusion(detector, X, y, what):
    """Counts of predict's outcomes; y: 1 = defective, predict: -1 = flagged."""
    flagged = detector.predict(X) == -1
    defective = y == 1
    print(f"Test predict() with {what} (offset_ = {detector.offset_:.2f}):\n"
          f"  defective: {np.sum(flagged & defective):3d} flagged (TP), "
          f"{np.sum(~flagged & defective):3d} missed (FN)\n"
          f"  good:      {np.sum(flagged & ~defective):3d} flagged (FP), "
          f"{np.sum(~flagged & ~defective):3d} passed (TN)")


def main():
    start = time.perf_counter()
    # Labelled images for model selection (the detector fits the normal ones),
    # a labelled validation set for the threshold, and a held-out test set.
    data = dict(image_size=SIZE, defects=DEFECTS)
    X, y, _ = make_anomaly_images(n_normal=60, n_anomalous=24, random_state=0, **data)
    X_val, y_val, _ = make_anomaly_images(n_normal=30, n_anomalous=15, random_state=1, **data)
    X_test, y_test, _ = make_anomaly_images(n_normal=40, n_anomalous=40, random_state=2, **data)

    detector = PadimDetector(weights=None, device="cpu", random_state=0)
    search = GridSearchCV(
        detector,
        param_grid={"image_size": [32, 48], "n_features": [10, 50]},
        scoring={"auroc": image_auroc_scorer, "f1_max": get_scorer("f1_max")},
        refit="auroc",
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
    )
    search.fit(X, y)  # each fold's detector is fitted on its normal images only
    print(f"GridSearchCV: {len(search.cv_results_['params'])} candidates x 3 folds "
          f"on {len(X)} labelled images ({int(y.sum())} defective)")
    print_results(search)
    print(f"Best parameters: {search.best_params_} (CV image AUROC {search.best_score_:.3f})")

    best = search.best_estimator_  # refitted on the normal images of X
    scores = -best.score_samples(X_test)
    print(f"Test image AUROC: {image_auroc(y_test, scores):.3f}")
    print_confusion(best, X_test, y_test, "the threshold fitted from contamination='auto'")
    calibrate_threshold(best, X_val, y_val)  # F1-optimal offset_ on the validation images
    print_confusion(best, X_test, y_test, "the threshold calibrated on validation images")
    print(f"Total time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
