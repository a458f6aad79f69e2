"""Array forms of what a fitted state holds: symmetric matrices, backbones, devices.

Helpers of :meth:`FittedState.to_arrays <skpadim._engine.state.FittedState.to_arrays>`
and :meth:`~skpadim._engine.state.FittedState.from_arrays`, the one path by
which pickling, ``copy.deepcopy``, :meth:`PadimDetector.save` and
:meth:`PadimDetector.load` store and rebuild a fitted detector.

* Symmetric (P, d, d) matrices are stored as their packed upper triangles.
* A backbone is stored as its weights (the modules after the last tapped
  layer were removed at fit, so every weight is used). A torchvision model
  is rebuilt from its name (checked against torchvision's list; no download),
  and so is a backbone of :mod:`.named` (from its installed package); a
  custom module cannot be rebuilt without running code, so the caller
  provides an instance of its class, and a copy of it receives the weights.
"""

import copy
import warnings

import numpy as np
import torch

from . import named
from . import params as _params
from .taps import truncate

BACKBONE_PREFIX = "backbone."


def pack(matrices):
    """(P, d, d) tensor -> (P, d (d + 1) / 2) numpy array of its upper triangles."""
    d = matrices.shape[-1]
    iu = torch.triu_indices(d, d, device=matrices.device)
    return matrices[:, iu[0], iu[1]].cpu().numpy()


def unpack(packed, d):
    """Inverse of :func:`pack`: a symmetric (P, d, d) tensor."""
    iu = torch.triu_indices(d, d)
    p = torch.from_numpy(np.ascontiguousarray(packed))
    out = torch.empty(p.shape[0], d, d, dtype=p.dtype)
    out[:, iu[1], iu[0]] = p
    out[:, iu[0], iu[1]] = p
    return out


def model_weights(model):
    """The state_dict of ``model`` as numpy arrays named ``"backbone.<key>"``."""
    out = {}
    for k, v in model.state_dict().items():
        if not torch.is_tensor(v) or v.dtype in (torch.bfloat16,) or v.is_complex():
            desc = v.dtype if torch.is_tensor(v) else type(v).__name__
            raise ValueError(
                f"The backbone's state_dict entry {k!r} ({desc}) cannot be stored as a "
                "numpy array; convert the module to float32 (module.float()) before fitting."
            )
        out[BACKBONE_PREFIX + k] = v.detach().cpu().numpy()
    return out


def backbone_weights(arrays):
    """The ``"backbone.<key>"`` arrays of ``arrays`` as a state_dict of tensors."""
    n = len(BACKBONE_PREFIX)
    return {k[n:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(BACKBONE_PREFIX)}


def load_weights(model, weights, *, source):
    """Copy ``weights`` into ``model`` (every key, same shapes); ValueError naming ``source``."""
    sd = model.state_dict()
    problems = [f"unexpected key {k!r}" for k in weights if k not in sd]
    problems += [
        f"{k!r} has shape {tuple(v.shape)}, the backbone's has {tuple(sd[k].shape)}"
        for k, v in weights.items()
        if k in sd and tuple(v.shape) != tuple(sd[k].shape)
    ]
    problems += [f"missing key {k!r}" for k in sd if k not in weights]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(
            f"The backbone weights in {source} do not match the backbone: "
            f"{'; '.join(problems[:3])}{more}."
        )
    model.load_state_dict(weights, strict=True)
    return model


def rebuild_backbone(spec, weights, module, source):
    """The fitted backbone: architecture from ``spec`` (or ``module``), weights from ``weights``.

    ``spec["backbone"]`` is a torchvision name or ``"module:<class>"``;
    ``spec["removed"]`` lists the modules removed after the last tapped layer.
    """
    name = spec["backbone"]
    last = spec["layers"][-1]
    if not name.startswith("module:"):
        if module is not None:
            raise ValueError(
                f"{source} holds the backbone {name!r}, which is rebuilt from the file by its "
                "name, so do not pass backbone= to load."
            )
        if name in named.NAMED:  # its package's code, the saved weights
            model = named.architecture(name)
            return load_weights(truncate(model, spec["removed"], last), weights, source=source)
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"{source} names the backbone {name!r}, which is not a torchvision "
                "classification model here (torchvision.models.list_models(module="
                "torchvision.models)); a newer torchvision may be needed."
            )
        with torch.random.fork_rng(devices=[]):  # overwritten below; leave torch's RNG alone
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None)
        return load_weights(truncate(model, spec["removed"], last), weights, source=source)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"{source} was fitted with a custom backbone module ({name[len('module:'):]}). Its "
            "code is not in the file (loading never runs code from a file), so pass an "
            "instance of that class: PadimDetector.load(path, backbone=module); the saved "
            f"weights are loaded into a copy of it. Got backbone={module!r}."
        )
    model = copy.deepcopy(module)
    try:
        load_weights(truncate(model, spec["removed"], last), weights, source=source)
    except ValueError as exc:
        raise ValueError(
            f"{exc} The module passed as backbone ({type(module).__name__}) is not the "
            f"architecture this detector was fitted with ({name[len('module:'):]})."
        ) from None
    return model


def load_device(saved, param):
    """The device for a loaded detector: ``param`` resolved, or the CPU with a warning."""
    try:
        return _params.resolve_device(param)
    except (ValueError, RuntimeError, TypeError):
        warnings.warn(
            f"This detector was fitted on {saved!r}, which is not available here; "
            "using the CPU. Set device='cpu' to silence this warning.",
            stacklevel=4,
        )
        return torch.device("cpu")
