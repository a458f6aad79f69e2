"""Anomaly maps: patch distances -> image resolution -> Gaussian smoothing.

The steps follow the paper and its reference implementations: the patch
distance grid is upsampled bilinearly to ``image_size``, smoothed with a
Gaussian of standard deviation ``sigma`` (kernel of ``2 * int(4 * sigma +
0.5) + 1`` taps, mirror padding), and finally resized bilinearly to each
input image's own size. An image's score is the maximum of its map at
``image_size`` (the paper), or the mean of its highest values
(``image_score``).
"""

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma, device, dtype=torch.float32):
    """Normalized 1-D Gaussian taps."""
    size = 2 * int(4.0 * sigma + 0.5) + 1
    x = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (k / k.sum()).to(device=device, dtype=dtype)


def smooth(maps, sigma):
    """Separable Gaussian blur of (B, H, W) maps; mirror padding at the borders."""
    if sigma == 0:
        return maps
    k = gaussian_kernel(sigma, maps.device, maps.dtype)
    r = k.numel() // 2
    x = maps[:, None]
    H, W = maps.shape[-2:]
    mode = "reflect" if r < H and r < W else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def upsample(dist, size):
    """Bilinear resize of (B, h, w) to ``size`` (align_corners=False)."""
    if tuple(dist.shape[-2:]) == tuple(size):
        return dist
    return F.interpolate(dist[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def anomaly_maps(dist, image_size, sigma):
    """Patch distances (B, h, w) -> smoothed maps (B, *image_size)."""
    return smooth(upsample(dist, image_size), sigma)


def top_count(fraction, n_pixels):
    """Pixels averaged by ``image_score=fraction``: ``ceil(fraction * n_pixels)``, at least 1."""
    return max(1, min(n_pixels, math.ceil(fraction * n_pixels - 1e-9)))


def image_scores(maps, how="max"):
    """Anomaly score (B,) of maps (B, H, W): their maximum (``"max"``), or the
    mean of their ``top_count(how, H * W)`` highest values (``how`` a fraction)."""
    if how == "max":
        return maps.amax(dim=(1, 2))
    flat = maps.flatten(1)
    return flat.topk(top_count(how, flat.shape[1]), dim=1, sorted=False).values.mean(1)
