"""Anomaly maps: patch distances -> image resolution -> Gaussian smoothing.

The steps follow the paper and its reference implementations: the patch
distance grid is upsampled bilinearly to ``image_size``, smoothed with a
Gaussian of standard deviation ``sigma`` (kernel of ``2 * int(4 * sigma +
0.5) + 1`` taps, mirror padding), and finally resized bilinearly to each
input image's own size. An image's score is the maximum of its map at
``image_size`` (the paper), or the mean of its highest values
(``image_score``).

Upsampling, padding and smoothing are linear and act on each axis
separately, so :func:`anomaly_maps` applies them as one (H, h) and one (W, w)
matrix formed once per size (in float64, from :func:`upsample` and
:func:`smooth`'s own steps): two small matrix products per batch instead of
an interpolation and two convolutions over the full-resolution maps, with
the same result up to float32 rounding.
"""

import functools

import torch
import torch.nn.functional as F

from .._map_rules import gaussian_taps, kernel_radius, pad_mode, top_count


def gaussian_kernel(sigma, device, dtype=torch.float32):
    """Normalized 1-D Gaussian taps (:func:`skpadim._map_rules.gaussian_taps`) as a tensor."""
    return torch.from_numpy(gaussian_taps(sigma)).to(device=device, dtype=dtype)


def smooth(maps, sigma):
    """Separable Gaussian blur of (B, H, W) maps; mirror padding at the borders."""
    if sigma == 0:
        return maps
    k, r = gaussian_kernel(sigma, maps.device, maps.dtype), kernel_radius(sigma)
    x = maps[:, None]
    mode = pad_mode(r, maps.shape[-2:])
    x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def upsample(dist, size):
    """Bilinear resize of (B, h, w) to ``size`` (align_corners=False)."""
    if tuple(dist.shape[-2:]) == tuple(size):
        return dist
    return F.interpolate(dist[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@functools.lru_cache(maxsize=32)
def _axis_operator(n_in, n_out, sigma, mode, device, dtype):
    """The (n_out, n_in) matrix of one axis: bilinear resize from ``n_in`` to ``n_out``
    samples, then :func:`smooth`'s padding and Gaussian taps along that axis."""
    rows = torch.eye(n_in, dtype=torch.float64)  # row j: the j-th unit vector
    if n_in != n_out:
        rows = F.interpolate(rows[None, :, :, None], size=(n_out, 1), mode="bilinear",
                             align_corners=False)[0, :, :, 0]
    if sigma:
        k, r = gaussian_kernel(sigma, "cpu", torch.float64), kernel_radius(sigma)
        rows = F.conv1d(F.pad(rows[:, None], (r, r), mode=mode), k.view(1, 1, -1))[:, 0]
    return rows.T.contiguous().to(device=device, dtype=dtype)


def anomaly_maps(dist, image_size, sigma):
    """Patch distances (B, h, w) -> smoothed maps (B, *image_size).

    Equal to ``smooth(upsample(dist, image_size), sigma)`` up to float32
    rounding (see the module docstring).
    """
    (B, h, w), (H, W) = dist.shape, tuple(image_size)
    if (h, w) == (H, W) and not sigma:
        return dist
    mode = pad_mode(kernel_radius(sigma), (H, W)) if sigma else None
    key = (float(sigma), mode, str(dist.device), dist.dtype)
    rows = _axis_operator(h, H, *key)  # (H, h)
    cols = _axis_operator(w, W, *key)  # (W, w)
    out = (dist.reshape(B * h, w) @ cols.T).reshape(B, h, W)
    return torch.matmul(rows, out)


def image_scores(maps, how="max"):
    """Anomaly score (B,) of maps (B, H, W): their maximum (``"max"``), or the
    mean of their ``top_count(how, H * W)`` highest values (``how`` a fraction)."""
    if how == "max":
        return maps.amax(dim=(1, 2))
    flat = maps.flatten(1)
    return flat.topk(top_count(how, flat.shape[1]), dim=1, sorted=False).values.mean(1)
