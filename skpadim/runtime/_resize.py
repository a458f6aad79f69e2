"""Antialiased bilinear resize in numpy, equal to torch's on the CPU.

:func:`resize` reproduces ``torch.nn.functional.interpolate(x, size,
mode="bilinear", align_corners=False, antialias=True)`` for float32 input,
which is how :class:`skpadim.PadimDetector` resizes images before the
backbone and anomaly maps back to each image's size. Scores of an exported
model drift from the eager ones when this step differs (a plain bilinear
resize, or Pillow's, gives other pixels), so it is re-implemented term by
term:

* the weights are those of ATen's ``_compute_indices_min_size_weights_aa``
  for ``scalar_t = float``, with its mixed float/double arithmetic: a
  triangle filter stretched by the scale when shrinking, normalized to sum
  to one;
* the width is resized first, then the height (a dimension whose size does
  not change is left alone), each pass accumulating its taps in the
  kernel's order, every step ``acc + pixel * weight`` rounded once to
  float32 as a fused multiply-add does (torch's compiled kernel contracts
  that step into an FMA on CPUs that have one).

The weights are bit-identical to torch's; the pixels agree to one float32
rounding (at most a few 1e-7 for images in [0, 1]): the order of the
roundings inside torch's compiled loop depends on the compiler and the CPU,
which numpy cannot mirror exactly. Scores differ by ~1e-6 relative from
this, far below the differences between two runtimes' convolutions.
"""

import functools

import numpy as np

_F = np.float32


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in, n_out):
    """(first index (n_out,), weights (n_out, taps) float32) for one axis."""
    scale = _F(_F(n_in) / _F(n_out))  # area_pixel_compute_scale<float>
    support = _F(1.0 * float(scale)) if scale >= 1.0 else _F(1.0)
    invscale = _F(1.0 / float(scale)) if scale >= 1.0 else _F(1.0)
    taps = int(np.ceil(float(support))) * 2 + 1
    first = np.zeros(n_out, dtype=np.int64)
    weights = np.zeros((n_out, taps), dtype=_F)
    for i in range(n_out):
        center = _F(float(scale) * (i + 0.5))
        xmin = max(int(float(center) - float(support) + 0.5), 0)
        xsize = min(int(float(center) + float(support) + 0.5), n_in) - xmin
        xsize = min(max(xsize, 0), taps)
        w = np.zeros(taps, dtype=_F)
        total = _F(0.0)
        for j in range(xsize):
            x = _F((float(_F(j + xmin) - center) + 0.5) * float(invscale))
            x = abs(x)
            w[j] = _F(1.0) - x if x < 1.0 else _F(0.0)
            total = _F(total + w[j])
        if total != 0.0:
            w[:xsize] = w[:xsize] / total
        first[i] = xmin
        weights[i] = w
    first.setflags(write=False)
    weights.setflags(write=False)
    return first, weights


def _resize_axis(x, n_out, axis):
    n_in = x.shape[axis]
    first, weights = _axis_weights(n_in, n_out)
    taps = weights.shape[1]
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = None
    for j in range(taps):
        index = np.minimum(first + j, n_in - 1)  # weight 0 where the window is shorter
        w = weights[:, j].reshape(shape)
        pixels = np.take(x, index, axis=axis)
        if out is None:
            out = pixels * w
        else:  # one rounding per step, as a fused multiply-add
            out = (out.astype(np.float64) + pixels.astype(np.float64) * w.astype(np.float64)).astype(_F)
    return out


def resize(x, size):
    """Resize float32 ``x`` (..., H, W) to ``size`` = (h, w), as torch does.

    Parameters
    ----------
    x : ndarray of shape (..., H, W), float32
    size : (int, int)

    Returns
    -------
    ndarray of shape (..., h, w), float32 (``x`` itself when the size is equal)

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.runtime import resize
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    >>> resize(x, (2, 2)).astype(float).round(3).tolist()  # each output averages a 4 x 4 window
    [[[3.571, 5.143], [9.857, 11.429]]]
    """
    if x.dtype != _F:
        raise ValueError(f"resize expects a float32 array, got dtype {x.dtype}.")
    h, w = (int(v) for v in size)
    if x.shape[-1] != w:
        x = _resize_axis(x, w, x.ndim - 1)
    if x.shape[-2] != h:
        x = _resize_axis(x, h, x.ndim - 2)
    return x
