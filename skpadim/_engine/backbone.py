"""Backbone resolution: a torchvision model by name with its weights, or any module.

Everything here runs at ``fit`` time; nothing is downloaded unless the user
asked for pretrained torchvision weights that are not in the torch hub cache.
"""

import collections
import copy
import difflib
import os
import threading
from urllib.parse import urlparse

import torch
from torch import nn

from ..exceptions import WeightsUnavailableError
from . import named

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The paper's choices (Defard et al. 2020, section 4.1 and table 1).
_RESNET_LAYERS = ("layer1", "layer2", "layer3")
_PAPER_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}
_RESNET_PREFIXES = ("resnet", "wide_resnet", "resnext")


def _classification_models():
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_resnet_family(name):
    return isinstance(name, str) and name.startswith(_RESNET_PREFIXES)


def default_layers(backbone):
    """The paper's layers for ResNet-like names, a named backbone's own, else None (chosen by
    probing)."""
    if isinstance(backbone, str) and backbone in named.NAMED:
        return named.NAMED[backbone].layers
    return _RESNET_LAYERS if is_resnet_family(backbone) else None


def default_n_features(backbone):
    return _PAPER_N_FEATURES.get(backbone) if isinstance(backbone, str) else None


#: Randomly initialized torchvision models (``weights=None``) kept on the CPU, by (name, seed),
#: the latest :data:`_RANDOM_KEPT`. Drawing the weights is host work at every fit (a torch
#: profile of a 2,048-image resnet18 fit on an H200 machine: 178 ms of its 480 ms on the
#: host); a model built on a GPU receives them instead, without a copy on the host. On a
#: CPU a copy costs about what drawing does (resnet18: 0.07-0.10 s of CPU time each).
_RANDOM = collections.OrderedDict()
_RANDOM_KEPT = 2
_RANDOM_LOCK = threading.Lock()


def _drawn(name, seed):
    """The cached CPU model of ``name`` with weights drawn from ``seed`` (never handed out)."""
    key = (name, int(seed))
    with _RANDOM_LOCK:
        model = _RANDOM.get(key)
        if model is not None:
            _RANDOM.move_to_end(key)
            return model
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
    with _RANDOM_LOCK:
        _RANDOM[key] = model
        while len(_RANDOM) > _RANDOM_KEPT:
            _RANDOM.popitem(last=False)
    return model


def random_model(name, seed, device="cpu"):
    """A fresh ``name`` with the weights ``seed`` draws (as ``get_model(name, weights=None)``
    after ``torch.manual_seed(seed)``), on ``device``; torch's random state is left alone.

    The weights are drawn once per (name, seed) while the pair is among the latest
    :data:`_RANDOM_KEPT`; every call gets its own copy. On a device other than the
    CPU the module is built there directly and receives the weights (:func:`_built_on`).
    """
    drawn = _drawn(name, seed)
    device = torch.device(device)
    if device.type != "cpu":
        model = _built_on(name, drawn, device)
        if model is not None:
            return model
    return copy.deepcopy(drawn).to(device)


def _built_on(name, drawn, device):
    """``name`` built empty on ``device`` and given ``drawn``'s weights, or None where that
    does not make an exact copy (an architecture that cannot be built without data, or one
    with tensors outside its state_dict)."""
    import torchvision

    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
    except Exception:  # noqa: BLE001 - built on the CPU instead
        return None
    state = drawn.state_dict()
    if set(state) != set(dict(model.named_parameters())) | set(dict(model.named_buffers())):
        return None
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    return model.train(drawn.training)


def _unknown(kind, value, choices, hint):
    close = difflib.get_close_matches(str(value), choices, n=3)
    did = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown {kind} {value!r}.{did} {hint}")


def _resolve_enum(name, weights):
    """Return a torchvision WeightsEnum member, or None for a state_dict path."""
    import torchvision
    from torchvision.models import WeightsEnum

    enum_cls = torchvision.models.get_model_weights(name)
    if isinstance(weights, WeightsEnum):
        if type(weights) is not enum_cls:
            raise ValueError(
                f"The 'weights' parameter {weights} belongs to {type(weights).__name__}, "
                f"not to backbone {name!r} (expected a member of {enum_cls.__name__})."
            )
        return weights
    members = list(enum_cls.__members__)
    key = weights.split(".")[-1] if weights.startswith(enum_cls.__name__ + ".") else weights
    if key in members:
        return enum_cls[key]
    if os.path.isfile(weights):
        return None
    raise ValueError(
        f"The 'weights' parameter must be 'DEFAULT', a member of {enum_cls.__name__} "
        f"({', '.join(members)}), None or the path of a state_dict file; got {weights!r} "
        "(no such file either)."
    )


