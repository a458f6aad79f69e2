"""A slow, obviously-correct float64 PaDiM, for checking the fast one.

It follows the peers' recipe literally: every layer upsampled (nearest) to
the first layer's grid, all channels concatenated, then the subset kept; one
np.cov / np.linalg.inv per position; distances in a Python loop; maps
upsampled bilinearly and smoothed with scipy.ndimage.gaussian_filter.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def input_batches(images, batch_size, size):
    """``(x, sizes)``: the batches of an ImageSet as the detector's forward pass gets them on
    the CPU (decoded host batches, converted to float32 in [0, 1] and resized to ``size``)."""
    from skpadim._engine.images import float_batch
    from skpadim._engine.transfer import host_tensor

    for imgs, sizes in images.host_batches(batch_size):
        raw = host_tensor(imgs) if isinstance(imgs, np.ndarray) else [host_tensor(im) for im in imgs]
        yield float_batch(raw, size), sizes


def preprocessed(det, X):
    """The detector's own preprocessing (resize + normalization), float64 numpy."""
    from skpadim._engine.images import check_images
    from skpadim._engine.params import image_size_pair, normalization

    images = check_images(X)
    norm = normalization(det.normalize)
    mean = torch.tensor(norm[0]).view(1, 3, 1, 1)
    std = torch.tensor(norm[1]).view(1, 3, 1, 1)
    size = image_size_pair(det.image_size)
    return torch.cat([(x - mean) / std for x, _ in input_batches(images, 7, size)])


def window_mean(f, k):
    """(N, C, h, w) -> the mean over the k x k window around every position, inside the map."""
    out = np.zeros_like(f)
    h, w = f.shape[-2:]
    r = k // 2
    for y in range(h):
        for x in range(w):
            win = f[:, :, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
            out[:, :, y, x] = win.mean(axis=(2, 3))
    return out


def embeddings(det, X, neighbourhood=1):
    """(N, d, h, w) float64 embeddings computed the long way."""
    x = preprocessed(det, X)
    outputs = {}
    modules = dict(det.backbone_.named_modules())
    hooks = [
        modules[name].register_forward_hook(lambda m, a, o, name=name: outputs.__setitem__(name, o))
        for name in det.layers_
    ]
    try:
        with torch.no_grad():
            det.backbone_(x.to(det.device_))  # the whole (truncated) network, no early stop ...
    except RuntimeError as exc:  # ... until its first removed module, after the tapped layers
        assert "was removed" in str(exc)
    for h in hooks:
        h.remove()
    feats = [torch.from_numpy(window_mean(outputs[name].double().cpu().numpy(), neighbourhood)) for name in det.layers_]
    grid = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
    full = torch.cat([F.interpolate(f, size=grid, mode="nearest") for f in feats], dim=1)
    return full[:, torch.as_tensor(det.feature_index_)].numpy()


def fit_gaussians(E, epsilon):
    """Per-position mean (P, d) and precision (P, d, d) from (N, d, h, w)."""
    N, d = E.shape[:2]
    flat = E.reshape(N, d, -1)
    means, precisions = [], []
    for p in range(flat.shape[-1]):
        x = flat[:, :, p]
        cov = np.cov(x, rowvar=False, ddof=1) if N > 1 else np.zeros((d, d))
        cov = cov + epsilon * np.eye(d)
        means.append(x.mean(0))
        precisions.append(np.linalg.inv(cov))
    return np.array(means), np.array(precisions)


def maps(E, mean, precision, image_size, sigma, radius=0):
    """Smoothed anomaly maps (N, *image_size), float64.

    ``radius``: a patch's distance is the smallest over the Gaussians of the
    positions within ``radius`` rows and columns of its own.
    """
    N, d, h, w = E.shape
    flat = E.reshape(N, d, -1)
    dist = np.zeros((N, h * w))
    for i in range(N):
        for p in range(h * w):
            y, x = divmod(p, w)
            best = np.inf
            for qy in range(max(0, y - radius), min(h, y + radius + 1)):
                for qx in range(max(0, x - radius), min(w, x + radius + 1)):
                    q = qy * w + qx
                    diff = flat[i, :, p] - mean[q]
                    best = min(best, diff @ precision[q] @ diff)
            dist[i, p] = np.sqrt(max(best, 0.0))
    up = F.interpolate(
        torch.from_numpy(dist.reshape(N, 1, h, w)), size=image_size, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    if sigma == 0:
        return up
    return np.stack([ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=4.0) for m in up])
