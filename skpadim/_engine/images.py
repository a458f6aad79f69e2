"""Images as tensors: decoded images -> float32 (B, 3, H, W) at ``image_size``.

Validation and decoding are torch-free (:mod:`skpadim._images`, shared with
the deployment runtime); this module turns decoded batches into tensors on
the detector's device and resizes them (bilinear, antialiased).
"""

import numpy as np
import torch
import torch.nn.functional as F

from .._images import ImageSet, check_images

__all__ = ["ImageSet", "check_images", "resize", "tensor_batch", "tensor_batches", "to_tensor"]

_TORCH_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def to_tensor(arr, device):
    """(..., H, W, C) uint8/float numpy -> (..., 3, H, W) float32 in [0, 1]."""
    if arr.dtype != np.uint8 and (arr.dtype not in _TORCH_FLOATS or not arr.dtype.isnative):
        arr = arr.astype(np.float32)  # long double, big-endian: torch reads neither
    elif not arr.flags.writeable:  # decoded files, read-only memory maps
        arr = np.array(arr)
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    if t.dtype == torch.uint8:
        t = t.to(torch.float32).div_(255.0)
    else:
        t = t.to(torch.float32)
    t = t.movedim(-1, -3)
    c = t.shape[-3]
    if c == 1:
        t = t.expand(*t.shape[:-3], 3, *t.shape[-2:])
    elif c == 4:
        t = t[..., :3, :, :]
    return t


def resize(t, size):
    """Bilinear (antialiased) resize of (N, C, H, W) to ``size``; no-op if equal."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t.contiguous()
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def tensor_batch(imgs, size, device):
    """One batch of :meth:`~skpadim._images.ImageSet.host_batches` as a float32 tensor
    (B, 3, h, w) in [0, 1] on ``device``, resized to ``size`` (None: as they are, all of
    one size)."""
    if isinstance(imgs, np.ndarray):
        t = to_tensor(imgs, device)
        return t if size is None else resize(t, size)
    if size is None:
        return torch.cat([to_tensor(im, device)[None] for im in imgs])
    return torch.cat([resize(to_tensor(im, device)[None], size) for im in imgs])


def tensor_batches(images, batch_size, size, device):
    """Yield ``(x, sizes)`` for an :class:`~skpadim._images.ImageSet`.

    ``x`` is a float32 tensor (B, 3, h, w) in [0, 1] resized to ``size`` on
    ``device``; ``sizes`` holds the original (H, W) of each image (the
    batches of :meth:`~skpadim._images.ImageSet.host_batches`).
    """
    for imgs, sizes in images.host_batches(batch_size):
        yield tensor_batch(imgs, size, device), sizes