def weights_cache_path(weights):
    """Where torchvision keeps (or would keep) the file of a WeightsEnum member."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def load_state_dict_file(path):
    """Read a state_dict with ``weights_only=True`` (never runs pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise ValueError(
            f"Could not read the state_dict file '{path}' given as 'weights': {exc}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"The file '{path}' given as 'weights' does not hold a state_dict "
            "(a mapping of parameter names to tensors)."
        )
    return state


def _load_into(model, state, source):
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ValueError(
            f"The state_dict in {source} does not match the backbone: {' '.join(first)}"
        ) from None


def build_backbone(backbone, weights, seed=0, device="cpu"):
    """Return ``(module, description)`` for the ``backbone``/``weights`` parameters.

    ``module`` is a fresh module (a deep copy for user modules) on the CPU, or
    on ``device`` for random weights (:func:`random_model`). Random
    initialization (``weights=None``) is seeded with ``seed``, without
    touching torch's global random state. ``description`` is a short string
    for messages.
    """
    if isinstance(backbone, nn.Module):
        model = copy.deepcopy(backbone)
        if weights is None or (isinstance(weights, str) and weights == "DEFAULT"):
            return model, type(backbone).__name__
        if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
            _load_into(model, load_state_dict_file(weights), f"'{os.fspath(weights)}'")
            return model, type(backbone).__name__
        raise ValueError(
            "For a custom module backbone, 'weights' must be 'DEFAULT' or None (use the "
            f"module's own weights) or the path of a state_dict file; got {weights!r}."
        )
    if not isinstance(backbone, str):
        raise ValueError(
            "The 'backbone' parameter must be a torchvision model name (e.g. 'resnet18') "
            f"or a torch.nn.Module instance, got {type(backbone).__name__}."
        )
    if backbone in named.NAMED:
        return _build_named(backbone, weights, seed), backbone
    import torchvision

    names = _classification_models()
    if backbone not in names:
        raise _unknown(
            "backbone", backbone, names + sorted(named.NAMED),
            "Expected a torchvision classification model name "
            "(torchvision.models.list_models(module=torchvision.models)), "
            f"{', '.join(repr(n) for n in named.NAMED)}, or an nn.Module.",
        )
    if weights is None:
        return random_model(backbone, seed, device), backbone
    if not isinstance(weights, (str, os.PathLike)) and not _is_weights_enum(weights):
        raise ValueError(
            "The 'weights' parameter must be 'DEFAULT', a weights enum name or member, "
            f"None or a state_dict path; got {type(weights).__name__}."
        )
    enum = _resolve_enum(backbone, weights if _is_weights_enum(weights) else os.fspath(weights))
    if enum is None:
        model = torchvision.models.get_model(backbone, weights=None)
        _load_into(model, load_state_dict_file(weights), f"'{os.fspath(weights)}'")
        return model, backbone
    try:
        model = torchvision.models.get_model(backbone, weights=enum)
    except Exception as exc:  # URLError, OSError, RuntimeError (hash), ...
        cache = weights_cache_path(enum)
        raise WeightsUnavailableError(
            f"Could not load the pretrained weights {enum} for backbone {backbone!r}: "
            f"{type(exc).__name__}: {exc}. torchvision looks for them in the torch hub "
            f"cache at '{cache}' and downloads them from {enum.url} when missing. "
            "Fix it in one of three ways: (1) copy that file into the cache (download it "
            "once on a machine with network access; TORCH_HOME moves the cache), "
            "(2) pass weights='/path/to/state_dict.pth' pointing at a local copy, or "
            "(3) pass weights=None for random initialization (tests only: random "
            "features detect far less)."
        ) from None
    return model, backbone


def _build_named(name, weights, seed):
    """A backbone of :mod:`.named`: its ImageNet weights ("DEFAULT"), random ones (None), or a
    state_dict file."""
    if weights is None:
        return named.architecture(name, seed)
    if isinstance(weights, str) and weights == "DEFAULT":
        return named.pretrained(name)
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        model = named.architecture(name, seed)
        _load_into(model, load_state_dict_file(weights), f"'{os.fspath(weights)}'")
        return model
    raise ValueError(
        f"For the backbone {name!r}, the 'weights' parameter must be 'DEFAULT' (its ImageNet "
        f"weights), None (random) or the path of a state_dict file; got {weights!r}."
    )


def _is_weights_enum(obj):
    from torchvision.models import WeightsEnum

    return isinstance(obj, WeightsEnum)
