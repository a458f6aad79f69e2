"""Images as tensors: decoded images -> float32 (B, 3, H, W) at ``image_size``.

Validation and decoding are torch-free (:mod:`skpadim._images`, shared with
the deployment runtime); this module turns decoded batches into tensors on
the detector's device and resizes them (bilinear, antialiased). The images
reach the device as they are (uint8 stays uint8, :mod:`.transfer`), and are
converted to float there.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .._images import ImageSet, check_images
from .transfer import host_tensor

__all__ = ["ImageSet", "check_images", "float_batch", "resize", "to_float"]


def to_float(t):
    """(..., H, W, C) uint8/float tensor -> (..., 3, H, W) float32 in [0, 1], on its device."""
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


def float_batch(raw, size):
    """A batch of images already on the device, as :class:`~.transfer.Staging` gives it (a
    (B, H, W, C) tensor, or a list of (H, W, C) tensors of the input's dtype), as a float32
    tensor (B, 3, h, w) in [0, 1] resized to ``size`` (None: as they are, all of one size)."""
    if torch.is_tensor(raw):
        t = to_float(raw)
        return t if size is None else resize(t, size)
    if size is None:
        return torch.cat([to_float(im)[None] for im in raw])
    return torch.cat([resize(to_float(im)[None], size) for im in raw])
