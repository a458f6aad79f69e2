"""Validation of PadimDetector's constructor parameters (run at fit time)."""

import numbers

import numpy as np
import torch
from torch import nn

from .backbone import IMAGENET_MEAN, IMAGENET_STD


def _fail(name, expected, value):
    return ValueError(
        f"The {name!r} parameter of PadimDetector must be {expected}. Got {value!r} instead."
    )


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and np.isfinite(x)


def image_size_pair(value):
    if _is_int(value) and value >= 1:
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
        return (int(value[0]), int(value[1]))
    raise _fail("image_size", "a positive int or a (height, width) pair of positive ints", value)


def normalization(value):
    """Return (mean, std) tuples, or None for no normalization."""
    if value is None:
        return None
    if isinstance(value, str):
        if value == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        raise _fail("normalize", "'imagenet', None or a (mean, std) pair of 3 floats each", value)
    try:
        mean, std = value
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise _fail("normalize", "'imagenet', None or a (mean, std) pair of 3 floats each", value) from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not np.all(np.isfinite(mean + std)):
        raise _fail("normalize", "a (mean, std) pair of 3 finite floats each, std > 0", value)
    return mean, std


def resolve_device(value):
    """'auto' -> cuda, then mps, then cpu; otherwise check that ``value`` exists."""
    if isinstance(value, str) and value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise _fail("device", "'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device", value) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"The 'device' parameter of PadimDetector is {value!r}, but CUDA is not "
                "available on this machine. Use device='cpu' or 'auto'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"The 'device' parameter of PadimDetector is {value!r}, but this machine "
                f"has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"The 'device' parameter of PadimDetector is {value!r}, but MPS is not "
                "available on this machine. Use device='cpu' or 'auto'."
            )
    elif device.type != "cpu":
        raise _fail("device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", value)
    return device


def validate(est):
    """Check every parameter of ``est``; raise ValueError naming the first bad one."""
    if not isinstance(est.backbone, (str, nn.Module)):
        raise _fail("backbone", "a torchvision model name or a torch.nn.Module", est.backbone)
    layers = est.layers
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(x, str) for x in layers) or len(layers) == 0:
            raise _fail("layers", "None or a non-empty list of module names", layers)
    elif isinstance(est.backbone, nn.Module):
        raise ValueError(
            "The 'layers' parameter of PadimDetector is required for a custom module "
            "backbone: pass the names of its feature layers, e.g. layers=['layer1', "
            "'layer2', 'layer3'] (see [n for n, _ in module.named_modules()])."
        )
    if est.n_features is not None and not (_is_int(est.n_features) and est.n_features >= 1):
        raise _fail("n_features", "None or an int >= 1", est.n_features)
    image_size_pair(est.image_size)
    if not (_is_real(est.epsilon) and est.epsilon > 0):
        raise _fail("epsilon", "a finite float > 0", est.epsilon)
    if not (_is_real(est.sigma) and est.sigma >= 0):
        raise _fail("sigma", "a finite float >= 0 (0 disables smoothing)", est.sigma)
    c = est.contamination
    if not (isinstance(c, str) and c == "auto") and not (_is_real(c) and 0 < c <= 0.5):
        raise _fail("contamination", "'auto' or a float in (0, 0.5]", c)
    normalization(est.normalize)
    if not (_is_int(est.batch_size) and est.batch_size >= 1):
        raise _fail("batch_size", "an int >= 1", est.batch_size)
    resolve_device(est.device)
    if not isinstance(est.verbose, (bool, numbers.Integral)):
        raise _fail("verbose", "a bool", est.verbose)
