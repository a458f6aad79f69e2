"""anomalib's PaDiM, driven at the torch level with skpadim's weights and channels.

Shared by ``benchmarks/compare_anomalib.py`` and ``tests/test_anomalib_parity.py``
so that the benchmark and the parity test wire anomalib the same way:

* :func:`padim_model`: anomalib's ``PadimModel`` on the same backbone weights
  (a torchvision resnet18 state dict loaded into anomalib's own timm
  extractor with ``strict=True``, or any ``nn.Module``, which anomalib
  wraps through its torch.fx path) and the same random channel subset
  (anomalib's ``idx`` buffer set to skpadim's ``feature_index_``);
* :func:`fit` and :func:`predict`: what anomalib's Lightning module does
  (``model(batch)`` in training mode for every batch, then ``model.fit()``;
  ``model(batch)`` in eval mode for the maps and scores), without the
  Lightning engine, data loaders and post-processing, on the CPU or a GPU;
* :func:`image_batches`: the tensors PadimDetector makes of the same images
  (uint8 / 255 or floats as they are, grayscale to three equal channels,
  then ``(x - mean) / std``).

Requires anomalib (``pip install -e ".[bench]"``, also in the ``test`` extra).
"""

import warnings

import numpy as np
import torch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalization(normalize):
    """(mean, std) tensors of shape (1, 3, 1, 1); ``"imagenet"`` or a (mean, std) pair."""
    mean, std = IMAGENET if normalize == "imagenet" else normalize
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def image_batches(X, normalize, batch_size=32):
    """Normalized (B, 3, H, W) float32 batches of an image array, as PadimDetector makes them.

    ``X``: uint8 in [0, 255] or floats in [0, 1], shape (N, H, W) or
    (N, H, W, 3), already at the detector's ``image_size`` (the detector's
    resize is then a no-op; this function does not resize).
    """
    X = np.asarray(X)
    if X.dtype != np.uint8 and X.dtype.kind != "f":
        raise ValueError(f"X must hold uint8 or float images, got dtype {X.dtype}.")
    if X.ndim == 3:
        X = X[..., None]
    if X.ndim != 4 or X.shape[-1] not in (1, 3):
        raise ValueError(f"X must have shape (N, H, W) or (N, H, W, 3), got {X.shape}.")
    mean, std = normalization(normalize)
    for start in range(0, len(X), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(X[start : start + batch_size]))
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
        x = x.movedim(-1, -3)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        yield (x - mean) / std


def padim_model(layers, feature_index, *, resnet18_state=None, module=None):
    """anomalib's ``PadimModel`` with our backbone weights and channel subset.

    Pass exactly one of ``resnet18_state`` (the state dict of a torchvision
    resnet18, e.g. ``detector.backbone_.state_dict()``) and ``module`` (an
    ``nn.Module`` backbone, given to anomalib as it is).
    """
    if (resnet18_state is None) == (module is None):
        raise ValueError("Pass exactly one of resnet18_state and module.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from anomalib.models.image.padim.torch_model import PadimModel

        n_features = len(feature_index)
        if resnet18_state is not None:
            model = PadimModel(backbone="resnet18", layers=list(layers), pre_trained=False, n_features=n_features)
            timm_net = model.feature_extractor.feature_extractor
            # timm's resnet18 uses torchvision's parameter names; it stops at layer3.
            keep = {k: v for k, v in resnet18_state.items() if k in timm_net.state_dict()}
            timm_net.load_state_dict(keep, strict=True)
        else:
            model = PadimModel(backbone=module.eval(), layers=list(layers), n_features=n_features)
    model.idx = torch.as_tensor(np.asarray(feature_index), dtype=torch.long)
    return model


def fit(model, batches, device="cpu"):
    """Fit anomalib's model on an iterable of normalized batches, on ``device``."""
    model.to(device).train()
    for x in batches:
        model(x.to(device))
    model.fit()
    model.eval()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)  # the statistics are computed asynchronously
    return model


def predict(model, batches, n_images, size, device="cpu"):
    """Anomaly maps (n_images, *size) float32 and image scores (n_images,) float64."""
    maps = np.empty((n_images, *size), np.float32)
    scores = np.empty(n_images, np.float64)
    i = 0
    model.to(device)
    with torch.no_grad():
        for x in batches:
            res = model(x.to(device))
            b = len(x)
            maps[i : i + b] = res.anomaly_map[:, 0].float().cpu().numpy()
            scores[i : i + b] = res.pred_score.double().reshape(-1).cpu().numpy()
            i += b
    if i != n_images:
        raise ValueError(f"predict got {i} images, expected n_images={n_images}.")
    return maps, scores
