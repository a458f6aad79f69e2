"""PadimDetector's parameters: constraints (checked at every call) and their meaning.

:data:`CONSTRAINTS` is the estimator's ``_parameter_constraints``: the types
and ranges that scikit-learn's validation checks at the start of every
public method, with messages such as "The 'batch_size' parameter of
PadimDetector must be an int in the range [1, inf). Got 0 instead.". What
needs more than the value itself (a backbone name torchvision knows, a
device this machine has, layers the backbone contains) is checked when
fitting starts, with messages in the same style.
"""

import numbers
import os

import numpy as np
import torch
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from torch import nn

from .backbone import IMAGENET_MEAN, IMAGENET_STD


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and bool(np.isfinite(x))


class _Ints(Interval):
    """An Interval of ints that refuses bools (True is not a batch size)."""

    def is_satisfied_by(self, val):
        return not isinstance(val, bool) and super().is_satisfied_by(val)


class _Reals(Interval):
    """An Interval of finite reals that refuses bools."""

    def is_satisfied_by(self, val):
        return not isinstance(val, bool) and super().is_satisfied_by(val)


class _Check(HasMethods):
    """A constraint given by a predicate and the words that describe it.

    (A subclass of HasMethods because scikit-learn's validation takes its own
    constraint classes only.)
    """

    def __init__(self, predicate, description):
        super().__init__([])
        self.predicate = predicate
        self.description = description

    def is_satisfied_by(self, val):
        try:
            return bool(self.predicate(val))
        except Exception:  # an odd object: not satisfied
            return False

    def __str__(self):
        return self.description


def _layer_names(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, str) and x for x in v)


def _weights(v):
    from torchvision.models import WeightsEnum

    return isinstance(v, (str, os.PathLike, WeightsEnum))


def _size_pair(v):
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v)


def _norm_pair(v):
    return normalization(v) is not None


def _device(v):
    if isinstance(v, torch.device):
        return v.type in ("cpu", "cuda", "mps")
    if not isinstance(v, str):
        return False
    return v == "auto" or torch.device(v).type in ("cpu", "cuda", "mps")


