"""Anomaly maps: patch distances -> image resolution -> Gaussian smoothing.

The steps follow the paper and its reference implementations: the patch
distance grid is upsampled bilinearly to ``image_size``, smoothed with a
Gaussian of standard deviation ``sigma`` (kernel of ``2 * int(4 * sigma +
0.5) + 1`` taps, mirror padding), and finally resized bilinearly to each
input image's own size.
"""

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