CONSTRAINTS = {
    "backbone": [_Check(lambda v: isinstance(v, (str, nn.Module)), "a torchvision model name or a torch.nn.Module")],
    "layers": [None, _Check(_layer_names, "a non-empty list of module names")],
    "weights": [None, _Check(_weights, "'DEFAULT', a weights enum member or name, or a state_dict path")],
    "n_features": [None, _Ints(numbers.Integral, 1, None, closed="left")],
    "image_size": [
        None,
        _Ints(numbers.Integral, 1, None, closed="left"),
        _Check(_size_pair, "a (height, width) pair of positive ints"),
    ],
    "epsilon": [_Reals(numbers.Real, 0, np.inf, closed="neither")],
    "sigma": [_Reals(numbers.Real, 0, np.inf, closed="left")],
    "contamination": [StrOptions({"auto"}), _Reals(numbers.Real, 0, 0.5, closed="right")],
    "normalize": [
        StrOptions({"imagenet"}),
        None,
        _Check(_norm_pair, "a (mean, std) pair of 3 finite floats each, std > 0"),
    ],
    "batch_size": [StrOptions({"auto"}), _Ints(numbers.Integral, 1, None, closed="left")],
    "device": [_Check(_device, "'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "tile_size": [
        None,
        _Ints(numbers.Integral, 1, None, closed="left"),
        _Check(_size_pair, "a (height, width) pair of positive ints"),
    ],
    "tile_stride": [
        None,
        _Ints(numbers.Integral, 1, None, closed="left"),
        _Check(_size_pair, "a (height, width) pair of positive ints"),
    ],
    "tile_sharing": [StrOptions({"position", "shared"})],
    "backbone_dtype": [StrOptions({"float32", "bfloat16", "float16"})],
    "image_score": [StrOptions({"max"}), _Reals(numbers.Real, 0, 1, closed="neither")],
    "neighbourhood": [_Check(lambda v: _is_int(v) and v >= 1 and v % 2 == 1, "an odd int >= 1")],
    "shift_tolerance": [_Ints(numbers.Integral, 0, None, closed="left")],
    "covariance": [StrOptions({"sample", "oas"})],
    "min_region_area": [_Ints(numbers.Integral, 0, None, closed="left")],
}
# Embedding parameters that states fitted before they existed lack, with the value they had.
OPTIONAL_DEFAULTS = {"neighbourhood": 1, "backbone_dtype": "float32"}


def validated(est):
    """``est``'s parameters, checked against :data:`CONSTRAINTS` (InvalidParameterError)."""
    params = est.get_params(deep=False)
    validate_parameter_constraints(CONSTRAINTS, params, caller_name=type(est).__name__)
    if params["tile_stride"] is not None and params["tile_size"] is None:
        raise ValueError(
            f"The 'tile_stride' parameter of PadimDetector is {params['tile_stride']!r}, but "
            "tile_size is None: set tile_size too, or tile_stride=None."
        )
    return params


def check_contamination(value, caller):
    validate_parameter_constraints(
        {"contamination": CONSTRAINTS["contamination"]}, {"contamination": value}, caller_name=caller
    )


def image_size_pair(value):
    """(height, width) of a valid ``image_size``."""
    return (int(value), int(value)) if _is_int(value) else (int(value[0]), int(value[1]))


def normalization(value):
    """(mean, std) tuples of floats for a valid ``normalize``; None for none (or invalid)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (IMAGENET_MEAN, IMAGENET_STD) if value == "imagenet" else None
    try:
        mean, std = value
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
    except (TypeError, ValueError):
        return None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not np.all(np.isfinite(mean + std)):
        return None
    return mean, std


def resolve_device(value):
    """'auto' -> cuda, then mps, then cpu; otherwise check that ``value`` exists here."""
    if isinstance(value, str) and value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(value)
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
    return device


def check_custom_module_layers(est):
    if isinstance(est.backbone, nn.Module) and est.layers is None:
        raise ValueError(
            "The 'layers' parameter of PadimDetector is required for a custom module "
            "backbone: pass the names of its feature layers, e.g. layers=['layer1', "
            "'layer2', 'layer3'] (see [n for n, _ in module.named_modules()])."
        )


def _weights_key(value):
    from torchvision.models import WeightsEnum

    if isinstance(value, WeightsEnum):
        return f"{type(value).__name__}.{value.name}"
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def embedding_params(est):
    """The parameters that define the embedding, in a JSON form that compares by value.

    A custom module is represented by its class: ``partial_fit`` after
    pickling or loading gets a new (equal) instance.
    """
    b = est.backbone
    backbone = b if isinstance(b, str) else f"module:{type(b).__module__}.{type(b).__qualname__}"
    norm = normalization(est.normalize)
    return {
        "backbone": backbone,
        "layers": None if est.layers is None else list(est.layers),
        "weights": _weights_key(est.weights),
        "n_features": None if est.n_features is None else int(est.n_features),
        "image_size": None if est.image_size is None else list(image_size_pair(est.image_size)),
        "normalize": None if norm is None else [list(norm[0]), list(norm[1])],
        **_tile_params(est),
        **_optional_params(est),
    }


def _optional_params(est):
    # Only those away from their default, so that models saved before the options
    # existed are described (and resume) as before.
    values = {"neighbourhood": int(est.neighbourhood), "backbone_dtype": est.backbone_dtype}
    return {name: v for name, v in values.items() if v != OPTIONAL_DEFAULTS[name]}


def _tile_params(est):
    # Only with tiles, so that the parameters of a detector without them are as before.
    if est.tile_size is None:
        return {}
    stride = est.tile_size if est.tile_stride is None else est.tile_stride
    return {"tile_size": list(image_size_pair(est.tile_size)),
            "tile_stride": list(image_size_pair(stride)), "tile_sharing": est.tile_sharing}
